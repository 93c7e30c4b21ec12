"""What the command-line modules share: Settings flags (`add_setting`, `settings_from`), the
parent parser every command takes (`common_parser`), the serve flags (`SERVE_FLAGS`, for
`runner serve` and `runner cluster serve`, made from every Settings field) and the model store
the flags name (`open_store`).

Settings flags are declared with `add_setting`, and only flags the user actually typed reach
`Settings(...)` (argparse default=SUPPRESS), so `RUNNER_*` env vars keep working beneath them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from runner.config import (
    Settings,
    format_size,
    parse_cache_type,
    parse_duration,
    parse_gpu_layers,
    parse_size,
)

Registrar = Callable[[Any], None]  # receives the subparsers action
Handler = Callable[[argparse.Namespace], int]

_SETTING_DESTS: set[str] = set()


def add_setting(parser: argparse.ArgumentParser, field: str, **kwargs: Any) -> None:
    """Add `--field-name` for Settings field `field`, documenting its env var and default."""
    info = Settings.model_fields[field]
    env = "RUNNER_" + field.upper()
    default = _show_default(info)
    extra = f"[env {env}; default {default}]" if default else f"[env {env}]"
    text = f"{kwargs.get('help') or info.description or ''} {extra}".strip()
    kwargs["help"] = text.replace("%", "%%")  # argparse expands %(default)s and the like
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
    add_setting(parent, "models_dir", metavar="DIR")
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


# ----- the serve flags, generated from Settings ------------------------------------------------
#
# Every Settings field is a serve flag (as vLLM makes its flags from its config classes): its
# name gives the flag, its description the help, its type how it reads. A new field is thus a
# flag and an env var at once. `--models-dir` is every command's (`common_parser`); a secret
# marked `env_only` has no flag, which any user could read in `ps`.

_UNIT_METAVARS: dict[Callable[[Any], Any], str] = {
    parse_size: "SIZE",
    parse_duration: "DUR",
    parse_gpu_layers: "N|all",
    parse_cache_type: "TYPE",
}


def _plain_type(info: FieldInfo) -> tuple[Any, set[Any]]:
    """The field's type without `| None` and `Annotated`, and the value parsers on it."""
    kind = info.annotation
    parsers = {getattr(m, "func", None) for m in info.metadata}
    if get_origin(kind) in (Union, UnionType):
        kind = next(a for a in get_args(kind) if a is not type(None))
    if get_origin(kind) is Annotated:
        kind, *metadata = get_args(kind)
        parsers |= {getattr(m, "func", None) for m in metadata}
    return kind, parsers


def flag_options(field: str, info: FieldInfo) -> dict[str, Any]:
    """argparse options for a field: a --x/--no-x switch for a bool, choices for a Literal,
    a repeatable flag (each value may also be `a,b`) for a list, else a metavar naming what
    to give (the unit of sizes and durations)."""
    kind, parsers = _plain_type(info)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(kind) is Literal:
        return {"choices": get_args(kind)}
    if get_origin(kind) is list:
        return {"action": "append", "metavar": "A[,B]"}
    unit = next((_UNIT_METAVARS[p] for p in parsers if p in _UNIT_METAVARS), None)
    if unit:
        return {"metavar": unit}
    if kind is Path:
        return {"metavar": "DIR" if field.endswith("_dir") else "FILE"}
    if kind is int:
        return {"metavar": "N"}
    if kind is float:
        return {"metavar": "F"}
    return {"metavar": field.rsplit("_", 1)[-1].upper()}


def env_only(info: FieldInfo) -> bool:
    return isinstance(info.json_schema_extra, dict) and bool(info.json_schema_extra.get("env_only"))


SERVE_FLAGS: list[tuple[str, dict[str, Any]]] = [
    (field, flag_options(field, info))
    for field, info in Settings.model_fields.items()
    if field != "models_dir" and not env_only(info)
]
