"""Command line: `runner serve`, `runner models list|add|rm|show`.

Each subcommand has a registrar function that adds its parser and sets `func` (the handler
returning an exit code); `build_parser` calls them in `--help` order: this module's own, then
the client commands of `cli.client` (status, ps, run), which knows nothing of this module.
Settings flags and what other command modules share with this one: `cli.common`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from runner.cli import client
from runner.cli.common import (
    SERVE_FLAGS,
    Handler,
    Registrar,
    UsageError,
    add_setting,
    common_parser,
    open_store,
    settings_from,
)
from runner.cli.format import table
from runner.config import format_size

# ----- serve -------------------------------------------------------------------------------


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
    p = sub.add_parser("serve", parents=[common_parser()], help="run the OpenAI-compatible server")
    for field, kwargs in SERVE_FLAGS:
        add_setting(p, field, **kwargs)
    p.set_defaults(func=cmd_serve)


# ----- models ------------------------------------------------------------------------------


def cmd_models_list(args: argparse.Namespace) -> int:
    from runner.store import format_params

    entries = open_store(args).list()
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

    store = open_store(args)
    entry = store.add(args.name, args.path, link=not args.copy, progress=TqdmProgress("import"))
    print(f"added {store.resolve(args.name)} (sha256:{entry.short_id})")
    return 0


def cmd_models_rm(args: argparse.Namespace) -> int:
    store = open_store(args)
    for name in args.names:
        removed = store.remove(name)
        for tag in removed.untagged:
            print(f"untagged: {tag}")
        if removed.deleted:
            print(f"deleted: sha256:{removed.id}")
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    entry = store.get(args.name)
    data = entry.model_dump(mode="json")
    data["config"] = store.get_config(args.name)  # the config belongs to the name
    print(json.dumps(data, indent=2))
    return 0


def add_models(sub: Any) -> None:
    common = common_parser()
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

    from runner.cli.pull import add_pull_commands  # pull | push | package

    add_pull_commands(msub, common_parser)


# ----- bench -------------------------------------------------------------------------------


def add_bench(sub: Any) -> None:
    from runner.bench.cli import configure  # argparse only; workloads import lazily

    help_ = "benchmark runner or any OpenAI-compatible server"
    configure(sub.add_parser("bench", parents=[common_parser()], help=help_, description=help_))


def add_cluster(sub: Any) -> None:
    from runner.cluster.cli import configure  # argparse only; Ray loads when a command runs

    configure(sub.add_parser("cluster", parents=[common_parser()], help="serve on a Ray cluster"))


# ----- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner",
        parents=[common_parser()],
        description="Local LLM inference server embedding llama.cpp in-process.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registrars: list[Registrar] = [
        add_serve,
        add_models,
        add_bench,
        add_cluster,
        *client.REGISTRARS,
    ]
    for registrar in registrars:
        registrar(sub)
    return parser


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
