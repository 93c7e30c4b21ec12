"""A hostile OCI registry for tests: `evil/slow<anything>` is a manifest whose GGUF layer (one
per name, so pulls of different names do not wait for each other) it then sends one byte at
a time, for as long as someone reads. It counts the blob downloads running, so a test can
see that a pull stopped (its connection closed) and not only that an API answered. Also
serves a manifest whose weight layer is declared as zero bytes (`evil/empty`)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time

from runner.store.artifact import GGUF_LAYER, OCI_MANIFEST, manifest

LAYER_SIZE = 64 << 20  # what the manifest declares; far more than is ever sent
TRICKLE_SECONDS = 0.2  # between two bytes of the layer

_CONFIG = json.dumps({"config": {"format": "gguf"}}).encode()
_CONFIG_DIGEST = "sha256:" + hashlib.sha256(_CONFIG).hexdigest()
_EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()
_EMPTY = manifest((_CONFIG_DIGEST, len(_CONFIG)), [(GGUF_LAYER, _EMPTY_DIGEST, 0)])


def _slow_layer(name: str) -> str:
    return "sha256:" + hashlib.sha256(b"never sent whole: " + name.encode()).hexdigest()


class SlowRegistry(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.trickling = 0  # blob downloads in progress
        self.started = 0  # blob downloads ever started
        self.slow_layers: set[str] = set()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def wait(self, condition: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if callable(condition) and condition(self):
                    return True
            time.sleep(0.1)
        return False


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SlowRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["v2"]:
            return self._send(200, b"{}")
        name = "/".join(parts[1:-2])
        if len(parts) >= 4 and parts[-2] == "manifests" and name == "evil/empty":
            return self._send(200, _EMPTY, OCI_MANIFEST)
        if len(parts) >= 4 and parts[-2] == "manifests" and name.startswith("evil/slow"):
            layer = _slow_layer(name)
            with self.server.lock:
                self.server.slow_layers.add(layer)
            body = manifest((_CONFIG_DIGEST, len(_CONFIG)), [(GGUF_LAYER, layer, LAYER_SIZE)])
            return self._send(200, body, OCI_MANIFEST)
        if len(parts) >= 4 and parts[-2] == "blobs":
            digest = parts[-1]
            if digest == _CONFIG_DIGEST:
                return self._send(200, _CONFIG)
            if digest == _EMPTY_DIGEST:
                return self._send(200, b"", "application/octet-stream")
            if digest in self.server.slow_layers:
                return self._trickle()
        self._send(404, b'{"errors": [{"code": "NAME_UNKNOWN", "message": "unknown"}]}')

    def _trickle(self) -> None:
        with self.server.lock:
            self.server.trickling += 1
            self.server.started += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(LAYER_SIZE))
            self.end_headers()
            for _ in range(LAYER_SIZE):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(TRICKLE_SECONDS)
        except OSError:  # the puller went away: what the tests wait for
            pass
        finally:
            with self.server.lock:
                self.server.trickling -= 1
            self.close_connection = True
