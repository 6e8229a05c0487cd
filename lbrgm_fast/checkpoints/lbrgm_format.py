"""lbrgm-fast's own checkpoint format: a safetensors file with the config in its metadata.

Metadata (string -> string, in the safetensors header's `__metadata__`):
    format          "lbrgm-generator"
    version         "1"
    config          JSON of `GeneratorConfig.to_dict()`
    source_sha256   SHA-256 of the file the weights were first read from
    source_format   that file's format ("nvidia-pickle", "rosinality", "tensorflow-pickle")
    has_w_avg       "true" or "false" (false: mapping.w_avg was estimated, see layout.estimate_w_avg)
Tensors: float32, NVIDIA key names without `*.resample_filter`. No pickle anywhere, so reading
it cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from lbrgm_fast.checkpoints.checkpoint import Checkpoint, ReadResult, as_float32, fail
from lbrgm_fast.checkpoints.layout import check_state_dict
from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.errors import CheckpointError

FORMAT_NAME = "lbrgm-generator"
FORMAT_VERSION = "1"


def looks_like_safetensors(data: bytes) -> bool:
    """True if `data` starts like a safetensors file: u64 header length, then a JSON object."""
    if len(data) < 10:
        return False
    length = int.from_bytes(data[:8], "little")
    return 2 <= length <= len(data) - 8 and data[8:9] == b"{"


def save_lbrgm(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> None:
    """Write `checkpoint` to `path` in lbrgm format, atomically (temporary file + os.replace).

    Raises:
        CheckpointError: the state dict does not fit the config, or the folder is not writable
            (nothing is written).
    """
    target = Path(path)
    check_state_dict(checkpoint.state_dict, checkpoint.config, str(target))
    # Re-saving an lbrgm file keeps pointing at the original source, not at the lbrgm copy.
    if checkpoint.format == "lbrgm":
        source_sha = str(checkpoint.details.get("source_sha256", checkpoint.sha256))
        source_format = str(checkpoint.details.get("source_format", "lbrgm"))
    else:
        source_sha, source_format = checkpoint.sha256, checkpoint.format
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": json.dumps(checkpoint.config.to_dict(), sort_keys=True),
        "source_sha256": source_sha,
        "source_format": source_format,
        "has_w_avg": "true" if checkpoint.has_w_avg else "false",
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in checkpoint.state_dict.items()}
    payload = safetensors.torch.save(tensors, metadata=metadata)

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint '{target}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)  # readers see the old file or the complete new one, never half
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write checkpoint '{target}': {exc.strerror or exc}") from exc
        raise


def read_lbrgm(data: bytes, source: str) -> ReadResult:
    """Parse an lbrgm file's bytes; every problem becomes a `CheckpointError`."""
    metadata = _metadata(data, source)
    if metadata.get("format") != FORMAT_NAME:
        raise fail(source, f"it is a safetensors file but not an lbrgm-fast generator (no format={FORMAT_NAME!r} metadata)")
    if metadata.get("version") != FORMAT_VERSION:
        raise fail(source, f"lbrgm format version {metadata.get('version')!r} is not supported (this reads {FORMAT_VERSION})")
    try:
        config = GeneratorConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(source, f"its config metadata is invalid ({exc})") from None
    has_w_avg = metadata.get("has_w_avg")
    if has_w_avg not in ("true", "false"):
        raise fail(source, f"its has_w_avg metadata is {has_w_avg!r}, expected 'true' or 'false'")
    try:
        raw = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types for corrupt data
        raise fail(source, f"its tensor data is corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    state = {k: as_float32(v, k, source) for k, v in raw.items()}
    check_state_dict(state, config, source)
    details = {
        "source_sha256": metadata.get("source_sha256", ""),
        "source_format": metadata.get("source_format", ""),
        "version": FORMAT_VERSION,
    }
    return ReadResult(config=config, state_dict=state, has_w_avg=has_w_avg == "true", details=details)


def _metadata(data: bytes, source: str) -> dict[str, str]:
    length = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, ValueError):
        raise fail(source, "its safetensors header is not valid JSON (corrupt file?)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        if isinstance(header, dict):
            raise fail(source, f"it is a safetensors file but not an lbrgm-fast generator (no format={FORMAT_NAME!r} metadata)")
        raise CheckpointError(f"cannot use checkpoint '{source}': its safetensors header is not a JSON object")
    return {str(k): str(v) for k, v in metadata.items()}
