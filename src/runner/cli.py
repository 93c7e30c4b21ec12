"""Command line: `runner serve`, `runner models list|add|rm|show`.

Each subcommand has a registrar function that adds its parser and sets `func` (the handler
returning an exit code); `build_parser` calls them in `--help` order: this module's own, then
the client commands of `cli_client` (status, ps, run), which knows nothing of this module.

Settings flags are declared with `add_setting`, and only flags the user actually typed reach
`Settings(...)` (argparse default=SUPPRESS), so `RUNNER_*` env vars keep working beneath them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from runner import cli_client
from runner.cli_format import table
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


def _common() -> argparse.ArgumentParser:
    # Shared by the top-level parser and every leaf so --models-dir works in any position.
    parent = argparse.ArgumentParser(add_help=False)
    add_setting(parent, "models_dir", metavar="DIR", help="model store directory")
    return parent


def _open_store(args: argparse.Namespace) -> Any:
    from runner.store import ModelStore

    return ModelStore(settings_from(args).models_dir)


# ----- serve -------------------------------------------------------------------------------

_SERVE_FLAGS: list[tuple[str, dict[str, Any]]] = [
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


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        from runner.api.server import serve
    except ImportError as exc:
        print(f"error: the API server is not available ({exc})", file=sys.stderr)
        return 1
    result = serve(settings)
    return result if isinstance(result, int) else 0


def add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", parents=[_common()], help="run the OpenAI-compatible server")
    for field, kwargs in _SERVE_FLAGS:
        add_setting(p, field, **kwargs)
    p.set_defaults(func=cmd_serve)


# ----- models ------------------------------------------------------------------------------


def cmd_models_list(args: argparse.Namespace) -> int:
    from runner.store import format_params

    entries = _open_store(args).list()
    if args.json:
        dumped = [
            e.model_dump(mode="json", exclude={"metadata": {"chat_template"}}) for e in entries
        ]
        print(json.dumps(dumped, indent=2))
        return 0
    rows = [["NAME", "ID", "ARCH", "PARAMS", "QUANT", "CONTEXT", "SIZE"]]
    for e in entries:
        m = e.metadata
        for name in e.tags or ["<none>"]:
            rows.append(
                [
                    name,
                    e.short_id,
                    m.architecture,
                    format_params(m.parameter_count),
                    m.quantization,
                    str(m.context_length or "-"),
                    format_size(e.size, 1),
                ]
            )
    print(table(rows))
    return 0


def cmd_models_add(args: argparse.Namespace) -> int:
    from runner.store import TqdmProgress

    store = _open_store(args)
    entry = store.add(args.name, args.path, link=not args.copy, progress=TqdmProgress("import"))
    print(f"added {store.resolve(args.name)} (sha256:{entry.short_id})")
    return 0


def cmd_models_rm(args: argparse.Namespace) -> int:
    store = _open_store(args)
    for name in args.names:
        removed = store.remove(name)
        for tag in removed.untagged:
            print(f"untagged: {tag}")
        if removed.deleted:
            print(f"deleted: sha256:{removed.id}")
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    store = _open_store(args)
    entry = store.get(args.name)
    data = entry.model_dump(mode="json")
    data["config"] = store.get_config(entry.id)
    print(json.dumps(data, indent=2))
    return 0


def add_models(sub: Any) -> None:
    common = _common()
    p = sub.add_parser("models", parents=[common], help="manage the local model store")
    msub = p.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    ls = msub.add_parser("list", aliases=["ls"], parents=[common], help="list models")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_models_list)

    add = msub.add_parser("add", parents=[common], help="import a local GGUF file")
    add.add_argument("name", metavar="NAME", help="name to give it, e.g. my/model:q4")
    add.add_argument("path", metavar="PATH", help="path to the .gguf file")
    add.add_argument("--copy", action="store_true", help="always copy (default: hard-link)")
    add.set_defaults(func=cmd_models_add)

    rm = msub.add_parser("rm", aliases=["remove"], parents=[common], help="remove model names")
    rm.add_argument("names", nargs="+", metavar="NAME", help="tag, or sha256:ID for all tags")
    rm.set_defaults(func=cmd_models_rm)

    show = msub.add_parser("show", aliases=["inspect"], parents=[common], help="model as JSON")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=cmd_models_show)

    from runner.cli_pull import add_pull_commands  # pull | push | package

    add_pull_commands(msub, _common)


# ----- bench -------------------------------------------------------------------------------


def add_bench(sub: Any) -> None:
    from runner.bench.cli import configure  # argparse only; workloads import lazily

    help_ = "benchmark runner or any OpenAI-compatible server"
    configure(sub.add_parser("bench", parents=[_common()], help=help_, description=help_))


def add_cluster(sub: Any) -> None:
    from runner.cluster.cli import configure  # argparse only; Ray loads when a command runs

    configure(sub.add_parser("cluster", parents=[_common()], help="serve on a Ray cluster"))


# ----- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner",
        parents=[_common()],
        description="Local LLM inference server embedding llama.cpp in-process.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registrars: list[Registrar] = [
        add_serve,
        add_models,
        add_bench,
        add_cluster,
        *cli_client.REGISTRARS,
    ]
    for registrar in registrars:
        registrar(sub)
    return parser


def _validation_message(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        lines.append(
            f"error: invalid --{field.replace('_', '-')} / RUNNER_{field.upper()}: {err['msg']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from runner.store import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `runner models show x | head`: the reader left; exit quietly as other tools do
        # (stdout goes to devnull so the interpreter's final flush cannot fail again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
