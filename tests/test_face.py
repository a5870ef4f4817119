"""Choosing the face a photo is "of"."""

from __future__ import annotations

from pathlib import Path

from facegate.vision.face import Face, Quality, primary
from facegate.vision.faceplugin import FacepluginAnalyzer
from facegate.vision.images import read_image


def make(size: float, sharpness: float) -> Face:
    return Face(
        bbox=(0.0, 0.0, size, size),
        det_score=0.99,
        landmarks=((0, 0), (1, 0), (0.5, 0.5), (0, 1), (1, 1)),
        quality=Quality(face_px=size, sharpness=sharpness, brightness=120.0),
    )


def test_primary_is_the_largest_among_faces_in_focus() -> None:
    faces = [make(100, 900), make(300, 800), make(200, 1000)]
    assert primary(faces) is faces[1]


def test_a_blurred_bystander_larger_than_the_subject_is_not_primary() -> None:
    subject, bystander = make(1000, 1700), make(1080, 340)
    assert primary([bystander, subject]) is subject


def test_primary_of_nothing_is_none() -> None:
    assert primary([]) is None


def test_primary_on_a_photo_with_a_blurred_background_face(
    analyzer: FacepluginAnalyzer, deepface: Path
) -> None:
    faces = analyzer.analyze(read_image(deepface / "img41.jpg"), embed=False)
    assert len(faces) >= 2
    chosen = primary(faces)
    assert chosen is not None
    assert chosen.quality.sharpness == max(f.quality.sharpness for f in faces)
    assert chosen is not faces[0]  # the largest box is the blurred person behind
