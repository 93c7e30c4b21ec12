"""`JsonGuardMiddleware`: refuse hostile request bodies before any parser sees them.

Runs inside the body cap (so at most `--max-body-bytes` are buffered) and the API key check.
A body gets 400 in OpenAI's error shape when it

* is not valid UTF-8 (JSON must be, RFC 8259);
* nests arrays/objects deeper than `MAX_DEPTH` (json, pydantic and Jinja all recurse);
* has more than `MAX_ITEMS` values (counted as commas outside strings): 10 MiB of `0,`
  would otherwise become millions of Python objects, validated one by one;
* holds a lone UTF-16 surrogate (`"\\ud800"`): valid JSON, but not Unicode, and it breaks
  every later `.encode()` (file paths, logs, responses). Surrogate pairs are fine.

All scans are linear and run at C speed (bytes methods, numpy): tens of ms for 10 MiB.
"""

from __future__ import annotations

import json
import re

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner.api.errors.table import ErrorInfo
from runner.api.http.bodies import off_loop_if_large
from runner.api.http.middleware import send_error

MAX_DEPTH = 64
MAX_ITEMS = 1 << 18  # 262144: a token-list prompt for a 128k context still fits

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# bytes.translate: '[' and '{' become +1, ']' and '}' become -1 (as int8), the rest is deleted.
_TABLE = bytes(1 if c in b"[{" else 255 if c in b"]}" else 0 for c in range(256))
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_QUOTE = ord('"')
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def check_body(body: bytes) -> tuple[str, str] | None:
    """(message, code) for a body to refuse, None when it may go on to the app."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset "
            f"{exc.start})",
            "invalid_encoding",
        )
    outside = outside_strings(body)  # brackets and commas inside strings do not count
    brackets = outside.translate(_TABLE, _NOT_BRACKETS)
    if len(brackets) > MAX_DEPTH:
        depth = int(np.frombuffer(brackets, dtype=np.int8).cumsum(dtype=np.int32).max())
        if depth > MAX_DEPTH:
            return f"the request JSON nests deeper than {MAX_DEPTH} levels", "json_too_deep"
    if outside.count(b",") >= MAX_ITEMS:
        return f"the request JSON has more than {MAX_ITEMS} values", "json_too_large"
    if _SURROGATE_ESCAPE.search(body) and _lone_surrogate(body):
        return (
            "the request JSON has a lone UTF-16 surrogate escape (like \\ud800) in a string; "
            "send valid Unicode",
            "invalid_encoding",
        )
    return None


def outside_strings(body: bytes) -> bytes:
    """The bytes of a JSON text that are not inside strings (quote marks may remain).

    Linear and vectorized, whatever the input (a regex for JSON strings backtracks
    quadratically on unterminated ones): drop escaped backslashes, then escaped quotes (what
    is left of a run of backslashes escapes one character), and a running count of the
    remaining quotes tells inside from outside.
    """
    if b'"' not in body:
        return body
    cleaned = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = np.frombuffer(cleaned, dtype=np.uint8)
    inside = np.cumsum(data == _QUOTE, dtype=np.uint8) & 1  # uint8 wraps at 256: parity holds
    return data[inside == 0].tobytes()


def _lone_surrogate(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return False  # not JSON at all: the route reports that
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # pairs were joined by loads
    except UnicodeEncodeError:
        return True
    return False


class JsonGuardMiddleware:
    """Buffer a request body, `check_body` it, then replay it to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone; nothing to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        # Linear scans at C speed, but a few MB still take tens of ms: not on the event loop.
        problem = await off_loop_if_large(len(body), check_body, body) if body else None
        if problem is not None:
            message, code = problem
            await send_error(scope, receive, send, ErrorInfo(400, code, message))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only the disconnect can come

        await self.app(scope, replay, send)
