"""Model naming: normalization, validation and partial resolution (pure functions)."""

from __future__ import annotations

import pytest

from runner.store import (
    AmbiguousModelName,
    InvalidModelName,
    ModelNotFound,
    StoreError,
    normalize,
    parse,
    resolve,
)
from runner.store.names import id_prefix


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gemma3", "ai/gemma3:latest"),
        ("GEMMA3", "ai/gemma3:latest"),
        ("  gemma3  ", "ai/gemma3:latest"),
        ("gemma3:270m", "ai/gemma3:270m"),
        ("ai/gemma3", "ai/gemma3:latest"),
        ("ai/gemma3:270M", "ai/gemma3:270m"),
        ("HF.co/Org/Model:Q4", "hf.co/org/model:q4"),
        (
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
            "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m",
        ),
        ("my/model:1", "my/model:1"),
        ("localhost:5000/org/model", "localhost:5000/org/model:latest"),
        ("qwen2.5:0.5b", "ai/qwen2.5:0.5b"),
    ],
)
def test_normalize(name: str, expected: str) -> None:
    assert normalize(name) == expected
    assert normalize(expected) == expected  # idempotent


def test_parse_records_what_was_typed() -> None:
    ref = parse("gemma3")
    assert (ref.repo, ref.tag, ref.explicit_org, ref.explicit_tag) == (
        "ai/gemma3",
        "latest",
        False,
        False,
    )
    ref = parse("x/y:z")
    assert (ref.explicit_org, ref.explicit_tag, ref.basename) == (True, True, "y")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "..",
        "../etc/passwd",
        "ai/../secret",
        "ai/./x",
        "a//b",
        "/etc/passwd",
        "/abs/model:1",
        "~/model",
        "C:\\models\\x",
        "c:/models/x",
        "ai\\gemma3",
        "ai/gemma3:",
        "ai/gemma3:bad tag",
        "ai/gem ma3",
        "ai/gemma3@sha256:abc",
        "ai/gemma3:-x",
        "ai/-gemma3",
        "ai/gemma3.",
        "ai/gémma3",
        "ai/gem\nma3",
        "ai/gemma3\x00",
        "x" * 300,
        "host:port/x",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidModelName) as info:
        normalize(name)
    assert isinstance(info.value, ValueError) and isinstance(info.value, StoreError)
    assert "invalid model name" in str(info.value) or "must be a string" in str(info.value)


def test_invalid_name_message_is_clear() -> None:
    with pytest.raises(InvalidModelName, match=r"'\.\.'"):
        normalize("ai/../x")
    with pytest.raises(InvalidModelName, match="file path"):
        normalize("/etc/hostname")


def test_non_string_rejected() -> None:
    with pytest.raises(InvalidModelName):
        normalize(None)  # type: ignore[arg-type]


AVAILABLE = ["ai/gemma3:270m", "ai/smollm2:360m", "ai/smollm2:135m", "hf.co/org/phi4:q4"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ai/gemma3:270m", "ai/gemma3:270m"),
        ("gemma3:270m", "ai/gemma3:270m"),
        ("gemma3", "ai/gemma3:270m"),  # partial: only tag of the repo
        ("ai/gemma3", "ai/gemma3:270m"),
        ("GEMMA3", "ai/gemma3:270m"),
        ("smollm2:135m", "ai/smollm2:135m"),
        ("phi4", "hf.co/org/phi4:q4"),  # no org typed: same repo under another org
        ("phi4:q4", "hf.co/org/phi4:q4"),
        ("hf.co/org/phi4", "hf.co/org/phi4:q4"),
    ],
)
def test_resolve(name: str, expected: str) -> None:
    assert resolve(name, AVAILABLE) == expected


def test_resolve_prefers_latest() -> None:
    names = ["ai/gemma3:270m", "ai/gemma3:latest", "ai/gemma3:1b"]
    assert resolve("gemma3", names) == "ai/gemma3:latest"
    assert resolve("ai/gemma3", names) == "ai/gemma3:latest"
    assert resolve("gemma3:1b", names) == "ai/gemma3:1b"


def test_resolve_ambiguous_names_candidates() -> None:
    with pytest.raises(AmbiguousModelName) as info:
        resolve("smollm2", AVAILABLE)
    assert info.value.candidates == ["ai/smollm2:135m", "ai/smollm2:360m"]
    assert "ai/smollm2:135m" in str(info.value) and "ai/smollm2:360m" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_resolve_ambiguous_across_orgs() -> None:
    names = ["hf.co/a/phi4:latest", "hf.co/b/phi4:q4"]
    with pytest.raises(AmbiguousModelName):
        resolve("phi4", names)


@pytest.mark.parametrize("name", ["llama3", "gemma3:1b", "other/gemma3", "ai/smollm2:1b", "x/phi4"])
def test_resolve_not_found(name: str) -> None:
    with pytest.raises(ModelNotFound, match="not found"):
        resolve(name, AVAILABLE)


def test_resolve_explicit_tag_does_not_match_other_tags() -> None:
    with pytest.raises(ModelNotFound):
        resolve("gemma3:latest", ["ai/gemma3:270m"])


def test_resolve_validates() -> None:
    with pytest.raises(InvalidModelName):
        resolve("../x", AVAILABLE)


def test_id_prefix() -> None:
    digest = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert id_prefix(f"sha256:{digest}") == digest
    assert id_prefix(digest[:12]) == digest[:12]
    assert id_prefix("gemma3") is None
    assert id_prefix("abc") is None  # too short to be an ID
