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


# ----- pull references: where a name is fetched from, and the store tag it is saved as ---------

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "where", "saved_as"),
    [
        ("gemma3", "https://registry-1.docker.io ai/gemma3 latest", "ai/gemma3:latest"),
        ("ai/gemma3", "https://registry-1.docker.io ai/gemma3 latest", "ai/gemma3:latest"),
        (
            "docker.io/ai/gemma3:270M-Q4_K_M",
            "https://registry-1.docker.io ai/gemma3 270m-q4_k_m",
            "ai/gemma3:270m-q4_k_m",
        ),
        (
            "registry.example.com:5000/team/model:tag",
            "https://registry.example.com:5000 team/model tag",
            "registry.example.com:5000/team/model:tag",
        ),
        (
            "localhost:5000/team/model",
            "http://localhost:5000 team/model latest",
            "localhost:5000/team/model:latest",
        ),
        (f"ai/gemma3@{DIGEST}", f"https://registry-1.docker.io ai/gemma3 {DIGEST}", None),
    ],
)
def test_registry_references(ref: str, where: str, saved_as: str | None) -> None:
    from runner.config import Settings
    from runner.store.oci import registry_url
    from runner.store.refs import OciSource, parse_source

    source = parse_source(ref)
    assert isinstance(source, OciSource)
    listed = Settings(insecure_registries=["localhost:5000"])  # plain http: only when listed
    assert (
        f"{registry_url(source.registry, listed)} {source.repository} {source.reference}" == where
    )
    assert source.local_name == (saved_as or f"ai/gemma3:sha256-{DIGEST[7:19]}")


def test_hugging_face_and_url_references() -> None:
    from runner.store.refs import HfSource, UrlSource, parse_source

    assert parse_source("hf.co/Org/Repo-GGUF") == HfSource("Org/Repo-GGUF", None)
    assert parse_source("huggingface.co/Org/Repo:Q4_K_M") == HfSource("Org/Repo", "Q4_K_M")
    assert parse_source("hf.co/org/repo:Q8_0").local_name == "hf.co/org/repo:q8_0"
    pinned = parse_source("https://example.com/m/Model-Q4.gguf#sha256=" + "cd" * 32)
    assert pinned == UrlSource("https://example.com/m/Model-Q4.gguf", "cd" * 32)
    assert pinned.local_name == "ai/model-q4:latest"
    for bad in ("ai/gemma3@sha256:12", "hf.co/only-org", "https://example.com/m.gguf#md5=1"):
        with pytest.raises(InvalidModelName):
            parse_source(bad)
