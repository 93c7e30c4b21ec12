"""One `Settings` object for the whole server: CLI flag > `RUNNER_*` env var > default."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# KV cache element types llama.cpp accepts (llama-server's `--cache-type-k/-v` list). The
# quantized ones need flash attention for V and a head size that is a multiple of 32.
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


def parse_duration(value: Any) -> float:
    """Seconds from `30s`, `5m`, `1h`, `250ms`, a bare number (seconds) or `-1` (never).

    Any negative value means "never" and is returned as -1.
    """
    if isinstance(value, int | float):
        if value != value:  # NaN
            raise ValueError(f"invalid duration {value!r}")
        seconds = float(value) if abs(value) < 1e300 else math.inf * (1 if value > 0 else -1)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h or -1 for never")
        seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]
    if math.isnan(seconds):
        raise ValueError(f"invalid duration {value!r}")
    return -1.0 if seconds < 0 or math.isinf(seconds) else seconds


def parse_size(value: Any) -> int:
    """Bytes from `512MiB`, `4G`, `100k` or a bare number of bytes (1024-based units)."""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"invalid size {value!r}: use e.g. 512MiB, 4GiB or a byte count")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_size(size: float, decimals: int = 2) -> str:
    """The inverse of `parse_size` for people: `512 B`, `1.50 MiB`, `2.1 GiB` (1024-based)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.{decimals}f} {unit}"
        size /= 1024
    return f"{size:.{decimals}f} TiB"


def parse_gpu_layers(value: Any) -> int:
    """`all` or `-1` -> -1 (every layer), else a non-negative layer count."""
    if isinstance(value, str) and value.strip().lower() in {"all", "max", "auto"}:
        return -1
    layers = int(value)
    if layers < -1:
        raise ValueError("gpu layers must be 'all', -1, 0 or a positive count")
    return layers


def parse_cache_type(value: Any) -> str:
    """A KV cache type name (`q8_0`, `F16`...) in llama.cpp's lower-case spelling."""
    name = str(value).strip().lower()
    if name not in KV_CACHE_TYPES:
        raise ValueError(f"invalid KV cache type {value!r}: use one of {', '.join(KV_CACHE_TYPES)}")
    return name


def _split_list(value: Any) -> Any:
    """`a,b` -> [a, b]; a list (a repeated flag) has each of its items split the same way."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        return [part for item in value for part in _split_list(item)]
    return value


def default_home() -> Path:
    """runner's own folder under the user's cache dir (XDG_CACHE_HOME respected)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runner"


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
GpuLayers = Annotated[int, BeforeValidator(parse_gpu_layers)]
CacheType = Annotated[str, BeforeValidator(parse_cache_type)]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


