"""What the command-line modules share: Settings flags (`add_setting`, `settings_from`), the
parent parser every command takes (`common_parser`), the serve flags (`SERVE_FLAGS`, for
`runner serve` and `runner cluster serve`) and the model store the flags name (`open_store`).

Settings flags are declared with `add_setting`, and only flags the user actually typed reach
`Settings(...)` (argparse default=SUPPRESS), so `RUNNER_*` env vars keep working beneath them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from runner.config import Settings, format_size, parse_duration, parse_size

Registrar = Callable[[Any], None]  # receives the subparsers action
Handler = Callable[[argparse.Namespace], int]

_SETTING_DESTS: set[str] = set()


def add_setting(parser: argparse.ArgumentParser, field: str, **kwargs: Any) -> None:
    """Add `--field-name` for Settings field `field`, documenting its env var and default."""
    info = Settings.model_fields[field]
    env = "RUNNER_" + field.upper()
    default = _show_default(info)
    extra = f"[env {env}; default {default}]" if default else f"[env {env}]"
    kwargs["help"] = f"{kwargs.get('help') or info.description or ''} {extra}".strip()
    flag = "--" + field.replace("_", "-")
    parser.add_argument(flag, dest=field, default=argparse.SUPPRESS, **kwargs)
    _SETTING_DESTS.add(field)


class UsageError(Exception):
    """Bad flag or env value: reported as one line per problem, exit code 2."""


def _show_default(info: FieldInfo) -> str:
    default = info.get_default(call_default_factory=True)
    if default is None or default == []:
        return ""
    parsers = {getattr(m, "func", None) for m in info.metadata}
    if parse_size in parsers:
        return format_size(default, 1).replace(".0 ", "").replace(" ", "")
    if parse_duration in parsers:
        return f"{default:g}s"
    return str(default)


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the flags actually given (env vars and defaults fill in the rest)."""
    given = {k: v for k, v in vars(args).items() if k in _SETTING_DESTS}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise UsageError(_validation_message(exc)) from exc


def common_parser() -> argparse.ArgumentParser:
    # Shared by the top-level parser and every leaf so --models-dir works in any position.
    parent = argparse.ArgumentParser(add_help=False)
    add_setting(parent, "models_dir", metavar="DIR", help="model store directory")
    return parent


def open_store(args: argparse.Namespace) -> Any:
    """The model store of `--models-dir` / `RUNNER_MODELS_DIR`."""
    from runner.store import ModelStore

    return ModelStore(settings_from(args).models_dir)


def _validation_message(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        lines.append(
            f"error: invalid --{field.replace('_', '-')} / RUNNER_{field.upper()}: {err['msg']}"
        )
    return "\n".join(lines)


SERVE_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("host", {"metavar": "HOST", "help": "address to listen on"}),
    ("port", {"metavar": "PORT", "help": "TCP port"}),
    ("model", {"action": "append", "metavar": "NAME", "help": "preload a model (repeatable)"}),
    ("slots", {"metavar": "N", "help": "parallel sequences per model"}),
    ("ctx_size", {"metavar": "TOKENS", "help": "context tokens per slot"}),
    ("similarity", {"metavar": "F", "help": "min prompt-prefix similarity to reuse a slot"}),
    ("gpu_layers", {"metavar": "N|all", "help": "layers to offload to the GPU"}),
    ("threads", {"metavar": "N", "help": "CPU threads (default: llama.cpp's choice)"}),
    ("batch_size", {"metavar": "N", "help": "logical batch size"}),
    ("ubatch_size", {"metavar": "N", "help": "physical batch size"}),
    ("queue_size", {"metavar": "N", "help": "requests waiting for a slot before 503"}),
    ("draft_max", {"metavar": "N", "help": "speculative tokens per step (0: no speculation)"}),
    ("draft_model", {"metavar": "NAME|FILE", "help": "draft model for speculative decoding"}),
    ("max_tokens_default", {"metavar": "N", "help": "output limit of requests without one"}),
    (
        "prefill_block",
        {"metavar": "N", "help": "prompt tokens per decode call and unit of prefix reuse"},
    ),
    ("max_embed_tokens", {"metavar": "N", "help": "tokens one embeddings request may hold"}),
    ("max_grammar_bytes", {"metavar": "SIZE", "help": "largest grammar accepted"}),
    ("grammar_step_budget", {"metavar": "DUR", "help": "grammar CPU time per token (0.5s)"}),
    ("chat_template_file", {"metavar": "FILE", "help": "Jinja chat template override"}),
    ("idle_timeout", {"metavar": "DUR", "help": "unload idle models after (30s, 5m, -1=never)"}),
    ("max_models", {"metavar": "N", "help": "max models loaded at once"}),
    ("memory_budget", {"metavar": "SIZE", "help": "memory for loaded models (e.g. 8GiB)"}),
    ("shutdown_grace", {"metavar": "DUR", "help": "on SIGTERM, let streams run this long"}),
    ("cache_ram", {"metavar": "SIZE", "help": "prompt-cache RAM tier size"}),
    ("cache_disk", {"metavar": "SIZE", "help": "prompt-cache disk tier size"}),
    ("cache_disk_reserve", {"metavar": "SIZE", "help": "free space the disk tier leaves"}),
    ("cache_dir", {"metavar": "DIR", "help": "prompt-cache disk tier directory"}),
    ("persist", {"action": argparse.BooleanOptionalAction, "help": "persist the prompt cache"}),
    ("responses_dir", {"metavar": "DIR", "help": "stored Responses API responses"}),
    ("responses_disk", {"metavar": "SIZE", "help": "size bound of stored responses"}),
    ("responses_ttl", {"metavar": "DURATION", "help": "age bound of stored responses"}),
    ("api_key", {"metavar": "KEY", "help": "require this bearer token"}),
    ("cors_origins", {"metavar": "LIST", "help": "comma-separated allowed CORS origins"}),
    ("max_body_bytes", {"metavar": "SIZE", "help": "max request body size"}),
    ("read_timeout", {"metavar": "DUR", "help": "time to send a whole request"}),
    ("keep_alive_timeout", {"metavar": "DUR", "help": "close idle keep-alive connections after"}),
    ("max_connections", {"metavar": "N", "help": "connections before 503"}),
    ("allow_import", {"action": "append", "metavar": "DIR", "help": "models/create source dir"}),
    ("log_level", {"metavar": "LEVEL", "help": "debug, info, warning, error"}),
    ("ui", {"action": argparse.BooleanOptionalAction, "help": "serve the web page at /"}),
]
