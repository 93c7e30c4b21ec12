"""Pure ASGI middleware: the request body cap and form-as-JSON; shared error helpers.

Access control (API key, origins, hosts) is in `access.py`, JSON shape checks in `json_guard.py`.

Pure ASGI (not Starlette's BaseHTTPMiddleware) so streaming responses and the disconnect
watcher in the handlers see the real `receive` channel and nothing is buffered.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner.api.errors.table import ErrorInfo, renderer_for


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without (or with a lying) Content-Length overflows.

    An HTTPException so FastAPI's body parsing re-raises it unchanged and the app's handler
    turns it into the 413 response.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


async def send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    error: ErrorInfo,
    close: bool = False,
) -> None:
    """Answer from middleware with `error` in the shape of the dialect the path belongs to."""
    response = renderer_for(scope.get("app"), scope.get("path", ""))(error)
    if close:  # the unread body is still on the wire; the connection cannot be reused
        response.headers["connection"] = "close"
    await response(scope, receive, send)


class BodyLimitMiddleware:
    """413 for request bodies over `max_bytes`: by Content-Length up front, and by counting
    what `receive` delivers for chunked or mislabelled bodies."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            too_big = declared.isdigit()
            message = (
                f"the request body is larger than the limit of {self.max_bytes} bytes"
                if too_big
                else "invalid Content-Length header"
            )
            error = ErrorInfo(413 if too_big else 400, "request_too_large", message)
            await send_error(scope, receive, send, error, close=True)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # only reaches here if no handler answered it
            if started:
                raise
            error = ErrorInfo(413, "request_too_large", str(exc.detail))
            await send_error(scope, receive, send, error, close=True)


class FormAsJsonMiddleware:
    """Treat `application/x-www-form-urlencoded` bodies as JSON.

    `curl -d '{...}'` sends that content type unless told otherwise; llama-server parses the
    body as JSON regardless, and users paste such commands. No route here takes form data.
    """

    FORM = b"application/x-www-form-urlencoded"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = scope.get("headers", [])
            if any(k == b"content-type" and v.startswith(self.FORM) for k, v in headers):
                fixed = [(k, v) for k, v in headers if k != b"content-type"]
                fixed.append((b"content-type", b"application/json"))
                scope = {**scope, "headers": fixed}
        await self.app(scope, receive, send)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None
