"""Constrained output: OpenAI ``response_format`` (and llama-server's ``grammar`` /
``json_schema`` request fields) -> a GBNF grammar string for llama.cpp's grammar sampler.

JSON schemas are converted by llama-cpp-python's port of llama.cpp's converter
(`llama_cpp.llama_grammar.json_schema_to_gbnf`); ``json_object`` uses llama.cpp's generic
JSON grammar (``grammars/json.gbnf``: an object at top level). Every problem is a
`GrammarError` (HTTP 400). Schemas are checked first for what would make the converter (or
llama.cpp) blow up: nesting depth and repetition counts (``minItems``, ``maxLength``,
``{m,n}`` in patterns...) above llama.cpp's own threshold of 2000. Grammars are bounded in
size before llama.cpp parses them (its parser's work grows with the square of a rule's
alternatives: a 1 MB grammar of 100,000 takes seconds), and the engine bounds their work
per token (``engine/grammar_guard.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

MAX_REPETITIONS = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD (src/llama-grammar.cpp)
MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_CHARS = 1024 * 1024
MAX_GRAMMAR_BYTES = 128 << 10  # the default of --max-grammar-bytes (`validate_gbnf`)
MAX_GRAMMAR_CHARS = 4 * 1024 * 1024  # beyond any setting: refused before anything else

_COUNT_KEYS = (
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_PATTERN_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


class GrammarError(ValueError):
    """The requested output constraint is invalid or unsupported; reported as HTTP 400."""


def json_object_grammar() -> str:
    """GBNF for any JSON object (llama.cpp's ``json.gbnf``)."""
    return JSON_GBNF


def _check_schema(node: Any, depth: int = 0) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise GrammarError(f"JSON schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(node, list):
        for item in node:
            _check_schema(item, depth + 1)
        return
    if not isinstance(node, dict):
        return
    for key in _COUNT_KEYS:
        value = node.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise GrammarError(f"JSON schema {key!r} must be a non-negative integer")
        if value > MAX_REPETITIONS:
            raise GrammarError(f"JSON schema {key!r} is above the limit of {MAX_REPETITIONS}")
    pattern = node.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise GrammarError("JSON schema 'pattern' must be a string")
        for m in _PATTERN_QUANTIFIER.finditer(pattern):
            for num in m.groups():
                if num and (len(num) > 6 or int(num) > MAX_REPETITIONS):
                    raise GrammarError(
                        f"JSON schema pattern repeats more than {MAX_REPETITIONS} times"
                    )
    for value in node.values():
        _check_schema(value, depth + 1)


def schema_to_grammar(schema: Any) -> str:
    """GBNF for a JSON schema (a dict, or a JSON string); raises `GrammarError`."""
    if isinstance(schema, str):
        if len(schema) > MAX_SCHEMA_CHARS:
            raise GrammarError("JSON schema is too large")
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise GrammarError(f"JSON schema is not valid JSON: {exc}") from exc
    if isinstance(schema, bool):  # `true` accepts anything, `false` nothing
        if not schema:
            raise GrammarError("JSON schema `false` accepts no output")
        schema = {}
    if not isinstance(schema, Mapping):
        raise GrammarError("JSON schema must be an object")
    _check_schema(schema)
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError, RecursionError) as exc:
        raise GrammarError(f"JSON schema is not serializable: {exc}") from exc
    if len(text) > MAX_SCHEMA_CHARS:
        raise GrammarError("JSON schema is too large")
    try:
        grammar = json_schema_to_gbnf(text)
    except Exception as exc:  # the converter signals unsupported input with assert/ValueError/...
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise GrammarError(f"unsupported JSON schema: {detail}") from exc
    if not grammar.strip() or len(grammar) > MAX_GRAMMAR_CHARS:
        raise GrammarError("JSON schema produced an empty or oversized grammar")
    return grammar


def _from_response_format(response_format: Mapping[str, Any]) -> str | None:
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")  # llama-server extension
        return json_object_grammar() if schema is None else schema_to_grammar(schema)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if spec is None:
            raise GrammarError("response_format type 'json_schema' needs a 'json_schema' object")
        if not isinstance(spec, Mapping):
            raise GrammarError("response_format.json_schema must be an object")
        schema = spec.get("schema")
        if schema is None:  # OpenAI requires it; unconstrained output would be a silent lie
            raise GrammarError("response_format.json_schema needs a 'schema'")
        return schema_to_grammar(schema)
    raise GrammarError(f"unsupported response_format type: {kind!r}")


def grammar_for(
    response_format: Mapping[str, Any] | None = None,
    *,
    grammar: str | None = None,
    json_schema: Any = None,
) -> str | None:
    """The GBNF constraining a request's output, or None for free text.

    `grammar` is llama-server's raw GBNF field (passed through; llama.cpp parses it when the
    sampler is built), `json_schema` its bare-schema field. At most one of the three may
    constrain the output.
    """
    if response_format is not None and not isinstance(response_format, Mapping):
        raise GrammarError("response_format must be an object")
    from_format = None if response_format is None else _from_response_format(response_format)
    given = [x for x in (from_format, grammar, json_schema) if x is not None]
    if len(given) > 1:
        raise GrammarError("use only one of response_format, grammar and json_schema")
    if grammar is not None:
        if not isinstance(grammar, str):
            raise GrammarError("grammar must be a string")
        if len(grammar) > MAX_GRAMMAR_CHARS:
            raise GrammarError(f"grammar is larger than {MAX_GRAMMAR_CHARS} bytes")
        return grammar if grammar.strip() else None
    if json_schema is not None:
        return schema_to_grammar(json_schema)
    return from_format


def _too_large(grammar: str, max_bytes: int) -> bool:
    return len(grammar) > max_bytes or len(grammar.encode("utf-8")) > max_bytes


def validate_gbnf(gbnf: str, vocab: Any = None, max_bytes: int = MAX_GRAMMAR_BYTES) -> None:
    """Parse `gbnf` with llama.cpp itself; raise `GrammarError` if it is rejected or larger
    than `max_bytes` (checked first: parsing a huge grammar is itself the cost).

    Without a `vocab` (a ``llama_vocab_p``), grammars naming tokens by their text
    (``<|im_end|>``) are rejected; token ids (``<[106]>``) parse either way.
    """
    if _too_large(gbnf, max_bytes):
        raise GrammarError(f"grammar is larger than {max_bytes} bytes (--max-grammar-bytes)")
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        raise GrammarError("the grammar could not be parsed by llama.cpp")
    llama_cpp.llama_sampler_free(sampler)
