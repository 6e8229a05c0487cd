"""Reading user images and writing results safely.

Images cross this module as float tensors [3, H, W] in [0, 1]. Every file is written atomically
(a temporary file in the same folder, then `os.replace`), so an interrupted run never leaves a
half-written PNG or report behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lbrgm_fast.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temporary file next to `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(data: Any) -> Any:
    """`data` with NaN and ±inf (a stopped sample's loss, a restart that never had a finite
    one) replaced by None, so that it serialises as strict JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def json_text(data: Any) -> str:
    """`data` as strict, indented JSON: non-finite numbers as null (which every parser reads),
    other non-JSON values (paths, devices) as their str()."""
    return json.dumps(_finite(data), indent=2, default=str, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    text = json_text(data)
    atomic_write(path, lambda f: f.write((text + "\n").encode()))


def save_image(path: Path, image: torch.Tensor) -> None:
    """Save [3, H, W] in [0, 1] as an 8-bit PNG (rounded, not truncated)."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _to_float_rgb(img: Image.Image, path: Path, notes: list[str]) -> np.ndarray:
    """Any PIL mode -> float32 [H, W, 3] in [0, 1]; 16-bit kept at full precision."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float32)
        array = array / (65535.0 if array.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0)
        notes.append("16-bit grayscale converted to RGB")
        return np.repeat(array[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        notes.append("alpha channel ignored")
    if img.mode in ("L", "LA", "1"):
        notes.append("grayscale converted to RGB")
    if img.mode not in ("RGB", "L", "LA", "RGBA", "P", "PA", "1", "CMYK", "YCbCr", "F"):
        raise ImageError(f"{path}: unsupported image mode {img.mode}")
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read an image as it is, [3, H, W] in [0, 1], with notes on the conversions (grayscale,
    alpha, 16 bits); raises ImageError for a missing or unreadable file."""
    path = Path(path)
    notes: list[str] = []
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            array = _to_float_rgb(img, path, notes)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1), notes


def load_image(path: str | Path, size: int | None = None, strict: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Load an image as [3, H, W] in [0, 1], with notes on what was changed.

    Non-square images are centre-cropped to a square and resized to `size` (as BRGM does), each
    with a note; `strict=True` makes either an ImageError instead.
    """
    path = Path(path)
    tensor, notes = read_image(path)
    h, w = tensor.shape[1:]
    if h != w:
        if strict:
            raise ImageError(f"{path}: image is {w}x{h}, not square (--strict)")
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        tensor = tensor[:, top : top + side, left : left + side]
        notes.append(f"centre-cropped from {w}x{h} to {side}x{side}")
    if size is not None and tensor.shape[-1] != size:
        if strict:
            raise ImageError(f"{path}: image is {tensor.shape[-1]}x{tensor.shape[-1]}, expected {size}x{size} (--strict)")
        notes.append(f"resized from {tensor.shape[-1]}x{tensor.shape[-1]} to {size}x{size}")
        tensor = torch.nn.functional.interpolate(tensor[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
        tensor = tensor.clamp(0, 1)
    return tensor.contiguous(), notes


def unique_names(paths: Sequence[Path]) -> list[str]:
    """One name per input (its folder, its cells): the file stem, made unique with the parent
    folder or a counter (a.png and a.jpg, or two folders' a.png)."""
    names: list[str] = []
    for p in paths:
        name = p.stem
        if name in names:
            name = f"{p.parent.name}-{p.stem}"
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def find_inputs(patterns: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (their images, sorted) and globs; returns (paths, [(input, problem)])."""
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            images = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                problems.append((pattern, f"folder has no images ({', '.join(IMAGE_SUFFIXES)})"))
            found.extend(images)
        elif p.exists():
            found.append(p)
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(Path().glob(pattern)) if not p.is_absolute() else sorted(Path(p.anchor).glob(str(p.relative_to(p.anchor))))
            if not matches:
                problems.append((pattern, "no files match"))
            found.extend(m for m in matches if m.is_file())
        else:
            problems.append((pattern, "no such file"))
    unique: list[Path] = []
    for q in found:
        if q not in unique:
            unique.append(q)
    return unique, problems
