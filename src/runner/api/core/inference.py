"""What every inference route does: pick the model, hold it, build the engine request,
submit it, and collect or stream the events. Handlers never touch llama.cpp."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from fastapi import Request
from sse_starlette.sse import AppStatus

from runner import __version__
from runner.api.core.schemas import GenerationFields
from runner.api.errors.table import APIError
from runner.api.state import loader_of, settings_of
from runner.chat import grammar_for, validate_gbnf
from runner.engine import (
    Engine,
    EngineError,
    FinishEvent,
    GenerationRequest,
    RequestHandle,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from runner.loader import ResidentModel
from runner.store import BUNDLED_TAGS

SYSTEM_FINGERPRINT = f"runner-{__version__}"
_T = TypeVar("_T")
# Builds a request's prompt on the held model: (prompt tokens, extra stop strings).
PromptBuilder = Callable[[ResidentModel, Engine], Awaitable[tuple[list[int], Sequence[str]]]]
# Texts above this many characters are tokenized (and templates rendered) on a worker thread
# so one huge prompt does not stall every other stream on the event loop.
INLINE_LIMIT = 16 * 1024
# How often a request checks whether the server is shutting down.
SHUTDOWN_POLL_SECONDS = 0.5


def model_name(request: Request, requested: str | None) -> str:
    """The model a request means: its own `model`, else the first preloaded, else the bundled."""
    if requested and requested.strip():
        return requested.strip()
    preloaded = settings_of(request).model
    return preloaded[0] if preloaded else BUNDLED_TAGS[-1]


def hold_model(
    request: Request, name: str, context_size: int | None = None
) -> contextlib.AbstractAsyncContextManager[ResidentModel]:
    """`loader.use(name)`: the model stays loaded while the context is open. An unknown name
    raises `ModelNotFound`, which the error handler reports listing the models there are.
    `context_size` asks for a load with that many tokens per slot (see `Loader.use`)."""
    return loader_of(request).use(name, context_size)


def preload_only(request: Request) -> bool:
    """DMR's `X-Preload-Only: true`: load the model, generate nothing."""
    return request.headers.get("x-preload-only", "").strip().lower() in {"1", "true", "yes"}


def engine_of(model: ResidentModel) -> Engine:
    if model.engine is None:  # unloaded between acquire and use: cannot happen while held
        raise APIError(503, f"model {model.name} is not loaded", "model_unloaded")
    return model.engine


async def tokenize(
    engine: Engine, text: str, add_special: bool = True, parse_special: bool = True
) -> list[int]:
    if len(text) <= INLINE_LIMIT:
        return engine.tokenize(text, add_special, parse_special)
    return await asyncio.to_thread(engine.tokenize, text, add_special, parse_special)


async def tokenize_prompt(engine: Engine, text: str) -> list[int]:
    """A prompt's tokens (BOS added, special tokens parsed); one that cannot fit a slot is
    refused before it is tokenized (`Engine.tokenize_prompt`)."""
    if len(text) <= INLINE_LIMIT:
        return engine.tokenize_prompt(text)
    return await asyncio.to_thread(engine.tokenize_prompt, text)


def sampling_from(body: GenerationFields) -> SamplingParams:
    """Engine sampling params; unset fields keep `SamplingParams`' llama-server defaults."""
    defaults = SamplingParams()
    grammar = grammar_for(body.response_format, grammar=body.grammar, json_schema=body.json_schema)

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    seed = body.seed
    return SamplingParams(
        temperature=pick(body.temperature, defaults.temperature),
        top_k=pick(body.top_k, defaults.top_k),
        top_p=pick(body.top_p, defaults.top_p),
        min_p=pick(body.min_p, defaults.min_p),
        seed=None if seed is None or seed < 0 else seed & 0xFFFFFFFF,
        repeat_penalty=pick(body.repeat_penalty, defaults.repeat_penalty),
        repeat_last_n=pick(body.repeat_last_n, defaults.repeat_last_n),
        presence_penalty=pick(body.presence_penalty, defaults.presence_penalty),
        frequency_penalty=pick(body.frequency_penalty, defaults.frequency_penalty),
        logit_bias=body.token_bias,
        grammar=grammar,
    )


def generation_request(
    body: GenerationFields, prompt: list[int], extra_stops: Sequence[str] = ()
) -> GenerationRequest:
    stops = body.stop_list
    stops += [s for s in extra_stops if s not in stops]
    sampling = sampling_from(body)
    sampling.n_probs = body.logprob_alternatives()
    return GenerationRequest(
        prompt_tokens=prompt,
        sampling=sampling,
        max_tokens=body.token_limit(),
        stop=stops,
        ignore_eos=bool(body.ignore_eos),
        cache_prompt=body.cache_prompt is not False,
        id_slot=-1 if body.id_slot is None else body.id_slot,
        # An empty list is the model's current adapters, as in llama-server.
        lora=tuple((a.id, a.scale) for a in body.lora) if body.lora else None,
    )


