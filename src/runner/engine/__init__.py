"""llama.cpp in-process: one context, a slot pool, continuous batching, prefix reuse.

The HTTP layer uses `Engine` and the types below; it never touches llama.cpp itself.
"""

from .engine import Engine
from .job import Completion, RequestHandle
from .model import LlamaModel, ModelLoadError, gpu_offload_supported, system_info
from .types import (
    EmbeddingsDone,
    EngineClosed,
    EngineConfig,
    EngineDead,
    EngineError,
    EngineInfo,
    Event,
    FinishEvent,
    GenerationRequest,
    InvalidRequest,
    PromptTooLong,
    QueueFull,
    SamplingParams,
    Timings,
    TokenEvent,
    TokenLogprob,
)

__all__ = [
    "Completion",
    "EmbeddingsDone",
    "Engine",
    "EngineClosed",
    "EngineDead",
    "EngineInfo",
    "EngineConfig",
    "EngineError",
    "Event",
    "FinishEvent",
    "GenerationRequest",
    "InvalidRequest",
    "LlamaModel",
    "ModelLoadError",
    "PromptTooLong",
    "QueueFull",
    "RequestHandle",
    "SamplingParams",
    "Timings",
    "TokenEvent",
    "TokenLogprob",
    "gpu_offload_supported",
    "system_info",
]
