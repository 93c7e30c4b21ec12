"""The engine's public vocabulary: what a request asks for and what it gets back.

Nothing here touches llama.cpp; the HTTP layer builds these and reads them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]
CacheSource = Literal["slot", "ram", "disk", "none"]


class EngineError(Exception):
    """Base of every error the engine reports to a caller (the API maps each to HTTP)."""


class PromptTooLong(EngineError):
    """The prompt does not fit in a slot's context."""


class QueueFull(EngineError):
    """Every slot is busy and the wait queue is at its bound."""


class InvalidRequest(EngineError):
    """The request asks for something the model cannot do."""


class EngineClosed(EngineError):
    """The engine is shutting down (its model is being unloaded)."""


class EngineDead(EngineError):
    """The engine thread stopped on an error; the loader replaces the engine."""


def lora_key(adapters: tuple[tuple[str, float], ...]) -> str:
    """A short stable name of configured LoRA adapters (files and scales), for cache keys."""
    text = "\n".join(f"{path}:{scale!r}" for path, scale in adapters)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EngineConfig:
    """How one model is loaded and served. Fields that change the KV layout are in `kv_key`."""

    slots: int = 4
    ctx_per_slot: int = 4096
    n_batch: int = 2048
    n_ubatch: int = 512
    threads: int | None = None
    gpu_layers: int = -1
    similarity: float = 0.5
    queue_size: int = 64
    # Separate KV streams per slot (llama-server's default). Measured here: with one unified
    # buffer, a sequence's numerics depend on where other slots' cells sit (the attention
    # kernels tile over the whole buffer), so a greedy answer could change with the cache;
    # per-slot streams keep a sequence's KV layout its own and were no slower for 1-8
    # streams on this model. Prefixes move between slots as sequence state instead.
    kv_unified: bool = False
    # Gemma 3 and other SWA models forget old positions unless the SWA cache is full size,
    # which silently breaks prefix trimming (engine-facts.md).
    swa_full: bool = True
    # Prompts are decoded in blocks of this many tokens, and cached prefixes are reused in
    # whole blocks, so an answer never depends on what was cached (engine/partition.py).
    prefill_block: int = 16
    # Prefixes shorter than this are recomputed rather than restored from RAM/disk.
    min_restore_tokens: int = 64
    # Tokens one embeddings request may hold in all its inputs together.
    max_embed_tokens: int = 65536
    # Grammars (grammar_guard.py): the largest accepted, in bytes, and the CPU seconds of
    # grammar work one request may take per token before it fails.
    max_grammar_bytes: int = 128 << 10
    grammar_step_budget: float = 0.5
    # Speculative decoding by prompt lookup (engine/speculation.py): at most this many guessed
    # tokens per slot and step (0: off). `spec_adaptive` drafts only where the measured cost
    # and acceptance say it pays; without it every guess found is verified (tests, benches).
    spec_draft_max: int = 48
    spec_adaptive: bool = True
    # A draft model's GGUF (same vocabulary): it guesses where prompt lookup has no guess.
    draft_model: str | None = None
    # KV cache element types (config.KV_CACHE_TYPES): a saved state only fits a context of
    # the same types, so they are part of `kv_key`.
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    # Recurrent-state snapshots a slot keeps to go back to an earlier prefix (hybrid and
    # recurrent models only; engine/checkpoints.py). 0: none, such prefixes are recomputed.
    state_checkpoints: int = 8
    # LoRA adapters loaded with the model, as (file, scale): what a request that names none
    # runs with. They change every KV entry, so they are part of `kv_key`.
    lora: tuple[tuple[str, float], ...] = ()
    # The engine's log line while busy: every this many seconds (0: never); and whether
    # request lines include prompt and answer text (a debug aid: prompts are users' data).
    log_interval: float = 10.0
    log_text: bool = False

    @property
    def n_ctx(self) -> int:
        return self.slots * self.ctx_per_slot

    @property
    def loaded_lora(self) -> tuple[tuple[int, float], ...]:
        """The configured adapters as a request's set (`lora.lora_set`): the one set whose
        prefixes the prompt cache keeps, since `kv_key` names it."""
        return tuple((i, float(scale)) for i, (_, scale) in enumerate(self.lora) if scale != 0)

    def kv_key(self) -> str:
        """Everything that makes a saved sequence state incompatible with another context."""
        return (
            f"ctx{self.n_ctx}-u{int(self.kv_unified)}-swa{int(self.swa_full)}-s{self.slots}"
            f"-b{self.prefill_block}-k{self.cache_type_k}-v{self.cache_type_v}"
        ) + (f"-lora{lora_key(self.lora)}" if self.lora else "")


