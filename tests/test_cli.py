"""The `python -m runner` command line (subprocesses) and its Settings plumbing (in-process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import cli
from runner.cli.common import env_only
from runner.config import Settings

MakeGGUF = Callable[..., Path]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_models_list(runner_env: dict[str, str]) -> None:
    result = run("models", "list", env=runner_env)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "ARCH", "PARAMS", "QUANT", "CONTEXT", "SIZE"]
    row = next(r for r in rows if r.startswith("ai/gemma3:270m "))
    for cell in ("gemma3", "268M", "Q4_K_M", "32768", "a5fd3b62230a"):
        assert cell in row.split()


def test_models_list_json(runner_env: dict[str, str]) -> None:
    result = run("models", "list", "--json", env=runner_env)
    assert result.returncode == 0, result.stderr
    entry = next(e for e in json.loads(result.stdout) if "ai/gemma3:270m" in e["tags"])
    assert entry["metadata"]["quantization"] == "Q4_K_M"
    assert entry["metadata"]["has_chat_template"] is False  # base model: no template in GGUF
    assert "chat_template" not in entry["metadata"]  # kept out of listings: it is long


def test_models_show(runner_env: dict[str, str]) -> None:
    result = run("models", "show", "gemma3", env=runner_env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["metadata"]["architecture"] == "gemma3"
    assert "chat_template" in data["metadata"]  # full metadata, unlike `list --json`
    assert data["config"] == {}


def test_a_reader_that_leaves_early_is_no_error(runner_env: dict[str, str]) -> None:
    # `runner models show gemma3 | head`: the pipe's reader is gone before runner writes.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "models", "show", "gemma3"],
            env=runner_env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


def test_models_dir_flag_beats_env(
    runner_env: dict[str, str], tmp_path: Path, make_gguf: MakeGGUF
) -> None:
    env = dict(runner_env, RUNNER_MODELS_DIR=str(tmp_path / "elsewhere"))
    own = tmp_path / "own"
    result = run("--models-dir", str(runner_env["RUNNER_MODELS_DIR"]), "models", "list", env=env)
    assert result.returncode == 0 and "ai/gemma3:270m" in result.stdout, result.stderr
    result = run("models", "add", "--models-dir", str(own), "t/tiny:1", str(make_gguf()), env=env)
    assert result.returncode == 0, result.stderr
    assert "t/tiny:1" in result.stdout
    assert (own / "index.json").exists() and not (tmp_path / "elsewhere").exists()


def test_add_show_rm_roundtrip(
    runner_env: dict[str, str], tmp_path: Path, make_gguf: MakeGGUF
) -> None:
    env = dict(runner_env, RUNNER_MODELS_DIR=str(tmp_path / "models"))
    assert run("models", "add", "My/Tiny:1", str(make_gguf()), env=env).returncode == 0
    shown = run("models", "show", "my/tiny", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["tags"] == ["my/tiny:1"]
    removed = run("models", "rm", "my/tiny:1", env=env)
    assert removed.returncode == 0 and "deleted: sha256:" in removed.stdout
    missing = run("models", "show", "my/tiny:1", env=env)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_add_non_gguf_fails_cleanly(runner_env: dict[str, str], tmp_path: Path) -> None:
    models = tmp_path / "models"
    env = dict(runner_env, RUNNER_MODELS_DIR=str(models))
    source = Path("/etc/hostname")
    if not source.is_file():
        source = tmp_path / "hostname"
        source.write_text("my-host\n")
    result = run("models", "add", "my/model:1", str(source), env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not a GGUF" in lines[0]
    assert "Traceback" not in result.stderr
    assert not models.exists() or not (models / "index.json").exists()


def test_bad_name_fails_cleanly(
    runner_env: dict[str, str], tmp_path: Path, make_gguf: MakeGGUF
) -> None:
    env = dict(runner_env, RUNNER_MODELS_DIR=str(tmp_path / "models"))
    result = run("models", "add", "../evil", str(make_gguf()), env=env)
    assert result.returncode == 1 and "invalid model name" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["serve"],
        ["models"],
        ["models", "list"],
        ["models", "add"],
        ["models", "rm"],
        ["models", "show"],
    ],
)
def test_help(args: list[str], runner_env: dict[str, str]) -> None:
    result = run(*args, "--help", env=runner_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_no_command_prints_usage(runner_env: dict[str, str]) -> None:
    result = run(env=runner_env)
    assert result.returncode == 2 and "usage:" in result.stderr


# ----- in-process: flags -> Settings ---------------------------------------------------------


def settings_for(argv: list[str]) -> Settings:
    return cli.settings_from(cli.build_parser().parse_args(argv))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("RUNNER_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_serve_flags_cover_every_setting() -> None:
    parser = cli.build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    dests = {a.dest for a in serve._actions}
    secrets = {f for f, info in Settings.model_fields.items() if env_only(info)}
    assert set(Settings.model_fields) - secrets <= dests
    assert secrets == {"registry_password"} and not secrets & dests  # env only, not in `ps`


def test_serve_flags_build_settings(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = settings_for(
        [
            "serve",
            "--port", "9000",
            "--model", "gemma3",
            "--model", "ai/smollm2",
            "--no-persist",
            "--gpu-layers", "all",
            "--idle-timeout", "5m",
            "--memory-budget", "2GiB",
            "--cors-origins", "http://a,http://b",
            "--models-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert s.port == 9000 and s.model == ["gemma3", "ai/smollm2"]
    assert s.persist is False and s.gpu_layers == -1 and s.idle_timeout == 300.0
    assert s.memory_budget == 2 << 30 and s.cors_origins == ["http://a", "http://b"]
    assert s.models_dir == tmp_path


def test_env_applies_unless_flag_given(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RUNNER_SLOTS", "7")
    clean_env.setenv("RUNNER_PORT", "8001")
    s = settings_for(["serve", "--port", "9000"])
    assert s.slots == 7 and s.port == 9000  # env fills in, the flag wins
    assert settings_for(["serve"]).ctx_size == Settings().ctx_size


def test_bad_flag_value_is_a_usage_error(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(cli.UsageError, match="--port"):
        settings_for(["serve", "--port", "99999"])


def test_serve_without_api_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "runner.api.server", None)  # makes the import fail
    assert cli.main(["serve", "--port", "0"]) == 1
    assert "API server is not available" in capsys.readouterr().err


def test_serve_calls_api(monkeypatch: pytest.MonkeyPatch, clean_env: pytest.MonkeyPatch) -> None:
    import types

    seen: list[Settings] = []
    fake = types.ModuleType("runner.api.server")
    fake.serve = seen.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "runner.api.server", fake)
    assert cli.main(["serve", "--slots", "3"]) == 0
    assert seen and seen[0].slots == 3


def serve_help() -> str:
    parser = cli.build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    return " ".join(serve.format_help().split())  # one line: argparse wraps the help


def test_every_setting_is_a_documented_flag() -> None:
    # The flags are made from the fields: a field's description is its flag's help.
    text = serve_help()
    for field, info in Settings.model_fields.items():
        assert info.description, f"Settings.{field} needs a description (its --help)"
        if env_only(info):
            continue
        flag = "--" + field.replace("_", "-")
        assert f"{flag} " in text and f"RUNNER_{field.upper()}" in text, field
    assert "--log-format {text,json}" in text and "--log-text, --no-log-text" in text


def test_flags_read_by_the_fields_type(clean_env: pytest.MonkeyPatch) -> None:
    s = settings_for(
        [
            "serve",
            "--log-format", "json",
            "--log-interval", "2s",
            "--log-text",
            "--cors-origins", "http://a",
            "--cors-origins", "http://b,http://c",
            "--cache-disk-reserve", "2GiB",
            "--threads", "3",
        ]
    )  # fmt: skip
    assert s.log_format == "json" and s.log_interval == 2.0 and s.log_text is True
    assert s.cors_origins == ["http://a", "http://b", "http://c"]
    assert s.cache_disk_reserve == 2 << 30 and s.threads == 3
    assert settings_for(["serve", "--no-log-text"]).log_text is False


def test_a_choice_outside_the_fields_literal_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        settings_for(["serve", "--log-format", "xml"])
    assert exit_info.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err
