"""What face analysis produces, and the `FaceAnalyzer` protocol every model pack implements.

Pose convention (the one of `../shared/data/README.md`, Pointing'04), in degrees:
- yaw > 0: the face turned toward the image's left, i.e. the subject's own right;
  yaw < 0: toward the image's right, the subject's own left.
- pitch > 0: looking up; pitch < 0: looking down.
- roll > 0: the eye on the image's right (the subject's left eye) is lower than the other,
  i.e. the face is rotated clockwise in the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import msgspec
import numpy as np
import numpy.typing as npt

BBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
Point = tuple[float, float]

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]


class Quality(msgspec.Struct, frozen=True):
    """How usable a face is: size in px, sharpness and brightness of its aligned crop."""

    face_px: float  # the shorter side of the face box, in frame pixels
    sharpness: float  # variance of the Laplacian of the aligned 112x112 grey crop
    brightness: float  # mean grey level of the aligned crop, 0..255


class Detection(msgspec.Struct, frozen=True):
    """A detected face before description: box, score and the five alignment points."""

    bbox: BBox
    det_score: float
    # Five points: subject's right eye (image left), left eye, nose tip, mouth corners
    # (image left, image right): the order of insightface's ArcFace reference.
    landmarks: tuple[Point, Point, Point, Point, Point]
    # Dense landmarks where the pack has them (68 iBUG points for faceplugin), for pose.
    dense_landmarks: FloatArray | None = None

    @property
    def size(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return min(x2 - x1, y2 - y1)


class Face(msgspec.Struct, frozen=True):
    """A described face. Pose and embedding are None when the call skipped them."""

    bbox: BBox
    det_score: float
    landmarks: tuple[Point, Point, Point, Point, Point]
    quality: Quality
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    # float32, L2-normalised; length depends on the pack (512 for all shipped packs).
    embedding: FloatArray | None = None
    # The aligned 112x112 BGR crop the embedding and sharpness were computed on.
    aligned: ImageArray | None = None

    @property
    def size(self) -> float:
        return self.quality.face_px


class StageTimings(msgspec.Struct):
    """Milliseconds spent per stage in the analyzer's last call (0 for skipped stages)."""

    detect: float = 0.0
    landmarks: float = 0.0
    align: float = 0.0
    pose: float = 0.0
    embed: float = 0.0

    @property
    def total(self) -> float:
        return self.detect + self.landmarks + self.align + self.pose + self.embed


class FaceAnalyzer(Protocol):
    """Detect, align, measure pose and embed faces in a BGR frame."""

    name: str
    embedding_size: int

    @property
    def timings(self) -> StageTimings:
        """Per-stage timings of the last `analyze` or `describe` call."""
        ...

    def detect(self, frame_bgr: ImageArray) -> list[Detection]:
        """Faces in the frame, largest first."""
        ...

    def describe(
        self, frame_bgr: ImageArray, detection: Detection, *, embed: bool = True, pose: bool = True
    ) -> Face:
        """Quality, and optionally pose and embedding, of one detected face."""
        ...

    def analyze(
        self, frame_bgr: ImageArray, *, embed: bool = True, pose: bool = True
    ) -> list[Face]:
        """`detect` then `describe` every face, largest first."""
        ...


# -- the face a photo is "of" ---------------------------------------------------------------
# A face less than this fraction as sharp as the sharpest whole face of the same picture is out
# of focus (a person in the background): it counts for less (see `choose_face`).
IN_FOCUS_FRACTION = 0.5
# A face whose box is at least this fraction inside the picture is whole; a smaller fraction is
# a face cut by the picture's edge.
WHOLE_FRACTION = 0.9
# Centrality falls to 1/2 at this distance from the picture's centre, in half-diagonals (the
# centre is 0, a corner 1): 1 / (1 + (d / CENTRE_SCALE)**2).
CENTRE_SCALE = 0.5
# Another whole face scoring at least this fraction of the chosen one's makes the choice
# ambiguous: the photo may be of either.
AMBIGUOUS_RATIO = 0.8

