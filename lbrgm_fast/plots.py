"""Loss curves as a small PNG, drawn with PIL (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lbrgm_fast.io import atomic_write

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def plot_curves(steps: np.ndarray, curves: dict[str, np.ndarray], path: Path, size: tuple[int, int] = (640, 360)) -> None:
    """One line per curve on a log10 axis, each normalised to its own range, with a legend.

    Args:
        steps: [T] step numbers.
        curves: name -> [T] values (non-positive and non-finite values are skipped).
        path: Where the PNG goes (written atomically).
    """
    width, height = size
    left, right, top, bottom = 50, 150, 20, 30
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    if len(steps) > 1:
        span = max(float(steps[-1] - steps[0]), 1.0)
        for k, (name, values) in enumerate(curves.items()):
            v = np.asarray(values, dtype=np.float64)
            ok = np.isfinite(v) & (v > 0)
            if ok.sum() < 2:
                continue
            logv = np.log10(v[ok])
            lo, hi = logv.min(), logv.max()
            ys = (logv - lo) / (hi - lo) if hi > lo else np.full_like(logv, 0.5)
            xs = left + (steps[ok] - steps[0]) / span * (width - right - left)
            ys = height - bottom - ys * (height - bottom - top)
            colour = _COLOURS[k % len(_COLOURS)]
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=2)
            draw.text((width - right + 8, top + 16 * k), f"{name} {v[ok][-1]:.3g}", fill=colour)
        draw.text((left, height - bottom + 8), f"step {int(steps[0])}", fill="black")
        draw.text((width - right - 60, height - bottom + 8), f"step {int(steps[-1])}", fill="black")
    draw.text((4, top), "log,\nper\ncurve", fill="black")
    atomic_write(path, lambda f: img.save(f, format="PNG"))
