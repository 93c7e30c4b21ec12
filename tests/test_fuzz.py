"""Fuzz every route described by /openapi.json with schemathesis and every check it has
(no 5xx; statuses, content types, headers and bodies as documented; invalid data refused...)
but one: `positive_data_acceptance` expects every schema-valid body to succeed, while what
is valid here also depends on state no static schema can state (the model's vocabulary and
context size, which model names and slot files exist), answered with a documented 400.

One small server (`--slots 1 --ctx-size 512`) on a private copy of the store: the fuzzer may
import, configure or delete models. Each distinct handler gets a few positive and negative
cases (the `/v1` and `/engines/v1` spellings share the `/engines/llama.cpp/v1` handlers);
generation is capped at 4 tokens so the run stays around a minute or two on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from server_proc import private_store

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import CHECKS, load_all_checks, not_a_server_error  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLES_PER_OPERATION = 25
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict")
# Same handlers as under /engines/llama.cpp/v1 (or /engines/_configure): fuzzed once there.
DUPLICATES = r"^/(v1|engines/v1)/|^/engines/llama\.cpp/_configure$"
# Pulls go to the network; offline, a valid name is an honest 503 (tested on their own).
NETWORK = r"^/api/pull$"


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


def test_openapi_describes_custom_bodies(fuzz_server: Any) -> None:
    spec = httpx.get(fuzz_server.url + "/openapi.json", timeout=30).json()
    for path in ("/engines/_configure", "/models/create", "/engines/unload"):
        body = spec["paths"][path]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert schema["properties"], path
    create = spec["paths"]["/models/create"]["post"]["requestBody"]["content"]
    assert "from" in create["application/json"]["schema"]["required"]


def all_checks_but_positive_acceptance() -> list[Any]:
    load_all_checks()
    checks = [c for c in CHECKS.get_all() if callable(c) and not isinstance(c, type)]
    names = {c.__name__ for c in checks}
    assert {"not_a_server_error", "status_code_conformance", "response_schema_conformance"} <= names
    skip = {"positive_data_acceptance", "not_a_server_error"}
    return [not_a_server_error_but_an_offline_pull] + [c for c in checks if c.__name__ not in skip]


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
    checks = all_checks_but_positive_acceptance()
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    schema.config.update(base_url=fuzz_server.url, request_timeout=120)
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
            phases=[Phase.explicit, Phase.generate],  # no shrinking: report and move on
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            cap_generation(case.body)
            case.call_and_validate(checks=checks)

        try:
            run()
        except BaseException as exc:  # collect every failing operation, then fail once
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert httpx.get(fuzz_server.url + "/health", timeout=10).status_code == 200
    assert not failures, "\n\n".join(failures)
