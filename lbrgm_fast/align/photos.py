"""Photos on disk -> aligned faces on disk -> restored photos: what `align` and `run --align` do.

`run --align` is a layer around the usual job, not a change to it: each photo's faces are
aligned into `OUT/aligned/` (`NAME-faceK.png` with its transform in `NAME-faceK.json`, as
`lbrgm-fast align` writes them), those crops are the job's inputs (restored into
`OUT/NAME-faceK/` as any input), and the restorations are pasted back into the photo as
`OUT/NAME/restored_full.png` (and `merged_full.png` for inpainting, observed pixels kept).

Faces are numbered left to right among all faces found in the photo, whatever `--face` keeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lbrgm_fast.align import AlignedFace, DetectedFace, DlibDetector, LandmarkDetector, align_face, photo_array
from lbrgm_fast.align.ffhq import FaceTransform, ffhq_quad, quad_side
from lbrgm_fast.align.paste import paste
from lbrgm_fast.errors import ImageError, UserError
from lbrgm_fast.io import find_inputs, load_image, read_image, save_image, unique_names, write_json
from lbrgm_fast.job import InputOutcome, Reporter, RunOptions, load_models, needs_monitor, run_job
from lbrgm_fast.operators import MAX_FACTOR, SuperResolution
from lbrgm_fast.runtime import resolve_device

#: Which faces of a photo to keep: "all", "largest" or an index (0 = leftmost).
FaceChoice = str | int
#: The outputs pasted back into the photo: the job's file -> the full-photo file.
PASTED = {"restored.png": "restored_full.png", "merged.png": "merged_full.png"}


@dataclass
class StagedFace:
    """One face aligned and written to disk (the crop and its JSON share a stem, `name`); the
    crop's pixels stay on disk only, so a folder of photos does not pile up in memory."""

    name: str
    photo: Path
    index: int
    crop: Path
    transform: FaceTransform


def parse_face_choice(value: str) -> FaceChoice:
    """`--face`'s value: all | largest | a face index (0 = leftmost)."""
    if value in ("all", "largest"):
        return value
    if value.isdigit():
        return int(value)
    raise UserError(f"--face must be all, largest or a face index (0 = leftmost), got {value!r}")


def choose_faces(faces: list[DetectedFace], choice: FaceChoice) -> list[int]:
    """Indices of the faces to keep (raises ImageError when there are none to keep)."""
    if not faces:
        raise ImageError("no face found (faces under 40 px or not confirmed by the CNN face detector are not counted)")
    if choice == "all":
        return list(range(len(faces)))
    if choice == "largest":
        return [max(range(len(faces)), key=lambda i: _side(faces[i]))]
    if not isinstance(choice, int) or choice >= len(faces):
        raise ImageError(f"--face {choice}, but {len(faces)} face(s) found (numbered from 0, left to right)")
    return [choice]


def _side(face: DetectedFace) -> float:
    """The side of a face's FFHQ crop in photo pixels (its size, for `largest` and the SR factor)."""
    return quad_side(ffhq_quad(face.points))


def superres_crop_size(side: float, resolution: int, factor: int | None) -> int:
    """The side of the observation a face of `side` photo pixels gives for super-resolution.

    With `factor`, resolution / factor, refused if the face is smaller (the crop would be
    upsampled: no longer what the operator's downsampling of a face looks like). Without, the
    smallest factor f (a power of two from 2 to 64) whose resolution / f fits in the face: the
    face is aligned at its own resolution, reduced by less than 2x, never enlarged.
    """
    if factor is not None:
        if side < resolution // factor:
            raise ImageError(f"the face is {side:.0f} px across, too small for --factor {factor} "
                             f"(needs {resolution // factor} px at {resolution} px); use a larger --factor or none")
        return resolution // factor
    f = 2
    while resolution / f > side and f < MAX_FACTOR:
        f *= 2
    if resolution / f > side:
        raise ImageError(f"the face is {side:.0f} px across, too small for super-resolution to {resolution} px "
                         f"(x{MAX_FACTOR} needs {resolution // MAX_FACTOR} px)")
    return resolution // f


def stage_photo(
    path: Path, name: str, folder: Path, detector: LandmarkDetector, choice: FaceChoice, crop_size: Callable[[float], int]
) -> tuple[list[StagedFace], list[tuple[str, str]]]:
    """Detect the faces of the photo at `path`, align the chosen ones and write each crop and its
    transform to `folder` as `{name}-face{k}.png` / `.json`. `crop_size` gives a face's crop side
    from its side in the photo (ImageError: this face cannot be used). Returns the faces written
    and (face name, problem) for the others; raises UserError when the photo gives no face."""
    photo, _ = read_image(path)
    faces = detector.detect(photo_array(photo))
    staged, problems = [], []
    for k in choose_faces(faces, choice):
        crop = folder / f"{name}-face{k}.png"
        try:
            aligned = align_face(photo, faces[k], crop_size(_side(faces[k])))
        except ImageError as exc:
            problems.append((crop.stem, str(exc)))
            continue
        save_image(crop, aligned.image)
        write_json(crop.with_suffix(".json"), face_record(path, k, aligned))
        staged.append(StagedFace(crop.stem, path, k, crop, aligned.transform))
    return staged, problems


