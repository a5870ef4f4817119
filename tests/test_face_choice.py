"""The face a photo is "of" (`facegate.vision.face.choose_face`): synthetic faces for the rule
itself, real photos (LFW, deepface) for what a user meets in `compare`, `analyze` and
`verify-pairs`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from facegate.cli import main
from facegate.settings import Settings
from facegate.vision.face import (
    AMBIGUOUS_RATIO,
    BBox,
    Face,
    FaceAnalyzer,
    Quality,
    choose_face,
    main_face,
    photo_face,
    primary,
    visible_box,
)
from facegate.vision.images import read_image

W, H = 640, 480  # the synthetic picture
CX, CY = W / 2, H / 2


def face_at(cx: float, cy: float, size: float, sharpness: float = 500.0) -> Face:
    """A face whose square box of side `size` is centred on (cx, cy); `face_px` is the whole
    box's side, as the analyzer measures it, even where the box leaves the picture."""
    bbox: BBox = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    return Face(
        bbox=bbox,
        det_score=0.99,
        landmarks=(
            (cx - 10, cy),
            (cx + 10, cy),
            (cx, cy + 5),
            (cx - 8, cy + 15),
            (cx + 8, cy + 15),
        ),
        quality=Quality(face_px=size, sharpness=sharpness, brightness=120.0),
    )


# -- the rule on synthetic faces ---------------------------------------------------------------
def test_a_face_cut_by_the_edge_loses_to_a_smaller_whole_one_in_the_middle() -> None:
    subject = face_at(CX, CY, 150)
    cut = face_at(W - 40, CY, 260)  # box larger than the subject's, a third of it outside
    for faces in ([cut, subject], [subject, cut]):
        choice = choose_face(faces, (W, H))
        assert choice is not None and choice.face is subject
        assert not choice.ambiguous
    assert visible_box(cut.bbox, (W, H))[2] < 0.9


def test_a_nearer_bystander_at_the_side_loses_to_the_subject_in_the_middle() -> None:
    subject = face_at(CX, CY, 120)
    bystander = face_at(CX + 230, CY - 120, 170)  # whole, 40% larger, off to a corner
    choice = choose_face([bystander, subject], (W, H))
    assert choice is not None and choice.face is subject and choice.index == 1
    assert not choice.ambiguous  # the bystander scores well under the subject


def test_a_bystander_much_larger_than_a_tiny_centred_face_still_wins() -> None:
    """Centrality weighs, it does not decide alone: a face filling half the picture beside a
    small face in the middle is the photo's subject."""
    small = face_at(CX, CY, 40)
    big = face_at(CX + 120, CY, 220)
    choice = choose_face([small, big], (W, H))
    assert choice is not None and choice.face is big


def test_a_blurred_face_loses_to_a_smaller_sharp_one() -> None:
    subject = face_at(CX + 60, CY, 120, sharpness=800)
    blurred = face_at(CX - 60, CY, 160, sharpness=80)  # 1/10 as sharp, larger, as central
    choice = choose_face([blurred, subject], (W, H))
    assert choice is not None and choice.face is subject


def test_a_cut_face_does_not_set_the_focus_reference() -> None:
    """A box cut by the edge is aligned onto black padding whose hard edge looks very sharp:
    that must not make the subject look blurred in comparison."""
    subject = face_at(CX, CY, 140, sharpness=40)
    cut = face_at(40, CY, 240, sharpness=900)
    choice = choose_face([cut, subject], (W, H))
    assert choice is not None and choice.face is subject


@pytest.mark.parametrize(
    "face",
    [
        face_at(CX, CY, 100),
        face_at(5, 5, 200),  # mostly outside, in a corner
        face_at(CX, CY, 12, sharpness=1.0),  # tiny and blurred
        face_at(CX, CY, 100, sharpness=0.0),
    ],
)
def test_a_single_face_is_chosen_whatever_it_is_like(face: Face) -> None:
    choice = choose_face([face], (W, H))
    assert choice is not None and choice.face is face and choice.index == 0
    assert not choice.ambiguous and choice.reason == "the only face"


