"""`serve(settings)`: run the app under uvicorn until SIGTERM/SIGINT, then drain and exit 0.

Shutdown order: uvicorn stops accepting connections and waits for in-flight requests; streams
may run for `--shutdown-grace`, after which those still going are ended with an error event
and `[DONE]` (`core/sse.py`). Then the lifespan calls `loader.shutdown(grace)`, which lets
engines finish what they hold and frees llama.cpp.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from runner.api.app import create_app
from runner.api.core.sse import STREAM_END_MARGIN
from runner.api.http.connections import uvicorn_limits
from runner.config import Settings
from runner.logs import configure_logging

log = logging.getLogger("runner")


def _swallow(signum: int, frame: FrameType | None) -> None:
    """After a graceful shutdown uvicorn re-raises the signal it caught; land it here so
    the process exits 0 instead of dying by SIGTERM (or KeyboardInterrupt)."""


def _log_llama_build() -> None:
    """Say at start-up which llama.cpp CPU features this process runs (llama.cpp's own line)."""
    from runner import native

    build = native.describe()
    log.info(
        "llama.cpp build (CPU policy %s, key %s): %s",
        build["cpu_policy"],
        build["build_key"],
        build["system_info"],
    )
    for problem in build["policy_violations"]:
        log.warning("%s; rebuild with: %s", problem, native.REBUILD_SAFE)


def serve(settings: Settings) -> int:
    """Serve until a signal; 0 after a clean shutdown, 1 if the app failed to start."""
    level = settings.log_level.lower()
    configure_logging(level, settings.log_format)
    app = create_app(settings)
    _log_llama_build()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=level,
        # uvicorn's own lines go through the root handler, in --log-format too.
        log_config=None,
        lifespan="on",
        # More than the stream grace: streams still running when it ends get an error
        # event and [DONE] (core/sse.py) before uvicorn would drop their connections.
        timeout_graceful_shutdown=settings.shutdown_grace + STREAM_END_MARGIN + 3,
        **uvicorn_limits(
            settings.read_timeout, settings.keep_alive_timeout, settings.max_connections
        ),
    )
    server = uvicorn.Server(config)
    previous = {sig: signal.signal(sig, _swallow) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        log.error("the server did not start (see the errors above)")
        return 1
    return 0
