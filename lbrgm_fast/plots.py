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


def _draw_lines(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], lines: dict[str, tuple[np.ndarray, np.ndarray]],
                legend: dict[str, str]) -> None:
    """Draw each line (x, y in [0, 1] of `box` = left, top, right, bottom; y up) in its colour,
    with its legend text to the right of the box."""
    left, top, right, bottom = box
    for k, (name, (xs, ys)) in enumerate(lines.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        px = left + xs * (right - left)
        py = bottom - ys * (bottom - top)
        draw.line(list(zip(px.tolist(), py.tolist())), fill=colour, width=2)
        draw.text((right + 8, top + 16 * k), legend[name], fill=colour)


def plot_curves(steps: np.ndarray, curves: dict[str, np.ndarray], path: Path, size: tuple[int, int] = (640, 360)) -> None:
    """One line per curve on a log10 axis, each normalised to its own range, with a legend.

    Args:
        steps: [T] step numbers.
        curves: name -> [T] values (non-positive and non-finite values are skipped).
        path: Where the PNG goes (written atomically).
    """
    width, height = size
    box = (50, 20, width - 150, height - 30)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle(box, outline="black")
    if len(steps) > 1:
        span = max(float(steps[-1] - steps[0]), 1.0)
        lines, legend = {}, {}
        for name, values in curves.items():
            v = np.asarray(values, dtype=np.float64)
            ok = np.isfinite(v) & (v > 0)
            if ok.sum() < 2:
                continue
            logv = np.log10(v[ok])
            lo, hi = logv.min(), logv.max()
            lines[name] = ((steps[ok] - steps[0]) / span, (logv - lo) / (hi - lo) if hi > lo else np.full_like(logv, 0.5))
            legend[name] = f"{name} {v[ok][-1]:.3g}"
        _draw_lines(draw, box, lines, legend)
        draw.text((box[0], box[3] + 8), f"step {int(steps[0])}", fill="black")
        draw.text((box[2] - 60, box[3] + 8), f"step {int(steps[-1])}", fill="black")
    draw.text((4, box[1]), "log,\nper\ncurve", fill="black")
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def line_chart(series: dict[str, tuple[np.ndarray, np.ndarray]], x_label: str, y_label: str, title: str = "",
               size: tuple[int, int] = (520, 320)) -> Image.Image:
    """Lines on shared linear axes (unlike `plot_curves`, values compare across lines), their
    ranges written at the axes' ends, a legend with each line's last value.

    Args:
        series: name -> (x [T], y [T]); non-finite points are skipped.
        x_label, y_label, title: Axis names and a title above the plot.
    """
    width, height = size
    box = (60, 24, width - 170, height - 34)  # the legend's names (e.g. brgm:lbrgm-paper) fit on the right
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle(box, outline="black")
    draw.text((box[0], 6), title, fill="black")
    points = {name: (np.asarray(x, np.float64), np.asarray(y, np.float64)) for name, (x, y) in series.items()}
    points = {name: (x[ok], y[ok]) for name, (x, y) in points.items() if (ok := np.isfinite(x) & np.isfinite(y)).sum() >= 1}
    if points:
        x_all = np.concatenate([x for x, _ in points.values()])
        y_all = np.concatenate([y for _, y in points.values()])
        (x_lo, x_hi), (y_lo, y_hi) = (x_all.min(), x_all.max()), (y_all.min(), y_all.max())
        x_span, y_span = max(x_hi - x_lo, 1e-12), max(y_hi - y_lo, 1e-12)
        lines = {name: ((x - x_lo) / x_span, (y - y_lo) / y_span) for name, (x, y) in points.items()}
        _draw_lines(draw, box, lines, {name: f"{name} {y[-1]:.4g}" for name, (_, y) in points.items()})
        draw.text((box[0], box[3] + 4), f"{x_lo:.4g}", fill="black")
        draw.text((box[2] - 40, box[3] + 4), f"{x_hi:.4g}", fill="black")
        draw.text((4, box[1]), f"{y_hi:.4g}", fill="black")
        draw.text((4, box[3] - 12), f"{y_lo:.4g}", fill="black")
    draw.text(((box[0] + box[2]) // 2 - 3 * len(x_label), box[3] + 16), x_label, fill="black")
    draw.text((4, (box[1] + box[3]) // 2), y_label, fill="black")
    return img


def labelled_grid(panels: Sequence[Sequence[torch.Tensor]], names: Sequence[str],
                  captions: Sequence[Sequence[str]] | None = None) -> Image.Image:
    """Rows of equal panels [3, S, S] in [0, 1] under a white band naming each column;
    `captions[row][column]` (optional, "" for none) is written on the panel's lower edge, on a
    white box so that it reads on any image."""
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
    for row, texts in enumerate(captions or []):
        for column, text in enumerate(texts):
            if text:
                x, y = column * side * scale + 2, LABEL_BAND + (row + 1) * side * scale - 13
                draw.rectangle(draw.textbbox((x, y), text, font=font), fill="white")
                draw.text((x, y), text, fill="black", font=font)
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
