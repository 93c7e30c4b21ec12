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
from .gguf_header import GGUFHeader, TensorInfo, check_magic, read_header
from .gguf_meta import GGUFMetadata, format_params, read_metadata
from .names import DEFAULT_ORG, DEFAULT_TAG, ModelRef, normalize, parse, resolve
from .store import ModelEntry, ModelStore, Removed

__all__ = [
    "BUNDLED_TAGS",
    "DEFAULT_ORG",
    "DEFAULT_TAG",
    "AmbiguousModelName",
    "GGUFHeader",
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
    "TensorInfo",
    "TqdmProgress",
    "format_params",
    "check_magic",
    "normalize",
    "parse",
    "read_header",
    "read_metadata",
    "resolve",
]