ImageSize = tuple[int, int]  # width, height in pixels


class Choice(msgspec.Struct, frozen=True):
    """Which face a photo is of, and how clear that is. Indices are 0-based, in the order the
    faces were given (the detector's order, which `facegate analyze` numbers from 1)."""

    face: Face
    index: int
    ambiguous_with: list[int]  # other whole faces scoring >= AMBIGUOUS_RATIO of this one
    reason: str
    scores: list[float]  # every face's score, in the given order

    @property
    def number(self) -> int:
        """The chosen face's 1-based number, as `facegate analyze` lists it."""
        return self.index + 1

    @property
    def ambiguous(self) -> bool:
        return bool(self.ambiguous_with)


def visible_box(bbox: BBox, image_size: ImageSize) -> tuple[float, float, float]:
    """Width and height of the part of `bbox` inside the picture, and that part's fraction of
    the box's area."""
    width, height = image_size
    x1, y1, x2, y2 = bbox
    vw = max(0.0, min(x2, width) - max(x1, 0.0))
    vh = max(0.0, min(y2, height) - max(y1, 0.0))
    area = (x2 - x1) * (y2 - y1)
    return vw, vh, (vw * vh / area) if area > 0 else 0.0


def centrality(bbox: BBox, image_size: ImageSize) -> float:
    """1 for a box centred in the picture, 1/2 at CENTRE_SCALE half-diagonals away, 1/5 at a
    corner."""
    width, height = image_size
    x1, y1, x2, y2 = bbox
    half_diagonal = 0.5 * math.hypot(width, height)
    if half_diagonal <= 0:
        return 1.0
    d = math.hypot((x1 + x2) / 2 - width / 2, (y1 + y2) / 2 - height / 2) / half_diagonal
    return 1.0 / (1.0 + (d / CENTRE_SCALE) ** 2)


def choose_face(faces: Sequence[Face], image_size: ImageSize | None) -> Choice | None:
    """The face a photo is "of": the one rule used wherever a photo stands for one person
    (`main_face`: `analyze` marks it, `compare`, `verify-pairs`, `enroll`, the HTTP enrolment).

    Each face scores  visible size x focus x centrality,  the highest wins:

    - visible size: the shorter side of the part of the box inside the picture. A face cut by
      the picture's edge counts by what is visible of it, so a half-visible face at the edge
      loses to a smaller whole one.
    - focus: sqrt(min(1, sharpness / (IN_FOCUS_FRACTION x the sharpest whole face's))). A
      blurred person in the background counts for less however big (deepface img41: 1/5 as
      sharp, focus 0.63). Only whole faces set the reference: a cut face is aligned onto a crop
      padded with black, whose hard edge inflates its Laplacian variance (LFW: 200-570 against
      30-150 for the subject), which would discount every real face. The square root because
      the variance grows with the square of contrast: a soft, low-contrast subject measures
      1/8 of a textured bystander's without being out of focus.
    - centrality: 1 / (1 + (d / CENTRE_SCALE)**2), d the distance of the box's centre from the
      picture's centre in half-diagonals: people frame who the photo is of, so a bystander near
      the camera at the side (larger box) loses to the subject in the middle unless much
      larger: at the side (d = 0.5) it must be twice the subject's size, in a corner five times.

    On LFW (250x250, the subject centred, often with others around) this changes the face of
    107 of 3,055 photos, each time to a face nearer the centre (93 times from a face cut by the
    edge): `verify-pairs` on its 1,969 pairs goes from accuracy 0.955, AUC 0.970, TAR 0.923 at
    FAR 1e-3 to 0.984, 0.9997, 0.987 (4 photos ambiguous). The constants are round values, not
    fitted to LFW: accuracy stays within 0.001 of that for CENTRE_SCALE from 0.25 to 1.0.

    A clear runner-up, another whole face scoring at least AMBIGUOUS_RATIO of the best, makes
    the choice ambiguous (`ambiguous_with`): two people side by side. A single face is chosen
    whatever it is like. Without `image_size` (width, height) only size and focus count.
    """
    if not faces:
        return None
    geometry = [
        visible_box(f.bbox, image_size) if image_size is not None else (f.size, f.size, 1.0)
        for f in faces
    ]
    whole = [fraction >= WHOLE_FRACTION for _, _, fraction in geometry]
    reference = max(
        (f.quality.sharpness for f, w in zip(faces, whole, strict=True) if w),
        default=max(f.quality.sharpness for f in faces),
    )
    scores: list[float] = []
    for face, (vw, vh, _) in zip(faces, geometry, strict=True):
        focus = 1.0
        if reference > 0:
            focus = math.sqrt(min(1.0, face.quality.sharpness / (IN_FOCUS_FRACTION * reference)))
        central = centrality(face.bbox, image_size) if image_size is not None else 1.0
        scores.append(min(vw, vh) * focus * central)
    best = max(range(len(faces)), key=lambda i: (scores[i], -i))
    rivals = [
        i
        for i in range(len(faces))
        if i != best and whole[i] and scores[i] >= AMBIGUOUS_RATIO * scores[best]
    ]
    if len(faces) == 1:
        reason = "the only face"
    elif rivals:
        numbers = " and ".join(f"#{i + 1}" for i in sorted([best, *rivals]))
        reason = f"{len(rivals) + 1} faces of similar size and place ({numbers})"
    else:
        reason = f"face #{best + 1} of {len(faces)}: the best by visible size x focus x centrality"
    return Choice(faces[best], best, rivals, reason, [round(s, 2) for s in scores])


