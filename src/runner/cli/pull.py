"""`runner models pull | push | package`: move models between the store and registries.

Registered under `runner models` by `cli.main.add_models`; progress is a tqdm bar per blob on
stderr (hidden when stderr is not a terminal).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from runner.cli.common import add_setting, settings_from

if TYPE_CHECKING:
    from runner.config import Settings
    from runner.store import ModelStore


def _store_and_settings(args: argparse.Namespace) -> tuple[ModelStore, Settings]:
    """The store and the settings (registry credentials, address policy) the flags name."""
    from runner.store import ModelStore

    settings = settings_from(args)
    return ModelStore(settings.models_dir), settings


class _Bars:
    """One byte bar per digest, driven by pull/push progress callbacks."""

    def __init__(self) -> None:
        self._bars: dict[str, tqdm] = {}

    def update(self, key: str, done: int, total: int) -> None:
        bar = self._bars.get(key)
        if bar is None:
            bar = tqdm(
                total=total or None, desc=key, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None, leave=True,
            )  # fmt: skip
            self._bars[key] = bar
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def cmd_pull(args: argparse.Namespace) -> int:
    from runner.store.pull import PullProgress, pull

    bars = _Bars()

    def progress(event: PullProgress) -> None:
        if event.digest:
            bars.update(event.digest.removeprefix("sha256:")[:12], event.completed, event.total)

    store, settings = _store_and_settings(args)
    try:
        result = pull(
            store, args.name, progress, tag=args.tag, sha256=args.sha256, settings=settings
        )
    finally:
        bars.close()
    state = "downloaded" if result.downloaded else "up to date, nothing downloaded"
    print(f"pulled {result.name} (sha256:{result.entry.short_id}; {state})")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from runner.store.push import push

    bars = _Bars()
    store, settings = _store_and_settings(args)
    try:
        pushed = push(
            store,
            args.name,
            args.target,
            lambda digest, done, total: bars.update(digest[7:19], done, total),
            licenses=[Path(p) for p in args.license],
            settings=settings,
        )
    finally:
        bars.close()
    print(f"pushed {pushed.reference} ({pushed.digest})")
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from runner.store import TqdmProgress
    from runner.store.push import package, push

    store, settings = _store_and_settings(args)
    entry = package(
        store,
        Path(args.gguf),
        args.tag,
        chat_template=Path(args.chat_template) if args.chat_template else None,
        context_size=args.context_size,
        progress=TqdmProgress("import"),
    )
    print(f"packaged {args.gguf} as {entry.tags[0] if entry.tags else entry.short_id}")
    if args.push:
        licenses = [Path(p) for p in args.license]
        pushed = push(store, entry.id, args.tag, licenses=licenses, settings=settings)
        print(f"pushed {pushed.reference} ({pushed.digest})")
    return 0


def _network_flags(parser: argparse.ArgumentParser) -> None:
    """Where pulls and pushes may connect, and whose credentials go where (the password
    only from the environment, never a flag other users could read in `ps`)."""
    add_setting(parser, "registry_host", metavar="HOST[:PORT]")
    add_setting(parser, "insecure_registries", metavar="HOST[:PORT],...")
    add_setting(parser, "allow_private_pulls", action="store_true")
    add_setting(parser, "partial_downloads_max", metavar="SIZE")


def add_pull_commands(msub: Any, common: Callable[[], argparse.ArgumentParser]) -> None:
    """Add pull/push/package to the `runner models` subparsers `msub`."""
    p = msub.add_parser(
        "pull",
        parents=[common()],
        help="pull a model from a registry, Hugging Face or a URL",
        description="NAME: ai/gemma3[:TAG], REGISTRY/REPO[:TAG], REPO@sha256:DIGEST, "
        "hf.co/ORG/REPO[:QUANT] or an http(s) URL of a .gguf (optionally #sha256=HEX).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--tag", help="local name to save it as (default: from NAME)")
    p.add_argument("--sha256", help="expected sha256 of a file pulled by URL")
    _network_flags(p)
    p.set_defaults(func=cmd_pull)

    p = msub.add_parser("push", parents=[common()], help="push a model to an OCI registry")
    p.add_argument("name", metavar="NAME", help="model in the store")
    p.add_argument("target", metavar="REF", nargs="?", help="registry name (default: NAME)")
    p.add_argument("--license", action="append", default=[], help="license file to attach")
    _network_flags(p)
    p.set_defaults(func=cmd_push)

    p = msub.add_parser(
        "package", parents=[common()], help="package a GGUF file as a model artifact"
    )
    p.add_argument("gguf", metavar="FILE.gguf")
    p.add_argument("--tag", required=True, help="name, e.g. registry.example.com/team/model:q4")
    p.add_argument("--push", action="store_true", help="also push it to the registry")
    p.add_argument("--chat-template", metavar="FILE", help="Jinja chat template to include")
    p.add_argument("--context-size", type=int, metavar="TOKENS", help="default context size")
    p.add_argument("--license", action="append", default=[], help="license file (with --push)")
    _network_flags(p)
    p.set_defaults(func=cmd_package)
