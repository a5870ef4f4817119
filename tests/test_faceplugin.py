"""The default pack's analyzer on real photos (../shared/data) with the real ONNX models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facegate.vision.faceplugin import FacepluginAnalyzer, fast_prelu
from facegate.vision.images import read_image


def _face(analyzer: FacepluginAnalyzer, path: Path):  # type: ignore[no-untyped-def]
    faces = analyzer.analyze(read_image(path))
    assert faces, f"no face found in {path.name}"
    return faces[0]


def test_one_portrait_gives_one_complete_face(analyzer: FacepluginAnalyzer, deepface: Path) -> None:
    img = read_image(deepface / "img1.jpg")
    faces = analyzer.analyze(img)
    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face.bbox
    assert 0 <= x1 < x2 <= img.shape[1] + 1 and 0 <= y1 < y2
    assert face.embedding is not None and face.embedding.dtype == np.float32
    assert face.embedding.shape == (512,)
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
    # Landmarks inside the box; the subject's right eye is on the image's left.
    for px, py in face.landmarks:
        assert x1 <= px <= x2 and y1 <= py <= y2
    right_eye, left_eye, nose, mouth_a, mouth_b = face.landmarks
    assert right_eye[0] < nose[0] < left_eye[0]
    assert mouth_a[0] < mouth_b[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_a[1], mouth_b[1])
    assert face.aligned is not None and face.aligned.shape == (112, 112, 3)
    assert face.quality.face_px > 100 and face.quality.sharpness > 50
    assert 40 < face.quality.brightness < 225


def test_same_person_scores_above_different_people(
    analyzer: FacepluginAnalyzer, deepface: Path
) -> None:
    a = _face(analyzer, deepface / "img1.jpg").embedding
    same = _face(analyzer, deepface / "img2.jpg").embedding  # same person (pairs_master: Yes)
    other = _face(analyzer, deepface / "img20.jpg").embedding
    assert a is not None and same is not None and other is not None
    assert float(a @ same) > 0.5
    assert float(a @ other) < 0.3


def test_embedding_and_pose_can_be_skipped(analyzer: FacepluginAnalyzer, deepface: Path) -> None:
    img = read_image(deepface / "img1.jpg")
    face = analyzer.analyze(img, embed=False, pose=False)[0]
    assert face.embedding is None and face.yaw is None and face.pitch is None
    assert analyzer.timings.embed == 0.0 and analyzer.timings.pose == 0.0
    assert analyzer.timings.detect > 0.0
    analyzer.analyze(img)
    assert analyzer.timings.embed > 0.0 and analyzer.timings.pose > 0.0


def test_no_face_in_a_blank_or_noise_frame(analyzer: FacepluginAnalyzer) -> None:
    assert analyzer.analyze(np.full((480, 640, 3), 128, np.uint8)) == []
    rng = np.random.default_rng(0)
    assert analyzer.analyze(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) == []


def test_faces_come_largest_first(analyzer: FacepluginAnalyzer, deepface: Path) -> None:
    faces = analyzer.analyze(read_image(deepface / "selfie-many-people.jpg"))
    assert len(faces) >= 4
    sizes = [f.size for f in faces]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("name", ["img59.jpg", "img16.jpg", "img61.jpg", "img34.jpg", "img1.jpg"])
def test_mirroring_flips_yaw_and_roll(
    analyzer: FacepluginAnalyzer, deepface: Path, name: str
) -> None:
    img = read_image(deepface / name)
    face = analyzer.analyze(img)[0]
    mirrored = analyzer.analyze(np.ascontiguousarray(img[:, ::-1]))[0]
    assert face.yaw is not None and mirrored.yaw is not None
    assert face.roll is not None and mirrored.roll is not None
    assert abs(face.yaw + mirrored.yaw) < 15
    if abs(face.yaw) > 10:
        assert np.sign(face.yaw) == -np.sign(mirrored.yaw)
    assert abs(face.roll + mirrored.roll) < 3


@pytest.mark.parametrize("angle", [-20.0, 20.0])
def test_roll_follows_an_in_plane_rotation(
    analyzer: FacepluginAnalyzer, deepface: Path, angle: float
) -> None:
    img = read_image(deepface / "img1.jpg")
    h, w = img.shape[:2]
    base = analyzer.analyze(img)[0].roll
    # OpenCV's positive angle turns the picture counter-clockwise: roll goes negative.
    rot = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h))
    rolled = analyzer.analyze(rot)[0].roll
    assert base is not None and rolled is not None
    assert abs((rolled - base) - (-angle)) < 5


def test_a_face_cut_by_the_frame_edge_is_still_analysed(
    analyzer: FacepluginAnalyzer, deepface: Path
) -> None:
    img = read_image(deepface / "img1.jpg")
    face = analyzer.analyze(img)[0]
    x1, _, x2, _ = face.bbox
    cut = np.ascontiguousarray(img[:, int(x1 + (x2 - x1) * 0.25) :])
    faces = analyzer.analyze(cut)
    assert faces and faces[0].embedding is not None
    assert np.isfinite(faces[0].embedding).all()


def test_fast_graph_gives_the_pinned_models_embedding(faceplugin_dir: Path) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32)
    original = ort.InferenceSession(str(faceplugin_dir / "fr_feature.onnx"))
    rewritten = ort.InferenceSession(fast_prelu(faceplugin_dir / "fr_feature.onnx"))
    a = original.run(None, {"input": x})[0].ravel()
    b = rewritten.run(None, {"input": x})[0].ravel()
    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cosine > 0.99999
