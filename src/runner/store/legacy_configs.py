"""Configs as an older runner kept them: one `configs/<id>.json` per file, shared by every
name of that file, so a template one name's pull brought reached them all (and `ai/gemma3`
could be made to render an attacker's template).

Each file's settings move to each of its names, except a chat template: which name brought
it cannot be told, so it is dropped (and logged: pull or configure it again) rather than
handed to all of them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .fileio import read_json
from .index import Index

log = logging.getLogger(__name__)


def fold_file_configs(configs_dir: Path, index: Index) -> None:
    """Fold every `configs_dir/<id>.json` into `index["configs"]` (names' own configs win)."""
    for path in sorted(configs_dir.glob("*.json")):
        try:
            config = read_json(path, {})
        except (OSError, ValueError):
            continue
        model_id = path.stem
        if not isinstance(config, dict) or model_id not in index["models"]:
            continue
        tags = sorted(t for t, i in index["tags"].items() if i == model_id)
        if config.pop("chat-template", None) is not None:
            log.warning(
                "dropped the chat template stored for %s (a file's template is no longer "
                "shared by its names): pull it again or configure it",
                ", ".join(tags) or model_id[:12],
            )
        for tag in tags:
            if config:
                index["configs"].setdefault(tag, dict(config))
