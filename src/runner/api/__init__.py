"""The HTTP API: OpenAI-compatible routes, llama-server extras and DMR management."""

from .app import create_app

__all__ = ["create_app"]
