"""Per-model settings set through `_configure` (DMR's spelling) and persisted in the store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .chat import ChatTemplate, template_for
from .chat.toolcalls import FORMATS
from .config import KV_CACHE_TYPES, parse_duration, parse_gpu_layers
from .engine.lora import adapter_architecture

# Keys accepted by `_configure` (DMR spelling) and persisted per model.
CONFIG_KEYS = {
    "context-size": int,
    "slots": int,
    "similarity": float,
    "keep_alive": str,
    "gpu-layers": int,
    "draft-max": int,  # speculative tokens per step (0: off)
    "draft-model": str,  # a model name or GGUF path that guesses where prompt lookup cannot
    "chat-template": str,
    "tool-format": str,  # a chat.toolcalls.FORMATS name; default: detected from the template
    "reasoning-format": str,  # "deepseek" (split <think> out, the default) or "none"
    "cache-type-k": str,  # KV cache element type of keys (config.KV_CACHE_TYPES)
    "cache-type-v": str,  # ... and of values (quantized: flash attention is turned on)
    "lora": list,  # LoRA adapters, "FILE[:SCALE]" each (a GGUF path or a model name)
}

# Keys of a `_configure` body that are not settings: the model it names, llama-server flags
# (translated into settings above) and DMR's mode, whose modes runner serves at once.
REQUEST_KEYS = {"model", "runtime-flags", "mode"}
MODES = ("completion", "embedding")


# llama-server flags accepted in `runtime-flags`, and the config key each one sets.
RUNTIME_FLAGS = {
    "-c": "context-size",
    "--ctx-size": "context-size",
    "-np": "slots",
    "--parallel": "slots",
    "-ngl": "gpu-layers",
    "--gpu-layers": "gpu-layers",
    "--n-gpu-layers": "gpu-layers",
    "-sps": "similarity",
    "--slot-prompt-similarity": "similarity",
    "--draft-max": "draft-max",
    "-md": "draft-model",
    "--model-draft": "draft-model",
    "-ctk": "cache-type-k",
    "--cache-type-k": "cache-type-k",
    "-ctv": "cache-type-v",
    "--cache-type-v": "cache-type-v",
    "--lora": "lora",
    "--lora-scaled": "lora",  # two values: FILE SCALE
}


def _config_key(key: str) -> str:
    key = key.strip().lower().replace("_", "-")
    return "keep_alive" if key == "keep-alive" else key


def parse_runtime_flags(flags: Any) -> dict[str, Any]:
    """`["--ctx-size", "2048", "-np=2"]` -> `{"context-size": "2048", "slots": "2"}`."""
    if isinstance(flags, str):
        flags = flags.split()
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ValueError("'runtime-flags' must be a list of strings")
    out: dict[str, Any] = {}
    i = 0
    while i < len(flags):
        flag, eq, value = flags[i].partition("=")
        if flag not in RUNTIME_FLAGS:
            known = ", ".join(sorted(RUNTIME_FLAGS))
            raise ValueError(f"unsupported runtime flag {flag!r} (supported: {known})")
        if not eq:
            if i + 1 >= len(flags):
                raise ValueError(f"runtime flag {flag!r} needs a value")
            i += 1
            value = flags[i]
        if flag == "--lora-scaled":  # llama-server's `--lora-scaled FNAME SCALE`
            if i + 1 >= len(flags):
                raise ValueError("runtime flag '--lora-scaled' needs a file and a scale")
            i += 1
            value = f"{value}:{flags[i]}"
        if RUNTIME_FLAGS[flag] == "lora":  # repeatable: one adapter each
            out.setdefault("lora", []).append(value)
        else:
            out[RUNTIME_FLAGS[flag]] = value
        i += 1
    return out


# Adapters one model may load (each is a set of extra weights in memory).
MAX_LORA_ADAPTERS = 16


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """`FILE[:SCALE]` -> (FILE, SCALE); a suffix that is no number belongs to the name (a
    model tag such as `ai/adapter:latest`). ValueError for a non-finite scale."""
    name, _, suffix = spec.rpartition(":")
    try:
        scale = float(suffix) if name else None
    except ValueError:
        scale = None
    if scale is None:
        return spec, 1.0
    if not math.isfinite(scale):
        raise ValueError(f"LoRA scale of {name!r} must be a finite number")
    return name, scale


def _lora_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise ValueError
    if len(items) > MAX_LORA_ADAPTERS:
        raise ValueError
    for item in items:
        parse_lora_spec(item.strip())
    return [item.strip() for item in items]


def _coerce(key: str, value: Any) -> Any:
    kind = CONFIG_KEYS[key]
    if key == "lora":
        return _lora_list(value)
    if key == "gpu-layers":
        return parse_gpu_layers(value)
    if key == "keep_alive":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError
        parse_duration(value)
        return str(value)
    if kind is int:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
        return number
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if not isinstance(value, str):
        raise ValueError
    return value


def validate_config(changes: dict[str, Any]) -> dict[str, Any]:
    """Check `_configure` values (DMR spelling; `runtime-flags` translated); raises
    ValueError naming the bad key, an unknown one included; None clears a setting."""
    items = {_config_key(k): v for k, v in changes.items()}
    unknown = sorted(k for k in items if k not in CONFIG_KEYS and k not in REQUEST_KEYS)
    if unknown:
        known = ", ".join(sorted(CONFIG_KEYS) + ["runtime-flags"])
        raise ValueError(f"unknown setting {unknown[0]!r} (settings: {known})")
    if items.get("mode") not in (None, *MODES):
        raise ValueError(f"'mode' must be one of {', '.join(MODES)}, got {items['mode']!r}")
    merged: dict[str, Any] = {}
    if items.get("runtime-flags") is not None:
        merged.update(parse_runtime_flags(items["runtime-flags"]))
    merged.update({k: v for k, v in items.items() if k in CONFIG_KEYS})
    clean: dict[str, Any] = {}
    for key, value in merged.items():
        if value is None:
            clean[key] = None
            continue
        try:
            clean[key] = _coerce(key, value)
        except (TypeError, ValueError, OverflowError):  # int(inf) overflows
            kind = "a duration like 30s, 5m or -1" if key == "keep_alive" else None
            kind = kind or ("'all' or a layer count" if key == "gpu-layers" else None)
            if key == "lora":
                kind = f"a list of at most {MAX_LORA_ADAPTERS} 'FILE[:SCALE]' strings"
            kind = kind or f"of type {CONFIG_KEYS[key].__name__}"
            raise ValueError(f"'{key}' must be {kind}, got {value!r}") from None
    if clean.get("tool-format") is not None and clean["tool-format"] not in FORMATS:
        raise ValueError(f"'tool-format' must be one of {', '.join(sorted(FORMATS))}")
    for key in ("cache-type-k", "cache-type-v"):
        if clean.get(key) is not None:
            clean[key] = clean[key].lower()
            if clean[key] not in KV_CACHE_TYPES:
                raise ValueError(f"'{key}' must be one of {', '.join(KV_CACHE_TYPES)}")
    if clean.get("reasoning-format") not in (None, "deepseek", "none"):
        raise ValueError("'reasoning-format' must be 'deepseek' or 'none'")
    size = clean.get("context-size")
    if size is not None and not 64 <= size <= 1 << 20:
        raise ValueError("'context-size' must be between 64 and 1048576")
    if clean.get("slots") is not None and not 1 <= clean["slots"] <= 256:
        raise ValueError("'slots' must be between 1 and 256")
    if clean.get("similarity") is not None and not 0.0 <= clean["similarity"] <= 1.0:
        raise ValueError("'similarity' must be between 0 and 1")
    if clean.get("draft-max") is not None and not 0 <= clean["draft-max"] <= 256:
        raise ValueError("'draft-max' must be between 0 and 256")
    return clean


def chat_template(
    architecture: str, gguf_template: str | None, config: dict[str, Any], template_file: Any
) -> ChatTemplate:
    """The chat template a model runs with: the `_configure` override, else the server's
    `--chat-template-file`, else the GGUF's own (or the architecture's built-in), with the
    configured tool-call and reasoning formats."""
    override = config.get("chat-template")
    if override is None and template_file is not None:
        override = Path(template_file).read_text(encoding="utf-8")
    template = template_for(
        architecture, gguf_template, override, tool_format=config.get("tool-format")
    )
    template.reasoning_format = config.get("reasoning-format") or "deepseek"
    return template


def draft_model_file(store: Any, name: str) -> str:
    """The GGUF file of draft model `name`: a path to a .gguf file, or a model in the store.
    Raises ValueError when neither (it may touch the disk: call it off the event loop)."""
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return str(path)
    try:
        return str(store.get(name).path)
    except Exception as exc:  # not found, ambiguous, file missing: all one answer here
        raise ValueError(
            f"draft model {name!r} is neither a GGUF file nor a model ({exc})"
        ) from None


def lora_adapters(
    store: Any, specs: list[str], architecture: str, server_wide: bool
) -> tuple[tuple[str, float], ...]:
    """(file, scale) of each `FILE[:SCALE]` adapter for a model of `architecture`: a path to
    a .gguf file or a model in the store. Server-wide adapters (`--lora`) apply to the
    models of their architecture only; a per-model one for another architecture is a
    ValueError, as is a name that is neither (this touches the disk: not on the loop)."""
    out: list[tuple[str, float]] = []
    for spec in specs:
        name, scale = parse_lora_spec(spec)
        path = Path(name).expanduser()
        if not (path.suffix.lower() == ".gguf" and path.is_file()):
            try:
                path = Path(store.get(name).path)
            except Exception as exc:
                raise ValueError(
                    f"LoRA adapter {name!r} is neither a GGUF file nor a model ({exc})"
                ) from None
        made_for = adapter_architecture(path)
        if made_for != architecture:
            if server_wide:
                continue
            raise ValueError(
                f"LoRA adapter {name!r} was made for architecture {made_for!r}, not "
                f"{architecture!r}"
            )
        out.append((str(path), scale))
    return tuple(out)
