"""The front door's view of a request's prompt: the same tokens a replica will compute, as
chained block hashes (`RadixIndex.prefix_hashes`) for the cache-following router.

Tokens must match the replica's exactly, so this follows `openai_routes`: the body is
parsed with the API's own schemas, chat messages are rendered with the model's chat template
(same choice as the loader: per-model override > --chat-template-file > GGUF > builtin) and
tokenized with the model's vocabulary, which is loaded alone (llama.cpp `vocab_only`: no
weights, milliseconds). Anything that fails here only costs routing information: the
request is forwarded anyway and the replica reports the error in the API's own shape.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import llama_cpp

from runner.api.core.chat_plan import ChatPlan
from runner.api.core.dialect_common import chat_plan
from runner.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from runner.cache.radix import RadixIndex
from runner.chat import ChatTemplate
from runner.config import Settings
from runner.engine.model import init_backend
from runner.model_config import chat_template
from runner.store import BUNDLED_TAGS, ModelEntry, ModelStore

log = logging.getLogger(__name__)

# Tokens per routing block: a replica advertises every cached prefix at this granularity.
DEFAULT_BLOCK = 16


class Vocab:
    """A model's tokenizer without its weights; tokenizing is thread-safe in llama.cpp."""

    def __init__(self, path: Path) -> None:
        init_backend()  # also quiets llama.cpp's load logs
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ValueError(f"llama.cpp could not read the vocabulary of {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

    def tokenize(self, text: str) -> list[int]:
        # Same flags and UTF-8 cleanup as the engine's tokenizer (add BOS, parse specials).
        data = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, True, True)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, True, True)
        return list(buf[:n])


class PromptKeys:
    """Request body -> the prompt's block hashes (empty when the route has no prompt)."""

    def __init__(self, settings: Settings, block: int = DEFAULT_BLOCK) -> None:
        self.settings = settings
        self.block = block
        self.store = ModelStore(settings.models_dir)
        self._lock = threading.Lock()
        self._models: dict[str, tuple[Vocab, ChatTemplate]] = {}

    def hashes(self, path: str, body: bytes) -> tuple[list[int], int]:
        """(block hashes, prompt length in tokens). Blocking (template rendering,
        tokenizing): call it on a worker thread."""
        tokens = self.tokens(path, body)
        if not tokens:
            return [], 0
        return RadixIndex.prefix_hashes(tokens, self.block), len(tokens)

    def tokens(self, path: str, body: bytes) -> list[int] | None:
        """The prompt tokens of a generation request (any dialect), else None."""
        build = next((b for suffix, b in self._routes() if path.endswith(suffix)), None)
        if build is None:
            return None
        try:
            return build(json.loads(body))
        except Exception as exc:  # routing information only; the replica reports errors
            log.debug("no routing key for %s: %s", path, exc)
        return None

    def _routes(self) -> list[tuple[str, Any]]:
        return [
            ("/responses", self._responses),
            ("/chat/completions", self._chat),
            ("/completions", self._completion),
            ("/v1/messages", self._anthropic),
            ("/api/chat", self._ollama_chat),
            ("/api/generate", self._ollama_generate),
        ]

    def _chat(self, raw: Any) -> list[int]:
        body = ChatCompletionRequest.model_validate(raw)
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        return self._render(body.model, messages, body.chat_plan(), body.chat_template_kwargs)  # fmt: skip

    def _completion(self, raw: Any) -> list[int]:
        body = CompletionRequest.model_validate(raw)
        if isinstance(body.prompt, str):
            vocab, _ = self._model(body.model)
            return vocab.tokenize(body.prompt)
        return list(body.prompt)

    # The other dialects convert to OpenAI chat messages and a tools plan with their routes'
    # own functions, so the rendered prompt is the one their route renders.

    def _anthropic(self, raw: Any) -> list[int]:
        from runner.api.anthropic import routes as anthropic

        body = anthropic.MessagesRequest.model_validate(raw)
        return self._render(body.model, anthropic.chat_messages(body), anthropic._plan(body))

    def _responses(self, raw: Any) -> list[int] | None:
        from runner.api.responses import routes as responses

        body = responses.ResponsesRequest.model_validate(raw)
        history: list[dict[str, Any]] = []
        if body.previous_response_id:  # the stored conversation, where replicas keep it
            previous = self._responses_store().get(body.previous_response_id)
            if previous is None:
                return None
            history = previous["messages"]
        history += responses.chat_messages(responses.input_items(body))
        system = [{"role": "system", "content": body.instructions}] if body.instructions else []
        tools = responses.chat_tools(body.tools)
        plan = chat_plan(tools, responses.tool_choice(body.tool_choice))
        return self._render(body.model, [*system, *history], plan)

    def _responses_store(self) -> Any:
        from runner.api.responses.store import ResponseStore

        s = self.settings
        directory = s.resolved_responses_dir if s.persist else None
        return ResponseStore(directory, max_bytes=s.responses_disk, max_age=s.responses_ttl)

    def _ollama_chat(self, raw: Any) -> list[int]:
        from runner.api.ollama import routes as ollama

        messages = ollama._messages(raw.get("messages") or [])
        plan = chat_plan(raw.get("tools"), raw.get("tool_choice"))
        return self._render(raw.get("model"), messages, plan)

    def _ollama_generate(self, raw: Any) -> list[int]:
        prompt, system = raw.get("prompt") or "", raw.get("system")
        if raw.get("raw"):
            return self._model(raw.get("model"))[0].tokenize(prompt)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        return self._render(raw.get("model"), messages, chat_plan(None))

    def _render(
        self,
        model: str | None,
        messages: list[dict[str, Any]],
        plan: ChatPlan,
        extra: dict[str, Any] | None = None,
    ) -> list[int]:
        vocab, template = self._model(model)
        return vocab.tokenize(plan.render(template, messages, extra, True))

    def _model(self, requested: str | None) -> tuple[Vocab, ChatTemplate]:
        name = (requested or "").strip()
        if not name:  # the replica's default: first preloaded model, else the bundled one
            name = self.settings.model[0] if self.settings.model else BUNDLED_TAGS[-1]
        with self._lock:
            cached = self._models.get(name)
            if cached is None:
                entry = self.store.get(name)
                cached = (Vocab(entry.path), self._template(entry, name))
                self._models[name] = cached
            return cached

    def _template(self, entry: ModelEntry, name: str) -> ChatTemplate:
        # As the loader picks it, from the same per-name config.
        meta = entry.metadata
        config = self.store.get_config(name)
        template_file = self.settings.chat_template_file
        return chat_template(meta.architecture, meta.chat_template, config, template_file)
