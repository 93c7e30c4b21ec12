"""The stored-Responses database against hostile and failing conditions, over HTTP with the
`openai` client: damaged records (valid JSON of the wrong shape) are quarantined and answer
404 in OpenAI's shape wherever they are named; a full disk answers 507 (non-streamed) or
ends the stream with `response.failed`; large fields the server ignores cannot evict other
stored responses."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ServerHandle
from server_proc import MODEL

from runner.api.responses.store import DB_NAME

pytestmark = pytest.mark.slow

GOOD_OUTPUT = [{"type": "message", "id": "msg_1", "role": "assistant", "content": []}]
DAMAGED = {
    "resp_list": [],
    "resp_empty": {},
    "resp_number": {"response": 1},
    "resp_items": {
        "response": {"id": "resp_items", "object": "response", "output": GOOD_OUTPUT},
        "input_items": "not a list",
        "messages": [],
    },
    "resp_itemshape": {
        "response": {"id": "resp_itemshape", "object": "response", "output": GOOD_OUTPUT},
        "input_items": [{"no": "id"}, 3],
        "messages": [],
    },
    "resp_messages": {
        "response": {"id": "resp_messages", "object": "response", "output": GOOD_OUTPUT},
        "input_items": [],
        "messages": [{"content": 5}],
    },
}


def client_of(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def _write_raw(db: Path, response_id: str, body: bytes) -> None:
    """A record as a damaged disk or an older writer could leave it."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        conn.execute(
            "INSERT INTO responses (id, written, size, body) VALUES (?, strftime('%s','now'), ?, ?)",
            (response_id, len(body), body),
        )


@pytest.fixture(scope="module")
def server(
    start_server: Callable[..., ServerHandle], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    directory = tmp_path_factory.mktemp("responses")
    env = {"RUNNER_RESPONSES_DIR": str(directory), "RUNNER_RESPONSES_DISK": "3MiB"}
    handle = start_server("--slots", "2", "--ctx-size", "1024", "--model", MODEL, env=env)
    handle.responses_dir = directory  # type: ignore[attr-defined]
    yield handle
    handle.stop()


def test_damaged_records_are_quarantined_and_not_found(server: ServerHandle) -> None:
    client = client_of(server)
    good = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, temperature=0)
    db = server.responses_dir / DB_NAME  # type: ignore[attr-defined]
    for response_id, record in DAMAGED.items():
        _write_raw(db, response_id, json.dumps(record).encode())
    _write_raw(db, "resp_notjson", b"\xff{not json")

    for response_id in [*DAMAGED, "resp_notjson"]:
        with pytest.raises(openai.NotFoundError) as err:
            client.responses.retrieve(response_id)
        assert response_id in err.value.body["message"]
        # Quarantined at the first read: gone from the store, kept aside.
        with pytest.raises(openai.NotFoundError):
            client.responses.input_items.list(response_id)
    for response_id in ("resp_list", "resp_items", "resp_messages"):
        _write_raw(db, response_id, json.dumps(DAMAGED[response_id]).encode())
        with pytest.raises(openai.NotFoundError) as err:
            client.responses.input_items.list(response_id)
        assert err.value.body["code"] == "not_found"
    for response_id in ("resp_number", "resp_messages", "resp_itemshape"):
        _write_raw(db, response_id, json.dumps(DAMAGED[response_id]).encode())
        with pytest.raises(openai.NotFoundError) as err:
            client.responses.create(
                model=MODEL, input="Go on", max_output_tokens=2, previous_response_id=response_id
            )
        assert err.value.body["code"] == "previous_response_not_found"

    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        quarantined = {row[0] for row in conn.execute("SELECT id FROM quarantine")}
        left = {row[0] for row in conn.execute("SELECT id FROM responses")}
    assert quarantined == {*DAMAGED, "resp_notjson"}
    assert left.isdisjoint(quarantined) and good.id in left
    assert client.responses.retrieve(good.id).id == good.id  # the rest is untouched


def test_ignored_fields_cannot_evict_other_responses(server: ServerHandle) -> None:
    """The store holds 3 MiB here: four requests carrying 1 MiB each of reasoning the model
    never sees would have pushed every earlier response out."""
    client = client_of(server)
    kept = [
        client.responses.create(model=MODEL, input=f"Hi {i}", max_output_tokens=2).id
        for i in range(3)
    ]
    bulky = "x" * (1 << 20)
    for i in range(4):
        reasoning = {
            "type": "reasoning",
            "id": f"rs_{i}",
            "summary": [],
            "encrypted_content": bulky,
        }
        message = {"type": "message", "role": "user", "content": "Hello", "note": bulky}
        reply = client.responses.create(
            model=MODEL, input=[reasoning, message], max_output_tokens=2
        )
        items = client.responses.input_items.list(reply.id, order="asc").data
        assert [item.type for item in items] == ["reasoning", "message"]
    for response_id in kept:
        assert client.responses.retrieve(response_id).id == response_id

    # Metadata is bounded as in OpenAI's API: 16 pairs, 64-character keys, 512-character values.
    for metadata in ({"k": "v" * 513}, {"k" * 65: "v"}, {f"k{i}": "v" for i in range(17)}):
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, metadata=metadata)
        assert err.value.body["param"] == "metadata"
    ok = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, metadata={"k": "v"})
    assert client.responses.retrieve(ok.id).metadata == {"k": "v"}


# ----- a full disk -------------------------------------------------------------------------


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _fill(directory: Path) -> Path:
    """Write until the file system has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as fh:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * size)
    return filler


def test_a_full_disk_is_507_or_response_failed(
    start_server: Callable[..., ServerHandle], tmp_path: Path
) -> None:
    directory = tmp_path / "responses"
    if not _mount_tmpfs(directory, "1m"):
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        handle = start_server(
            "--slots", "1", "--ctx-size", "1024", "--model", MODEL,
            env={"RUNNER_RESPONSES_DIR": str(directory)},
        )  # fmt: skip
        client = client_of(handle)
        before = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
        filler = _fill(directory)

        with pytest.raises(openai.APIStatusError) as err:
            client.responses.create(model=MODEL, input="Hello", max_output_tokens=2)
        assert err.value.status_code == 507
        assert err.value.body["code"] == "insufficient_storage"

        events = list(
            client.responses.create(model=MODEL, input="Hello", max_output_tokens=2, stream=True)
        )
        assert events[-1].type == "response.failed"
        assert events[-1].response.status == "failed"
        assert events[-1].response.error.code == "insufficient_storage"

        # Not storing needs no disk; the server keeps serving.
        unstored = client.responses.create(
            model=MODEL, input="Hi", max_output_tokens=2, store=False
        )
        assert unstored.status in ("completed", "incomplete")
        assert httpx.get(handle.url + "/health").status_code == 200

        filler.unlink()  # room again: stored as before, and nothing stored earlier was lost
        after = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
        assert client.responses.retrieve(after.id).id == after.id
        assert client.responses.retrieve(before.id).id == before.id
        handle.stop()
    finally:
        subprocess.run(["umount", "-l", str(directory)], timeout=10)
