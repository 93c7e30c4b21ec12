"""Hardening end to end: hostile input against the shared server, access control on a real
process, and a small run of the soak script (`scripts/soak.py`)."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
MODEL = "ai/gemma3"
MESSAGES = [{"role": "user", "content": "Hi"}]
JSON = {"content-type": "application/json"}


def post_chat(server: Any, content: bytes) -> httpx.Response:
    return httpx.post(
        server.base_url + "/chat/completions", content=content, headers=JSON, timeout=120
    )


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and error["code"]
    return error


@pytest.fixture(autouse=True)
def still_serving(server: Any):
    yield
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
    r = httpx.post(server.base_url + "/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text


# ----- hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"model": "ai/gemma3", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
         "invalid_encoding"),
        (b'{"model": "ai/gemma3", "messages": [{"role": "user", "content": "\\ud800"}]}',
         "invalid_encoding"),
        (b'{"model": "ai/gemma3", "messages": [{"role": "user", "content": "x", "tool_calls": '
         + b"[" * 65 + b"]" * 65 + b"}]}", "json_too_deep"),
        (b'{"model": "ai/gemma3", "messages": [{"role": "user", "content": "x"}], "stop": ['
         + b'"a",' * 300_000 + b'"a"]}', "json_too_large"),
    ],
)  # fmt: skip
def test_hostile_bodies_refused_early(server: Any, raw: bytes, code: str) -> None:
    assert error_of(post_chat(server, raw), 400)["code"] == code


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": 2049},  # the shared server's slots hold 2048 tokens
        {"logit_bias": {"\u00b2": 1}},
        {"temperature": 2.5},
        {"top_k": 1 << 40},
        {"stop": ["x" * 2000]},
    ],
)
def test_out_of_range_fields_are_400(server: Any, fields: dict[str, Any]) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, **fields}
    error_of(post_chat(server, json.dumps(body).encode()), 400)


def test_non_finite_numbers_are_400(server: Any) -> None:
    for value in (b"NaN", b"Infinity", b"-Infinity"):
        raw = b'{"model": "ai/gemma3", "messages": [{"role": "user", "content": "Hi"}], '
        error_of(post_chat(server, raw + b'"temperature": ' + value + b"}"), 400)


def test_legitimate_edge_input_is_served(server: Any) -> None:
    content = "Brackets [[[{{{ and commas ,,,, in text; an emoji \U0001f600; \\ud800 as text."
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        "repeat_penalty": 1.1,
        "repeat_last_n": (1 << 31) - 1,  # capped at the context, not allocated as asked
    }
    raw = json.dumps(body).encode()  # ensure_ascii: the emoji travels as a surrogate pair
    assert b"\\ud83d\\ude00" in raw
    started = time.monotonic()
    r = post_chat(server, raw)
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 30


def test_model_names_cannot_point_outside_the_store(server: Any) -> None:
    for name in ("../../etc/passwd", "/etc/passwd", "ai/..%2F..%2Fx", "a" * 300, "ai/x\u0000y"):
        body = {"model": name, "messages": MESSAGES, "max_tokens": 1}
        r = post_chat(server, json.dumps(body).encode())
        assert r.status_code in (400, 404), (name, r.text)
        assert error_of(r, r.status_code)["param"] == "model"


# ----- access control on a real process -------------------------------------------------------


def test_api_key_from_env_and_origins(start_server: Any) -> None:
    handle = start_server(env={"RUNNER_API_KEY": "k3y", "RUNNER_ORIGINS": "https://ok.example"})
    try:
        url = handle.base_url + "/models"
        assert httpx.get(handle.url + "/health").status_code == 200
        assert error_of(httpx.get(url), 401)["type"] == "authentication_error"
        error_of(httpx.get(url, headers={"Authorization": "Bearer nope"}), 401)
        assert httpx.get(url, headers={"Authorization": "Bearer k3y"}).status_code == 200
        preflight = {"Origin": "https://ok.example", "Access-Control-Request-Method": "POST"}
        r = httpx.options(handle.base_url + "/chat/completions", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ok.example"
        evil = {**preflight, "Origin": "https://evil.example"}
        r = httpx.options(handle.base_url + "/chat/completions", headers=evil)
        assert error_of(r, 403)["code"] == "origin_not_allowed"
    finally:
        assert handle.stop() == 0


def test_non_loopback_bind_without_key_warns(start_server: Any) -> None:
    handle = start_server("--host", "0.0.0.0", "--slots", "1", "--ctx-size", "256")
    try:
        assert "without an API key" in handle.logs()
    finally:
        handle.stop()


# ----- soak --------------------------------------------------------------------------------


def load_soak() -> Any:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


def test_small_soak(start_server: Any) -> None:
    soak = load_soak()
    handle = start_server("--model", MODEL, "--slots", "4", "--ctx-size", "1024", "--no-persist")
    try:
        report = soak.soak(handle.url, clients=8, requests=40, pid=handle.proc.pid, seed=3)
        soak.print_report(report)
        counts = report.counts()
        assert counts["lost"] == 0, report.to_dict()["lost_details"]
        assert counts["completed"] + counts["errored"] == 40
        assert report.invalid_accepted == 0
        assert report.slots_idle is True
        assert report.rss_before and report.rss_after
    finally:
        assert handle.stop() == 0