def apply_default_limit(
    engine_request: GenerationRequest, body: GenerationFields, default: int
) -> None:
    """A request that names no output limit gets the server's (`--max-tokens-default`, as
    llama-server's `n_predict`); one that asks for -1 explicitly keeps "no limit"."""
    if engine_request.max_tokens is not None or default <= 0:
        return
    fields = ("max_tokens", "n_predict", "max_completion_tokens")
    if any((getattr(body, f, None) or 0) < 0 for f in fields):
        return
    engine_request.max_tokens = default


def check_token_limit(body: GenerationFields, engine: Engine, name: str) -> None:
    """400 for a max_tokens no request could reach: above what a slot holds. A prompt plus
    output that outgrow the slot just end with finish_reason "length" (as in llama-server)."""
    limit = body.token_limit()
    n_ctx = engine.config.ctx_per_slot
    if limit is not None and limit > n_ctx:
        raise APIError(
            400,
            f"max_tokens is {limit} but a slot of {name} holds {n_ctx} tokens (prompt plus "
            "output); lower it or raise the context size",
            "invalid_request",
            param="max_tokens",
        )


async def check_grammar(grammar: str | None, engine: Engine) -> None:
    """Parse the request's grammar with llama.cpp now, so a bad one is a 400 whether or not
    the answer is streamed (the engine only builds the sampler after a stream's 200 is out).
    Reading the vocabulary is safe from any thread (`LlamaModel`)."""
    if not grammar:
        return
    limit = engine.config.max_grammar_bytes  # checked first: parsing a huge one is the cost
    if len(grammar) <= INLINE_LIMIT:
        validate_gbnf(grammar, engine.vocab, limit)
    else:
        await asyncio.to_thread(validate_gbnf, grammar, engine.vocab, limit)


def usage(final: FinishEvent, *more: FinishEvent | None) -> dict[str, Any]:
    """OpenAI's usage; with `n` choices, `more` are the others (the prompt counts once)."""
    completion = final.completion_tokens + sum(f.completion_tokens for f in more if f)
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": final.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": final.timings.cache_n},
    }


def finish_error(final: FinishEvent) -> Exception | None:
    """Why the engine ended a request with `error` (for `errors.describe`), else None."""
    if final.finish_reason != "error":
        return None
    return final.error or EngineError("generation failed")


@dataclass(eq=False)
class Generation:
    """A submitted request plus the model hold that keeps its engine alive until `close`.
    `handle` is the first (usually only) choice; `handles` all of them (OpenAI's `n`)."""

    model: ResidentModel
    handle: RequestHandle
    hold: contextlib.AsyncExitStack
    id: str
    created: int = field(default_factory=lambda: int(time.time()))
    closed: bool = False
    handles: list[RequestHandle] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)  # filled by `collect`

    def __post_init__(self) -> None:
        self.handles = self.handles or [self.handle]

    def envelope(self, obj: str, choices: list[Any]) -> dict[str, Any]:
        """OpenAI's fields around `choices`, the same in a response and in its chunks."""
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model.name,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }

    async def close(self) -> None:
        """Cancel (if still running) and release the model. Idempotent; shielded because it
        often runs inside a cancelled scope (client gone), where any await would re-raise."""
        if self.closed:
            return
        self.closed = True
        for handle in self.handles:
            handle.cancel()
        with anyio.CancelScope(shield=True):
            await self.hold.aclose()


async def start(
    request: Request,
    name: str,
    prompt_of: PromptBuilder,
    body: GenerationFields,
    id_prefix: str,
    customize: Callable[[GenerationRequest], None] | None = None,
    context_size: int | None = None,
    dialect: str = "",
) -> Generation:
    """Hold `name`, build the prompt with `await prompt_of(model)` -> (tokens, extra stops),
    let `customize` adjust the engine request (tool grammars...), and submit. Every error
    before the stream starts is raised here, as an HTTP error. `dialect` names the API that
    asked, in the request's log line."""
    stack = contextlib.AsyncExitStack()
    try:
        model = await stack.enter_async_context(hold_model(request, name, context_size))
        engine = engine_of(model)
        check_token_limit(body, engine, model.name)
        tokens, stops = await prompt_of(model, engine)
        engine_request = generation_request(body, tokens, stops)
        engine_request.dialect = dialect
        apply_default_limit(engine_request, body, settings_of(request).max_tokens_default)
        if customize is not None:
            customize(engine_request)
        await check_grammar(engine_request.sampling.grammar, engine)
        n = getattr(body, "n", None) or 1
        if n > 1:
            handles = engine.submit_choices(engine_request, n)
        else:
            handles = [engine.submit(engine_request)]
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stack.aclose()
        raise
    gen_id = id_prefix + secrets.token_urlsafe(24)
    return Generation(model, handles[0], stack, gen_id, handles=handles)