def test_no_face_no_choice() -> None:
    assert choose_face([], (W, H)) is None
    assert primary([]) is None


def test_two_people_side_by_side_are_ambiguous() -> None:
    left = face_at(CX - 110, CY, 150)
    right = face_at(CX + 110, CY, 140)
    tiny = face_at(60, 60, 30)
    choice = choose_face([left, right, tiny], (W, H))
    assert choice is not None and choice.face is left
    assert choice.ambiguous_with == [1]
    assert choice.reason.startswith("2 faces of similar size")
    assert "#1 and #2" in choice.reason
    assert choice.scores[1] >= AMBIGUOUS_RATIO * choice.scores[0]


def test_a_clear_runner_up_below_the_ratio_is_not_ambiguous() -> None:
    left = face_at(CX - 100, CY, 150)
    right = face_at(CX + 100, CY, 100)  # two thirds of the size: clearly second
    choice = choose_face([left, right], (W, H))
    assert choice is not None and choice.face is left and choice.ambiguous_with == []
    assert choice.reason.startswith("face #1 of 2")


def test_a_cut_runner_up_never_makes_the_choice_ambiguous() -> None:
    subject = face_at(CX, CY, 160)
    cut = face_at(CX + 60, CY + 180, 460)  # as large as the subject where visible, but cut
    choice = choose_face([subject, cut], (W, H))
    assert choice is not None and choice.face is subject
    assert choice.scores[1] >= AMBIGUOUS_RATIO * choice.scores[0]  # close in score ...
    assert choice.ambiguous_with == []  # ... but not a whole face


def test_without_the_picture_size_only_size_and_focus_count() -> None:
    near_edge = face_at(10, 10, 200)
    central = face_at(CX, CY, 150)
    assert primary([central, near_edge]) is near_edge
    assert primary([central, near_edge], (W, H)) is central


# -- real photos -------------------------------------------------------------------------------
def old_rule(faces: list[Face]) -> Face:
    """The rule this one replaced: the largest face, discounted for blur against the sharpest
    face of the picture."""
    sharpest = max(f.quality.sharpness for f in faces)
    return max(faces, key=lambda f: f.size * min(1.0, f.quality.sharpness / (0.5 * sharpest)))


def distance_from_centre(face: Face, width: int, height: int) -> float:
    x1, y1, x2, y2 = face.bbox
    return math.hypot((x1 + x2) / 2 - width / 2, (y1 + y2) / 2 - height / 2)


# LFW photos (250x250, subject centred) where measurement found that the old rule took a face
# cut by the edge; each with another photo of the same person that has only that person.
LFW_CASES = [
    ("Carlos_Vives/Carlos_Vives_0001.jpg", "Carlos_Vives/Carlos_Vives_0002.jpg"),
    ("Diana_Krall/Diana_Krall_0006.jpg", "Diana_Krall/Diana_Krall_0001.jpg"),
    ("Marina_Anissina/Marina_Anissina_0002.jpg", "Marina_Anissina/Marina_Anissina_0001.jpg"),
]


@pytest.fixture(scope="session")
def lfw(shared_data: Path) -> Path:
    return shared_data / "faces" / "lfw_devtrain" / "images"


@pytest.mark.parametrize(("photo", "other"), LFW_CASES)
def test_lfw_photo_is_of_the_centred_subject_not_the_face_at_the_edge(
    analyzer: FaceAnalyzer, lfw: Path, photo: str, other: str
) -> None:
    image = read_image(lfw / photo)
    height, width = image.shape[:2]
    faces = analyzer.analyze(image, pose=False)
    assert len(faces) >= 2
    before = old_rule(faces)
    assert visible_box(before.bbox, (width, height))[2] < 0.9  # the old pick: cut by the edge

    found = photo_face(analyzer, image, pose=False)
    assert found.face is not None and found.choice is not None and not found.choice.ambiguous
    assert found.count == len(faces)
    chosen = faces[found.choice.index]
    assert chosen.bbox == found.face.bbox
    assert visible_box(chosen.bbox, (width, height))[2] == 1.0
    nearest = min(faces, key=lambda f: distance_from_centre(f, width, height))
    assert chosen.bbox == nearest.bbox

    # It is the person the photo is labelled with: it matches their other photo, and the old
    # pick did not.
    reference, count = main_face(analyzer, read_image(lfw / other), pose=False)
    assert count == 1 and reference is not None and reference.embedding is not None
    assert found.face.embedding is not None and before.embedding is not None
    threshold = Settings().recognition.threshold
    assert float(found.face.embedding @ reference.embedding) >= threshold
    assert float(before.embedding @ reference.embedding) < threshold


