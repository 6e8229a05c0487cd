"""Draw docs/alignment.png: FFHQ alignment on scikit-image's astronaut photo.

    python docs/alignment_figure.py            # needs the align extra and scikit-image

Left: the photo with the 68 landmarks (white), the eye centres and mouth corners alignment uses
(yellow), the oriented crop (the quad, green, its top edge thicker) and the candidate dlib's HOG
detector also reports but the CNN check rejects (the mission patch, red). Right: the aligned
crop. A 256-colour PNG, to keep it small.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw
from skimage import data

from lbrgm_fast.align import DlibDetector, align_faces

SIDE = 384  # pixels per panel
OUT = Path(__file__).resolve().parent / "alignment.png"


def main() -> None:
    photo = data.astronaut()
    (face,) = align_faces(torch.from_numpy(photo.copy()).permute(2, 0, 1).float() / 255, SIDE)
    rejected = [f for f in DlibDetector(confirm=False).detect(photo) if f.box != face.face.box]
    scale = SIDE / photo.shape[1]
    left = Image.fromarray(photo).resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(left)
    for f in rejected:
        draw.rectangle([v * scale for v in f.box], outline=(230, 40, 40), width=2)
    for x, y in face.face.landmarks * scale:  # type: ignore[operator]
        draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(255, 255, 255))
    for x, y in face.face.points.to_list().values():
        draw.ellipse([x * scale - 2.5, y * scale - 2.5, x * scale + 2.5, y * scale + 2.5], fill=(255, 220, 0))
    corners = [tuple(c * scale) for c in face.transform.quad]
    draw.line([*corners, corners[0]], fill=(40, 220, 90), width=2)
    draw.line([corners[3], corners[0]], fill=(40, 220, 90), width=4)  # the crop's top edge
    right = Image.fromarray((face.image.permute(1, 2, 0) * 255).round().byte().numpy())
    figure = Image.new("RGB", (2 * SIDE + 8, SIDE), (255, 255, 255))
    figure.paste(left, (0, 0))
    figure.paste(right, (SIDE + 8, 0))
    figure.quantize(256).save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
