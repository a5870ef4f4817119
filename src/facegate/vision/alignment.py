"""Five-point alignment onto the ArcFace 112x112 template, and the quality of the aligned crop.

Alignment is insightface's `face_align.norm_crop` (a least-squares similarity transform,
Umeyama, onto the ArcFace reference points), so every pack aligns the same way.
"""

from __future__ import annotations

import math
import time
import warnings

import cv2
import numpy as np
import numpy.typing as npt
from insightface.utils import face_align

from facegate.vision.face import BBox, Detection, Face, ImageArray, Point, Quality, StageTimings

# scikit-image 0.26 deprecated `SimilarityTransform.estimate`, which norm_crop calls; the
# result is unchanged until its removal in 2.2. Silence exactly that message from there.
warnings.filterwarnings(
    "ignore",
    message=r"`estimate` is deprecated",
    category=FutureWarning,
    module=r"insightface\.utils\.face_align",
)

ALIGNED_SIZE = 112
Landmarks5 = tuple[Point, Point, Point, Point, Point]


def five_points_from_68(points68: npt.NDArray[np.float32]) -> Landmarks5:
    """iBUG-300W 68 points -> eye centres, nose tip and mouth corners (ArcFace order).

    The 68-point "right eye" (36-41) is the subject's right, which is on the image's left,
    the first point of the ArcFace template.
    """
    p = np.asarray(points68, dtype=np.float32).reshape(68, 2)
    right_eye = p[36:42].mean(axis=0)
    left_eye = p[42:48].mean(axis=0)
    nose = p[30]
    mouth_a = (p[48] + p[60]) / 2.0
    mouth_b = (p[54] + p[64]) / 2.0
    pts = (right_eye, left_eye, nose, mouth_a, mouth_b)
    return tuple((float(x), float(y)) for x, y in pts)  # type: ignore[return-value]


# warpAffine samples bilinearly: shrinking more than 2x skips pixels and aliases (a 1000 px
# face warped straight to 112 px loses 0.5 in d' on the deepface pairs). Larger shrinks are
# done in two steps: an area-averaging resize of the face's region, then the warp.
MAX_WARP_SHRINK = 2.0


def _prescaled(
    frame: ImageArray, region: BBox, shrink: float
) -> tuple[ImageArray, float, float, float]:
    """The part of `frame` under `region`, area-resized so only MAX_WARP_SHRINK is left to the
    warp: (image, factor, x offset, y offset) with new = (old - offset) * factor."""
    if shrink <= MAX_WARP_SHRINK:
        return frame, 1.0, 0.0, 0.0
    h, w = frame.shape[:2]
    x0, y0 = max(0, int(region[0])), max(0, int(region[1]))
    x1, y1 = min(w, math.ceil(region[2])), min(h, math.ceil(region[3]))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return frame, 1.0, 0.0, 0.0
    factor = MAX_WARP_SHRINK / shrink
    sub = cv2.resize(frame[y0:y1, x0:x1], None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return np.asarray(sub, np.uint8), factor, float(x0), float(y0)


def align(frame_bgr: ImageArray, landmarks: Landmarks5) -> ImageArray:
    """The 112x112 aligned crop (same channel order as the frame), anti-aliased."""
    lmk = np.asarray(landmarks, dtype=np.float32)
    transform = face_align.estimate_norm(lmk, ALIGNED_SIZE)
    shrink = 1.0 / math.sqrt(abs(float(np.linalg.det(transform[:, :2]))))
    # The region the template covers, with a margin: 112 px at this shrink around the points.
    cx, cy = lmk.mean(axis=0)
    half = ALIGNED_SIZE * shrink
    image, factor, ox, oy = _prescaled(
        frame_bgr, (cx - half, cy - half, cx + half, cy + half), shrink
    )
    if factor != 1.0:
        lmk = (lmk - np.array([ox, oy], np.float32)) * np.float32(factor)
    crop: ImageArray = face_align.norm_crop(image, landmark=lmk, image_size=ALIGNED_SIZE)
    return crop


def sharpness(aligned_bgr: ImageArray) -> float:
    """Variance of the Laplacian of the grey crop: low for blurred or featureless faces."""
    grey = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def brightness(aligned_bgr: ImageArray) -> float:
    grey = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2GRAY)
    # The inner part of the template: the face, not the black fill of a crop at a frame edge.
    return float(grey[16:104, 16:96].mean())


