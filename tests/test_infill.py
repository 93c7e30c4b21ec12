"""llama-server's `POST /infill` end to end on a tiny model with fill-in-the-middle tokens
(tests/zoo_extra.py), through real HTTP: the prompt layout is checked by answering the same
token list through `/v1/completions`, and a model without FIM tokens is a 400."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from zoo_extra import FIM_TOKENS, extra_store

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n    return total\n"


@pytest.fixture(scope="module")
def infill_server(
    start_server: Callable[..., Any],
    bundled_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    store = extra_store(tmp_path_factory.mktemp("infill"), bundled_model_path)
    server = start_server(
        "--slots", "1", "--ctx-size", "1024", env={"RUNNER_MODELS_DIR": str(store)}
    )
    yield server
    server.stop()


def test_infill_answers_the_fim_prompt(infill_server: Any) -> None:
    sampling = {"n_predict": 8, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=infill_server.url, timeout=120) as http:

        def tokens(text: str, special: bool = False) -> list[int]:
            body = {"model": "zoo/fim", "content": text, "add_special": special}
            return http.post("/tokenize", json=body).json()["tokens"]

        bos = tokens("x", special=True)[0]
        layout = [
            bos, FIM_TOKENS["fim_pre"], *tokens(PREFIX), *tokens("x = "),
            FIM_TOKENS["fim_suf"], *tokens(SUFFIX), FIM_TOKENS["fim_mid"],
        ]  # fmt: skip
        body = {
            "model": "zoo/fim",
            "input_prefix": PREFIX,
            "input_suffix": SUFFIX,
            "prompt": "x = ",
        }
        r = http.post("/infill", json={**body, **sampling})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["tokens_predicted"] == 8 and out["stop_type"] == "limit"
        assert out["tokens_evaluated"] == len(layout)
        same = http.post(
            "/v1/completions", json={"model": "zoo/fim", "prompt": layout, "max_tokens": 8,
                                     "temperature": 0, "ignore_eos": True},
        )  # fmt: skip
        assert same.status_code == 200, same.text
        assert out["content"] == same.json()["choices"][0]["text"]
        extra = [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}]
        r = http.post("/infill", json={**body, **sampling, "input_extra": extra})
        assert r.status_code == 200, r.text


def test_hostile_infill_requests_are_refused(infill_server: Any) -> None:
    with httpx.Client(base_url=infill_server.url, timeout=120) as http:
        r = http.post("/infill", json={"model": "zoo/rerank", "input_prefix": "a", "n_predict": 2})
        assert r.status_code == 400 and "fill-in-the-middle" in r.json()["error"]["message"]
        base = {"model": "zoo/fim", "input_prefix": "a", "n_predict": 2}
        for bad in (
            {**base, "input_prefix": 5},
            {**base, "input_extra": "text"},
            {**base, "input_extra": [{"text": 1}]},
            {**base, "input_extra": [{"text": "t"}] * 300},
            {**base, "stream": True},
            {**base, "n_predict": 10**6},
        ):
            r = http.post("/infill", json=bad)
            assert r.status_code in (400, 422), (bad, r.text)
            assert "error" in r.json()
