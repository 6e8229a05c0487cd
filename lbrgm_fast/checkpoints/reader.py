"""`read_checkpoint`: recognise a checkpoint by its content and dispatch to the right reader.

Recognition never looks at the file name: a zip archive or a pickle of torch's legacy magic number
is a `torch.save` file (rosinality), a safetensors header is our own format, any other pickle is
read with the restricted unpickler and recognised by what it contains (an NVIDIA snapshot dict,
a TensorFlow (G, D, Gs) tuple, or a rosinality dict).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from lbrgm_fast.checkpoints import safe_pickle
from lbrgm_fast.checkpoints.checkpoint import Checkpoint, ReadResult, fail
from lbrgm_fast.checkpoints.layout import expected_shapes
from lbrgm_fast.checkpoints.lbrgm_format import looks_like_safetensors, read_lbrgm, save_lbrgm
from lbrgm_fast.checkpoints.nvidia import NETWORKS, is_nvidia_network_dict, read_nvidia
from lbrgm_fast.checkpoints.rosinality import is_rosinality, read_rosinality
from lbrgm_fast.checkpoints.tensorflow import is_tensorflow_pickle, read_tensorflow
from lbrgm_fast.errors import CheckpointError, UnsafeCheckpointError

if TYPE_CHECKING:
    from lbrgm_fast.model import Generator

T = TypeVar("T")

# torch.save's pre-1.6 format starts with a protocol-2 pickle of the magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_ZIP_MAGIC = b"PK\x03\x04"
_OTHER_KINDS = {  # signatures of files people pass by mistake, for a more helpful message
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\x1f\x8b": "a gzip archive",
    b"\x89HDF": "an HDF5 file",
    b"<": "a text/HTML/XML file",
    b"{": "a JSON/text file",
}
# Errors that malformed but allow-listed content can cause while we walk it.
_CONTENT_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError)


def read_checkpoint(path: str | os.PathLike[str], network: str = "G_ema") -> Checkpoint:
    """Read a StyleGAN2 generator from an NVIDIA pickle, rosinality .pt, lbrgm or TensorFlow pickle.

    The format is recognised from the file's content. No code from the file is ever run: pickles
    go through an allow-list of data constructors, torch files through `weights_only=True`.

    Args:
        path: The checkpoint file.
        network: "G_ema" (default, the averaged generator) or "G" (the raw training generator),
            for files that hold both (lbrgm files hold one generator and ignore it).

    Raises:
        UnsafeCheckpointError: the file asks for a Python global outside the allow-list.
        CheckpointError: the file is missing, unreadable, corrupt, or not a supported StyleGAN2.
    """
    source = os.fspath(path)
    if network not in NETWORKS:
        raise fail(source, f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    data = _read_bytes(source)
    sha256 = hashlib.sha256(data).hexdigest()
    with warnings.catch_warnings():
        # torch warns about TypedStorage, which legacy storages unpickle as; not the user's concern.
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        fmt, result = _dispatch(data, source, network)
    # Every reader has validated the key set; present it in one canonical (NVIDIA) order.
    ordered = {key: result.state_dict[key] for key in expected_shapes(result.config)}
    return Checkpoint(
        config=result.config,
        state_dict=ordered,
        format=fmt,
        sha256=sha256,
        has_w_avg=result.has_w_avg,
        source=source,
        details=dict(result.details),
    )


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], network: str = "G_ema") -> Checkpoint:
    """Read any supported checkpoint and save it in lbrgm format; returns what was read."""
    checkpoint = read_checkpoint(src, network=network)
    save_lbrgm(checkpoint, dst)
    return checkpoint


def load_generator(path: str | os.PathLike[str], device: str | torch.device = "cpu", network: str = "G_ema") -> Generator:
    """Read a checkpoint and return a frozen `lbrgm_fast.model.Generator` in eval mode on `device`."""
    from lbrgm_fast.model import Generator  # lazily: reading checkpoints must not need the model

    checkpoint = read_checkpoint(path, network=network)
    return Generator.from_state_dict(checkpoint.config, checkpoint.state_dict).to(device)


def _read_bytes(source: str) -> bytes:
    try:
        with open(source, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise CheckpointError(f"cannot use checkpoint '{source}': no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"cannot use checkpoint '{source}': it is a directory, not a file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot use checkpoint '{source}': cannot read it ({exc.strerror or exc})") from None
    if not data:
        raise CheckpointError(f"cannot use checkpoint '{source}': the file is empty")
    return data


def _dispatch(data: bytes, source: str, network: str) -> tuple[str, ReadResult]:
    if data.startswith(_ZIP_MAGIC) or data.startswith(_LEGACY_TORCH_MAGIC):
        obj = _torch_load(data, source)
        if is_rosinality(obj):
            return "rosinality", _guard(lambda: read_rosinality(obj, source, network), source)
        raise fail(source, f"it is a PyTorch file but not a StyleGAN2 generator checkpoint ({_describe(obj)})")
    if looks_like_safetensors(data):
        return "lbrgm", read_lbrgm(data, source)
    if data[0] == 0x80 and len(data) > 1 and 2 <= data[1] <= 5:
        obj = _restricted_load(data, source)
        if is_nvidia_network_dict(obj):
            return "nvidia-pickle", _guard(lambda: read_nvidia(obj, source, network), source)
        if is_tensorflow_pickle(obj):
            return "tensorflow-pickle", _guard(lambda: read_tensorflow(obj, source, network), source)
        if is_rosinality(obj):
            return "rosinality", _guard(lambda: read_rosinality(obj, source, network), source)
        raise fail(source, f"the pickle holds no StyleGAN2 generator ({_describe(obj)}; expected 'G_ema' or 'G')")
    for magic, kind in _OTHER_KINDS.items():
        if data.startswith(magic):
            raise fail(source, f"it is {kind}, not a checkpoint")
    raise fail(source, "unrecognised content: not a network pickle, PyTorch file or lbrgm/safetensors file")


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = [repr(k) for k in list(obj)[:6]]
        return f"a dict with keys {', '.join(keys) or 'none'}" + (", ..." if len(obj) > 6 else "")
    return f"a {type(obj).__name__}"


def _guard(read: Callable[[], T], source: str) -> T:
    """Run a format reader, turning stray errors from malformed content into `CheckpointError`."""
    try:
        return read()
    except CheckpointError:
        raise
    except _CONTENT_ERRORS as exc:
        raise fail(source, f"malformed content ({type(exc).__name__}: {_first_line(exc)})") from exc


def _restricted_load(data: bytes, source: str) -> Any:
    try:
        return safe_pickle.restricted_loads(data)
    except safe_pickle.RefusedGlobal as exc:
        raise _unsafe(source, exc.qualname) from None
    except CheckpointError:
        raise
    except safe_pickle.MalformedPickle as exc:
        raise fail(source, f"malformed pickle ({exc})") from None
    except EOFError:
        raise fail(source, "the pickle ends early (truncated file?)") from None
    except Exception as exc:  # pickle raises many types for corrupt input
        raise fail(source, f"corrupt or truncated pickle ({type(exc).__name__}: {_first_line(exc)})") from None


def _torch_load(data: bytes, source: str) -> Any:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        qualname = safe_pickle.refused_torch_global(exc)
        if qualname:
            raise _unsafe(source, qualname) from None
        raise fail(source, f"corrupt PyTorch file ({_first_line(exc)})") from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for damaged archives
        raise fail(source, f"corrupt or truncated PyTorch file ({type(exc).__name__}: {_first_line(exc)})") from None


def _unsafe(source: str, qualname: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refusing checkpoint '{source}': it asks for {qualname}, which is not on the allow-list "
        "(lbrgm-fast never runs code from a checkpoint; the file may be malicious)"
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
