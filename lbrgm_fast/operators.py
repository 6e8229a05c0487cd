"""Forward operators A: how a damaged observation y = A(x) is made from a clean image x.

Every operator is an `nn.Module` whose `A(x)` maps a batch of generator-scale images
[B, 3, H, W] (about [-1, 1]) to what the camera / user gave us. `A` reads buffers and
Python constants only and never assigns attributes, so it traces, compiles and exports.

Composition follows function notation: `op2 * op1` applies `op1` first, then `op2`;
`Composition(op1, op2)` is the same pipeline written in the order it runs.

Sizes in messages are written width x height, as image viewers print them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbrgm_fast.errors import ImageError, UserError

__all__ = [
    "MASK_PRESETS",
    "Composition",
    "Identity",
    "Inpainting",
    "Operator",
    "SuperResolution",
    "check_observation",
    "infer_factor",
    "preset_rectangles",
]

# BRGM's seven 1024 x 1024 inpainting masks (REFERENCE §3), as INCLUSIVE pixel ranges of the
# REMOVED region: name -> list of ((row_first, row_last), (col_first, col_last)).
# "eyes" is two 174 x 174 squares on rows 411-584, one flush with each end of cols 276-725:
# cols 276-449 and 552-725 (a 102-px gap over the nose bridge). The published "5.6 %" does not
# hold at 1024 px (2 * 174^2 / 1024^2 = 5.77 %); it is what the same mask covers at 256 px
# (two 43 x 43 squares: 3698 / 65536 = 5.64 %), so the squares are consistent with that figure.
MASK_PRESETS: dict[str, list[tuple[tuple[int, int], tuple[int, int]]]] = {
    "right-half": [((0, 1023), (510, 1023))],
    "left-half": [((0, 1023), (0, 509))],
    "eyes": [((411, 584), (276, 449)), ((411, 584), (552, 725))],
    "bar": [((185, 839), (515, 746))],
    "top-right": [((0, 512), (510, 1023))],
    "mouth": [((616, 867), (286, 750))],
    "bottom-half": [((500, 1023), (0, 1023))],
}
_PRESET_BASE = 1024

SR_KERNELS = ("bicubic", "area", "bicubic-aa")
SRKernel = Literal["bicubic", "area", "bicubic-aa"]
MAX_FACTOR = 64


def _size(h: int, w: int) -> str:
    return f"{w}x{h}"


class Operator(nn.Module):
    """Base class of forward operators: `A(x)` degrades, `forward` is `A`, `*` composes."""

    def A(self, x: Tensor) -> Tensor:  # noqa: N802 - the operator's conventional name
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    def observation_size(self, resolution: int) -> tuple[int, int]:
        """(height, width) of A(x) for a resolution x resolution image; raises if A can't take it."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short human name used in error messages, e.g. 'superres x16 (bicubic)'."""
        return type(self).__name__.lower()

    def with_fill(self, fill: float) -> Operator:
        """This operator with its missing pixels set to `fill` (in the scale of the images it
        is applied to) instead of 0; operators that remove no pixel return themselves."""
        return self

    def observed(self) -> Tensor | None:
        """[1, 1, H, W] in image space: 1 where A keeps a pixel, 0 where it removes it (the
        missing region is `1 - observed()`); None when A removes no pixel as such (it may still
        blur or subsample every one) or cannot say which (a composition)."""
        return None

    def __mul__(self, other: Operator) -> Composition:
        """`self * other`: apply `other` first, then `self` (function composition)."""
        if not isinstance(other, Operator):
            return NotImplemented
        return Composition(other, self)


class Identity(Operator):
    """y = x: plain projection (no damage)."""

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return x

    def observation_size(self, resolution: int) -> tuple[int, int]:
        return (resolution, resolution)

    def describe(self) -> str:
        return "identity"


