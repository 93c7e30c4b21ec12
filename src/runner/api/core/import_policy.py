"""Which local files `POST /models/create {"from": PATH}` may import over HTTP.

The server reads whatever its user can read, so a request must not turn it into a file
oracle: `from` must resolve (symlinks followed) inside an allowed directory (`--allow-import`,
default: the user's home and the server's working directory), and every way a file can fail
to be a model (missing, unreadable, not GGUF, truncated or corrupt) gets one and the same
answer that quotes nothing from the file. The details go to the server log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from runner.api.errors.table import APIError
from runner.config import Settings
from runner.model_config import parse_lora_spec
from runner.store import InvalidModelFile, ModelStore, read_metadata

log = logging.getLogger(__name__)

NOT_A_MODEL = "invalid_model_file"


def allowed_import_dirs(settings: Settings) -> list[Path]:
    """`--allow-import` directories, resolved; by default the home and working directories."""
    dirs = settings.allow_import or [str(Path.home()), os.getcwd()]
    return [Path(os.path.realpath(Path(d).expanduser())) for d in dirs]


def import_source(source: str, allowed: Sequence[Path]) -> Path:
    """The real path of a local file to import: 400 unless absolute, 403 unless inside
    `allowed`. Whether the file exists is not checked here (see `not_a_model`)."""
    if "\x00" in source:
        raise APIError(400, "'from' holds a NUL character", "invalid_request", param="from")
    path = Path(source).expanduser()
    if not path.is_absolute():  # relative to what? The server's cwd is no one's business
        raise APIError(400, "'from' must be an absolute path", "invalid_request", param="from")
    real = Path(os.path.realpath(path))
    if not any(real == d or real.is_relative_to(d) for d in allowed):
        raise APIError(
            403,
            f"'from' is outside the directories this server imports from ({len(allowed)} "
            "allowed; the operator sets them with --allow-import)",
            "import_not_allowed",
            param="from",
        )
    return real


def not_a_model(source: str, reason: Exception) -> APIError:
    """The one error for a `from` that is not a usable GGUF file, whatever the reason."""
    log.info("models/create: %s is not importable: %s", source, reason)
    return APIError(
        400,
        f"{source[:500]!r} is not a readable GGUF model file (missing, unreadable, not GGUF, "
        "or truncated/corrupt)",
        NOT_A_MODEL,
        param="from",
    )


def check_draft_model(name: str, store: ModelStore, allowed: Sequence[Path]) -> None:
    """`_configure`'s `draft-model`: a model in the store, or a readable GGUF inside an
    allowed directory (the same rule as imports). Raises ValueError with one message whatever
    the reason, so that the answer says nothing about what is on the disk (the reason goes
    to the log). Touches the disk: call it off the event loop."""
    try:
        store.get(name)
        return
    except Exception:  # not a model name: perhaps a file
        pass
    try:
        if "\x00" in name or not Path(name).expanduser().is_absolute():
            raise ValueError("not a model name nor an absolute path")
        read_metadata(import_source(name, allowed))
    except (APIError, OSError, ValueError, InvalidModelFile) as exc:
        log.info("_configure: draft model %s refused: %s", name[:500], exc)
        raise ValueError(
            f"draft model {name[:500]!r} is neither a model in the store nor a readable GGUF "
            "file in a directory this server imports from (--allow-import)"
        ) from None


def check_lora_adapters(specs: Sequence[str], store: ModelStore, allowed: Sequence[Path]) -> None:
    """`_configure`'s `lora`: each a model in the store or a file inside an allowed
    directory (the rule of imports); one message whatever the reason, as `check_draft_model`.
    Touches the disk: call it off the event loop."""
    for spec in specs:
        name, _ = parse_lora_spec(spec)
        try:
            store.get(name)
            continue
        except Exception:  # not a model name: perhaps a file
            pass
        try:
            if "\x00" in name or not Path(name).expanduser().is_absolute():
                raise ValueError("not a model name nor an absolute path")
            if not import_source(name, allowed).is_file():
                raise ValueError("no such file")
        except (APIError, OSError, ValueError) as exc:
            log.info("_configure: LoRA adapter %s refused: %s", name[:500], exc)
            raise ValueError(
                f"LoRA adapter {name[:500]!r} is neither a model in the store nor a file in a "
                "directory this server imports from (--allow-import)"
            ) from None
