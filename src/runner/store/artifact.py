"""Docker Model Runner's model artifact: an OCI image manifest whose config is a model config
JSON and whose layers are the model's files, each uncompressed.

    manifest  application/vnd.oci.image.manifest.v1+json
    config    application/vnd.docker.ai.model.config.v0.1+json
              {"config": {"format": "gguf", "quantization", "parameters", "architecture",
                          "size", "gguf": {...}, "context_size"?},
               "descriptor": {"created"}, "rootfs": {"type": "layers", "diff_ids": [...]}}
    layers    application/vnd.docker.ai.gguf.v3               the GGUF (several: shards)
              application/vnd.docker.ai.chat.template.jinja   optional chat template
              application/vnd.docker.ai.license               optional license text
              application/vnd.docker.ai.gguf.v3.mmproj / .mmproj   projector (not used here)

Newer artifacts (CNCF model spec) carry weights as generic layers annotated with a file path;
a layer whose media type or path says GGUF (and is not a projector or adapter) is a weight.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ..config import format_size
from .digests import oci_digest
from .errors import PullError, UnsupportedArtifact
from .gguf_meta import GGUFMetadata, format_params

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST))

MODEL_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"
GGUF_LAYER = "application/vnd.docker.ai.gguf.v3"
CHAT_TEMPLATE_LAYER = "application/vnd.docker.ai.chat.template.jinja"
LICENSE_LAYER = "application/vnd.docker.ai.license"

_PATH_ANNOTATIONS = ("org.cncf.model.filepath", "org.opencontainers.image.title")
_NOT_WEIGHTS = ("mmproj", "lora", "projector")

# Bigger than any real manifest or config; stops a hostile registry from filling memory.
MAX_MANIFEST_BYTES = 4 << 20


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int
    path: str = ""

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass(frozen=True)
class ModelArtifact:
    """What runner needs from a manifest: the GGUF layer(s), in shard order, and extras."""

    weights: list[Layer]
    chat_template: Layer | None
    config: Layer | None


def _layer(raw: Any) -> Layer:
    if not isinstance(raw, dict):
        raise PullError("malformed manifest: a layer is not an object")
    digest, size = raw.get("digest"), raw.get("size")
    digest = oci_digest(digest, "malformed manifest: a layer's digest")
    if not isinstance(size, int) or size < 0:
        raise PullError("malformed manifest: a layer has no valid size")
    annotations = raw.get("annotations") if isinstance(raw.get("annotations"), dict) else {}
    path = next((str(annotations[k]) for k in _PATH_ANNOTATIONS if k in annotations), "")
    return Layer(str(raw.get("mediaType", "")), digest, size, path)


def _is_weight(layer: Layer) -> bool:
    kind = layer.media_type.lower()
    path = layer.path.lower()
    if any(word in kind or word in path for word in _NOT_WEIGHTS):
        return False
    return kind == GGUF_LAYER or "gguf" in kind or path.endswith(".gguf")


def parse_manifest(manifest: dict[str, Any]) -> ModelArtifact:
    """Pick the model's layers out of an image manifest; PullError if it holds no GGUF."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise PullError("malformed manifest: no layers")
    parsed = [_layer(raw) for raw in layers]
    weights = [layer for layer in parsed if _is_weight(layer)]
    if not weights:
        kinds = ", ".join(sorted({layer.media_type for layer in parsed})) or "none"
        raise UnsupportedArtifact(
            f"this artifact has no GGUF model layer (layer types: {kinds}); runner serves GGUF "
            "models only"
        )
    if any(layer.size == 0 for layer in weights):
        raise UnsupportedArtifact("this artifact's GGUF layer is empty (0 bytes)")
    template = next((layer for layer in parsed if layer.media_type == CHAT_TEMPLATE_LAYER), None)
    config = manifest.get("config")
    return ModelArtifact(weights, template, _layer(config) if isinstance(config, dict) else None)


def context_size(config_blob: bytes) -> int | None:
    """The packaged `context_size`, if the model config sets one."""
    try:
        value = json.loads(config_blob).get("config", {}).get("context_size")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def model_config(
    meta: GGUFMetadata, size: int, diff_ids: list[str], context: int | None = None
) -> bytes:
    """The model config blob DMR writes for a GGUF (diff_ids: every layer's digest)."""
    params = format_params(meta.parameter_count)
    config: dict[str, Any] = {
        "format": "gguf",
        "quantization": meta.quantization,
        "parameters": params,
        "architecture": meta.architecture,
        "size": format_size(size),
        "gguf": {
            "general.architecture": meta.architecture,
            "general.file_type": meta.quantization,
            "general.parameter_count": params,
        },
    }
    if context:
        config["context_size"] = context
    body = {
        "config": config,
        "descriptor": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def manifest(config: tuple[str, int], layers: list[tuple[str, str, int]]) -> bytes:
    """An OCI image manifest: `config` is (digest, size); layers are (media type, digest, size)."""
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": MODEL_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": m, "digest": d, "size": s} for m, d, s in layers],
    }
    return json.dumps(body, separators=(",", ":")).encode()
