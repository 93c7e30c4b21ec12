"""How a model would be loaded now: its engine config and keep-alive, from the server's
settings under the file's persisted per-model configuration (`_configure`) and a request's
context size (Ollama's `num_ctx`); and the file of its draft model, if it has one."""

from __future__ import annotations

from typing import Any

from .config import Settings, parse_duration
from .engine import EngineConfig
from .model_config import draft_model_file, lora_adapters
from .store import ModelEntry, ModelStore


def engine_config(
    settings: Settings,
    entry: ModelEntry,
    cfg: dict[str, Any],
    draft: str | None = None,
    context_size: int | None = None,
    lora: tuple[tuple[str, float], ...] = (),
) -> tuple[EngineConfig, float]:
    """(engine config, keep-alive seconds) for `entry` with per-model configuration `cfg`
    and its LoRA adapters' (file, scale) (`lora_files`)."""
    ctx = context_size or cfg.get("context-size") or settings.ctx_size
    if entry.metadata.context_length:
        ctx = min(ctx, entry.metadata.context_length)
    gpu_layers = cfg.get("gpu-layers", settings.gpu_layers)
    config = EngineConfig(
        slots=cfg.get("slots") or settings.slots,
        ctx_per_slot=ctx,
        n_batch=settings.batch_size,
        n_ubatch=settings.ubatch_size,
        threads=settings.threads,
        gpu_layers=gpu_layers,
        similarity=cfg.get("similarity", settings.similarity),
        queue_size=settings.queue_size,
        prefill_block=prefill_block(settings, gpu_layers),
        max_embed_tokens=settings.max_embed_tokens,
        max_grammar_bytes=settings.max_grammar_bytes,
        grammar_step_budget=settings.grammar_step_budget,
        spec_draft_max=cfg.get("draft-max", settings.draft_max),
        draft_model=draft,
        log_interval=max(settings.log_interval, 0.0),
        log_text=settings.log_text,
        cache_type_k=cfg.get("cache-type-k") or settings.cache_type_k,
        cache_type_v=cfg.get("cache-type-v") or settings.cache_type_v,
        state_checkpoints=settings.state_checkpoints,
        lora=lora,
    )
    keep_alive = settings.idle_timeout
    if cfg.get("keep_alive") is not None:
        keep_alive = parse_duration(cfg["keep_alive"])
    return config, keep_alive


def prefill_block(settings: Settings, gpu_layers: int) -> int:
    if settings.prefill_block:
        return settings.prefill_block
    # Small blocks cost little on a CPU and reuse more; a GPU wants wide decode calls.
    from .engine import gpu_offload_supported

    return 128 if gpu_layers != 0 and gpu_offload_supported() else 16


def draft_file(settings: Settings, store: ModelStore, cfg: dict[str, Any]) -> str | None:
    """The draft model's GGUF (per-model `draft-model`, else `--draft-model`), or None.
    Raises ValueError for a name that is neither a file nor a model; touches the disk."""
    name = cfg.get("draft-model") or settings.draft_model
    return draft_model_file(store, name) if name else None


def lora_files(
    settings: Settings, store: ModelStore, entry: ModelEntry, cfg: dict[str, Any]
) -> tuple[tuple[str, float], ...]:
    """(file, scale) of the model's LoRA adapters: the per-model `lora` when set (even
    empty), else the server's `--lora` ones made for its architecture. Raises ValueError
    for a file that is no adapter or not found; touches the disk."""
    if "lora" in cfg:
        return lora_adapters(store, cfg["lora"], entry.metadata.architecture, False)
    return lora_adapters(store, settings.lora, entry.metadata.architecture, True)
