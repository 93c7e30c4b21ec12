"""Errors in OpenAI's shape with the right statuses; the server keeps serving after each."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "ai/gemma3"
MESSAGES = [{"role": "user", "content": "Hi"}]


def _chat(server, body: object = None, **kwargs) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.post(server.base_url + "/chat/completions", timeout=120, **kwargs)


def _assert_error(r: httpx.Response, status: int, type_: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert {"message", "type", "code"} <= err.keys()
    if type_ is not None:
        assert err["type"] == type_
    return err


@pytest.fixture(autouse=True)
def still_serving(server):
    yield
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_malformed_json(server) -> None:
    r = _chat(
        server,
        content=b'{"model": "ai/gemma3", "messages": [',
        headers={"content-type": "application/json"},
    )
    err = _assert_error(r, 400, "invalid_request_error")
    assert "JSON" in err["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "messages": "nope"},
        {"model": MODEL, "messages": []},
        {"model": MODEL, "messages": MESSAGES, "temperature": "hot"},
        {"model": MODEL, "messages": MESSAGES, "max_tokens": -5},
        {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        {"model": MODEL, "messages": MESSAGES, "logit_bias": {"abc": 1}},
        {"model": MODEL, "messages": MESSAGES, "stop": [str(i) for i in range(17)]},
        {"model": MODEL, "messages": MESSAGES, "response_format": {"type": "xml"}},
        {"model": MODEL, "messages": MESSAGES, "top_logprobs": 2},
        [1, 2, 3],
    ],
)
def test_wrong_types(server, body) -> None:
    _assert_error(_chat(server, body), 400, "invalid_request_error")


def test_n_above_the_slot_count(server) -> None:
    err = _assert_error(_chat(server, {"model": MODEL, "messages": MESSAGES, "n": 5}), 400)
    assert "n must be" in err["message"]


def test_a_grammar_that_ends_early_ends_the_answer(server) -> None:
    """Once the grammar is complete only an end of generation fits; the server must stop
    the answer, not hand llama.cpp a token the grammar refuses (which aborts the process)."""
    body = {
        "model": MODEL, "messages": MESSAGES, "max_tokens": 6,
        "grammar": 'root ::= "yes" <end_of_turn>',
    }  # fmt: skip
    r = _chat(server, body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "yes"


def test_unknown_model_lists_available(server) -> None:
    err = _assert_error(_chat(server, {"model": "ai/nope", "messages": MESSAGES}), 404)
    assert err["code"] == "model_not_found"
    assert "ai/gemma3:270m" in err["message"]
    r = httpx.get(server.base_url + "/models/ai/nope")
    assert "ai/gemma3" in _assert_error(r, 404)["message"]


def test_logit_bias_outside_vocab(server) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "logit_bias": {"999999999": 1}}
    _assert_error(_chat(server, body), 400)


def test_prompt_too_long(server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 2500}]}
    err = _assert_error(_chat(server, body), 400, "invalid_request_error")
    assert err["code"] == "context_length_exceeded"
    completion = {"model": MODEL, "prompt": "hello " * 2500, "max_tokens": 1}
    r = httpx.post(server.base_url + "/completions", json=completion, timeout=120)
    _assert_error(r, 400)


@pytest.mark.parametrize("stream", [False, True])
def test_unparsable_raw_grammar_is_400_streamed_or_not(server, stream: bool) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    ask = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": stream}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**ask, extra_body={"grammar": "root ::= ("})
    assert info.value.status_code == 400
    assert info.value.body["code"] == "invalid_grammar"
    # A grammar that parses only with the model's vocabulary (a token named by its text);
    # one token of output, so the answer stops well before the grammar is complete.
    good = 'root ::= "yes" <end_of_turn>'
    ask["max_tokens"] = 1
    answer = client.chat.completions.create(**ask, extra_body={"grammar": good})
    if stream:
        assert list(answer)
    else:
        assert answer.choices[0].message.content is not None


def test_body_over_limit_by_content_length(server) -> None:
    payload = json.dumps({"model": MODEL, "messages": MESSAGES, "pad": "x" * (11 << 20)})
    r = _chat(server, content=payload.encode(), headers={"content-type": "application/json"})
    err = _assert_error(r, 413)
    assert "limit" in err["message"]


def test_body_over_limit_chunked(server) -> None:
    def chunks():
        yield b'{"model": "ai/gemma3", "pad": "'
        for _ in range(11):
            yield b"x" * (1 << 20)
        yield b'"}'

    r = _chat(server, content=chunks(), headers={"content-type": "application/json"})
    _assert_error(r, 413)


def test_unknown_route_and_method(server) -> None:
    _assert_error(httpx.get(server.url + "/v1/nothing-here"), 404)
    _assert_error(httpx.get(server.base_url + "/chat/completions"), 405)


def test_tokenize_errors(server) -> None:
    _assert_error(httpx.post(server.url + "/tokenize", json={"text": "x"}), 400)
    r = httpx.post(server.url + "/detokenize", json={"tokens": [-1]}, timeout=30)
    _assert_error(r, 400)


def test_still_generates_after_errors(server) -> None:
    r = _chat(server, {"model": MODEL, "messages": MESSAGES, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


# ----- queue full -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_slot_server(start_server):
    handle = start_server(
        "--model", MODEL, "--slots", "1", "--queue-size", "0", "--ctx-size", "1024"
    )
    yield handle
    handle.stop()


def test_queue_full_503(server, one_slot_server) -> None:
    url = one_slot_server.base_url + "/chat/completions"
    long_body = {
        "model": MODEL, "messages": MESSAGES, "max_tokens": 500, "stream": True,
        "ignore_eos": True,  # a base model may stop at once, freeing the slot too early
    }  # fmt: skip
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", url, json=long_body) as stream:
            assert stream.status_code == 200
            # Wait for real content: the request then certainly holds the only slot.
            for line in stream.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        break
            else:
                pytest.fail("the stream ended before the queue-full check")
            r = client.post(url, json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1})
            err = _assert_error(r, 503, "unavailable_error")
            assert r.headers["retry-after"].isdigit()
            assert err["code"] == "server_busy"
        # The stream was dropped: its slot frees up and the server serves again.
        deadline = time.monotonic() + 30
        while True:
            r = client.post(url, json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