class Composition(Operator):
    """Operators applied one after another, in the order given: Composition(a, b)(x) = b(a(x))."""

    def __init__(self, *operators: Operator) -> None:
        super().__init__()
        flat: list[Operator] = []
        for op in operators:
            if not isinstance(op, Operator):
                raise UserError(f"Composition takes operators, got {type(op).__name__}")
            # Flatten so (c * b) * a and c * (b * a) build the same module tree.
            flat.extend(op.operators if isinstance(op, Composition) else [op])
        if not flat:
            raise UserError("Composition needs at least one operator")
        self.operators = nn.ModuleList(flat)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        for op in self.operators:
            x = op.A(x)
        return x

    def observation_size(self, resolution: int) -> tuple[int, int]:
        h, w = resolution, resolution
        for op in self.operators:
            if h != w:  # every operator here maps squares to squares
                raise ImageError(f"{op.describe()} needs a square input, got {_size(h, w)}")
            h, w = op.observation_size(h)
        return (h, w)

    def describe(self) -> str:
        return " then ".join(op.describe() for op in self.operators)

    def with_fill(self, fill: float) -> Operator:
        return Composition(*(op.with_fill(fill) for op in self.operators))


# ----------------------------------------------------------------------------------------------
# Inpainting


def _round_half_up(value: float) -> int:
    # Python's round() rounds halves to even; masks must not depend on that subtlety.
    return math.floor(value + 0.5)


def preset_rectangles(name: str, resolution: int) -> list[tuple[int, int, int, int]]:
    """The removed rectangles of preset `name` at `resolution`, as half-open (r0, r1, c0, c1).

    Scaling rule: an inclusive 1024-px range [a, b] covers the continuous interval [a, b + 1);
    both edges are multiplied by resolution / 1024 and rounded half up, giving [round(a*s),
    round((b+1)*s)). Because edges (not sizes) are rounded, presets that share an edge stay
    complementary at every size (left-half and right-half still tile the image exactly); a
    square may come out one pixel off square. A range that would round to nothing keeps one
    pixel, so a tiny resolution never silently drops the damage.
    """
    if name not in MASK_PRESETS:
        raise UserError(f"unknown mask preset {name!r}; valid names: {', '.join(MASK_PRESETS)}")
    _check_resolution(resolution)
    scale = resolution / _PRESET_BASE
    rects = []
    for (r_first, r_last), (c_first, c_last) in MASK_PRESETS[name]:
        r0, r1 = _round_half_up(r_first * scale), _round_half_up((r_last + 1) * scale)
        c0, c1 = _round_half_up(c_first * scale), _round_half_up((c_last + 1) * scale)
        rects.append((r0, max(r1, r0 + 1), c0, max(c1, c0 + 1)))
    return rects


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise UserError(f"resolution must be a positive integer, got {resolution!r}")


def _check_mask_coverage(mask: Tensor, source: str) -> None:
    missing = int((mask < 0.5).sum())
    if missing == 0:
        raise ImageError(f"{source} has no missing pixels (nothing to inpaint)")
    if missing == mask.numel():
        raise ImageError(f"{source} marks every pixel as missing (nothing observed)")


