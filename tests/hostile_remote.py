"""A hostile remote for tests: an HTTP server on loopback that answers each path with
whatever the test put there (an OCI manifest with a poisoned digest, a blob longer than it
was declared, an endless manifest, a 401 that asks for credentials, a redirect) and records
every request it got, with its headers."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GGUF_LAYER = "application/vnd.docker.ai.gguf.v3"
TEMPLATE_LAYER = "application/vnd.docker.ai.chat.template.jinja"
MODEL_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"


@dataclass
class Reply:
    status: int = 200
    body: bytes | Callable[[], Iterator[bytes]] = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Content-Length to announce; None: the body's length, or no length (close-delimited)
    # for a streamed body.
    length: int | None = None


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class HostileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bind: str = "127.0.0.1") -> None:
        super().__init__((bind, 0), _Handler)
        self.routes: dict[str, Reply | Callable[[Seen], Reply]] = {}
        self.seen: list[Seen] = []
        self.host = f"{bind}:{self.server_address[1]}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def authorizations(self) -> list[str]:
        return [s.headers["authorization"] for s in self.seen if "authorization" in s.headers]

    # ----- an OCI registry's answers ---------------------------------------------------------

    def manifest(
        self, repository: str, tag: str, layers: list[dict[str, Any]], config: bytes = b"{}"
    ) -> bytes:
        """Serve an image manifest with `layers` (dicts as they go in the JSON) at `tag`,
        and the config blob."""
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": MODEL_CONFIG,
                    "digest": digest(config),
                    "size": len(config),
                },
                "layers": layers,
            }
        ).encode()
        headers = {"Content-Type": OCI_MANIFEST}
        self.routes[f"/v2/{repository}/manifests/{tag}"] = Reply(200, body, headers)
        self.blob(repository, config)
        return body

    def blob(self, repository: str, data: bytes, **reply: Any) -> str:
        name = digest(data)
        self.routes[f"/v2/{repository}/blobs/{name}"] = Reply(200, data, **reply)
        return name


class _Handler(http.server.BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        self.server.seen.append(seen)
        route = self.server.routes.get(urlsplit(self.path).path)
        if route is None:
            reply = Reply(404, b'{"errors": [{"code": "NAME_UNKNOWN"}]}')
        else:
            reply = route(seen) if callable(route) else route
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        streamed = callable(reply.body)
        length = reply.length
        if length is None and not streamed:
            length = len(reply.body)  # type: ignore[arg-type]
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if streamed:
                for block in reply.body():  # type: ignore[operator]
                    self.wfile.write(block)
            else:
                self.wfile.write(reply.body)  # type: ignore[arg-type]
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if streamed or (length is not None and length != len(reply.body)):  # type: ignore[arg-type]
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = _answer
    do_HEAD = _answer
    do_POST = _answer
    do_PUT = _answer
