"""runner: a local LLM inference server embedding llama.cpp in-process."""

__version__ = "0.1.0"
