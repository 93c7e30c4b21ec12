"""Fuzz every route described by /openapi.json with schemathesis and every check it has:
no 5xx; statuses, content types, headers and bodies as documented; invalid data refused; and
schema-valid data accepted (`positive_data_acceptance`, where only 2xx, 409 busy and 429 pass
by default here, not schemathesis' blanket 401/403/404).

So the document states what the server accepts: model names, slot file names, token ids,
ranges, enums and lengths are in it. What it cannot state is narrowly excused, by message:
- `STATE_DEPENDENT`: answers that depend on server state, not on the request's shape: a
  model / stored response / slot file / cache pin that does not exist or is not loaded (404), a token id
  past the model's vocabulary, a prompt or `max_tokens` past its context size, a slot id or
  `n` past its slot count, Ollama's `think` for a model whose template does not think (400);
- `POST /slots/{id}` with `action=save|restore` and no `filename` (400): a body field that
  is needed for some values of a query parameter, which OpenAPI cannot say;
- `FREE_FORM`: operations whose bodies carry nested objects the schema leaves open (chat
  messages' content blocks, the JSON schema of `json_schema` / `response_format` / Ollama's
  `format`, Anthropic / Responses / Ollama content and tool blocks, tools and
  `tool_choice`, GBNF `grammar`, `_configure`'s
  `runtime-flags`, `/models/create`'s `from` path) or cross-field rules (`top_logprobs` needs
  `logprobs`): there positive data may get a 400, and every other check still runs.

One small server (`--slots 1 --ctx-size 512`) on a private copy of the store: the fuzzer may
import, configure or delete models. Each distinct handler gets a few positive and negative
cases (the `/v1` and `/engines/v1` spellings share the `/engines/llama.cpp/v1` handlers);
generation is capped at 4 tokens so the run stays around a minute or two on 2 cores. The
cases are derandomized (the same every run, so CI judges the code, not the draw);
`RUNNER_FUZZ_EXPLORE=1` draws new ones.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from server_proc import private_store

from runner.api.core.schemas import MODEL_NAME_SCHEMA
from runner.store.names import parse

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import CHECKS, load_all_checks, not_a_server_error  # noqa: E402
from schemathesis.config import PositiveDataAcceptanceConfig  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    negative_data_rejection,
    positive_data_acceptance,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLES_PER_OPERATION = 25
# The same cases every run, so that CI passes or fails on the code, not on the draw; set
# RUNNER_FUZZ_EXPLORE=1 to draw new cases (run it now and then, and keep what it finds).
DERANDOMIZE = not os.environ.get("RUNNER_FUZZ_EXPLORE")
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict")
# Same handlers as under /engines/llama.cpp/v1 (or /engines/_configure): fuzzed once there.
DUPLICATES = r"^/(v1|engines/v1)/|^/engines/llama\.cpp/_configure$"
# Pulls go to the network; offline, a valid name is an honest 503 (tested on their own).
NETWORK = r"^/api/pull$"
# Rejections of schema-valid requests that depend on server state (see the docstring), as
# (status, message pattern); the messages are the same in every dialect's error shape.
STATE_DEPENDENT: tuple[tuple[int, str], ...] = (
    (404, r"^model '.*' not found"),
    (404, r"^model '.*' is not loaded"),
    (404, r"^(Previous response|Response) with id '.*' not found"),
    (404, r"^no slot file named "),
    (404, r"^no pin [0-9a-f]+"),
    (400, r"outside the vocabulary|^prompt token ids must be in \[0, \d+\)"),
    (400, r"^the prompt has \d+ tokens but a slot holds \d+"),
    (400, r"^max_tokens is \d+ but a slot of .* holds \d+ tokens"),
    (400, r"^an embedding input has \d+ tokens; the limit is \d+"),
    (400, r"^the inputs hold \d+ tokens; one embeddings request may hold at most \d+"),
    (400, r"^no slot \d+; this model has \d+|^id_slot must be below \d+"),
    (400, r"^n must be between 1 and \d+ \(the slots\)"),
    (400, r'^".*" does not support thinking'),
    # What the loaded model can do: its LoRA adapters, rank pooling, FIM tokens.
    (400, r"^no LoRA adapter with id \d+"),
    (400, r" is not a reranker: "),
    (400, r" has no fill-in-the-middle tokens "),
)
# The case being run, when `cap_generation` changed its body.
CAPPED: set[int] = set()
FREE_FORM = {
    "POST /engines/llama.cpp/v1/chat/completions",
    "POST /engines/llama.cpp/v1/responses",
    "POST /anthropic/v1/messages",
    "POST /anthropic/v1/messages/count_tokens",
    "POST /api/chat",
    "POST /engines/_configure",
    "POST /models/create",
    "POST /api/generate",
    "POST /engines/llama.cpp/v1/completions",
}


@pytest.fixture(scope="module")
def fuzz_server(
    start_server: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory, bundled_model_path
) -> Iterator[Any]:
    store = private_store(tmp_path_factory.mktemp("fuzz") / "models", bundled_model_path)
    # A generated `from` that parses as a registry name makes /models/create pull; every
    # outbound connection goes to a closed proxy port, so that fails at once, offline or not.
    offline = {key: "http://127.0.0.1:9" for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    server = start_server(
        "--model", "ai/gemma3", "--slots", "1", "--ctx-size", "512", "--no-persist",
        env={"RUNNER_MODELS_DIR": str(store), "NO_PROXY": "", **offline},
    )  # fmt: skip
    yield server
    server.stop()


def not_a_server_error_but_an_offline_pull(ctx: Any, response: Any, case: Any) -> None:
    """A pull that cannot reach its registry is an honest 503 (remote_unreachable), not a
    crash; everything else must stay below 500."""
    if case.path == "/models/create" and response.status_code == 503:
        try:
            if response.json()["error"]["code"] == "remote_unreachable":
                return None
        except (ValueError, KeyError, TypeError):
            pass
    return not_a_server_error(ctx, response, case)


def cap_generation(body: Any) -> None:
    """Keep generations short: any token limit (or none) becomes at most 4 tokens, in every
    dialect's spelling (Ollama's `options.num_predict`, Responses' `max_output_tokens`)."""
    if not isinstance(body, dict) or not {"messages", "prompt", "input"} & body.keys():
        return
    body.setdefault("max_tokens", 4)
    body.setdefault("max_output_tokens", 4)
    if not isinstance(body.get("options"), dict):
        body["options"] = {}
    body["options"]["num_predict"] = 4
    for key in (*TOKEN_FIELDS, "max_output_tokens"):
        value = body.get(key)
        if key in body and (value is None or (type(value) is int and (value > 4 or value < 0))):
            body[key] = 4