class Settings(BaseSettings):
    """Every knob of the server. Field `foo_bar` is flag `--foo-bar` and env `RUNNER_FOO_BAR`."""

    model_config = SettingsConfigDict(env_prefix="RUNNER_", extra="ignore")

    # store
    models_dir: Path = Field(
        default_factory=lambda: default_home() / "models", description="model store directory"
    )

    # pulls and pushes: registries, Hugging Face, URLs
    registry_host: str = Field(
        "docker.io",
        description="the one registry RUNNER_REGISTRY_USERNAME / RUNNER_REGISTRY_PASSWORD are "
        "sent to (host or host:port; Docker Hub by default, as `docker login` without a server)",
    )
    registry_username: str | None = Field(
        None, description="user name for --registry-host (other registries: ~/.docker/config.json)"
    )
    registry_password: str | None = Field(
        None,
        repr=False,
        description="password or token for --registry-host (environment only: a flag would "
        "show in `ps`)",
        json_schema_extra={"env_only": True},
    )
    insecure_registries: CommaList = Field(
        default_factory=list,
        description="registries (host or host:port, comma-separated) spoken to over plain "
        "http, and the only ones allowed on loopback, link-local or private addresses",
    )
    allow_private_pulls: bool = Field(
        False,
        description="let URL and Hugging Face pulls reach loopback, link-local, private and "
        "multicast addresses (a model server on your own network)",
    )
    partial_downloads_max: ByteSize = Field(
        8 << 30,
        ge=0,
        description="bytes of interrupted downloads kept in the store to resume (oldest "
        "deleted first beyond it; none is kept longer than a day)",
    )

    # server
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(12434, ge=0, le=65535, description="TCP port")
    model: CommaList = Field(
        default_factory=list, description="models to preload (repeat the flag, or a,b)"
    )
    api_key: str | None = Field(None, description="require this bearer token")
    cors_origins: CommaList = Field(
        default_factory=list,
        description="browser origins allowed to call the API (comma-separated)",
        validation_alias=AliasChoices("cors_origins", "RUNNER_ORIGINS", "RUNNER_CORS_ORIGINS"),
    )
    max_body_bytes: ByteSize = Field(10 << 20, description="largest request body")
    read_timeout: Duration = Field(
        30.0, gt=0, description="seconds a client has to send a whole request"
    )
    keep_alive_timeout: Duration = Field(
        30.0, gt=0, description="close idle keep-alive connections after"
    )
    max_connections: int = Field(1000, ge=1, description="open connections before 503")
    allow_import: CommaList = Field(
        default_factory=list,
        description="directories POST /models/create may import from (default: home and cwd)",
    )
    log_level: str = Field("info", description="debug, info, warning, error")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines for people (text) or machines (json, one object a line)"
    )
    log_interval: Duration = Field(
        10.0,
        description="while a model is busy, log its running and waiting requests, tokens/s "
        "and cache hit rate this often (0: never)",
    )
    log_text: bool = Field(
        False, description="debug: log each request's prompt and answer text (users' data)"
    )
    ui: bool = Field(True, description="serve the web page at /")

    # engine
    slots: int = Field(4, ge=1, le=256, description="parallel sequences per model")
    ctx_size: int = Field(4096, ge=64, description="context tokens per slot")
    similarity: float = Field(
        0.5, ge=0.0, le=1.0, description="least prompt-prefix similarity to reuse a slot"
    )
    gpu_layers: GpuLayers = Field(-1, description="layers to offload to the GPU (all or a count)")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: llama.cpp's)")
    batch_size: int = Field(2048, ge=32, description="logical batch size")
    ubatch_size: int = Field(512, ge=32, description="physical batch size")
    queue_size: int = Field(64, ge=0, description="requests waiting for a slot before 503")
    max_tokens_default: int = Field(
        -1, ge=-1, description="tokens to generate when a request sets no limit (-1: no limit)"
    )
    prefill_block: int = Field(
        0,
        ge=0,
        le=4096,
        description="prompt tokens per decode call, and the unit of prefix reuse "
        "(0: 16 on CPU, 128 with GPU offload)",
    )
    max_embed_tokens: int = Field(65536, ge=1, description="tokens per embeddings request")
    max_grammar_bytes: ByteSize = Field(
        128 << 10, ge=1, description="largest grammar (GBNF, also from a JSON schema) accepted"
    )
    grammar_step_budget: Duration = Field(
        0.5,
        gt=0,
        description="CPU seconds of grammar work one constrained request may take per token "
        "before it fails (an ambiguous or huge grammar)",
    )
    cache_type_k: CacheType = Field(
        "f16",
        description="KV cache type of keys: " + ", ".join(KV_CACHE_TYPES) + " (q8_0 halves "
        "the memory of every slot and cached prefix)",
    )
    cache_type_v: CacheType = Field(
        "f16",
        description="KV cache type of values (as --cache-type-k; a quantized one turns on "
        "flash attention)",
    )
    state_checkpoints: int = Field(
        8,
        ge=0,
        le=64,
        description="recurrent-state snapshots per slot of hybrid and recurrent models, to "
        "reuse an earlier prefix (each one is the size of the model's recurrent state)",
    )
    draft_max: int = Field(
        48,
        ge=0,
        le=256,
        description="speculative decoding: most guessed tokens verified per slot and step "
        "(prompt lookup, adaptive; 0: off)",
    )
    draft_model: str | None = Field(
        None,
        description="speculative decoding with a draft model (a model name or a GGUF path of "
        "the same vocabulary), where prompt lookup has no guess",
    )
    chat_template_file: Path | None = Field(None, description="Jinja chat template override")
    lora: CommaList = Field(
        default_factory=list,
        description="LoRA adapter FILE[:SCALE] (a GGUF path or model name; repeat the flag) "
        "loaded with every model of the adapter's architecture (per model: _configure's lora)",
    )

    # lifecycle
    idle_timeout: Duration = Field(
        300.0, description="unload a model idle this long (30s, 5m; -1: never)"
    )
    max_models: int | None = Field(None, ge=1, description="most models loaded at once")
    memory_budget: ByteSize | None = Field(None, description="memory for loaded models (8GiB)")
    shutdown_grace: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = Field(
        30.0, description="how long streams may run on after SIGTERM before they are ended"
    )

    # prompt cache tiers
    cache_ram: ByteSize = Field(1 << 30, description="prompt-cache RAM tier size")
    cache_disk: ByteSize = Field(8 << 30, description="prompt-cache disk tier size")
    cache_disk_reserve: ByteSize | None = Field(
        None,
        description="free space the disk tier leaves on its filesystem "
        "(default: max(1 GiB, 10% of the filesystem))",
    )
    cache_dir: Path | None = Field(None, description="prompt-cache disk tier directory")
    slot_files_disk: ByteSize = Field(
        4 << 30, ge=0, description="all saved slot files together; the oldest go past it"
    )
    persist: bool = Field(True, description="keep the prompt cache on disk across restarts")
    cache_pins: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of each prompt-cache tier that pinned prefixes (cache breakpoints, "
        "24h retention) may hold; past it in RAM they move to disk, past it on disk the least "
        "recently used pin of the model yields",
    )
    cache_pin_ttl: Duration = Field(
        300.0,
        gt=0,
        description="lifetime of a cache breakpoint that names none (Anthropic's default: 5m)",
    )

    # stored OpenAI Responses (previous_response_id); kept in memory with --no-persist
    responses_dir: Path | None = Field(None, description="stored Responses API responses")
    responses_disk: ByteSize = Field(256 << 20, description="size bound of stored responses")
    responses_ttl: Duration = Field(30 * 86400.0, description="age bound of stored responses")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        return _split_list(value)

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or (default_home() / "kv-cache")

    @property
    def resolved_responses_dir(self) -> Path:
        return self.responses_dir or (default_home() / "responses")
