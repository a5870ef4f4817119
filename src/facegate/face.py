"""What face analysis produces, and the `FaceAnalyzer` protocol every model pack implements.

Pose convention (the one of `../shared/data/README.md`, Pointing'04), in degrees:
- yaw > 0: the face turned toward the image's left, i.e. the subject's own right;
  yaw < 0: toward the image's right, the subject's own left.
- pitch > 0: looking up; pitch < 0: looking down.
- roll > 0: the eye on the image's right (the subject's left eye) is lower than the other,
  i.e. the face is rotated clockwise in the image.
"""

from __future__ import annotations

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


# A face less than this fraction as sharp as the sharpest face of the same picture is out of
# focus (a person in the background): its size counts for proportionally less.
IN_FOCUS_FRACTION = 0.5


def primary(faces: list[Face]) -> Face | None:
    """The face a photo is "of": the largest face, discounting out-of-focus ones.

    Size alone picks a blurred bystander whose box is larger than the subject's (the detector
    scores such faces 0.8-0.97); detector score alone picks blurred background patches.
    """
    if not faces:
        return None
    sharpest = max(f.quality.sharpness for f in faces)

    def weight(face: Face) -> float:
        focus = face.quality.sharpness / (IN_FOCUS_FRACTION * sharpest) if sharpest > 0 else 1.0
        return face.size * min(1.0, focus)

    return max(faces, key=weight)


def main_face(
    analyzer: FaceAnalyzer, image: ImageArray, *, pose: bool = True
) -> tuple[Face | None, int]:
    """A photo's main face (`primary`), described with its embedding, and the face count."""
    detections = analyzer.detect(image)
    faces = [analyzer.describe(image, d, embed=False, pose=False) for d in detections]
    chosen = primary(faces)
    if chosen is None:
        return None, 0
    detection = detections[faces.index(chosen)]
    return analyzer.describe(image, detection, embed=True, pose=pose), len(detections)
