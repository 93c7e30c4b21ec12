"""response_format / grammar / json_schema -> GBNF, checked with llama.cpp's own parser."""

from __future__ import annotations

import pytest

from runner.chat import (
    GrammarError,
    grammar_for,
    json_object_grammar,
    schema_to_grammar,
    validate_gbnf,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_json_object_grammar_parses() -> None:
    g = grammar_for({"type": "json_object"})
    assert g is not None and g == json_object_grammar()
    assert "root" in g and "::=" in g
    validate_gbnf(g)


def test_json_schema_grammar_parses() -> None:
    g = grammar_for(
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    )
    assert g is not None and "root ::=" in g
    assert '\\"name\\"' in g  # the property name is spelled out in the grammar
    validate_gbnf(g)


def test_llama_server_fields() -> None:
    bare = grammar_for(json_schema=PERSON)
    assert bare == schema_to_grammar(PERSON)
    validate_gbnf(bare)
    raw = 'root ::= "yes" | "no"'
    assert grammar_for(grammar=raw) == raw
    assert grammar_for({"type": "text"}, grammar=raw) == raw
    assert grammar_for(json_schema='{"type": "boolean"}') is not None  # schema as a JSON string
    # json_object carrying a schema (llama-server extension)
    assert grammar_for({"type": "json_object", "schema": PERSON}) == schema_to_grammar(PERSON)


def test_free_text() -> None:
    assert grammar_for(None) is None
    assert grammar_for({"type": "text"}) is None
    assert grammar_for(grammar="   ") is None


def test_json_schema_without_a_schema_is_an_error() -> None:
    with pytest.raises(GrammarError, match="needs a 'schema'"):
        grammar_for({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(GrammarError, match="needs a 'json_schema' object"):
        grammar_for({"type": "json_schema"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"response_format": {"type": "xml"}}, "unsupported response_format type"),
        ({"response_format": {}}, "unsupported response_format type"),
        ({"response_format": "json"}, "must be an object"),
        ({"response_format": {"type": "json_schema", "json_schema": []}}, "must be an object"),
        ({"json_schema": "{not json"}, "not valid JSON"),
        ({"json_schema": 42}, "must be an object"),
        ({"json_schema": False}, "accepts no output"),
        ({"json_schema": {"type": "wizard"}}, "unsupported JSON schema"),
        ({"json_schema": {"$ref": "https://example.com/s.json"}}, "unsupported JSON schema"),
        ({"json_schema": {"type": "array", "minItems": 10**9}}, "limit"),
        ({"json_schema": {"type": "string", "maxLength": -1}}, "non-negative"),
        ({"json_schema": {"type": "string", "pattern": "^a{1000000}$"}}, "repeats"),
        ({"grammar": "root ::= x", "json_schema": {}}, "only one"),
        ({"response_format": {"type": "json_object"}, "grammar": "root ::= x"}, "only one"),
        ({"grammar": 7}, "must be a string"),
    ],
)
def test_invalid_requests(kwargs: dict, match: str) -> None:
    with pytest.raises(GrammarError, match=match):
        grammar_for(**kwargs)


def test_deeply_nested_schema_rejected() -> None:
    schema: dict = {"type": "string"}
    for _ in range(200):
        schema = {"type": "array", "items": schema}
    with pytest.raises(GrammarError, match="nested"):
        schema_to_grammar(schema)


def test_validate_gbnf_rejects_garbage() -> None:
    with pytest.raises(GrammarError):
        validate_gbnf("root ::= (")
    with pytest.raises(GrammarError):
        validate_gbnf('start ::= "x"')  # no root rule


@pytest.mark.slow
def test_grammars_parse_with_the_bundled_models_vocab(bundled_model_path) -> None:
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(bundled_model_path).encode(), params)
    assert model
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        validate_gbnf(json_object_grammar(), vocab)
        validate_gbnf(schema_to_grammar(PERSON), vocab)
        validate_gbnf('root ::= "ok" <end_of_turn>', vocab)  # a token named by its text
        with pytest.raises(GrammarError):
            validate_gbnf('root ::= "ok" <end_of_turn>')  # ... needs the vocab
    finally:
        llama_cpp.llama_model_free(model)
