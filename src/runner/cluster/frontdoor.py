"""`FrontDoor`: the cluster's HTTP ingress. It reads each request, works out its prompt's
block hashes (`keys.PromptKeys`), and forwards it through a deployment handle, whose request
router picks the replica; the replica's own runner app answers, and the answer streams back.

Every route is runner's: the front door has none of its own. `/engines/ps` and
`/engines/status` are first answered by a replica (so access control applies as usual), then
widened to every replica from their reports; `/engines/unload` and `/engines/_configure` go
to every replica (each holds its own models). A replica that dies before answering is
retried once on another; one that dies mid-answer ends that answer with an error (an SSE
`error` event for streams), and only that answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from runner.api.errors import ErrorInfo, openai_body
from runner.config import Settings

from .forward import ForwardedRequest, prompt_text
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


class TooLarge(Exception):
    pass


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
        try:
            body = await _read_body(receive, self.settings.max_body_bytes)
        except TooLarge:
            limit = self.settings.max_body_bytes
            await _send_error(send, 413, f"the request body exceeds {limit} bytes", "too_large")
            return
        path = scope["path"]
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
            await _send_error(send, 503, f"no replica could take the request: {first}", "replica_unavailable")  # fmt: skip
            return
        streaming = False
        try:
            for message in first:
                streaming = streaming or _is_sse(message)
                await send(message)
            async for messages in gen:
                for message in messages:
                    await send(message)
        except RayTaskError as exc:
            if not _replica_gone(exc):
                raise
            await _end_broken(send, streaming, exc)
        except _GONE as exc:
            await _end_broken(send, streaming, exc)
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
            await _send_error(send, 503, f"no replica answered: {first}", "replica_unavailable")
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
            await _send_error(send, 503, f"no replica answered: {answers[0]}", "replica_unavailable")  # fmt: skip
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

        return await asyncio.wait_for(run(), BROADCAST_TIMEOUT_S)


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


async def _end_broken(send: Any, streaming: bool, exc: BaseException) -> None:
    """End an answer whose replica died: an SSE error event for streams, then the end."""
    log.warning("replica died mid-answer: %s", exc)
    if streaming:
        info = ErrorInfo(502, "replica_failed", "the replica serving this request failed")
        data = f"data: {json.dumps(openai_body(info))}\r\n\r\n".encode()
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read_body(receive: Any, limit: int) -> bytes:
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


async def _send_error(send: Any, status: int, message: str, code: str) -> None:
    body = json.dumps(openai_body(ErrorInfo(status, code, message))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _is_sse(message: dict[str, Any]) -> bool:
    if message["type"] != "http.response.start":
        return False
    return any(
        k.lower() == b"content-type" and v.startswith(b"text/event-stream")
        for k, v in message.get("headers", [])
    )


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