@dataclass
class SamplingParams:
    """One request's sampler chain. Defaults follow llama-server."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None
    # A lazy grammar waits for one of these regex patterns in the output (tool calls, "auto").
    grammar_lazy: bool = False
    grammar_triggers: tuple[str, ...] = ()
    # Tokens of <think>...</think> allowed before </think> is forced (-1: no limit);
    # reasoning_open: the prompt already opened the thought.
    reasoning_budget: int = -1
    reasoning_open: bool = False
    # Report each drawn token's log-probability (and this many alternatives): None is off.
    n_probs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def uses_penalties(self) -> bool:
        return (
            self.repeat_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )


@dataclass(frozen=True)
class CacheBreakpoint:
    """A client's cache breakpoint: keep the KV of prompt tokens [0, `end`) for `ttl`
    seconds after each use (Anthropic `cache_control`, OpenAI `prompt_cache_retention`)."""

    end: int
    ttl: float


@dataclass
class GenerationRequest:
    """A prompt already tokenized, and how to continue it."""

    prompt_tokens: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    cache_prompt: bool = True
    id_slot: int = -1
    # Output special tokens as their text (tool-call markers such as [TOOL_CALLS] are special
    # tokens in some vocabularies); otherwise they render empty.
    render_special: bool = False
    # Which API asked (openai, ollama, anthropic, ...): only for the request's log line.
    dialect: str = ""
    # Prefixes to pin (the prompt is also cut at their ends: engine/partition.py), and the
    # client's cache key: a slot that last served the same key is preferred.
    breakpoints: tuple[CacheBreakpoint, ...] = ()
    cache_key: str | None = None
    # LoRA adapters as (adapter index, scale), llama-server's per-request `lora` (indices
    # not named get scale 0); None: the model's current ones (`Engine.validate` fills it).
    lora: tuple[tuple[int, float], ...] | None = None

    @property
    def marks(self) -> tuple[int, ...]:
        """Where the prompt must be cut besides the block multiples: its breakpoints."""
        return tuple(sorted({b.end for b in self.breakpoints})) if self.breakpoints else ()


@dataclass
class Timings:
    """Same fields and meaning as llama-server's `timings`, plus where the cache came from."""

    cache_n: int = 0
    prompt_n: int = 0
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    cache_source: CacheSource = "none"
    draft_n: int = 0  # speculative tokens verified
    draft_n_accepted: int = 0  # of those, kept
    # Per breakpoint (in request order): prompt tokens computed this request up to it from
    # the one before (written to the cache there); and pins that yielded to the bound.
    cache_written: tuple[int, ...] = ()
    pins_yielded: int = 0
    n_steps: int = 0  # engine steps that decoded this request's tokens
    n_ubatches: int = 0  # passes over the weights those steps made (all slots' tokens)

    def to_dict(self) -> dict[str, float | int | str]:
        def per_token(ms: float, n: int) -> float:
            return ms / n if n else 0.0

        def per_second(ms: float, n: int) -> float:
            return 1e3 * n / ms if ms > 0 else 0.0

        return {
            "cache_n": self.cache_n,
            "prompt_n": self.prompt_n,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": per_token(self.prompt_ms, self.prompt_n),
            "prompt_per_second": per_second(self.prompt_ms, self.prompt_n),
            "predicted_n": self.predicted_n,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": per_token(self.predicted_ms, self.predicted_n),
            "predicted_per_second": per_second(self.predicted_ms, self.predicted_n),
            "cache_source": self.cache_source,
            "draft_n": self.draft_n,
            "draft_n_accepted": self.draft_n_accepted,
            "pins_yielded": self.pins_yielded,
            "n_steps": self.n_steps,
            "ubatches_per_step": self.n_ubatches / self.n_steps if self.n_steps else 0.0,
        }


@dataclass(frozen=True)
class TokenLogprob:
    """A drawn token's log-probability under the model (log-softmax of its logits), and the
    most likely alternatives, best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """New output: the text that became final this step (may be empty), its token ids and,
    when asked for, their log-probabilities."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class EngineInfo:
    """What the rest of runner may know about a loaded model (fixed at load)."""

    name: str
    n_vocab: int
    n_embd: int
    gpu_layers: int
    slots: int
    ctx_per_slot: int
    load_seconds: float
    draft_model: str | None = None  # the draft model's file, when one guesses tokens


@dataclass(frozen=True)
class EmbeddingsDone:
    """The result of an embeddings request: one vector per input, and its token count."""

    vectors: list[list[float]]
    token_counts: list[int]
    timings: Timings


@dataclass(frozen=True)
class FinishEvent:
    """The last event of a request."""

    finish_reason: FinishReason
    timings: Timings
    prompt_tokens: int
    completion_tokens: int
    slot_id: int
    error: EngineError | None = None
    # The stop string that ended the output (not included in it), if one did.
    stop_word: str | None = None


Event = TokenEvent | FinishEvent