def quality(bbox: BBox, aligned_bgr: ImageArray) -> Quality:
    x1, y1, x2, y2 = bbox
    return Quality(
        face_px=float(min(x2 - x1, y2 - y1)),
        sharpness=sharpness(aligned_bgr),
        brightness=brightness(aligned_bgr),
    )


def square_box(bbox: BBox) -> BBox:
    """A square of side = box height around the box centre (how the landmark net was fed)."""
    x1, y1, x2, y2 = bbox
    side = y2 - y1
    cx = (x1 + x2) / 2.0
    return (cx - side / 2.0, y1, cx + side / 2.0, y2)


def crop_box(frame: ImageArray, bbox: BBox, size: int) -> ImageArray:
    """Crop `bbox` (may reach outside the frame, filled with black) resized to size x size."""
    shrink = max(bbox[2] - bbox[0], bbox[3] - bbox[1]) / size
    frame, factor, ox, oy = _prescaled(frame, bbox, shrink)
    if factor != 1.0:
        bbox = (
            (bbox[0] - ox) * factor,
            (bbox[1] - oy) * factor,
            (bbox[2] - ox) * factor,
            (bbox[3] - oy) * factor,
        )
    x1, y1, x2, y2 = bbox
    w = max(x2 - x1, 1.0)
    h = max(y2 - y1, 1.0)
    # An affine crop handles boxes that leave the frame without padding copies.
    m = np.array([[size / w, 0.0, -x1 * size / w], [0.0, size / h, -y1 * size / h]], np.float32)
    out = np.asarray(
        cv2.warpAffine(
            frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        ),
        np.uint8,
    )
    return out


class AlignedAnalyzer:
    """What every pack's analyzer shares: `describe` aligns a detection on its five points
    (insightface's norm_crop), measures its quality, then adds the head pose and the
    embedding when asked; `analyze` is detect + describe. Subclasses provide `detect`,
    `head_pose` and `embed_aligned`, and reset `_timings` in `detect`."""

    _timings: StageTimings

    @property
    def timings(self) -> StageTimings:
        return self._timings

    def detect(self, frame_bgr: ImageArray) -> list[Detection]:
        raise NotImplementedError

    def head_pose(self, frame_bgr: ImageArray, detection: Detection) -> tuple[float, float, float]:
        raise NotImplementedError

    def embed_aligned(self, aligned_bgr: ImageArray) -> npt.NDArray[np.float32]:
        raise NotImplementedError

    def describe(
        self, frame_bgr: ImageArray, detection: Detection, *, embed: bool = True, pose: bool = True
    ) -> Face:
        t0 = time.perf_counter()
        aligned = align(frame_bgr, detection.landmarks)
        face_quality = quality(detection.bbox, aligned)
        self._timings.align += (time.perf_counter() - t0) * 1e3
        yaw = pitch = roll = None
        if pose:
            t0 = time.perf_counter()
            yaw, pitch, roll = self.head_pose(frame_bgr, detection)
            self._timings.pose += (time.perf_counter() - t0) * 1e3
        embedding = None
        if embed:
            t0 = time.perf_counter()
            embedding = self.embed_aligned(aligned)
            self._timings.embed += (time.perf_counter() - t0) * 1e3
        return Face(
            bbox=detection.bbox,
            det_score=detection.det_score,
            landmarks=detection.landmarks,
            quality=face_quality,
            yaw=yaw,
            pitch=pitch,
            roll=roll,
            embedding=embedding,
            aligned=aligned,
        )

    def analyze(
        self, frame_bgr: ImageArray, *, embed: bool = True, pose: bool = True
    ) -> list[Face]:
        detections = self.detect(frame_bgr)
        return [self.describe(frame_bgr, d, embed=embed, pose=pose) for d in detections]
