"""Ollama's API: chat, generate, embed, and the model routes (/api/tags, /api/pull...)."""