def test_deepface_blurred_person_behind_is_not_the_subject(
    analyzer: FaceAnalyzer, deepface: Path
) -> None:
    image = read_image(deepface / "img41.jpg")
    faces = analyzer.analyze(image, embed=False, pose=False)
    choice = choose_face(faces, (image.shape[1], image.shape[0]))
    assert choice is not None and not choice.ambiguous
    assert choice.face.quality.sharpness == max(f.quality.sharpness for f in faces)
    assert choice.index != 0  # the largest box is the blurred person behind


def test_a_couple_side_by_side_is_ambiguous(analyzer: FaceAnalyzer, deepface: Path) -> None:
    found = photo_face(analyzer, read_image(deepface / "couple.jpg"), pose=False)
    assert found.count == 2 and found.choice is not None
    assert found.choice.ambiguous and found.choice.reason.startswith("2 faces of similar size")
    asked = photo_face(analyzer, read_image(deepface / "couple.jpg"), pose=False, number=2)
    assert asked.choice is not None and asked.choice.index == 1 and not asked.choice.ambiguous
    assert asked.face is not None and found.face is not None
    assert asked.face.bbox != found.face.bbox


# -- the commands ------------------------------------------------------------------------------
@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, faceplugin_dir: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("FACEGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FACEGATE_HOME", str(tmp_path / "data"))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict]]:  # type: ignore[type-arg]
    code = main([*argv, "--json"])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_compare_uses_the_subject_of_an_lfw_photo(
    capsys: pytest.CaptureFixture[str], env: Path, lfw: Path
) -> None:
    photo, other = LFW_CASES[0]
    code, out = run(capsys, "compare", str(lfw / photo), str(lfw / other))
    assert code == 0
    result = out[0]
    assert result["same_person"] is True and result["faces_a"] == 2
    assert result["ambiguous_a"] == [] and result["face_b"] == 1


def test_compare_says_which_face_of_an_ambiguous_photo_it_used(
    capsys: pytest.CaptureFixture[str], env: Path, deepface: Path
) -> None:
    code, out = run(capsys, "compare", str(deepface / "couple.jpg"), str(deepface / "img1.jpg"))
    assert code == 0
    result = out[0]
    assert result["faces_a"] == 2 and result["face_a"] in (1, 2)
    assert result["ambiguous_a"] == [3 - result["face_a"]]
    assert result["ambiguous_b"] == [] and result["similarity"] is not None


def test_analyze_numbers_faces_from_1_and_marks_the_main_one(
    capsys: pytest.CaptureFixture[str], env: Path, lfw: Path, deepface: Path
) -> None:
    photo, _ = LFW_CASES[0]
    code, out = run(capsys, "analyze", str(lfw / photo), str(deepface / "couple.jpg"))
    assert code == 0
    lfw_result, couple = out
    numbers = [f["number"] for f in lfw_result["faces"]]
    assert numbers == list(range(1, len(numbers) + 1))
    main_faces = [f["number"] for f in lfw_result["faces"] if f["main"]]
    assert main_faces == [lfw_result["main_face"]] and lfw_result["ambiguous_with"] == []
    assert couple["ambiguous_with"] and couple["choice"].startswith("2 faces of similar size")

    main(["analyze", str(deepface / "couple.jpg")])
    text = capsys.readouterr().out
    assert "#1" in text and "#2" in text and "(main)" in text and "#0" not in text