@dataclass
class Choice:
    """One collected choice: its text, log-probabilities (if asked for) and finish."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    final: FinishEvent | None = None


async def on_disconnect(request: Request, then: Callable[[], None]) -> None:
    """Call `then` when the client hangs up. Only for handlers that have read their whole
    body: the next message can then only be the disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            then()
            return


async def after_shutdown_grace(grace: float, then: Callable[[], None]) -> None:
    """Call `then` once the server has been shutting down for `grace` seconds. Without this a
    non-streamed request still running then is cancelled by uvicorn, whose answer is a 500.
    sse-starlette raises `AppStatus.should_exit` when uvicorn gets its exit signal (it is
    what ends the SSE streams); plain responses have no such hook of their own."""
    while not AppStatus.should_exit:
        await anyio.sleep(SHUTDOWN_POLL_SECONDS)
    await anyio.sleep(grace)
    then()


def shutdown_error(grace: float) -> APIError:
    """The dialect's 503 for a request cut off by shutdown (streams send the same words)."""
    return APIError(
        503,
        f"the server is shutting down; this request ran past the {grace:g} s shutdown grace "
        "and was ended before it finished",
        "server_shutting_down",
    )


async def collect(request: Request, gen: Generation) -> tuple[str, FinishEvent]:
    """Run a non-streamed request to the end (every choice, into `gen.choices`); a client
    that hangs up cancels it. Returns the first choice's text and finish."""

    def cancel_all() -> None:
        for handle in gen.handles:
            handle.cancel()

    async def drain(handle: RequestHandle, choice: Choice) -> None:
        parts: list[str] = []
        async for event in handle:
            if isinstance(event, TokenEvent):
                parts.append(event.text)
                choice.logprobs.extend(event.logprobs)
            else:
                choice.final = event
        choice.text = "".join(parts)

    gen.choices = [Choice() for _ in gen.handles]
    drains = asyncio.gather(*(drain(h, c) for h, c in zip(gen.handles, gen.choices, strict=True)))
    grace = settings_of(request).shutdown_grace
    cut = False

    def cut_off() -> None:
        # Answer now: the engine may need a while to end a long step (a cold prompt).
        nonlocal cut
        cut = True
        cancel_all()
        drains.cancel()

    loop = asyncio.get_running_loop()
    watchers = (
        loop.create_task(on_disconnect(request, cancel_all)),
        loop.create_task(after_shutdown_grace(grace, cut_off)),
    )
    try:
        try:
            await drains
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not cut or getattr(current, "cancelling", lambda: 0)():  # not (only) ours
                raise
            raise shutdown_error(grace) from None
        first = gen.choices[0]
        if first.final is None:
            raise APIError(500, "the engine ended the request without a result", "engine_error")
        return first.text, first.final
    finally:
        for watcher in watchers:
            watcher.cancel()
        await gen.close()


async def cancel_on_disconnect(request: Request, work: Awaitable[_T]) -> _T:
    """Await `work` (e.g. `engine.embed(...)`), cancelling it if the client hangs up first,
    so a large request does not go on using the engine for no one (uvicorn never cancels a
    handler itself). Cut off with a 503 once the shutdown grace has passed, like `collect`."""
    task = asyncio.ensure_future(work)
    grace = settings_of(request).shutdown_grace
    gone = cut = False

    def give_up() -> None:
        nonlocal gone
        gone = True
        task.cancel()

    def cut_off() -> None:
        nonlocal cut
        cut = True
        task.cancel()

    loop = asyncio.get_running_loop()
    watchers = (
        loop.create_task(on_disconnect(request, give_up)),
        loop.create_task(after_shutdown_grace(grace, cut_off)),
    )
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if getattr(current, "cancelling", lambda: 0)() or not (gone or cut):  # ours, not work's
            raise
        if cut:
            raise shutdown_error(grace) from None
        # No one reads this answer; it only ends the handler without an error in the log.
        raise APIError(499, "the client closed the request", "client_closed_request") from None
    finally:
        for watcher in watchers:
            watcher.cancel()
