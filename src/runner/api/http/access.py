"""Who may talk to the server: bearer API key, allowed browser origins, allowed Host names.

Pure ASGI middleware (like `http/middleware.py`), outermost first in `app.py`:

* `HostMiddleware` (DNS rebinding): a request must name a loopback host (`localhost`,
  `*.localhost`, `127.x.x.x`, `[::1]`) or the host of a configured origin; a web page on
  `evil.example` re-pointed at this server sends `Host: evil.example` and gets 403. Bound to
  another address, IP addresses and this machine's own name are welcome too (no page can
  rebind an address literal). Off with `--cors-origins '*'`, and on a non-loopback address
  with an API key (the key then decides, whatever name reaches the server).
* `OriginMiddleware`: a request with an `Origin` header that is not allowed gets 403, preflight
  or not. Omitting CORS headers alone would keep a hostile page from *reading* answers, but
  "simple" cross-site POSTs (form or text/plain bodies, which runner parses as JSON) would
  still run. Allowed: localhost origins always, `--cors-origins` / `RUNNER_ORIGINS`, or any
  with `*`. Clients other than browsers send no `Origin` and are not affected.
* Starlette's `CORSMiddleware` then answers preflights and adds the CORS headers.
* `ApiKeyMiddleware`: with `--api-key` / `RUNNER_API_KEY`, every route but `/health` and the
  web page (`/`, `/ui/*`) needs `Authorization: Bearer <key>` or Anthropic's `x-api-key: <key>`
  (constant-time comparison); 401 in the error shape of the route's dialect.

`warn_if_exposed` logs a warning when binding a non-loopback address without a key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from runner.api.errors.table import ErrorInfo
from runner.api.http.middleware import header, send_error
from runner.config import Settings

log = logging.getLogger("runner.api")

# Browsers on the same machine are always welcome (DMR does the same).
LOCALHOST_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"
_LOCALHOST_ORIGIN = re.compile(LOCALHOST_ORIGINS)


def normalize_origin(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


def is_loopback(host: str) -> bool:
    """`localhost`, `*.localhost`, 127.0.0.0/8 or ::1 (brackets allowed)."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The host part of a Host header or origin (`[::1]:8080` -> `[::1]`)."""
    value = value.strip().lower()
    value = value.split("://", 1)[-1].split("/", 1)[0]
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def warn_if_exposed(settings: Settings) -> None:
    if not settings.api_key and not is_loopback(settings.host):
        log.warning(
            "listening on %s without an API key: anyone who can reach this address can use "
            "the server and its models; set --api-key or RUNNER_API_KEY",
            settings.host,
        )


class ApiKeyMiddleware:
    """With `--api-key`, every route but /health and the web page needs a bearer token (or
    `x-api-key: <key>`, as Anthropic clients send it)."""

    # The web page and its assets hold no data, and a browser cannot attach a bearer token
    # to a page it navigates to: the page asks for the key and sends it on its API calls.
    OPEN_PATHS = frozenset({"/health", "/"})
    OPEN_PREFIXES = ("/ui/",)

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        # Digests have a fixed length, so compare_digest's time says nothing about the key.
        self.expected = hashlib.sha256(api_key.encode()).digest()

    def authorized(self, value: str | None, api_key_header: str | None = None) -> bool:
        scheme, _, token = (value or "").partition(" ")
        if value is None and api_key_header is not None:  # Anthropic clients send x-api-key
            scheme, token = "bearer", api_key_header
        given = hashlib.sha256(token.strip().encode("latin-1")).digest()
        # Always compare (no early return on a wrong scheme): same work on every path.
        return hmac.compare_digest(given, self.expected) and scheme.lower() == "bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"  # CORS preflights carry no credentials
            or scope["path"] in self.OPEN_PATHS
            or scope["path"].startswith(self.OPEN_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        if not self.authorized(header(scope, b"authorization"), header(scope, b"x-api-key")):
            error = ErrorInfo(401, "invalid_api_key", "invalid or missing API key")
            await send_error(scope, receive, send, error)
            return
        await self.app(scope, receive, send)


class OriginMiddleware:
    """403 for requests whose `Origin` is neither localhost nor configured (see module doc)."""

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        self.allowed = {normalize_origin(o) for o in origins}
        self.allow_all = "*" in self.allowed

    def allows(self, origin: str) -> bool:
        origin = normalize_origin(origin)
        return (
            self.allow_all
            or origin in self.allowed
            or _LOCALHOST_ORIGIN.fullmatch(origin) is not None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = header(scope, b"origin")
            if origin is not None and not self.allows(origin):
                message = (
                    f"origin {origin[:200]!r} is not allowed; "
                    "add it with --cors-origins or RUNNER_ORIGINS"
                )
                await send_error(
                    scope, receive, send, ErrorInfo(403, "origin_not_allowed", message)
                )
                return
            if origin is not None and origin != normalize_origin(origin):
                # Allowed in any case, so CORS (which compares exactly) must see the same
                # spelling the check saw; browsers send lowercase origins anyway.
                scope = {**scope, "headers": _with_header(scope, b"origin", origin)}
        await self.app(scope, receive, send)


class HostMiddleware:
    """403 for a `Host` that is not loopback or a configured origin's host (with
    `any_address`, the server bound beyond loopback: also not an IP address or this
    machine's name): the DNS-rebinding guard described in the module doc."""

    def __init__(self, app: ASGIApp, origins: Iterable[str], any_address: bool = False) -> None:
        self.app = app
        self.extra = {_host_name(o) for o in origins}
        self.any_address = any_address
        if any_address:
            self.extra.add(socket.gethostname().lower())

    def allows(self, name: str) -> bool:
        return is_loopback(name) or name in self.extra or (self.any_address and _is_address(name))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = header(scope, b"host")
            if host and not self.allows(_host_name(host)):
                where = (
                    "use this machine's address or name, or add the name to --cors-origins"
                    if self.any_address
                    else "this server listens on a loopback address; use localhost or 127.0.0.1"
                )
                message = f"host {host[:200]!r} is not allowed: {where}"
                await send_error(scope, receive, send, ErrorInfo(403, "host_not_allowed", message))
                return
        await self.app(scope, receive, send)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _with_header(scope: Scope, name: bytes, value: str) -> list[tuple[bytes, bytes]]:
    """`scope`'s headers with `name` replaced by the normalized `value`."""
    normal = normalize_origin(value).encode("latin-1")
    return [(k, normal if k.lower() == name else v) for k, v in scope.get("headers", ())]
