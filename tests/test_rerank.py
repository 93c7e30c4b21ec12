"""`POST /rerank` end to end on a tiny reranker (tests/zoo_extra.py: qwen3 with rank
pooling), through real HTTP on every prefix, checked against the model's own scores
computed here directly through llama-cpp-python's C API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import pytest
from zoo_extra import extra_store

QUERY = "Which birds nest on sea cliffs?"
DOCUMENTS = [
    "Puffins and guillemots breed in dense colonies on steep coastal cliffs.",
    "The stock market closed higher on Tuesday after a volatile session.",
    "Gannets dive from great heights to catch fish near the shore.",
    "A recipe for lemon cake with a crisp sugar glaze.",
    "Kittiwakes build nests of mud and grass on narrow rock ledges.",
]


@pytest.fixture(scope="module")
def store(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extra_store(tmp_path_factory.mktemp("rerank"), bundled_model_path)


@pytest.fixture(scope="module")
def rerank_server(start_server: Callable[..., Any], store: Path) -> Any:
    server = start_server("--slots", "1", env={"RUNNER_MODELS_DIR": str(store)})
    yield server
    server.stop()


def direct_scores(path: Path, query: str, documents: list[str]) -> list[float]:
    """Each pair's score from a rank-pooling context of llama.cpp's own, one decode each:
    [BOS] query document (the Gemma vocabulary adds neither EOS nor SEP)."""
    model = llama_cpp.llama_model_load_from_file(
        str(path).encode(), llama_cpp.llama_model_default_params()
    )
    vocab = llama_cpp.llama_model_get_vocab(model)
    assert not llama_cpp.llama_vocab_get_add_eos(vocab)
    assert not llama_cpp.llama_vocab_get_add_sep(vocab)

    def tokens(text: str) -> list[int]:
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, False)
        return list(buf[:n])

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 512
    params.embeddings = True
    params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_RANK
    ctx = llama_cpp.llama_init_from_model(model, params)
    scores = []
    try:
        for document in documents:
            pair = [llama_cpp.llama_vocab_bos(vocab), *tokens(query), *tokens(document)]
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            arr = (llama_cpp.llama_token * len(pair))(*pair)
            assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(pair))) == 0
            scores.append(float(llama_cpp.llama_get_embeddings_seq(ctx, 0)[0]))
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return scores


def test_rerank_orders_documents_by_the_model_scores(rerank_server: Any, store: Path) -> None:
    expected = direct_scores(store.parent / "files" / "zoo-rerank.gguf", QUERY, DOCUMENTS)
    assert len({round(s, 4) for s in expected}) > 1  # the order below says something
    body = {"model": "zoo/rerank", "query": QUERY, "documents": DOCUMENTS}
    with httpx.Client(base_url=rerank_server.url, timeout=120) as http:
        out = http.post("/rerank", json=body).json()
        results = out["results"]
        assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
        for r in results:
            assert r["relevance_score"] == pytest.approx(expected[r["index"]], abs=1e-4)
            assert "document" not in r
        got = [r["relevance_score"] for r in results]
        assert got == sorted(got, reverse=True)
        # Where llama.cpp's scores are clearly apart, the order is theirs.
        position = {r["index"]: k for k, r in enumerate(results)}
        for a in range(len(DOCUMENTS)):
            for b in range(len(DOCUMENTS)):
                if expected[a] > expected[b] + 1e-3:
                    assert position[a] < position[b]
        assert out["usage"]["prompt_tokens"] > 0 and out["model"].startswith("zoo/rerank")

        top = {**body, "top_n": 2, "return_documents": True}
        documents = [{"text": d} for d in DOCUMENTS]  # Cohere's object form too
        for path in ("/v1/rerank", "/engines/llama.cpp/v1/rerank", "/engines/rerank"):
            for request in (top, {**top, "documents": documents}):
                r = http.post(path, json=request)
                assert r.status_code == 200, (path, r.text)
                two = r.json()["results"]
                assert [x["index"] for x in two] == [x["index"] for x in results[:2]]
                assert [x["document"]["text"] for x in two] == [DOCUMENTS[x["index"]] for x in two]


def test_hostile_rerank_requests_are_refused(rerank_server: Any) -> None:
    with httpx.Client(base_url=rerank_server.url, timeout=120) as http:
        r = http.post("/v1/rerank", json={"model": "zoo/fim", "query": "q", "documents": ["d"]})
        assert r.status_code == 400 and "not a reranker" in r.json()["error"]["message"]
        base = {"model": "zoo/rerank", "query": "q", "documents": ["d"]}
        for bad in (
            {**base, "documents": []},
            {**base, "documents": "d"},
            {**base, "documents": [1]},
            {**base, "documents": ["d"] * 2000},
            {**base, "top_n": 0},
            {**base, "query": None},
            {"model": "zoo/rerank", "documents": ["d"]},
        ):
            r = http.post("/rerank", json=bad)
            assert r.status_code in (400, 422), (bad, r.text)
            assert "error" in r.json()
        r = http.post("/rerank", json={**base, "documents": ["word " * 5000]})
        assert r.status_code == 400  # more tokens than a slot holds
