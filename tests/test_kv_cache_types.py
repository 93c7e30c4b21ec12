"""KV cache types (`--cache-type-k/-v`, `_configure`'s `cache-type-k/-v` and DMR's `-ctk/-ctv`
runtime flags), and `_configure` refusing what it does not know.

A saved state belongs to the context that wrote it: cache entries, disk files and slot files
are keyed by the K/V types, so a state written by an f16 context never reaches a q8_0 one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from model_zoo import zoo_store
from pydantic import ValidationError

from runner.config import KV_CACHE_TYPES, Settings
from runner.engine import EngineConfig
from runner.memory import estimate
from runner.model_config import validate_config
from runner.store.gguf_meta import GGUFMetadata

# ----- settings and _configure values (no model) ---------------------------------------------


def test_unknown_configure_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown setting 'flash-attn'"):
        validate_config({"model": "x", "flash-attn": True})
    with pytest.raises(ValueError, match="'mode' must be one of"):
        validate_config({"model": "x", "mode": "reranking"})
    assert validate_config({"model": "x", "mode": "embedding", "slots": 2}) == {"slots": 2}


def test_cache_types_from_keys_and_runtime_flags() -> None:
    flags = ["-ctk", "q8_0", "--cache-type-v=Q4_0"]
    assert validate_config({"runtime-flags": flags}) == {
        "cache-type-k": "q8_0",
        "cache-type-v": "q4_0",
    }
    assert validate_config({"cache_type_k": "IQ4_NL"}) == {"cache-type-k": "iq4_nl"}
    with pytest.raises(ValueError, match="'cache-type-v' must be one of"):
        validate_config({"runtime-flags": ["-ctv", "q3_k"]})


def test_settings_take_every_llama_cpp_cache_type() -> None:
    for name in KV_CACHE_TYPES:
        assert Settings(cache_type_k=name.upper(), cache_type_v=name).cache_type_k == name
    with pytest.raises(ValidationError, match="invalid KV cache type"):
        Settings(cache_type_v="q2_k")


def test_states_of_other_types_never_match() -> None:
    f16 = EngineConfig()
    assert f16.kv_key() != EngineConfig(cache_type_k="q8_0").kv_key()
    assert EngineConfig(cache_type_v="q8_0").kv_key() != EngineConfig(cache_type_k="q8_0").kv_key()


def test_memory_estimate_counts_the_cache_types() -> None:
    meta = GGUFMetadata(
        architecture="llama",
        parameter_count=1,
        quantization="Q4_0",
        block_count=32,
        embedding_length=4096,
        head_count=32,
        head_count_kv=8,
        vocab_size=32000,
    )
    f16 = estimate(meta, 1 << 30, EngineConfig(slots=2, ctx_per_slot=8192)).kv_cache
    q8 = EngineConfig(slots=2, ctx_per_slot=8192, cache_type_k="q8_0", cache_type_v="q8_0")
    assert f16 == 32 * 8 * 128 * 2 * 2 * 16384  # layers x KV heads x (K + V) x f16 x tokens
    assert estimate(meta, 1 << 30, q8).kv_cache == f16 * 34 // 64  # 34 bytes per 32 values


# ----- a real server ---------------------------------------------------------------------------

PROMPT = "Tide tables, ferry times and the price of apples in the harbour market. " * 12


def _complete(url: str, **extra: Any) -> dict[str, Any]:
    body = {"model": "zoo/dense", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    r = httpx.post(url + "/v1/completions", json={**body, **extra, "ignore_eos": True}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def zoo_models(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zoo_store(tmp_path_factory.mktemp("zoo"), bundled_model_path, ["dense"])


def test_quantized_cache_from_settings_keeps_answers_exact(
    start_server: Callable[..., Any], zoo_models: Path
) -> None:
    env = {
        "RUNNER_MODELS_DIR": str(zoo_models),
        "RUNNER_CACHE_TYPE_K": "q8_0",
        "RUNNER_CACHE_TYPE_V": "q8_0",
    }
    server = start_server("--slots", "1", "--draft-max", "0", env=env)
    uncached = _complete(server.url, cache_prompt=False)
    _complete(server.url, prompt=PROMPT + " warm")
    cached = _complete(server.url)
    assert cached["timings"]["cache_n"] > 0
    assert cached["choices"][0]["text"] == uncached["choices"][0]["text"]
    server.stop()


def test_configured_types_key_every_saved_state(
    start_server: Callable[..., Any], zoo_models: Path
) -> None:
    server = start_server("--slots", "1", env={"RUNNER_MODELS_DIR": str(zoo_models)})
    url = server.url
    with httpx.Client(base_url=url, timeout=60) as http:
        bad = http.post("/engines/_configure", json={"model": "zoo/dense", "flash-attn": "on"})
        assert bad.status_code == 400 and "unknown setting 'flash-attn'" in bad.text
        f16 = _complete(url)
        saved = http.post("/slots/0?action=save&model=zoo/dense", json={"filename": "f16"})
        assert saved.status_code == 200, saved.text
        flags = ["-ctk", "q8_0", "-ctv", "q8_0"]
        r = http.post("/engines/_configure", json={"model": "zoo/dense", "runtime-flags": flags})
        assert r.status_code == 202, r.text
        # The f16 prefix went to disk at the unload; the q8_0 context finds nothing of it.
        q8 = _complete(url)
        assert q8["timings"]["cache_n"] == 0 and q8["timings"]["cache_source"] == "none"
        assert _complete(url)["timings"]["cache_source"] == "slot"
        (row,) = http.get("/engines/ps").json()  # the one model loaded
        assert (row["cache_type_k"], row["cache_type_v"]) == ("q8_0", "q8_0")
        spec = http.get("/openapi.json").json()
        route = spec["paths"]["/engines/_configure"]["post"]
        body = route["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in body:
            body = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
        assert "q8_0" in body["properties"]["cache-type-k"]["anyOf"][0]["enum"]
        assert body.get("additionalProperties") is False
        restore = http.post("/slots/0?action=restore&model=zoo/dense", json={"filename": "f16"})
        assert restore.status_code in (400, 409), restore.text
        assert f16["choices"][0]["text"]  # both contexts answered
    server.stop()
