"""The HTTP API: one package per dialect (openai, responses, ollama, anthropic, llama_server,
dmr, ui) over the shared `core`, `http` and `errors`; `app.py` assembles them."""

from runner.api.app import create_app

__all__ = ["create_app"]
