"""Local model store: DMR-style names -> content-addressed GGUF blobs with parsed metadata."""

from .bundled import TAGS as BUNDLED_TAGS
from .errors import (
    AmbiguousModelName,
    InvalidModelFile,
    InvalidModelName,
    ModelFileMissing,
    ModelNotFound,
    StoreError,
)
from .fileio import ProgressFn, TqdmProgress
from .gguf_meta import GGUFMetadata, format_params, read_metadata
from .names import DEFAULT_ORG, DEFAULT_TAG, ModelRef, normalize, parse, resolve
from .store import ModelEntry, ModelStore, Removed

__all__ = [
    "BUNDLED_TAGS",
    "DEFAULT_ORG",
    "DEFAULT_TAG",
    "AmbiguousModelName",
    "GGUFMetadata",
    "InvalidModelFile",
    "InvalidModelName",
    "ModelEntry",
    "ModelFileMissing",
    "ModelNotFound",
    "ModelRef",
    "ModelStore",
    "ProgressFn",
    "Removed",
    "StoreError",
    "TqdmProgress",
    "format_params",
    "normalize",
    "parse",
    "read_metadata",
    "resolve",
]
