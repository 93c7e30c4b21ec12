"""LoRA adapters end to end: `--lora`, `_configure` (runtime flags `--lora`/`--lora-scaled`),
llama-server's `GET/POST /lora-adapters` and per-request `lora`, through real HTTP.

The adapters are written for the bundled Gemma (tests/lora_gguf.py): one whose B matrices
are zero (its product is exactly zero: the base model's answer token for token, whatever
its scale) and a random one that changes answers. Prefix reuse is checked through
`cached_tokens`: KV computed with one adapter set never serves another.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from lora_gguf import write_lora
from model_zoo import zoo_store

# Long enough to be reused from a slot (several whole blocks past `min_restore_tokens`).
PROMPT = (
    "A field guide to the birds of the northern coast, chapter one: the gulls, terns and "
    "their relatives, how to tell them apart at a distance, where they nest and what they "
    "eat through the seasons of the year, with notes on the weather. "
) * 3


@pytest.fixture(scope="module")
def adapters(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lora")
    return {
        "real": write_lora(bundled_model_path, folder / "real.gguf", b_std=0.05),
        "zero": write_lora(bundled_model_path, folder / "zero.gguf", b_std=0.0),
        "llama": write_lora(bundled_model_path, folder / "llama.gguf", arch="llama"),
    }


@pytest.fixture(scope="module")
def lora_server(start_server: Callable[..., Any], adapters: dict[str, Path]) -> Any:
    # id 0: the real adapter, id 1: the zero one; both loaded at scale 0 (the base model).
    server = start_server(
        "--model", "ai/gemma3", "--slots", "2", "--ctx-size", "1024", "--draft-max", "0",
        "--lora", f"{adapters['real']}:0", "--lora", f"{adapters['zero']}:0",
        "--lora", str(adapters["llama"]),  # another architecture: not loaded with Gemma
    )  # fmt: skip
    yield server
    server.stop()


def _answer(client: openai.OpenAI, lora: list[dict[str, Any]] | None = None) -> tuple[str, int]:
    extra: dict[str, Any] = {"ignore_eos": True}
    if lora is not None:
        extra["lora"] = lora
    out = client.completions.create(
        model="ai/gemma3", prompt=PROMPT, max_tokens=12, temperature=0, extra_body=extra
    )
    assert out.usage is not None and out.usage.prompt_tokens_details is not None
    return out.choices[0].text, out.usage.prompt_tokens_details.cached_tokens or 0


def test_adapters_change_answers_and_never_share_kv(lora_server: Any) -> None:
    client = openai.OpenAI(base_url=lora_server.base_url, api_key="x", max_retries=0)
    base, _ = _answer(client)
    again, cached = _answer(client)
    assert again == base and cached > 0  # the prefix is reusable: the checks below can fail

    real, cached = _answer(client, [{"id": 0, "scale": 1.0}])
    assert real != base
    assert cached == 0  # the base model's KV of the same prompt is not the adapter's
    real_again, cached = _answer(client, [{"id": 0, "scale": 1.0}])
    assert real_again == real and cached > 0

    zero_weights, cached = _answer(client, [{"id": 1, "scale": 1.0}])
    assert zero_weights == base and cached == 0  # another set: computed, same tokens
    zero_scale, cached = _answer(client, [{"id": 0, "scale": 0.0}])
    assert zero_scale == base and cached > 0  # scale 0 is the base set itself
    assert _answer(client, [])[0] == base  # an empty list: the model's current scales

    # Rows of different sets in one step are decoded apart: each equals its answer alone.
    sets: list[list[dict[str, Any]] | None] = [None, [{"id": 0, "scale": 1.0}]] * 2
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda lora: _answer(client, lora)[0], sets))
    assert answers == [base, real, base, real]


def test_lora_adapters_route_rescales_the_default(lora_server: Any) -> None:
    client = openai.OpenAI(base_url=lora_server.base_url, api_key="x", max_retries=0)
    with httpx.Client(base_url=lora_server.url, timeout=120) as http:
        listed = http.get("/lora-adapters").json()
        assert [(a["id"], Path(a["path"]).name, a["scale"]) for a in listed] == [
            (0, "real.gguf", 0.0),
            (1, "zero.gguf", 0.0),
        ]
        base = _answer(client)[0]
        real = _answer(client, [{"id": 0, "scale": 1.0}])[0]
        r = http.post("/lora-adapters", json=[{"id": 0, "scale": 1.0}])
        assert r.status_code == 200 and r.json() == {"success": True}
        assert http.get("/lora-adapters").json()[0]["scale"] == 1.0
        assert _answer(client)[0] == real
        assert http.post("/lora-adapters", json=[]).status_code == 200  # all back to 0
        assert _answer(client)[0] == base
        bad = http.post("/lora-adapters", json=[{"id": 7, "scale": 1.0}])
        assert bad.status_code == 400 and "no LoRA adapter with id 7" in bad.text
        for body in ([{"id": 0, "scale": "x"}], {"id": 0}, [{"id": -1, "scale": 1}]):
            assert http.post("/lora-adapters", json=body).status_code in (400, 422)


def test_hostile_lora_requests_are_refused(lora_server: Any) -> None:
    client = openai.OpenAI(base_url=lora_server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="no LoRA adapter with id 5"):
        _answer(client, [{"id": 5, "scale": 1.0}])
    with pytest.raises(openai.BadRequestError, match="lora"):
        _answer(client, [{"id": 0, "scale": 1e9}])
    for lora in ([{"id": "0", "scale": 1}], [{"id": 0, "scale": "inf"}], "0", [{"scale": 1}]):
        with pytest.raises((openai.BadRequestError, openai.UnprocessableEntityError)):
            _answer(client, lora)  # type: ignore[arg-type]
    r = httpx.post(
        lora_server.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "lora": [{"id": 9, "scale": 1}]},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("no LoRA adapter")


@pytest.fixture(scope="module")
def zoo_models(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zoo_store(tmp_path_factory.mktemp("zoo"), bundled_model_path, ["dense"])


def test_configured_adapters_key_the_prompt_cache(
    start_server: Callable[..., Any], zoo_models: Path, adapters: dict[str, Path]
) -> None:
    dense = zoo_models.parent / "files" / "zoo-dense.gguf"
    folder = adapters["real"].parent
    real = write_lora(dense, folder / "dense-real.gguf", b_std=0.5)
    server = start_server(
        "--slots", "1", "--draft-max", "0", "--allow-import", str(folder),
        env={"RUNNER_MODELS_DIR": str(zoo_models)},
    )  # fmt: skip
    body = {"model": "zoo/dense", "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    with httpx.Client(base_url=server.url, timeout=120) as http:

        def complete() -> dict[str, Any]:
            r = http.post("/v1/completions", json={**body, "ignore_eos": True})
            assert r.status_code == 200, r.text
            return r.json()

        base = complete()
        assert complete()["timings"]["cache_n"] > 0
        # A Gemma adapter for the llama model, a file that is no adapter, one outside the
        # import directories: 400 each, nothing stored.
        for spec in (adapters["real"], dense, "/etc/hostname"):
            r = http.post("/engines/_configure", json={"model": "zoo/dense", "lora": [str(spec)]})
            assert r.status_code == 400, r.text
        flags = ["--lora-scaled", str(real), "1.0"]
        r = http.post("/engines/_configure", json={"model": "zoo/dense", "runtime-flags": flags})
        assert r.status_code == 202, r.text
        assert r.json()["config"]["lora"] == [f"{real}:1.0"]
        adapted = complete()
        # The base prefix went to the prompt cache at the unload; the adapted model's key
        # is another, so nothing of it is restored.
        assert adapted["timings"]["cache_n"] == 0
        assert adapted["choices"][0]["text"] != base["choices"][0]["text"]
        assert http.get("/lora-adapters?model=zoo/dense").json()[0]["scale"] == 1.0
        saved = http.post("/slots/0?action=save&model=zoo/dense", json={"filename": "adapted"})
        assert saved.status_code == 200, saved.text
        r = http.post("/engines/_configure", json={"model": "zoo/dense", "lora": []})
        assert r.status_code == 202, r.text
        restore = http.post("/slots/0?action=restore&model=zoo/dense", json={"filename": "adapted"})
        assert restore.status_code >= 400  # saved with the adapter: not this model's KV
        assert complete()["choices"][0]["text"] == base["choices"][0]["text"]
    server.stop()
