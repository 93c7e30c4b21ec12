"""llama-server's request bodies: /tokenize, /detokenize, /slots/{id}."""

from __future__ import annotations

from pydantic import BaseModel, Field

from runner.api.core.schemas import STRICT, RequestBody, TokenId, model_field


class TokenizeRequest(RequestBody):
    model_config = STRICT

    model: str | None = model_field(None, blank_is_default=True)
    content: str
    add_special: bool = False  # llama-server's default
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(RequestBody):
    model_config = STRICT

    model: str | None = model_field(None, blank_is_default=True)
    tokens: list[TokenId]  # not true/false, "1" or 1.0


# A slot file's name: a plain file name (no path, no "..").
SLOT_FILE_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
MAX_SLOT_FILE_LENGTH = 128


class SlotFileRequest(BaseModel):
    """Body of `POST /slots/{id}?action=save|restore` (`filename` is needed by both)."""

    filename: str | None = Field(
        None, json_schema_extra={"pattern": SLOT_FILE_PATTERN, "maxLength": MAX_SLOT_FILE_LENGTH}
    )
