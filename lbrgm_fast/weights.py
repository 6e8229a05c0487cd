"""Finding the pretrained backbone files φ and the monitor need (torchvision VGG16, AlexNet).

Lookup order: an explicit path, then torch hub's cache (where torchvision itself keeps them),
then a download from torchvision's official URL; anything else is one clear
WeightsNotFoundError saying which file to put where.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lbrgm_fast.errors import UserError, WeightsNotFoundError

__all__ = ["WEIGHT_FILES", "Backbone", "WeightKind", "cache_path", "load_backbone", "load_state_dict_file", "resolve_weights"]

WeightKind = Literal["vgg16", "alexnet"]

# kind -> (file name, official URL, CLI option). The 8 hex digits in each name are the prefix of
# the file's SHA-256, which torch.hub checks after downloading.
WEIGHT_FILES: dict[str, tuple[str, str, str]] = {
    "vgg16": (
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "--vgg16",
    ),
    "alexnet": (
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "--alexnet",
    ),
}


# What torch.load raises on a file that is not a (safe) state dict: a weights_only refusal,
# a truncated zip, a legacy pickle cut short, random bytes.
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile)


def _entry(kind: str) -> tuple[str, str, str]:
    if kind not in WEIGHT_FILES:
        raise UserError(f"unknown weights kind {kind!r}; valid kinds: {', '.join(WEIGHT_FILES)}")
    return WEIGHT_FILES[kind]


def _hash_prefix(file_name: str) -> str:
    return file_name.rsplit("-", 1)[1].split(".")[0]


def cache_path(kind: WeightKind) -> Path:
    """Where torch hub (and so torchvision) keeps `kind`'s file: <hub dir>/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _entry(kind)[0]


def resolve_weights(kind: WeightKind, path: str | Path | None = None, download: bool = True) -> Path:
    """Path of the torchvision weight file for `kind` ("vgg16" or "alexnet").

    Args:
        kind: Which backbone.
        path: An explicit file; it must exist (no fallback, so a typo is never masked).
        download: Allow fetching the official file into the hub cache when it is not there.

    Raises WeightsNotFoundError naming the cache path and the CLI option to use.
    """
    name, url, option = _entry(kind)
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise WeightsNotFoundError(f"{kind} weights file not found: {explicit}")
        return explicit
    cached = cache_path(kind)
    if cached.is_file():
        return cached
    hint = f"put {name} (from {url}) at {cached}, or pass {option} FILE"
    if not download:
        raise WeightsNotFoundError(f"{kind} weights not found and downloading is off: {hint}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Writes to a temporary file and renames it only after the SHA-256 prefix matched, so
        # a failed or interrupted download never leaves a bad file in the cache.
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=_hash_prefix(name), progress=False)
    except Exception as exc:  # offline, proxy, HTTP error, hash mismatch, read-only cache …
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsNotFoundError(
            f"{kind} weights could not be downloaded ({reason}): {hint}"
        ) from None
    return cached


@dataclass
class Backbone:
    """A torchvision backbone's weights as read for φ or the monitor.

    Any state dict of the right layout loads (random weights for an offline smoke test, a
    fine-tuned VGG16), but only torchvision's official file makes φ and the monitor the
    published LPIPS: `note` says so when the file is another, for stderr and the reports.
    """

    state_dict: dict[str, torch.Tensor]
    sha256: str
    note: str | None  # None: the official file

    @property
    def official(self) -> bool:
        return self.note is None


def load_backbone(kind: WeightKind, path: str | Path | None = None, download: bool = True) -> Backbone:
    """`kind`'s weights from `path` or the hub cache (`resolve_weights`), read safely
    (`load_state_dict_file`), with their SHA-256 checked against torchvision's official file."""
    resolved = resolve_weights(kind, path, download)
    state = load_state_dict_file(resolved)
    name = _entry(kind)[0]
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    note = None if sha.startswith(_hash_prefix(name)) else (
        f"{kind} weights {resolved} are not torchvision's {name} (SHA-256 {sha[:8]}..., expected {_hash_prefix(name)}...): "
        "the perceptual and LPIPS numbers are not the published LPIPS")
    return Backbone(state, sha, note)


def _reason(exc: BaseException) -> str:
    """The informative line of a torch.load failure.

    torch's weights-only errors open with generic advice to retry with weights_only=False (which
    would allow arbitrary code to run); the actual reason is the "WeightsUnpickler error" line.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if line.startswith("WeightsUnpickler error")]
    if specific:
        return specific[0].removeprefix("WeightsUnpickler error:").strip()
    if lines and not lines[0].startswith("Weights only load failed"):
        return lines[0]
    return f"{type(exc).__name__} (corrupt, truncated or not written by torch.save)"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a PyTorch state dict safely (`weights_only=True`, on the CPU).

    Raises UserError when the file is not a state dict (corrupt, truncated, a pickled model,
    or something else entirely); WeightsNotFoundError when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; the error below says enough.
            warnings.simplefilter("ignore", UserWarning)
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as exc:
        raise UserError(f"{path} is not a readable PyTorch state dict: {_reason(exc)}") from None
    if not isinstance(sd, Mapping) or not sd or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise UserError(f"{path} is not a state dict (expected a mapping of names to tensors)")
    return dict(sd)
