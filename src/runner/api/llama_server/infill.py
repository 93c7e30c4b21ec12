"""llama-server's `POST /infill`: code completion between a prefix and a suffix, for models
whose vocabulary has fill-in-the-middle tokens (a 400 for others). The body is llama-server's
(`input_prefix`, `input_suffix`, `input_extra`, `prompt` and the usual sampling fields); the
answer is its `/completion` object. Not streamed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field, StrictStr

from runner.api.core.inference import INLINE_LIMIT, collect, finish_error, model_name, start
from runner.api.core.schemas import STRICT, GenerationFields, RequestBody, json_body
from runner.api.errors.table import APIError
from runner.api.http.bodies import parsed
from runner.engine import Engine
from runner.loader import ResidentModel

router = APIRouter()

# Extra chunks (other files of the project) one request may carry.
MAX_EXTRA_CHUNKS = 256


class ExtraChunk(RequestBody):
    model_config = STRICT

    filename: StrictStr = "tmp"
    text: StrictStr = ""


class InfillRequest(GenerationFields):
    model_config = STRICT

    input_prefix: StrictStr = ""
    input_suffix: StrictStr = ""
    input_extra: list[ExtraChunk] = Field(default_factory=list, max_length=MAX_EXTRA_CHUNKS)
    prompt: StrictStr = ""  # text the middle starts with (after the prefix)

    def n_chars(self) -> int:
        extra = sum(len(c.text) + len(c.filename) for c in self.input_extra)
        return len(self.input_prefix) + len(self.input_suffix) + len(self.prompt) + extra


InfillBody = Annotated[InfillRequest, Depends(parsed(InfillRequest))]


@router.post("/infill", openapi_extra=json_body(InfillRequest))
async def infill(request: Request, body: InfillBody) -> dict[str, Any]:
    if body.stream:
        raise APIError(400, "streamed infill is not supported; send stream: false", param="stream")
    if (body.n or 1) > 1:
        raise APIError(400, "infill makes one completion (n must be 1)", param="n")
    extra = [(c.filename, c.text) for c in body.input_extra]

    async def prompt_of(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        # No size check before tokenizing: the prefix and suffix are cut to fit, as in
        # llama-server (the body limit bounds the work).
        def build() -> list[int]:
            limit = body.token_limit()
            return engine.infill_tokens(
                body.input_prefix, body.input_suffix, extra, body.prompt,
                -1 if limit is None else limit,
            )  # fmt: skip

        tokens = build() if body.n_chars() <= INLINE_LIMIT else await asyncio.to_thread(build)
        return tokens, ()

    gen = await start(request, model_name(request, body.model), prompt_of, body, "infill-")
    text, final = await collect(request, gen)
    error = finish_error(final)
    if error is not None:
        raise error
    if final.finish_reason == "cancelled":
        raise APIError(499, "the request was cancelled", "cancelled")
    stop_type = (
        "word" if final.stop_word else ("limit" if final.finish_reason == "length" else "eos")
    )
    return {
        "content": text,
        "model": gen.model.name,
        "id_slot": final.slot_id,
        "stop": True,
        "stop_type": stop_type,
        "stopping_word": final.stop_word or "",
        "tokens_predicted": final.completion_tokens,
        "tokens_evaluated": final.prompt_tokens,
        "tokens_cached": final.timings.cache_n,
        "truncated": False,
        "timings": final.timings.to_dict(),
    }
