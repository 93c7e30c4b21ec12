"""A local stand-in for the Hugging Face Hub (tests only): answers the model-info and
file-resolution requests `huggingface_hub` makes, for repos built from local files, so the
real client code runs against it through `HF_ENDPOINT`."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubRepo:
    files: dict[str, bytes]
    lfs_sha_override: dict[str, str] = field(default_factory=dict)

    def sha256(self, name: str) -> str:
        return self.lfs_sha_override.get(name) or hashlib.sha256(self.files[name]).hexdigest()

    def is_lfs(self, name: str) -> bool:
        return name.endswith(".gguf")


class HubServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos: dict[str, HubRepo] = {}
        self.downloads: list[tuple[str, str | None]] = []  # (file, Range header) per GET
        self.cuts = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def add_repo(self, repo_id: str, files: dict[str, Path | bytes]) -> HubRepo:
        repo = HubRepo({k: v.read_bytes() if isinstance(v, Path) else v for k, v in files.items()})
        self.repos[repo_id.lower()] = repo
        return repo

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _HubHandler(http.server.BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _not_found(self, code: str) -> None:
        self._reply(404, b'{"error": "not found"}', {"X-Error-Code": code})

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        info = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?$", path)
        if info:
            return self._model_info(info.group(1))
        resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if resolve:
            return self._file(resolve.group(1), resolve.group(3))
        self._reply(404)

    do_HEAD = do_GET

    def _model_info(self, repo_id: str) -> None:
        repo = self.server.repos.get(repo_id.lower())
        if repo is None:
            return self._not_found("RepoNotFound")
        siblings = []
        for name, data in repo.files.items():
            sibling: dict[str, object] = {"rfilename": name, "size": len(data)}
            if repo.is_lfs(name):
                sibling["lfs"] = {
                    "size": len(data),
                    "sha256": repo.sha256(name),
                    "pointerSize": 134,
                }
            siblings.append(sibling)
        body = {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "siblings": siblings}
        self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _file(self, repo_id: str, name: str) -> None:
        repo = self.server.repos.get(repo_id.lower())
        if repo is None:
            return self._not_found("RepoNotFound")
        if name not in repo.files:
            return self._not_found("EntryNotFound")
        data = repo.files[name]
        etag = repo.sha256(name) if repo.is_lfs(name) else hashlib.sha1(data).hexdigest()
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{etag}"',
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        if self.command == "HEAD":
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        wanted = self.headers.get("Range")
        self.server.downloads.append((name, wanted))
        status, start = 200, 0
        match = re.match(r"^bytes=(\d+)-$", wanted or "")
        if match:
            status, start = 206, int(match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if self.server.cuts > 0 and len(body) > 1:  # promise everything, send half, hang up
            self.server.cuts -= 1
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._reply(status, body, headers)
