"""ModelStore and GGUF metadata, against the real bundled model and tiny generated GGUFs."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest

from runner.store import (
    BUNDLED_TAGS,
    AmbiguousModelName,
    InvalidModelFile,
    InvalidModelName,
    ModelFileMissing,
    ModelNotFound,
    ModelStore,
    StoreError,
    format_params,
    read_header,
    read_metadata,
)
from runner.store import bundled as bundled_pkg

MakeGGUF = Callable[..., Path]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (except the lock file) with a hash of its content."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- metadata ------------------------------------------------------------------------------


def test_bundled_metadata(bundled_model_path: Path) -> None:
    start = time.perf_counter()
    meta = read_metadata(bundled_model_path)
    elapsed = time.perf_counter() - start
    assert meta.architecture == "gemma3"
    assert 260e6 < meta.parameter_count < 275e6
    assert format_params(meta.parameter_count) == "268M"
    assert meta.quantization == "Q4_K_M"
    assert meta.context_length == 32768
    # The bundled file is the base (not -it) model: its GGUF carries no chat template.
    assert meta.chat_template is None and not meta.has_chat_template
    assert meta.block_count == 18
    assert meta.embedding_length == 640
    assert meta.head_count == 4 and meta.head_count_kv == 1
    assert meta.key_length == 256 and meta.value_length == 256
    assert meta.sliding_window == 512
    assert meta.vocab_size == 262144
    assert meta.bos_token_id == 2 and meta.eos_token_id == 1
    assert elapsed < 2, f"metadata read took {elapsed:.1f}s"  # gguf.GGUFReader needs ~23 s


def test_tiny_metadata(make_gguf: MakeGGUF) -> None:
    meta = read_metadata(make_gguf("tiny"))
    assert (meta.architecture, meta.quantization, meta.context_length) == ("llama", "F32", 256)
    assert meta.parameter_count == 3 * 8 + 8
    assert meta.vocab_size == 3 and meta.has_chat_template


def test_header_matches_gguf_reader(make_gguf: MakeGGUF) -> None:
    path = make_gguf("cmp", fill=1.5)
    ours, theirs = read_header(path), gguf.GGUFReader(path)
    assert set(ours.fields) == {k for k in theirs.fields if not k.startswith("GGUF.")}
    assert ours.data_offset == theirs.data_offset
    assert [(t.name, t.n_elements, t.n_bytes) for t in ours.tensors] == [
        (t.name, int(t.n_elements), int(t.n_bytes)) for t in theirs.tensors
    ]
    assert ours.fields["general.name"] == theirs.fields["general.name"].contents()


@pytest.mark.parametrize("content", [b"", b"GG", b"hello world\n", b"GGML" + b"\0" * 100])
def test_non_gguf_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFile, match="not a GGUF"):
        read_metadata(path)


def test_missing_and_directory_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match="no such file"):
        read_metadata(tmp_path / "nope.gguf")
    with pytest.raises(InvalidModelFile, match="not a regular file"):
        read_metadata(tmp_path)


def test_truncated_tiny_gguf_rejected(make_gguf: MakeGGUF, tmp_path: Path) -> None:
    data = make_gguf().read_bytes()
    cut = tmp_path / "cut.gguf"
    for size in range(4, len(data), 5):
        cut.write_bytes(data[:size])
        with pytest.raises(InvalidModelFile):
            read_metadata(cut)


@pytest.mark.parametrize("fraction", [0.001, 0.02, 0.5, 0.9999])
def test_truncated_bundled_rejected(
    bundled_model_path: Path, tmp_path: Path, fraction: float
) -> None:
    size = int(bundled_model_path.stat().st_size * fraction)
    cut = tmp_path / "cut.gguf"
    with bundled_model_path.open("rb") as src:
        cut.write_bytes(src.read(size))
    with pytest.raises(InvalidModelFile, match="truncated|corrupt"):
        read_metadata(cut)


def test_format_params() -> None:
    assert [
        format_params(n) for n in (999, 135_000_000, 1_240_000_000, 7_600_000_000, 70_000_000_000)
    ] == [
        "999",
        "135M",
        "1.2B",
        "7.6B",
        "70B",
    ]


# ----- the shared store with the bundled model -----------------------------------------------


def test_bundled_in_store(models_dir: Path, bundled_model_path: Path) -> None:
    store = ModelStore(models_dir)
    expected = bundled_pkg.expected_sha256()
    entry = store.get("ai/gemma3:270m")
    assert entry.id == expected and entry.path == bundled_model_path
    assert set(BUNDLED_TAGS) <= set(entry.tags)
    assert entry.size == bundled_model_path.stat().st_size
    assert bundled_model_path.name == f"sha256-{expected}.gguf"
    for ref in (
        "gemma3",
        "gemma3:270m",
        "ai/gemma3",
        "GEMMA3:LATEST",
        f"sha256:{expected}",
        expected[:12],
    ):
        assert store.get(ref).id == expected
    assert store.resolve("gemma3:270m") == "ai/gemma3:270m"
    assert any(e.id == expected for e in store.list())


# ----- add / remove in a private store -------------------------------------------------------


def test_add_and_remove_real_model(empty_models_dir: Path, bundled_model_path: Path) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    progress: list[tuple[int, int]] = []
    entry = store.add(
        "My/Model:1", bundled_model_path, progress=lambda d, t: progress.append((d, t))
    )
    assert entry.tags == ["my/model:1"] and entry.id == bundled_pkg.expected_sha256()
    assert entry.metadata.architecture == "gemma3" and entry.metadata.quantization == "Q4_K_M"
    assert entry.path.parent == empty_models_dir.resolve() / "blobs"
    assert progress and progress[-1][0] == progress[-1][1] == entry.size
    if os.stat(bundled_model_path).st_dev == os.stat(empty_models_dir).st_dev:
        assert os.stat(entry.path).st_ino == os.stat(bundled_model_path).st_ino  # hard link

    again = store.add("my/model:2", bundled_model_path)  # same blob, one more tag
    assert again.id == entry.id and again.tags == ["my/model:1", "my/model:2"]
    assert len(list((empty_models_dir / "blobs").iterdir())) == 1
    with pytest.raises(AmbiguousModelName):
        store.get("my/model")

    removed = store.remove("my/model:1")
    assert (removed.untagged, removed.deleted) == (["my/model:1"], False)
    assert store.get("my/model").tags == ["my/model:2"]
    removed = store.remove("my/model:2")
    assert removed.deleted and not entry.path.exists()
    assert store.list() == []
    assert bundled_model_path.exists()  # the source of a hard link is untouched


def test_add_copy_and_retag(empty_models_dir: Path, make_gguf: MakeGGUF) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    a, b = make_gguf("a"), make_gguf("b")
    first = store.add("x", a, link=False)
    assert os.stat(first.path).st_ino != os.stat(a).st_ino and first.id == sha256(a)
    assert first.tags == ["ai/x:latest"]
    second = store.add("x", b)  # the tag moves; the old blob has no tags left and goes
    assert second.id == sha256(b) and not first.path.exists()
    assert [e.id for e in store.list()] == [second.id]


def test_remove_by_id_and_errors(empty_models_dir: Path, make_gguf: MakeGGUF) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    entry = store.add("a:1", make_gguf("a"))
    store.add("a:2", make_gguf("a"))
    with pytest.raises(ModelNotFound):
        store.remove("a:3")
    with pytest.raises(ModelNotFound):
        store.remove("a")  # removal needs an exact tag, no partial matching
    removed = store.remove(f"sha256:{entry.id}")
    assert removed.untagged == ["ai/a:1", "ai/a:2"] and removed.deleted
    with pytest.raises(ModelNotFound):
        store.get("a:1")


def test_add_rejects_bad_input_leaving_store_unchanged(
    empty_models_dir: Path, make_gguf: MakeGGUF, tmp_path: Path
) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    store.add("keep:1", make_gguf("keep"))
    before = snapshot(empty_models_dir)
    text = tmp_path / "hostname"
    text.write_text("my-host\n")
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(make_gguf("t").read_bytes()[:200])
    for name, path, error in [
        ("my/model:1", text, InvalidModelFile),
        ("my/model:1", truncated, InvalidModelFile),
        ("my/model:1", tmp_path / "missing.gguf", InvalidModelFile),
        ("../escape", make_gguf("ok"), InvalidModelName),
        ("/abs/path", make_gguf("ok"), InvalidModelName),
    ]:
        with pytest.raises(error):
            store.add(name, path)
        assert snapshot(empty_models_dir) == before
    assert not (empty_models_dir / "tmp").exists() or not any((empty_models_dir / "tmp").iterdir())


def test_deleted_blob_reports_missing(empty_models_dir: Path, make_gguf: MakeGGUF) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    entry = store.add("m", make_gguf("m"))
    entry.path.unlink()
    assert [e.id for e in store.list()] == [entry.id]  # listing still works
    with pytest.raises(ModelFileMissing, match="missing"):
        store.get("m")
    assert store.remove("m").deleted  # and it can be cleaned up


def test_symlinked_blob_rejected(
    empty_models_dir: Path, make_gguf: MakeGGUF, tmp_path: Path
) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    entry = store.add("m", make_gguf("m"))
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(entry.path.read_bytes())
    entry.path.unlink()
    entry.path.symlink_to(outside)
    with pytest.raises(ModelFileMissing):
        store.get("m")


def test_symlinked_blobs_dir_rejected(
    empty_models_dir: Path, make_gguf: MakeGGUF, tmp_path: Path
) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    store.add("m", make_gguf("m"))
    blobs = empty_models_dir / "blobs"
    blobs.rename(tmp_path / "elsewhere")
    blobs.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelFileMissing):
        store.get("m")


def test_modified_blob_reported(empty_models_dir: Path, make_gguf: MakeGGUF) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    entry = store.add("m", make_gguf("m"), link=False)
    with entry.path.open("ab") as fh:
        fh.write(b"junk")
    with pytest.raises(ModelFileMissing, match="changed"):
        store.get("m")


def test_corrupt_index_is_a_store_error(empty_models_dir: Path, make_gguf: MakeGGUF) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    store.add("m", make_gguf("m"))
    store.index_path.write_text("{not json")
    with pytest.raises(StoreError, match="index"):
        store.list()


def test_model_config_roundtrip(empty_models_dir: Path, make_gguf: MakeGGUF) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    entry = store.add("m", make_gguf("m"))
    assert store.get_config(entry.id) == {}
    store.set_config(entry.id, {"ctx_size": 8192, "slots": 2})
    assert ModelStore(empty_models_dir, bundled_default=False).get_config(entry.id) == {
        "ctx_size": 8192,
        "slots": 2,
    }
    with pytest.raises(StoreError):
        store.get_config("../../etc/passwd")
    with pytest.raises(ModelNotFound):
        store.set_config("0" * 64, {})
    with pytest.raises(StoreError, match="JSON"):
        store.set_config(entry.id, {"x": object()})
    store.remove("m")
    assert store.get_config(entry.id) == {}  # configs go with their blob


def test_concurrent_adds(empty_models_dir: Path, make_gguf: MakeGGUF) -> None:
    store = ModelStore(empty_models_dir, bundled_default=False)
    paths = [make_gguf(f"m{i}") for i in range(8)]
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            ModelStore(empty_models_dir, bundled_default=False).add(f"m:{i}", paths[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(t for e in store.list() for t in e.tags) == [f"ai/m:{i}" for i in range(8)]


def test_fresh_store_seeds_bundled_once(empty_models_dir: Path) -> None:
    store = ModelStore(empty_models_dir)
    entries = store.list()  # first use materializes the bundled model
    assert [e.tags for e in entries] == [sorted(BUNDLED_TAGS)]
    blob = entries[0].path
    assert sha256(blob) == bundled_pkg.expected_sha256()
    for tag in BUNDLED_TAGS:
        store.remove(tag)
    assert store.list() == [] and not blob.exists()  # removal sticks for list()
    assert store.get("gemma3").id == bundled_pkg.expected_sha256()  # explicit use brings it back