class Inpainting(Operator):
    """y = x * mask + fill * (1 - mask), with mask 1 where the pixel is observed and 0 where it
    is missing: y = m ⊙ x with the default fill 0.

    Args:
        mask: [H, W] or [1, 1, H, W] tensor with values in [0, 1] (1 = keep, 0 = missing).
            Stored as a float32 buffer [1, 1, H, W] that broadcasts over batch and channels.
        fill: The value of the missing pixels, in the scale of the images A is applied to
            (the L-BRGM authors' operator: 1 on the 0–255 scale; `MethodSettings.hole_fill`).
    """

    mask: Tensor
    params: dict

    def __init__(self, mask: Tensor, *, fill: float = 0.0, params: dict | None = None) -> None:
        super().__init__()
        if not isinstance(mask, Tensor):
            raise ImageError(f"mask must be a tensor, got {type(mask).__name__}")
        if mask.ndim == 2:
            mask = mask[None, None]
        if mask.ndim != 4 or mask.shape[:2] != (1, 1):
            raise ImageError(f"mask must be [H, W] or [1, 1, H, W], got {list(mask.shape)}")
        mask = mask.detach().to(torch.float32)
        if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ImageError("mask values must lie in [0, 1] (1 = observed, 0 = missing)")
        _check_mask_coverage(mask, "mask")
        self.register_buffer("mask", mask.contiguous())
        self.fill = float(fill)
        # How the mask was made (preset name, file, random seed and geometry), for reproduction.
        self.params = dict(params or {})

    def observed(self) -> Tensor:
        return self.mask

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        h, w = self.mask.shape[-2:]
        if x.shape[-2] != h or x.shape[-1] != w:
            raise ImageError(
                f"image is {_size(x.shape[-2], x.shape[-1])} but the mask is {_size(h, w)}"
            )
        # Cast the mask, not the image, so a bf16 image stays bf16.
        mask = self.mask.to(x.dtype)
        if not self.fill:
            return x * mask
        return x * mask + self.fill * (1 - mask)

    def with_fill(self, fill: float) -> Inpainting:
        return Inpainting(self.mask, fill=fill, params=self.params)

    @property
    def resolution(self) -> int:
        """Side length of the (square) mask; non-square masks report their height."""
        return int(self.mask.shape[-2])

    @property
    def missing_fraction(self) -> float:
        """Fraction of pixels marked missing."""
        return float((self.mask < 0.5).float().mean())

    def observation_size(self, resolution: int) -> tuple[int, int]:
        h, w = self.mask.shape[-2:]
        if (h, w) != (resolution, resolution):
            raise ImageError(
                f"mask is {_size(h, w)} but the generator makes "
                f"{_size(resolution, resolution)} images"
            )
        return (resolution, resolution)

    def describe(self) -> str:
        filled = f", missing pixels = {self.fill:g}" if self.fill else ""
        return f"inpainting ({_size(*self.mask.shape[-2:])} mask{filled})"

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_file(
        cls, path: str | Path, resolution: int | None = None, invert: bool = False
    ) -> Inpainting:
        """Read a BRGM-style mask PNG (any format PIL reads) the size of the image.

        Convention (BRGM): the image is converted to 8-bit grey; pixels equal to the DARKEST
        grey value present are "missing", every other value is kept. So a black-on-white mask
        removes the black region, and anti-aliased grey edges count as observed. `invert=True`
        swaps the two sets (the darkest value becomes the only observed one).

        Args:
            path: The mask file.
            resolution: Expected side length (the generator's); None accepts any size.
            invert: Swap missing and observed.
        """
        from PIL import Image, UnidentifiedImageError

        path = Path(path)
        try:
            with Image.open(path) as img:
                grey = np.asarray(img.convert("L"))
        except FileNotFoundError:
            raise ImageError(f"mask file not found: {path}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"cannot read mask file {path}: {exc}") from None
        h, w = grey.shape
        if resolution is not None and (h, w) != (resolution, resolution):
            raise ImageError(
                f"mask {path.name} is {_size(h, w)} but the image is "
                f"{_size(resolution, resolution)}; the mask must be the size of the image"
            )
        if grey.min() == grey.max():
            # Otherwise a blank white file would read as "everything missing".
            raise ImageError(
                f"mask {path.name} is uniform (every pixel {int(grey.min())}), so no region is "
                "marked; the darkest value marks missing pixels"
            )
        missing = grey == grey.min()
        if invert:
            missing = ~missing
        mask = torch.from_numpy((~missing).astype(np.float32))
        _check_mask_coverage(mask, f"mask {path.name}" + (" (inverted)" if invert else ""))
        return cls(mask, params={"kind": "file", "path": str(path), "invert": invert})

    @classmethod
    def from_preset(cls, name: str, resolution: int) -> Inpainting:
        """One of BRGM's seven masks (see `MASK_PRESETS`), scaled as `preset_rectangles` says."""
        rects = preset_rectangles(name, resolution)
        mask = torch.ones(resolution, resolution)
        for r0, r1, c0, c1 in rects:
            mask[r0:r1, c0:c1] = 0.0
        return cls(mask, params={"kind": "preset", "name": name, "rectangles": rects})

    @classmethod
    def random(
        cls,
        resolution: int,
        seed: int,
        kind: Literal["box", "brush"] = "box",
        *,
        num_boxes: int = 1,
        box_size: tuple[float, float] = (0.25, 0.5),
        num_strokes: int = 4,
        vertices: tuple[int, int] = (4, 8),
        stroke_width: tuple[float, float] = (0.03, 0.08),
        stroke_length: tuple[float, float] = (0.05, 0.2),
    ) -> Inpainting:
        """A seeded random mask; the same arguments always give the same mask.

        Args:
            resolution: Side length of the mask.
            seed: Seed of the private `torch.Generator` (the global RNG is not touched).
            kind: "box" (axis-aligned rectangles) or "brush" (free-form thick polylines).
            num_boxes: Rectangles for "box".
            box_size: Range of each rectangle side, as a fraction of `resolution`.
            num_strokes: Polylines for "brush".
            vertices: Inclusive range of vertices per polyline.
            stroke_width: Range of a polyline's width, fraction of `resolution`.
            stroke_length: Range of one segment's length, fraction of `resolution`.

        The drawn geometry is kept in `params` (pixel units) with all the arguments.
        """
        _check_resolution(resolution)
        gen = torch.Generator().manual_seed(int(seed))

        def uniform(lo: float, hi: float) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=gen))

        def randint(lo: int, hi: int) -> int:  # inclusive
            return int(torch.randint(lo, hi + 1, (), generator=gen))

        params: dict = {"kind": kind, "seed": int(seed), "resolution": resolution}
        mask = torch.ones(resolution, resolution)
        if kind == "box":
            if num_boxes < 1 or not 0 < box_size[0] <= box_size[1] < 1:
                raise UserError("box masks need num_boxes >= 1 and 0 < box_size[0] <= box_size[1] < 1")
            boxes = []
            for _ in range(num_boxes):
                bh = max(1, round(uniform(*box_size) * resolution))
                bw = max(1, round(uniform(*box_size) * resolution))
                top, left = randint(0, resolution - bh), randint(0, resolution - bw)
                mask[top : top + bh, left : left + bw] = 0.0
                boxes.append((top, top + bh, left, left + bw))  # half-open rows, cols
            params.update(num_boxes=num_boxes, box_size=tuple(box_size), boxes=boxes)
        elif kind == "brush":
            if num_strokes < 1 or not 2 <= vertices[0] <= vertices[1]:
                raise UserError("brush masks need num_strokes >= 1 and 2 <= vertices[0] <= vertices[1]")
            # Pixel centres; a pixel is missing when it lies within width/2 of any segment.
            coords = torch.arange(resolution, dtype=torch.float32) + 0.5
            yy, xx = torch.meshgrid(coords, coords, indexing="ij")
            strokes = []
            for _ in range(num_strokes):
                width = uniform(*stroke_width) * resolution
                pts = [(uniform(0, resolution), uniform(0, resolution))]
                for _ in range(randint(*vertices) - 1):
                    angle = uniform(0.0, 2 * math.pi)
                    length = uniform(*stroke_length) * resolution
                    y = min(max(pts[-1][0] + length * math.sin(angle), 0.0), float(resolution))
                    x = min(max(pts[-1][1] + length * math.cos(angle), 0.0), float(resolution))
                    pts.append((y, x))
                for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
                    dy, dx = y1 - y0, x1 - x0
                    seg2 = dy * dy + dx * dx
                    t = ((yy - y0) * dy + (xx - x0) * dx) / seg2 if seg2 > 0 else torch.zeros_like(yy)
                    t = t.clamp(0.0, 1.0)
                    dist2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
                    mask[dist2 <= (width / 2) ** 2] = 0.0
                strokes.append({"width": width, "points": pts})
            params.update(
                num_strokes=num_strokes,
                vertices=tuple(vertices),
                stroke_width=tuple(stroke_width),
                stroke_length=tuple(stroke_length),
                strokes=strokes,
            )
        else:
            raise UserError(f"unknown random mask kind {kind!r}; valid kinds: box, brush")
        return cls(mask, params=params)