def face_record(photo: Path, index: int, aligned: AlignedFace) -> dict:
    """What the JSON next to a crop holds: the photo, the detection and the transform
    (`FaceTransform.from_dict(record["transform"])` reads it back)."""
    face = aligned.face
    return {
        "photo": str(photo),
        "face": index,
        "box": [float(v) for v in face.box],
        "score": face.score,
        "points": face.points.to_list(),
        "landmarks": None if face.landmarks is None else face.landmarks.tolist(),
        "transform": aligned.transform.to_dict(),
    }


def align_photos(
    inputs: list[str], out: Path, size: int, choice: FaceChoice, detector: LandmarkDetector | None = None
) -> tuple[list[StagedFace], list[tuple[str, str]]]:
    """`lbrgm-fast align`: every chosen face of every photo, aligned at `size` into `out`.
    Returns the faces written and (input, problem) for each photo that gave none."""
    if size < 1:
        raise UserError(f"--size must be >= 1, got {size}")
    detector = detector or DlibDetector()
    paths, problems = find_inputs(inputs)
    staged: list[StagedFace] = []
    for path, name in zip(paths, unique_names(paths)):
        try:
            faces, skipped = stage_photo(path, name, out, detector, choice, lambda side: size)
        except UserError as exc:
            problems.append((str(path), str(exc)))
            continue
        staged += faces
        problems += skipped
    return staged, problems


def run_aligned(
    options: RunOptions, choice: FaceChoice, reporter: Reporter | None = None, detector: LandmarkDetector | None = None
) -> list[InputOutcome]:
    """`run --align`: align the chosen faces of each photo, restore them with `run_job`, paste
    the restorations back. One outcome per restored face, and one per photo that gave none."""
    if options.ground_truth:
        raise UserError("--ground-truth cannot be combined with --align (use --degrade: the aligned faces are the ground truth)")
    detector = detector or DlibDetector()
    # Loaded once, before the crops (made at the generator's resolution), and handed to the job.
    models = load_models(options, resolve_device(options.device), needs_monitor(options), reporter)
    resolution = models.generator.img_resolution
    superres = options.task == "superres" and not options.degrade
    if superres and options.factor is not None:
        SuperResolution(options.factor, kernel=options.kernel, resolution=resolution)  # type: ignore[arg-type]  # checks it

    def crop_size(side: float) -> int:
        return superres_crop_size(side, resolution, options.factor) if superres else resolution

    paths, problems = find_inputs(options.inputs)
    failed = [InputOutcome(name=name, source=name, status="failed", message=problem) for name, problem in problems]
    photos: list[tuple[Path, str, list[StagedFace]]] = []
    for path, name in zip(paths, unique_names(paths)):
        try:
            faces, skipped = stage_photo(path, name, options.out / "aligned", detector, choice, crop_size)
        except UserError as exc:
            failed.append(InputOutcome(name=name, source=str(path), status="failed", message=str(exc)))
            continue
        photos.append((path, name, faces))
        failed += [InputOutcome(name=face, source=str(path), status="failed", message=problem) for face, problem in skipped]
    staged = [face for _, _, faces in photos for face in faces]
    if not staged:
        return failed
    outcomes = run_job(dataclasses.replace(options, inputs=[str(s.crop) for s in staged]), reporter, models)
    by_name = {o.name: o for o in outcomes}  # the job names each folder after its crop
    for path, name, faces in photos:
        restored = [(s.transform, by_name[s.name]) for s in faces if by_name[s.name].status != "failed"]
        if restored:
            written = paste_back(path, [(t, o.folder) for t, o in restored], options.out / name)  # type: ignore[misc]
            for _, o in restored:
                o.notes.append(f"pasted back into {', '.join(str(p) for p in written)}")
    return failed + outcomes


def paste_back(photo: Path, faces: list[tuple[FaceTransform, Path]], folder: Path) -> list[Path]:
    """Paste each face's restoration (from its job folder) into the photo; write one full-size
    file per pasted output (`PASTED`) into `folder`. Returns the files written."""
    image, _ = read_image(photo)
    written = []
    for result, full in PASTED.items():
        pasted: torch.Tensor | None = None
        for transform, results in faces:
            if (results / result).is_file():
                restored, _ = load_image(results / result)
                pasted = paste(restored, image if pasted is None else pasted, transform)
        if pasted is not None:
            save_image(folder / full, pasted)
            written.append(folder / full)
    return written


__all__ = ["StagedFace", "align_photos", "choose_faces", "parse_face_choice", "paste_back", "run_aligned", "superres_crop_size"]
