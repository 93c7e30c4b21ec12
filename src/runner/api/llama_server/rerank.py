"""`POST /rerank` (also `/v1/rerank` and under `/engines/...`): documents ordered by a
reranker's relevance to a query, in the Cohere/Jina shape llama-server and DMR answer.

Each query-document pair is one rank-pooled decode (`Engine.embed(..., rank=True)`), run
between generation steps like embeddings. A model without rank pooling is a 400.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field, StrictStr

from runner.api.core.inference import cancel_on_disconnect, engine_of, hold_model, model_name
from runner.api.core.schemas import STRICT, RequestBody, json_body, model_field
from runner.api.errors.table import APIError
from runner.api.http.bodies import parsed

router = APIRouter()

# Documents one request may rank (each is a decode of its own).
MAX_DOCUMENTS = 1024
# Pairs tokenized on the event loop; more go to a worker thread.
INLINE_PAIRS = 16


class DocumentText(RequestBody):
    """Cohere's `{"text": ...}` form of a document."""

    model_config = STRICT
    text: str


class RerankRequest(RequestBody):
    model_config = STRICT

    model: str | None = model_field(None, blank_is_default=True)
    query: StrictStr
    documents: list[StrictStr | DocumentText] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    top_n: int | None = Field(None, ge=1, le=MAX_DOCUMENTS)
    return_documents: bool = False

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


RerankBody = Annotated[RerankRequest, Depends(parsed(RerankRequest))]


@router.post("/rerank", openapi_extra=json_body(RerankRequest))
@router.post("/reranking", openapi_extra=json_body(RerankRequest), include_in_schema=False)
async def rerank(request: Request, body: RerankBody) -> dict[str, Any]:
    texts = body.texts()
    async with hold_model(request, model_name(request, body.model)) as model:
        engine = engine_of(model)
        if not engine.can_rank:
            raise APIError(
                400,
                f"{model.name} is not a reranker: its GGUF has no rank pooling (pooling_type "
                "rank, as converted rerankers have)",
                "invalid_request",
                param="model",
            )

        def pairs() -> list[list[int]]:
            return [engine.rank_tokens(body.query, text) for text in texts]

        inputs = pairs() if len(texts) <= INLINE_PAIRS else await asyncio.to_thread(pairs)
        result = await cancel_on_disconnect(request, engine.embed(inputs, rank=True))
    scores = [vector[0] for vector in result.vectors]
    order = sorted(range(len(texts)), key=lambda i: -scores[i])  # stable: ties by index
    results = []
    for i in order[: body.top_n or len(order)]:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if body.return_documents:
            item["document"] = {"text": texts[i]}
        results.append(item)
    n_tokens = sum(result.token_counts)
    return {
        "model": model.name,
        "object": "list",
        "results": results,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
