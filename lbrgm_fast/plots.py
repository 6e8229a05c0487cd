"""Loss curves, labelled image grids and heat maps as PNG, drawn with PIL (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from lbrgm_fast.io import atomic_write

#: Grids are enlarged (nearest) until a panel is at least this wide, so the labels fit.
FIGURE_PANEL = 128
#: Height of the white band above a grid that names its columns.
LABEL_BAND = 14
#: Anchor colours of the viridis colour map, low to high (perceptually ordered, legible in grey).
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
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


def labelled_grid(panels: Sequence[Sequence[torch.Tensor]], names: Sequence[str]) -> Image.Image:
    """Rows of equal panels [3, S, S] in [0, 1] under a white band naming each column."""
    side = panels[0][0].shape[-1]
    scale = max(1, math.ceil(FIGURE_PANEL / side))
    grid = torch.cat([torch.cat(list(row), dim=2) for row in panels], dim=1)  # [3, rows·S, columns·S]
    grid = F.interpolate(grid[None].float(), scale_factor=scale, mode="nearest")[0]
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    canvas = Image.new("RGB", (pixels.shape[1], pixels.shape[0] + LABEL_BAND), "white")
    canvas.paste(Image.fromarray(pixels), (0, LABEL_BAND))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for column, name in enumerate(names):
        draw.text((column * side * scale + 3, 1), name, fill="black", font=font)
    return canvas


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) to viridis colours, uint8 [..., 3] (piecewise linear between
    `VIRIDIS`'s anchors)."""
    anchors = np.asarray(VIRIDIS, dtype=np.float64)
    position = np.clip(np.nan_to_num(values), 0, 1) * (len(anchors) - 1)
    low = np.minimum(np.floor(position).astype(int), len(anchors) - 2)
    t = (position - low)[..., None]
    return np.round(anchors[low] * (1 - t) + anchors[low + 1] * t).astype(np.uint8)


def heatmap(values: np.ndarray, title: str) -> Image.Image:
    """A map of values [H, W] >= 0: viridis from 0 (dark) to the maximum (yellow), enlarged
    (nearest) until at least `FIGURE_PANEL` wide, under a band with `title`, with a scale bar
    on the right labelled 0, half and the maximum."""
    values = np.asarray(values, dtype=np.float64)
    top = float(values.max()) if values.size and values.max() > 0 else 1.0
    scale = max(1, math.ceil(FIGURE_PANEL / values.shape[1]))
    picture = Image.fromarray(colour_map(values / top)).resize((values.shape[1] * scale, values.shape[0] * scale), Image.Resampling.NEAREST)
    bar_width, labels = 12, 56
    canvas = Image.new("RGB", (picture.width + 8 + bar_width + labels, picture.height + LABEL_BAND), "white")
    canvas.paste(picture, (0, LABEL_BAND))
    ramp = colour_map(np.linspace(1, 0, picture.height)[:, None].repeat(bar_width, axis=1))
    x = picture.width + 8
    canvas.paste(Image.fromarray(ramp), (x, LABEL_BAND))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    draw.text((3, 1), title, fill="black", font=font)
    for fraction in (1.0, 0.5, 0.0):
        y = LABEL_BAND + round((1 - fraction) * (picture.height - 1))
        draw.line([(x + bar_width, y), (x + bar_width + 3, y)], fill="black")
        draw.text((x + bar_width + 5, min(max(y - 5, LABEL_BAND), canvas.height - 11)), f"{fraction * top:.3g}", fill="black", font=font)
    return canvas
