"""Hardening, in process (no model, no subprocess): access control, the JSON guard, field ranges
and the engine's own request checks."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from runner.api import create_app
from runner.api.core.inference import check_token_limit
from runner.api.errors.table import APIError
from runner.api.http import access
from runner.api.http.json_guard import MAX_DEPTH, MAX_ITEMS, check_body, outside_strings
from runner.api.openai.schemas import ChatCompletionRequest
from runner.config import Settings, parse_duration
from runner.engine.executor import penalty_window
from runner.model_config import validate_config
from runner.store import ModelStore

CHAT = "/v1/chat/completions"
PS = "/engines/ps"  # needs no model: a cheap authenticated route


def make_client(tmp_path: Path, **settings: Any) -> TestClient:
    config = Settings(models_dir=tmp_path / "models", **settings)
    app = create_app(config, store=ModelStore(config.models_dir, bundled_default=False))
    return TestClient(app, base_url="http://127.0.0.1:12434")


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and error["code"]
    return error


# ----- API key ------------------------------------------------------------------------------


def test_api_key_required_everywhere_but_health(tmp_path: Path, monkeypatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    client = make_client(tmp_path, api_key="s3cret")
    assert client.get("/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        error = error_of(client.get(PS, headers=headers), 401)
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    error_of(client.post("/engines/unload", json={}), 401)
    assert client.get(PS, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get(PS, headers={"Authorization": "bearer s3cret"}).status_code == 200
    # Constant-time: every check goes through compare_digest on fixed-size digests.
    assert len(compared) == 6 and all(len(a) == len(b) == 32 for a, b in compared)


def test_api_key_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RUNNER_API_KEY", "from-env")
    monkeypatch.setenv("RUNNER_ORIGINS", "https://a.example, https://b.example")
    client = make_client(tmp_path)
    error_of(client.get(PS), 401)
    assert client.get(PS, headers={"Authorization": "Bearer from-env"}).status_code == 200
    ok = client.get("/health", headers={"Origin": "https://b.example"})
    assert ok.headers["access-control-allow-origin"] == "https://b.example"


# ----- origins and hosts ---------------------------------------------------------------------


def preflight(client: TestClient, origin: str) -> Any:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    return client.options(CHAT, headers=headers)


def test_cors_allowed_and_refused_origins(tmp_path: Path) -> None:
    client = make_client(tmp_path, cors_origins=["https://App.example/"], api_key="k")
    for origin in ("https://app.example", "http://localhost:3000", "http://127.0.0.1"):
        r = preflight(client, origin)  # preflights need no key
        assert r.status_code == 200, (origin, r.text)
        assert r.headers["access-control-allow-origin"] == origin
        r = client.get(PS, headers={"Origin": origin, "Authorization": "Bearer k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    for origin in ("https://evil.example", "null", "http://localhost.evil.example"):
        for r in (
            preflight(client, origin),
            client.get(PS, headers={"Origin": origin, "Authorization": "Bearer k"}),
            # A "simple" cross-site POST (form body): refused before it runs.
            client.post(
                "/engines/unload",
                content=b'{"all": true}',
                headers={"Origin": origin, "Content-Type": "application/x-www-form-urlencoded"},
            ),
        ):
            error = error_of(r, 403)
            assert error["code"] == "origin_not_allowed"
            assert "access-control-allow-origin" not in r.headers


def test_cors_wildcard_allows_any_origin(tmp_path: Path) -> None:
    client = make_client(tmp_path, cors_origins=["*"])
    r = preflight(client, "https://anything.example")
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_host_header_checked_on_loopback_only(tmp_path: Path) -> None:
    client = make_client(tmp_path, cors_origins=["https://app.example"])
    for host in ("localhost:12434", "127.0.0.1", "[::1]:80", "app.example"):
        assert client.get(PS, headers={"Host": host}).status_code == 200, host
    error = error_of(client.get(PS, headers={"Host": "evil.example:12434"}), 403)
    assert error["code"] == "host_not_allowed"
    exposed = make_client(tmp_path, host="0.0.0.0", api_key="k")
    r = exposed.get(PS, headers={"Host": "my-server.lan", "Authorization": "Bearer k"})
    assert r.status_code == 200


def test_warning_when_exposed_without_key(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="runner.api"):
        make_client(tmp_path, host="0.0.0.0")
    assert "without an API key" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runner.api"):
        make_client(tmp_path, host="0.0.0.0", api_key="k")
        make_client(tmp_path, host="127.0.0.1")
        make_client(tmp_path, host="localhost")
    assert "without an API key" not in caplog.text


# ----- the JSON guard ------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"x": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (nested(MAX_DEPTH + 1), "json_too_deep"),
        (b'{"a": ' + b"[" * 500_000, "json_too_deep"),  # unbalanced too
        (b"[" + b"0," * MAX_ITEMS + b"0]", "json_too_large"),
        (b'{"content": "caf\xe9"}', "invalid_encoding"),  # latin-1, not UTF-8
        (b'{"content": "\xed\xa0\x80"}', "invalid_encoding"),  # an encoded surrogate
        (b'{"content": "\\ud800"}', "invalid_encoding"),
        (b'{"content": "x\\udc00y"}', "invalid_encoding"),
        (b'{"content": "\\ud83d\\ud83d\\ude00"}', "invalid_encoding"),  # high, then a pair
    ],
)
def test_guard_refuses(body: bytes, code: str) -> None:
    problem = check_body(body)
    assert problem is not None and problem[1] == code, problem


@pytest.mark.parametrize(
    "body",
    [
        nested(MAX_DEPTH - 1),
        json.dumps({"content": "[[[[{{{{" * 1000 + ",,,," * 1000}).encode(),  # inside strings
        json.dumps({"content": "smile \U0001f600 \\ud800 literally"}).encode(),  # pair + text
        json.dumps({"content": 'quote \\" and [ ] in "strings"'}).encode(),
        json.dumps({"a": '\\"' + "[" * 100, "b": "\\" * 7 + "{" * 100}).encode(),
        b'{"model": "ai/gemma3", "messages": [',  # broken JSON: the route reports it
        b"[" + b"0," * (MAX_ITEMS - 2) + b"0]",
    ],
)
def test_guard_lets_through(body: bytes) -> None:
    assert check_body(body) is None


def test_outside_strings() -> None:
    raw = json.dumps({'a"[': "\\", "b": [1, ']\\"]'], "c": "\\\\"}).encode()
    outside = outside_strings(raw)
    assert outside.translate(None, b'"') == b"{: , : [1, ], : }"


@pytest.mark.parametrize(
    "body",
    [
        b'"' + b'\\"' * (5 << 20),  # an unterminated string of escaped quotes
        b'{"a": "' + b"x\\" * (5 << 20),
        b'"' * (10 << 20),
        b"[" * (5 << 20) + b"]" * (5 << 20),
        b'["' + b"\\ud83d" * (1 << 20) + b'"]',
    ],
)
def test_guard_is_linear_on_10_mib(body: bytes) -> None:
    # A regex for JSON strings took minutes on the first of these (quadratic backtracking).
    started = time.perf_counter()
    check_body(body)
    assert time.perf_counter() - started < 5


def test_guard_in_the_app(tmp_path: Path) -> None:
    client = make_client(tmp_path)
    headers = {"Content-Type": "application/json"}
    error = error_of(client.post("/engines/unload", content=nested(100), headers=headers), 400)
    assert error["code"] == "json_too_deep" and "64" in error["message"]
    bad = client.post("/engines/unload", content=b'{"models": ["\xff"]}', headers=headers)
    assert "UTF-8" in error_of(bad, 400)["message"]
    lone = client.post("/engines/unload", content=b'{"models": ["\\ud800"]}', headers=headers)
    assert "surrogate" in error_of(lone, 400)["message"]
    # A surrogate pair passes the guard; the route then judges the name itself.
    ok = client.post("/engines/unload", content=b'{"models": ["\\ud83d\\ude00"]}', headers=headers)
    assert error_of(ok, 400)["code"] == "invalid_model_name"
    create = client.post("/models/create", json={"from": "relative/model.gguf"})
    assert "absolute" in error_of(create, 400)["message"]


# ----- field ranges --------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": -0.1},
        {"temperature": 2.5},
        {"temperature": float("inf")},
        {"temperature": float("nan")},
        {"top_p": 1.5},
        {"top_k": -1},
        {"top_k": 1 << 31},
        {"min_p": 1.01},
        {"presence_penalty": 2.5},
        {"frequency_penalty": -2.5},
        {"repeat_penalty": 11},
        {"repeat_last_n": -2},
        {"repeat_last_n": 1 << 40},
        {"max_tokens": 0},
        {"max_tokens": -2},
        {"max_tokens": 1 << 31},
        {"max_completion_tokens": 1 << 40},
        {"n": 129},
        {"n": 0},
        {"seed": 1 << 64},
        {"id_slot": -2},
        {"stop": [str(i) for i in range(17)]},
        {"stop": "x" * 1025},
        {"logit_bias": {"abc": 1}},
        {"logit_bias": {"\u00b2": 1}},  # a Unicode digit int() refuses: used to be a 500
        {"logit_bias": {"9" * 5000: 1}},  # int() refuses over 4300 digits: used to be a 500
        {"logit_bias": {"1": 101}},
        {"logit_bias": {"1": float("nan")}},
    ],
)
def test_out_of_range_fields_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest(messages=MESSAGES, **fields)


def test_in_range_fields_accepted() -> None:
    body = ChatCompletionRequest(
        messages=MESSAGES,
        temperature=2,
        top_p=0,
        top_k=0,
        min_p=1,
        seed=-1,
        presence_penalty=-2,
        repeat_last_n=-1,
        max_tokens=-1,
        stop=["x" * 1024] * 16,
        logit_bias={" 42 ": -100, "7": 100},
    )
    assert body.token_bias == {42: -100, 7: 100}


# ----- checks against the model: max_tokens vs context, the penalty window -----------------


def fake_engine(ctx: int = 512) -> Any:
    return SimpleNamespace(config=SimpleNamespace(ctx_per_slot=ctx, slots=2))


def test_max_tokens_beyond_the_context_refused() -> None:
    engine = fake_engine(512)
    for field in ("max_tokens", "max_completion_tokens", "n_predict"):
        check_token_limit(ChatCompletionRequest(messages=MESSAGES, **{field: 512}), engine, "m")
        check_token_limit(ChatCompletionRequest(messages=MESSAGES, **{field: -1}), engine, "m")
        with pytest.raises(APIError, match="max_tokens is 513") as info:
            body = ChatCompletionRequest(messages=MESSAGES, **{field: 513})
            check_token_limit(body, engine, "m")
        assert info.value.status == 400 and info.value.param == "max_tokens"


@pytest.mark.parametrize(("given", "expected"), [(-1, 512), (0, 0), (64, 64), (1 << 31, 512)])
def test_engine_caps_the_penalty_window(given: int, expected: int) -> None:
    # llama.cpp allocates the window up front: 2^31 tokens used to mean gigabytes and 20 s.
    assert penalty_window(given, 512) == expected


# ----- _configure values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"context-size": float("inf")},  # int(inf) raised OverflowError: was a 500
        {"gpu-layers": float("-inf")},
        {"slots": float("nan")},
        {"keep_alive": float("nan")},
        {"similarity": float("nan")},
    ],
)
def test_non_finite_config_values_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        validate_config(changes)


def test_durations_never_overflow() -> None:
    assert parse_duration(float("inf")) == parse_duration(10**400) == -1.0  # "never"
    assert parse_duration("5m") == 300.0
    with pytest.raises(ValueError):
        parse_duration(float("nan"))
