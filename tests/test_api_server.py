"""`runner serve` as a process: SIGTERM drains in-flight streams and exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_sigterm_drains_stream_and_exits_zero(start_server) -> None:
    handle = start_server("--model", "ai/gemma3", "--slots", "2", "--ctx-size", "512")
    body = {
        "model": "ai/gemma3",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 24,
        "ignore_eos": True,
        "stream": True,
    }
    data: list[str] = []
    with httpx.stream("POST", handle.base_url + "/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data.append(line[len("data: ") :])
            if len(data) == 2:  # role chunk and a first token: mid-stream now
                stopper = threading.Thread(target=handle.stop, kwargs={"timeout": 90})
                stopper.start()
    stopper.join()
    assert data[-1] == "[DONE]", data[-3:]
    finish = json.loads(data[-2])
    assert finish["choices"][0]["finish_reason"] == "length"
    assert handle.proc.returncode == 0, handle.logs()[-3000:]


def test_stream_outliving_the_grace_ends_with_an_error_and_done(start_server) -> None:
    handle = start_server(
        "--model", "ai/gemma3", "--slots", "1", "--ctx-size", "2048", "--shutdown-grace", "1s"
    )
    body = {
        "model": "ai/gemma3",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 2000,  # minutes of tokens on one thread: far past the 1 s grace
        "ignore_eos": True,
        "stream": True,
    }
    data: list[str] = []
    stopped_at = 0.0
    with httpx.stream("POST", handle.base_url + "/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data.append(line[len("data: ") :])
            if len(data) == 2:  # mid-stream now
                stopped_at = time.monotonic()
                stopper = threading.Thread(target=handle.stop, kwargs={"timeout": 90})
                stopper.start()
    ended_after = time.monotonic() - stopped_at
    stopper.join()
    assert data[-1] == "[DONE]", data[-3:]
    error = json.loads(data[-2])["error"]
    assert error["code"] == "server_shutting_down" and "shutdown" in error["message"]
    assert all("error" not in json.loads(d) for d in data[:-2])  # tokens until the cut-off
    assert ended_after < 30, ended_after  # cut off at the grace, not at the end of the answer
    assert handle.proc.returncode == 0, handle.logs()[-3000:]


def test_sigint_when_idle_exits_zero(start_server) -> None:
    handle = start_server("--slots", "1", "--ctx-size", "256")
    assert handle.stop(sig=signal.SIGINT, timeout=60) == 0, handle.logs()[-3000:]


def test_unknown_preload_model_fails_startup(start_server) -> None:
    handle = start_server("--model", "ai/does-not-exist", wait=False)
    assert handle.proc.wait(timeout=120) != 0
    assert "does-not-exist" in handle.logs()


def test_api_key_and_cors(start_server) -> None:
    handle = start_server("--api-key", "s3cret", "--cors-origins", "https://app.example")
    try:
        assert httpx.get(handle.url + "/health").status_code == 200
        r = httpx.get(handle.base_url + "/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.get(handle.base_url + "/models", headers=auth).status_code == 200
        for origin in ("http://localhost:3000", "https://app.example"):
            preflight = httpx.options(
                handle.base_url + "/chat/completions",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == origin
        r = httpx.options(
            handle.base_url + "/chat/completions",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 403  # refused outright, not just left without CORS headers
        assert "access-control-allow-origin" not in r.headers
    finally:
        assert handle.stop() == 0
