"""`runner cluster serve`: runner's API served by N replicas on a Ray cluster.

Only argparse here: Ray is imported when the command runs, so `runner serve` never pays for it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from runner.cli.common import SERVE_FLAGS, add_setting, common_parser, settings_from


def cmd_cluster_serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        from ray import serve

        from .deploy import ClusterOptions, start
    except ImportError as exc:
        print(f"error: Ray Serve is not installed ({exc}); pip install 'runner[cluster]'", file=sys.stderr)  # fmt: skip
        return 1
    options = ClusterOptions(
        replicas=args.replicas,
        router=args.router,
        block=args.block,
        cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica,
        replica_resources=dict(args.replica_resource),
        front_door_resources=dict(args.front_door_resource),
    )
    start(settings, options, address=args.address, num_cpus=args.num_cpus)
    print(
        f"runner cluster: {options.replicas} replicas ({options.router} router) on "
        f"http://{settings.host}:{settings.port}",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    """Fill in the `cluster` parser (called by runner.cli's registrar)."""
    csub = p.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    s = csub.add_parser("serve", parents=[common_parser()], help="deploy replicas behind one URL")
    for field, kwargs in SERVE_FLAGS:
        add_setting(s, field, **kwargs)
    s.add_argument("--replicas", type=int, default=2, metavar="N", help="runner replicas")
    s.add_argument(
        "--router",
        choices=["runner", "pow2", "prefix"],
        default="runner",
        help="runner: follow the prompt cache; pow2: Ray's default; prefix: Ray's "
        "PrefixCacheAffinityRouter",
    )
    s.add_argument("--address", metavar="ADDR", help="Ray cluster to join (default: start one)")
    s.add_argument("--num-cpus", type=float, metavar="N", help="CPUs of a cluster started here")
    s.add_argument("--block", type=int, default=16, metavar="TOKENS", help="routing block size")
    s.add_argument("--cpus-per-replica", type=float, metavar="N", help="default: --threads or 1")
    s.add_argument("--gpus-per-replica", type=float, metavar="N", help="default: 1 if offloading")
    s.add_argument(
        "--replica-resource",
        type=_resource,
        action="append",
        default=[],
        metavar="NAME=N",
        help="a custom Ray resource each replica needs (repeatable): keeps replicas on the "
        "nodes that offer it (ray start --resources)",
    )
    s.add_argument(
        "--front-door-resource",
        type=_resource,
        action="append",
        default=[],
        metavar="NAME=N",
        help="a custom Ray resource the front door needs (repeatable), e.g. one only the head "
        "node offers, so that it never shares a node with a replica",
    )
    s.set_defaults(func=cmd_cluster_serve)


def _resource(text: str) -> tuple[str, float]:
    name, sep, amount = text.partition("=")
    try:
        value = float(amount) if sep else 1.0
    except ValueError:
        value = -1.0
    if not name or value <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME=N with N > 0, got {text!r}")
    return name, value