def integral_floats_as_ints(value: Any) -> Any:
    """`value` with 1.0 written as 1: JSON Schema's `integer` admits 1.0, which the server
    deliberately refuses where it wants an integer (strict JSON types)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(v) for v in value]
    return value


def test_openapi_describes_custom_bodies(fuzz_server: Any) -> None:
    spec = httpx.get(fuzz_server.url + "/openapi.json", timeout=30).json()
    for path in ("/engines/_configure", "/models/create", "/engines/unload"):
        body = spec["paths"][path]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert schema["properties"], path
    create = spec["paths"]["/models/create"]["post"]["requestBody"]["content"]
    assert "from" in create["application/json"]["schema"]["required"]


def error_message(response: Any) -> str:
    """The message of an error in any dialect's shape (OpenAI, Anthropic, Ollama)."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return ""
    return str(error.get("message", "") if isinstance(error, dict) else error)


def state_dependent(response: Any, case: Any) -> bool:
    """Whether a rejection is one that `STATE_DEPENDENT` (or the slot file rule) excuses."""
    message = error_message(response)
    status = response.status_code
    if any(status == s and re.search(p, message, re.S) for s, p in STATE_DEPENDENT):
        return True
    body = case.body if isinstance(case.body, dict) else {}
    return (
        case.path == "/slots/{slot_id}"
        and (case.query or {}).get("action") in ("save", "restore")
        and not body.get("filename")
        and message == "filename must be a plain file name"
    )


def positive_data_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' `positive_data_acceptance`, but for the excused rejections above."""
    if case.operation.label in FREE_FORM or state_dependent(response, case):
        return None
    return positive_data_acceptance(ctx, response, case)


def negative_data_rejected(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' `negative_data_rejection`, but not for the cases it generates in negative
    mode and labels "positive test case" itself (no body for an optional body), nor for those
    whose violation `cap_generation` may have overwritten."""
    description = getattr(getattr(case.meta, "phase", None), "data", None)
    if getattr(description, "description", None) == "positive test case" or id(case) in CAPPED:
        return None
    return negative_data_rejection(ctx, response, case)


def all_checks() -> list[Any]:
    load_all_checks()
    checks = [c for c in CHECKS.get_all() if callable(c) and not isinstance(c, type)]
    names = {c.__name__ for c in checks}
    assert {"not_a_server_error", "status_code_conformance", "positive_data_acceptance"} <= names
    replaced = {"positive_data_acceptance", "negative_data_rejection", "not_a_server_error"}
    own = [not_a_server_error_but_an_offline_pull, positive_data_accepted, negative_data_rejected]
    return own + [c for c in checks if c.__name__ not in replaced]


@given(name=st.from_regex(MODEL_NAME_SCHEMA["pattern"]))
@settings(max_examples=300, deadline=None, database=None, derandomize=DERANDOMIZE)
def test_documented_model_names_are_valid(name: str) -> None:
    """Every name the document's pattern allows is one the store's parser accepts."""
    if len(name) <= MODEL_NAME_SCHEMA["maxLength"]:
        parse(name)


def test_the_spec_documents_what_the_server_answers(fuzz_server: Any) -> None:
    spec = httpx.get(fuzz_server.url + "/openapi.json", timeout=30).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
            assert {"4XX", "5XX"} <= set(operation["responses"]), (method, path)
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    r = httpx.post(fuzz_server.url + "/tokenize", json={"content": 5}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"]


def test_no_check_fails(fuzz_server: Any) -> None:
    checks = all_checks()
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    schema.config.update(base_url=fuzz_server.url, request_timeout=120)
    # Busy (409) and rate-limited (429) answers depend on timing; 5xx has its own check.
    accepted = ["2xx", "409", "429", "5xx"]
    schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
        expected_statuses=accepted
    )
    operations = [
        r.ok() for r in schema.exclude(path_regex=f"{DUPLICATES}|{NETWORK}").get_all_operations()
    ]
    assert len(operations) >= 15
    failures: list[str] = []
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=DERANDOMIZE,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: report and move on
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            if case.meta is not None and case.meta.generation.mode.is_positive:
                case.body = integral_floats_as_ints(case.body)
            before = copy.deepcopy(case.body)
            cap_generation(case.body)
            CAPPED.clear()
            if case.body != before:
                CAPPED.add(id(case))
            case.call_and_validate(checks=checks)

        try:
            run()
        except BaseException as exc:  # collect every failing operation, then fail once
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert httpx.get(fuzz_server.url + "/health", timeout=10).status_code == 200
    assert not failures, "\n\n".join(failures)
