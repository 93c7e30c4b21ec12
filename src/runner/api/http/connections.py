"""Connections that send nothing, or half a request, are closed.

uvicorn only times out a keep-alive connection *after* a response; a socket that never sends
a byte, or sends half its headers or body and stops, stays open for ever (a few hundred of
them exhaust the open-files limit and the server stops answering). `http_protocol` wraps
uvicorn's HTTP protocol class with a read deadline: from the moment a connection opens, and
again after each response, the client has `read_timeout` seconds to deliver one whole
request (headers and body); otherwise the connection is closed. Time spent computing or
streaming a response does not count: the deadline only applies while the server waits for
request bytes. Data trickling in does not extend it (slowloris).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

log = logging.getLogger("runner.api")

# File descriptors kept free for models, cache files and logs when capping connections.
_FD_RESERVE = 64


class _ReadDeadline:
    """Mixin for uvicorn's HttpToolsProtocol / H11Protocol (listed first in the bases)."""

    read_timeout: float = 30.0
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _deadline: asyncio.TimerHandle | None = None

    def _awaiting_request(self) -> bool:
        raise NotImplementedError

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport = getattr(self, "transport", None)
        if transport is None or transport.is_closing() or not self._awaiting_request():
            return
        log.debug("closing a connection that sent no complete request in %gs", self.read_timeout)
        transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm()


def _httptools_class(base: type) -> type:
    class RunnerHttpToolsProtocol(_ReadDeadline, base):  # type: ignore[misc, valid-type]
        _waiting = True

        def _awaiting_request(self) -> bool:
            return self._waiting

        def on_message_begin(self) -> None:
            self._waiting = True
            super().on_message_begin()

        def on_message_complete(self) -> None:
            self._waiting = False
            super().on_message_complete()

    return RunnerHttpToolsProtocol


def _h11_class(base: type) -> type:
    import h11

    class RunnerH11Protocol(_ReadDeadline, base):  # type: ignore[misc, valid-type]
        def _awaiting_request(self) -> bool:
            return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    return RunnerH11Protocol


def http_protocol(read_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's preferred HTTP protocol (httptools, else h11) with a read deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        cls = _httptools_class(HttpToolsProtocol)
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        cls = _h11_class(H11Protocol)
    cls.read_timeout = read_timeout
    return cls


def connection_cap(requested: int) -> int:
    """`requested`, lowered to what the open-files limit leaves room for."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return requested
    if soft == resource.RLIM_INFINITY or soft - _FD_RESERVE >= requested:
        return requested
    cap = max(8, soft - _FD_RESERVE)
    log.info("--max-connections lowered to %d by the open-files limit (%d)", cap, soft)
    return cap


def uvicorn_limits(read_timeout: float, keep_alive: float, max_connections: int) -> dict[str, Any]:
    """The uvicorn.Config keywords that bound idle and half-sent connections."""
    return {
        "http": http_protocol(read_timeout),
        "timeout_keep_alive": keep_alive,
        "limit_concurrency": connection_cap(max_connections),
    }