# ----------------------------------------------------------------------------------------------
# Super-resolution


def _check_factor(factor: object) -> int:
    if (
        not isinstance(factor, (int, np.integer))
        or isinstance(factor, bool)
        or not 2 <= int(factor) <= MAX_FACTOR
    ):
        raise UserError(
            f"super-resolution factor must be an integer from 2 to {MAX_FACTOR}, got {factor!r}"
        )
    return int(factor)


class SuperResolution(Operator):
    """y = downsample(x) by an integer factor: [B, 3, H, W] -> [B, 3, H/f, W/f].

    Args:
        factor: Integer 2..64; it must divide the image side.
        kernel: "bicubic" (F.interpolate bicubic, align_corners=False, antialias=False:
            what BRGM's PyTorch code does), "area" (box average of f x f blocks, like the
            older TF code) or "bicubic-aa" (bicubic with antialias=True, i.e. a kernel
            widened by f as PIL does).
        resolution: If given, checked now (factor must divide it) rather than at first use.
    """

    def __init__(
        self, factor: int, kernel: SRKernel = "bicubic", resolution: int | None = None
    ) -> None:
        super().__init__()
        self.factor = _check_factor(factor)
        if kernel not in SR_KERNELS:
            raise UserError(
                f"unknown super-resolution kernel {kernel!r}; valid kernels: {', '.join(SR_KERNELS)}"
            )
        self.kernel = kernel
        if resolution is not None:
            self.observation_size(resolution)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        h, w = x.shape[-2], x.shape[-1]
        f = self.factor
        if h % f or w % f:
            raise ImageError(f"image is {_size(h, w)}, which {self.describe()} cannot divide evenly")
        size = (h // f, w // f)
        if self.kernel == "area":
            return F.interpolate(x, size=size, mode="area")
        return F.interpolate(
            x, size=size, mode="bicubic", align_corners=False, antialias=self.kernel == "bicubic-aa"
        )

    def observation_size(self, resolution: int) -> tuple[int, int]:
        if resolution % self.factor:
            raise UserError(
                f"super-resolution factor {self.factor} does not divide the resolution {resolution}"
            )
        return (resolution // self.factor, resolution // self.factor)

    def describe(self) -> str:
        return f"superres x{self.factor} ({self.kernel})"

    def extra_repr(self) -> str:
        return f"factor={self.factor}, kernel={self.kernel!r}"


# ----------------------------------------------------------------------------------------------
# Checks on user inputs


def check_observation(operator: Operator, observation: Tensor, resolution: int) -> None:
    """Raise ImageError unless `observation` has the size `operator` produces at `resolution`.

    `observation` is [B, 3, h, w] or [3, h, w]. Example message:
    "observation is 48x48 but superres x16 (bicubic) at 1024 px expects 64x64".
    """
    if observation.ndim not in (3, 4) or observation.shape[-3] != 3:
        raise ImageError(
            f"observation must be [B, 3, H, W] or [3, H, W], got {list(observation.shape)}"
        )
    h, w = int(observation.shape[-2]), int(observation.shape[-1])
    eh, ew = operator.observation_size(resolution)
    if (h, w) != (eh, ew):
        raise ImageError(
            f"observation is {_size(h, w)} but {operator.describe()} at {resolution} px "
            f"expects {_size(eh, ew)}"
        )


def infer_factor(observation_size: int | tuple[int, int], resolution: int) -> int:
    """The super-resolution factor that turns a `resolution` image into `observation_size`.

    Args:
        observation_size: Side length, or (height, width), of the low-resolution input.
        resolution: The generator's side length (a power of two).

    Raises ImageError when the input is not square, not smaller than the generator's
    images, or not the generator's size divided by a power of two from 2 to 64.
    """
    if isinstance(observation_size, int):
        h = w = observation_size
    else:
        h, w = observation_size
    if h != w:
        raise ImageError(f"a low-resolution input must be square, got {_size(h, w)}")
    if h <= 0:
        raise ImageError(f"a low-resolution input must have a positive size, got {_size(h, w)}")
    if h >= resolution:
        raise ImageError(
            f"input is {_size(h, w)}, not smaller than the generator's "
            f"{_size(resolution, resolution)}; super-resolution needs a smaller input"
        )
    factor = resolution // h
    if resolution % h or factor & (factor - 1) or factor > MAX_FACTOR:
        raise ImageError(
            f"input is {_size(h, w)}, but a {_size(resolution, resolution)} image downsampled by "
            f"2, 4, ..., {MAX_FACTOR} is one of "
            + ", ".join(str(resolution >> k) for k in range(1, 7) if resolution >> k)
            + " px"
        )
    return factor