def primary(faces: list[Face], image_size: ImageSize | None = None) -> Face | None:
    """The face a photo is "of" (`choose_face`)."""
    choice = choose_face(faces, image_size)
    return None if choice is None else choice.face


class NoSuchFaceError(ValueError):
    """A face number beyond the faces of the photo."""

    def __init__(self, number: int, count: int) -> None:
        super().__init__(f"there is no face #{number}: the photo has {count} face(s)")
        self.number = number
        self.count = count


class PhotoFace(msgspec.Struct, frozen=True):
    """A photo's main face, described with its embedding, the faces found and the choice."""

    face: Face | None
    count: int
    choice: Choice | None


def photo_face(
    analyzer: FaceAnalyzer, image: ImageArray, *, pose: bool = True, number: int | None = None
) -> PhotoFace:
    """The face of `image` that `choose_face` picks (or face `number`, 1-based in the
    detector's order, when given: NoSuchFaceError beyond the count), described with its
    embedding (and pose when asked)."""
    detections = analyzer.detect(image)
    height, width = image.shape[:2]
    if number is not None:
        if not 1 <= number <= len(detections):
            raise NoSuchFaceError(number, len(detections))
        face = analyzer.describe(image, detections[number - 1], embed=True, pose=pose)
        asked = Choice(face, number - 1, [], f"face #{number}, as asked", [])
        return PhotoFace(face, len(detections), asked)
    if len(detections) == 1:  # nothing to choose: describe it once
        face = analyzer.describe(image, detections[0], embed=True, pose=pose)
        return PhotoFace(face, 1, choose_face([face], (width, height)))
    faces = [analyzer.describe(image, d, embed=False, pose=False) for d in detections]
    choice = choose_face(faces, (width, height))
    if choice is None:
        return PhotoFace(None, 0, None)
    face = analyzer.describe(image, detections[choice.index], embed=True, pose=pose)
    return PhotoFace(face, len(detections), choice)


def main_face(
    analyzer: FaceAnalyzer, image: ImageArray, *, pose: bool = True
) -> tuple[Face | None, int]:
    """A photo's main face (`choose_face`), described with its embedding, and the face count."""
    found = photo_face(analyzer, image, pose=pose)
    return found.face, found.count
