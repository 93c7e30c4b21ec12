"""`FrontDoor`: the cluster's HTTP ingress. It reads each request, works out its prompt's
block hashes (`keys.PromptKeys`), and forwards it through a deployment handle, whose request
router picks the replica; the replica's own runner app answers, and the answer streams back.

Every route is runner's: the front door has none of its own. `/engines/ps` and
`/engines/status` are first answered by a replica (so access control applies as usual), then
widened to every replica from their reports; `/engines/unload` and `/engines/_configure` go
to every replica (each holds its own models), one call addressed to each, given up on once
the router no longer lists that replica (a lost node's). A replica that dies before answering is
retried on another; one that dies mid-answer ends that answer with an error, and only that
answer. The front door's own errors are in the dialect of the request's path, as runner's are
(`dialect_errors`): a JSON error response while no headers went out (a non-stream answer's
headers wait for its body so that this holds until the replica has answered), else the
stream's own error event (SSE or an NDJSON line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from runner.api.errors.renderers import error_response, is_stream, stream_error_event
from runner.api.errors.table import ErrorInfo
from runner.config import Settings

from .forward import ForwardedRequest, cache_key_of, prompt_text
from .keys import PromptKeys
from .registry import replica_reports

log = logging.getLogger(__name__)

Scope = dict[str, Any]
_GONE = (RayActorError, ActorUnavailableError)
START_ATTEMPTS = 3  # a replica that died before answering: try others (Ray drops it soon)
_PS = {"/engines/ps", "/engines/llama.cpp/ps"}
_STATUS = {"/engines/status", "/engines/llama.cpp/status"}
# Changes to model lifetimes every replica must apply (each has its own resident models).
_BROADCAST = {
    f"/engines/{infix}{verb}" for infix in ("", "llama.cpp/") for verb in ("unload", "_configure")
}
BROADCAST_TIMEOUT_S = 120.0
# How often a broadcast waiting on a replica checks that the replica is still in the set: a
# call addressed to a replica Serve has dropped (its node lost) would otherwise wait it out.
LISTED_POLL_S = 1.0


class TooLarge(Exception):
    pass


class Relay:
    """Passes a replica's ASGI messages on to the client and ends an answer whose replica
    died. A stream's headers go out at once; a non-stream answer's wait for its first body
    message, so that a replica dying in between still leaves room for an error response."""

    def __init__(self, send: Any, path: str) -> None:
        self.send = send
        self.path = path
        self.held: dict[str, Any] | None = None  # a non-stream answer's headers
        self.started = False  # headers went out to the client
        self.content_type = ""

    async def pass_on(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if message["type"] == "http.response.start":
                self.content_type = _header(message.get("headers", []), b"content-type")
                self.held = message
                if not is_stream(self.content_type):
                    continue
            await self.flush()
            if message["type"] != "http.response.start":
                await self.send(message)

    async def flush(self) -> None:
        """Send the held headers (the answer's body follows, or the answer has none)."""
        if self.held is not None:
            self.started = True
            await self.send(self.held)
            self.held = None

    async def end_broken(self, exc: BaseException) -> None:
        """End the answer of a replica that died: an error response if no headers went out,
        else the stream's error event (none for other answers, which end short)."""
        log.warning("replica died mid-answer: %s", exc)
        info = ErrorInfo(502, "replica_failed", "the replica serving this request failed")
        if not self.started:
            await _send_error(self.send, self.path, info)
            return
        event = stream_error_event(self.path, self.content_type, info)
        if event is not None:
            await self.send({"type": "http.response.body", "body": event, "more_body": True})
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


class FrontDoorApp:
    """The ASGI app the Serve proxy calls."""

    def __init__(self, handle: DeploymentHandle, settings: Settings, keys: PromptKeys) -> None:
        self.handle = handle.options(stream=True)
        self.settings = settings
        self.keys = keys
        self.deployment = handle.deployment_name

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]  # startup / shutdown
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        limit = self.settings.max_body_bytes
        try:
            body = await _read_body(scope, receive, limit)
        except TooLarge:
            message = f"the request body is larger than the limit of {limit} bytes"
            await _send_error(send, path, ErrorInfo(413, "request_too_large", message), close=True)
            return
        request = ForwardedRequest(
            method=scope["method"],
            path=path,
            query_string=scope.get("query_string", b""),
            headers=list(scope.get("headers", [])),
            body=body,
            client=_pair(scope.get("client")),
            server=_pair(scope.get("server")),
            scheme=scope.get("scheme", "http"),
        )
        request.prompt = f"{scope['method']} {path}"
        if scope["method"] == "POST" and body:
            request.hashes, request.n_tokens = await asyncio.to_thread(self.keys.hashes, path, body)
            request.block = self.keys.block
            request.prompt = prompt_text(body) or request.prompt
            request.cache_key = cache_key_of(body)
        if scope["method"] == "GET" and path in _PS | _STATUS:
            await self._engines(request, send, path in _PS)
            return
        if scope["method"] == "POST" and path in _BROADCAST:
            await self._broadcast(request, send)
            return
        await self._forward(request, send)

    async def _forward(self, request: ForwardedRequest, send: Any) -> None:
        gen, first = await self._start(request)
        if gen is None:
            message = f"no replica could take the request: {first}"
            await _send_error(send, request.path, ErrorInfo(503, "replica_unavailable", message))
            return
        relay = Relay(send, request.path)
        try:
            await relay.pass_on(first)
            async for messages in gen:
                await relay.pass_on(messages)
            await relay.flush()
        except RayTaskError as exc:
            if not _replica_gone(exc):
                raise
            await relay.end_broken(exc)
        except _GONE as exc:
            await relay.end_broken(exc)
        finally:
            gen.cancel()

    async def _start(self, request: ForwardedRequest) -> tuple[Any, Any]:
        """(generator, first messages) from a replica; (None, error) if none answers."""
        error: BaseException | None = None
        for attempt in range(START_ATTEMPTS):
            if attempt:  # let the router hear of the death before choosing again
                await asyncio.sleep(0.25 * attempt)
            gen = self.handle.handle_http.remote(request)
            try:
                return gen, await gen.__anext__()
            except StopAsyncIteration:
                return None, RuntimeError("the replica sent no answer")
            except Exception as exc:
                if not _replica_gone(exc):
                    raise
                log.warning("replica unavailable, trying another: %s", exc)
                error = exc
        return None, error

    async def _engines(self, request: ForwardedRequest, send: Any, ps: bool) -> None:
        """A replica's answer (access checks included), widened to every replica."""
        gen, first = await self._start(request)
        if gen is None:
            error = ErrorInfo(503, "replica_unavailable", f"no replica answered: {first}")
            await _send_error(send, request.path, error)
            return
        messages = list(first)
        async for more in gen:
            messages.extend(more)
        start = messages[0]
        body = b"".join(m.get("body", b"") for m in messages[1:])
        if start["status"] == 200:
            reports = replica_reports(self.deployment) or []
            body = json.dumps(_widen(json.loads(body), reports, ps)).encode()
        await _send_whole(send, start, body)

    async def _broadcast(self, request: ForwardedRequest, send: Any) -> None:
        """Send the request to every replica; one answer back (the first error, if any;
        unload's lists merged)."""
        reports = replica_reports(self.deployment)
        if not reports:  # no router yet (no request so far): nothing loaded anywhere else
            await self._forward(request, send)
            return
        # One replica after the other: Ray matches routed replicas to pending calls by
        # request id, which concurrent calls made for one HTTP request share.
        answers: list[Any] = []
        for report in reports:
            try:
                answers.append(await self._collect(replace(request, target=report["replica_id"])))
            except Exception as exc:
                if not (_replica_gone(exc) or isinstance(exc, TimeoutError)):
                    raise
                answers.append(exc)
        done = [a for a in answers if not isinstance(a, BaseException)]
        if not done:
            error = ErrorInfo(503, "replica_unavailable", f"no replica answered: {answers[0]}")
            await _send_error(send, request.path, error)
            return
        failed = [a for a in done if a[0]["status"] >= 400]
        start, body = failed[0] if failed else done[0]
        if not failed and request.path.endswith("unload"):
            merged = _merge_unloads([json.loads(b) for _, b in done])
            body = json.dumps(merged).encode()
        await _send_whole(send, start, body)

    async def _collect(self, request: ForwardedRequest) -> tuple[dict[str, Any], bytes]:
        async def run() -> tuple[dict[str, Any], bytes]:
            gen = self.handle.handle_http.remote(request)
            messages = [m async for batch in gen for m in batch]
            return messages[0], b"".join(m.get("body", b"") for m in messages[1:])

        task = asyncio.ensure_future(run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BROADCAST_TIMEOUT_S
        while True:
            done, _ = await asyncio.wait({task}, timeout=LISTED_POLL_S)
            if done:
                return task.result()
            gone = not self._listed(request.target)
            if gone or loop.time() >= deadline:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                why = "left the deployment" if gone else "did not answer in time"
                raise TimeoutError(f"replica {request.target} {why}")

    def _listed(self, replica_id: str) -> bool:
        """Whether the router still lists the replica (True before it lists any)."""
        reports = replica_reports(self.deployment)
        return reports is None or any(r["replica_id"] == replica_id for r in reports)


def _merge_unloads(answers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "unloaded_runners": sum(a.get("unloaded_runners", 0) for a in answers),
        "unloaded": sorted({n for a in answers for n in a.get("unloaded", [])}),
        "busy": sorted({n for a in answers for n in a.get("busy", [])}),
    }


async def _send_whole(send: Any, start: dict[str, Any], body: bytes) -> None:
    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _widen(local: Any, reports: list[dict[str, Any]], ps: bool) -> Any:
    rows = [
        {**row, "replica": r["replica_id"], "node": r.get("node"), "pid": r.get("pid")}
        for r in reports
        for row in r.get("models", [])
    ]
    if ps:
        return rows
    replicas = [{k: v for k, v in r.items() if k != "models"} for r in reports]
    return {**local, "models": rows, "replicas": replicas}


def _replica_gone(exc: BaseException) -> bool:
    """The replica process is gone or unreachable (not: the app raised)."""
    return isinstance(exc, _GONE) or isinstance(getattr(exc, "cause", None), _GONE)


async def _read_body(scope: Scope, receive: Any, limit: int) -> bytes:
    declared = _header(scope.get("headers", []), b"content-length")
    if declared.isdigit() and int(declared) > limit:  # no need to read what is refused
        raise TooLarge
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _send_error(send: Any, path: str, info: ErrorInfo, close: bool = False) -> None:
    """A whole error response in the shape the client of `path` expects."""
    status, body = error_response(path, info)
    headers = [(k.lower().encode(), v.encode()) for k, v in info.headers.items()]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]  # fmt: skip
    if close:  # an unread request body is still on the wire: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""


def _pair(value: Any) -> tuple[str, int] | None:
    return (str(value[0]), int(value[1])) if value else None


@serve.ingress()
class FrontDoor:
    def __init__(self, replicas_app: str, settings: dict[str, Any], block: int) -> None:
        self.settings = Settings(**settings)
        handle = serve.get_deployment_handle("RunnerReplica", app_name=replicas_app)
        self._front = FrontDoorApp(handle, self.settings, PromptKeys(self.settings, block))

    def __serve_build_asgi_app__(self) -> FrontDoorApp:
        return self._front
