"""Time face alignment and paste-back per photo on the CPU: detection + landmarks, warp, paste.

    python bench/bench_align.py [--out bench/results/align.md] [--reps 3] [--size 1024]

Run from the repository root with the align extra and scikit-image installed. The photo is
scikit-image's astronaut (512 px, one face plus a mission patch HOG takes for a face), resized
with Lanczos to each side in `--sides` (default 1024 and 4096). For each photo, `--reps` rounds
time, in turn:

- detect: `DlibDetector.detect` on the uint8 photo (HOG on the photo scaled for detection,
  the CNN check of each HOG candidate, the 68 landmarks), plus the tensor -> uint8 conversion;
- warp: `warp_to_crop` to a `--size` crop (FFHQ's shrink, crop, pad, resample);
- paste: `paste` of that crop back into the photo (feathered).

Medians over the rounds, and the detector's one-off model loading. dlib runs on one thread. Markdown goes to stdout and,
with `--out`, to that file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def seconds(call: Callable[..., object], *args: object) -> tuple[float, object]:
    """Wall seconds of `call(*args)`, and what it returned."""
    start = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - start, result


def cpu_model() -> str:
    """This machine's CPU, for the report: lscpu's model name, family / model and CPU count, and
    what torch sees of its vector units (capability, avx512_bf16, AMX: whether bf16 is native)."""
    from lbrgm_fast.runtime.devices import cpu_features

    fields = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if ":" in line)
    field = lambda name: fields.get(name, "?").strip()  # noqa: E731
    features = cpu_features()
    return (f"{field('Model name')} (family {field('CPU family')} model {field('Model')}), {field('CPU(s)')} logical CPUs; "
            f"torch CPU capability {features.capability}, avx512_bf16 {'yes' if features.avx512_bf16 else 'no'}, "
            f"AMX {'yes' if features.amx else 'no'} ({'native' if features.native_bf16 else 'emulated'} bf16)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="side of the aligned crop")
    parser.add_argument("--sides", default="1024,4096", help="photo sides to time")
    parser.add_argument("--threads", type=int, help="torch threads (default: 1 if the 1-minute load average is above 1.5, else all CPUs)")
    args = parser.parse_args()
    # On a shared, busy machine torch's threads wait for each other on every small operation.
    torch.set_num_threads(args.threads or (1 if os.getloadavg()[0] > 1.5 else os.cpu_count() or 1))

    from skimage import data

    from lbrgm_fast.align import DlibDetector, photo_array
    from lbrgm_fast.align.ffhq import face_transform, warp_to_crop
    from lbrgm_fast.align.paste import paste

    load_s, detector = seconds(DlibDetector)
    rows = []
    for side in (int(s) for s in args.sides.split(",")):
        array = np.asarray(Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS))
        photo = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
        times: dict[str, list[float]] = {"detect": [], "warp": [], "paste": []}
        for _ in range(args.reps):
            t, faces = seconds(lambda image: detector.detect(photo_array(image)), photo)
            times["detect"].append(t)
            transform = face_transform(faces[0].points, args.size, (side, side))  # type: ignore[index]
            t, crop = seconds(warp_to_crop, photo, transform)
            times["warp"].append(t)
            t, _ = seconds(paste, crop, photo, transform)
            times["paste"].append(t)
        medians = {k: statistics.median(v) for k, v in times.items()}
        rows.append(f"| {side}² | {len(faces)} | {transform.side:.0f} | {medians['detect']:.2f} | {medians['warp']:.2f} | "  # type: ignore[arg-type]
                    f"{medians['paste']:.2f} | {sum(medians.values()):.2f} |")
    load = os.getloadavg()
    report = "\n".join([
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {cpu_model()}; torch threads {torch.get_num_threads()}; load average (1/5/15 min) at end "
        f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}",
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}",
        f"- Command: `python bench/bench_align.py --reps {args.reps} --size {args.size} --sides {args.sides}"
        + (f" --threads {args.threads}`" if args.threads else "`"),
        f"- Detector model loading (once per process): {load_s:.2f} s",
        "",
        f"Seconds per photo (median of {args.reps}); crop {args.size}².",
        "",
        "| photo | faces | face (quad side, px) | detect + landmarks | warp | paste | total |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
