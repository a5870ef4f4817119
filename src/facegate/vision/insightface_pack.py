"""The `FaceAnalyzer` of the InsightFace packs (buffalo_l, buffalo_s, antelopev2).

Every `.onnx` of the pack is loaded with `insightface.model_zoo.get_model` on CPU and routed by
its `taskname`: 'detection' (SCRFD/RetinaFace, with five keypoints), 'recognition'
(ArcFaceONNX) and 'landmark_3d_68' (used for head pose only); the rest is ignored.

Pose, in this project's convention (`facegate.vision.face`: yaw > 0 = turned toward the image's
left, pitch > 0 = looking up, roll > 0 = clockwise in the image):
- with a 'landmark_3d_68' model, insightface's own pose (`Landmark.get` sets `face.pose` =
  (pitch, yaw, roll) from `transform.P2sRt` / `matrix2angle`), converted by
  `pose_from_insightface`: yaw is negated, pitch and roll keep their sign. Derived from
  insightface's code and its mean shape (x right, y down, z toward the camera) and checked on
  synthetically rotated mean shapes (tests/test_insightface_pack.py); NOT yet checked on real
  photographs with a real pack (none was reachable), and insightface's frontal pitch offset on
  real faces is unmeasured.
- without it, `five_point_pose`: a coarse geometric estimate from the five detector points.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from insightface.app.common import Face as InsightFace
from insightface.data import get_object
from insightface.model_zoo import model_zoo
from insightface.utils.face_align import arcface_dst

from facegate.settings import DetectionSettings
from facegate.vision import alignment
from facegate.vision.face import Detection, ImageArray, Point, StageTimings
from facegate.vision.modelpack import ModelPackError, onnx_folder

DETECT_SIZE = (640, 640)
TASKS = ("detection", "recognition", "landmark_3d_68")


def pose_from_insightface(pose: Sequence[float]) -> tuple[float, float, float]:
    """insightface's `face.pose` (pitch, yaw, roll) -> this project's (yaw, pitch, roll).

    insightface's yaw is positive when the nose turns toward the image's RIGHT, so it is
    negated; its pitch is positive when looking up and its roll positive when the face is
    rotated clockwise in the image, as here.
    """
    pitch, yaw, roll = (float(v) for v in pose)
    return -yaw, pitch, roll


@functools.cache
def five_point_model() -> npt.NDArray[np.float64]:
    """A frontal face's five points in 3D, in units of the eye distance, eye midpoint at 0.

    x, y are the ArcFace template (`arcface_dst`, the alignment target, a frontal average of
    the same five-point annotation the detectors output); depth z (toward the camera) is
    insightface's 3D mean shape (`meanshape_68.pkl`: eye centres = mean of points 36-41 and
    42-47, nose = 30, mouth corners = mean of 48/60 and 54/64), scaled to the same eye
    distance. Made exactly left-right symmetric, so a frontal face reads 0, 0, 0.
    """
    m = np.asarray(get_object("meanshape_68.pkl"), np.float64)
    m5 = np.stack(
        [m[36:42].mean(0), m[42:48].mean(0), m[30], (m[48] + m[60]) / 2, (m[54] + m[64]) / 2]
    )
    xy = np.asarray(arcface_dst, np.float64)
    xyz = np.column_stack([xy / (xy[1, 0] - xy[0, 0]), m5[:, 2] / (m5[1, 0] - m5[0, 0])])
    for a, b in ((0, 1), (3, 4)):  # mirror pairs: x opposite, y and z shared
        half, mean = (xyz[b, 0] - xyz[a, 0]) / 2.0, (xyz[a] + xyz[b]) / 2.0
        xyz[a], xyz[b] = (-half, mean[1], mean[2]), (half, mean[1], mean[2])
    xyz[2, 0] = 0.0
    result: npt.NDArray[np.float64] = xyz - xyz[0:2].mean(axis=0)
    return result


def five_point_pose(landmarks: Sequence[Point]) -> tuple[float, float, float]:
    """Coarse (yaw, pitch, roll) in degrees from the five points alone (a fallback).

    Roll is the angle of the eye line. After undoing it, yaw comes from how far the nose lies
    off the line between the eye and mouth midpoints, pitch from how high the nose lies between
    the eyes and the mouth, both through `five_point_model`'s depths; exact for a face shaped
    like that model turning about one axis, approximate otherwise (faces differ in nose depth,
    and combined yaw and pitch interact). Accuracy on real faces is not measured.
    """
    p = np.asarray(landmarks, np.float64).reshape(5, 2)
    d = p[1] - p[0]
    iod = float(np.hypot(d[0], d[1]))
    if iod < 1e-6:
        return 0.0, 0.0, 0.0
    roll = math.degrees(math.atan2(d[1], d[0]))
    c, s = d / iod
    q = (p - (p[0] + p[1]) / 2.0) @ np.array([[c, -s], [s, c]]) / iod  # eye line horizontal
    m = five_point_model()
    eye, mouth, nose = np.zeros(2), (q[3] + q[4]) / 2.0, q[2]
    m_eye, m_mouth, m_nose = (m[0] + m[1]) / 2.0, (m[3] + m[4]) / 2.0, m[2]
    # yaw: x' = x cos(yaw) - z sin(yaw), and the eye distance shrinks by cos(yaw).
    offset = nose[0] - (eye[0] + mouth[0]) / 2.0
    dx0 = m_nose[0] - (m_eye[0] + m_mouth[0]) / 2.0
    dz = m_nose[2] - (m_eye[2] + m_mouth[2]) / 2.0
    yaw = math.degrees(math.atan2(dx0 - offset, dz))
    # pitch: y' = y cos(pitch) - z sin(pitch); t = where the nose lies from eyes (0) to mouth (1).
    height = mouth[1] - eye[1]
    if height <= 1e-6:
        return yaw, 0.0, roll
    t = (nose[1] - eye[1]) / height
    (dyn, dzn), (dym, dzm) = (m_nose - m_eye)[1:], (m_mouth - m_eye)[1:]
    pitch = math.degrees(math.atan2(-(t * dym - dyn), -(t * dzm - dzn)))
    return yaw, max(-90.0, min(90.0, pitch)), roll


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def load_models(pack_dir: Path, threads: int = 1) -> dict[str, Any]:
    """taskname -> insightface model, for the first model of each task in `TASKS`."""
    folder = pack_dir if any(pack_dir.glob("*.onnx")) else onnx_folder(pack_dir, pack_dir.name)
    if folder is None:
        raise ModelPackError(f"no .onnx files in {pack_dir} or one folder below it")
    models: dict[str, Any] = {}
    for path in sorted(folder.glob("*.onnx")):
        try:
            model = model_zoo.get_model(
                str(path), providers=["CPUExecutionProvider"], sess_options=session_options(threads)
            )
        except Exception as exc:
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelPackError(
                f"{path} cannot be loaded ({cause}); replace it with the pack's original file"
            ) from None
        task = getattr(model, "taskname", None)
        if task in TASKS and task not in models:
            models[task] = model
    for task in ("detection", "recognition"):
        if task not in models:
            raise ModelPackError(f"{folder} holds no {task} model that insightface recognises")
    if not getattr(models["detection"], "use_kps", True):
        raise ModelPackError(f"the detection model in {folder} outputs no five-point keypoints")
    return models


class InsightFaceAnalyzer(alignment.AlignedAnalyzer):
    """SCRFD/RetinaFace detection + ArcFace embedding (+ 3D-landmark pose) from one pack."""

    def __init__(
        self,
        pack_dir: Path,
        detection: DetectionSettings | None = None,
        threads: int = 1,
        name: str | None = None,
    ) -> None:
        self.name = name or pack_dir.name
        self._det_cfg = detection or DetectionSettings()
        models = load_models(pack_dir, threads)
        self._detector: Any = models["detection"]
        self._recognizer: Any = models["recognition"]
        self._landmark3d: Any | None = models.get("landmark_3d_68")
        self._detector.prepare(
            -1,
            input_size=DETECT_SIZE,
            det_thresh=self._det_cfg.min_score,
            nms_thresh=self._det_cfg.nms_iou,
        )
        shape = getattr(self._recognizer, "output_shape", None) or [1, 512]
        self.embedding_size = int(shape[-1]) if isinstance(shape[-1], int) else 512
        self._timings = StageTimings()

    @property
    def has_pose_model(self) -> bool:
        return self._landmark3d is not None

    def detect(self, frame_bgr: ImageArray) -> list[Detection]:
        self._timings = StageTimings()
        t0 = time.perf_counter()
        dets, kpss = self._detector.detect(frame_bgr, max_num=0)
        found: list[Detection] = []
        for i in range(0 if kpss is None else len(dets)):
            x1, y1, x2, y2, score = (float(v) for v in dets[i][:5])
            a, b, c, d, e = ((float(x), float(y)) for x, y in np.asarray(kpss[i]).reshape(5, 2))
            found.append(
                Detection(bbox=(x1, y1, x2, y2), det_score=score, landmarks=(a, b, c, d, e))
            )
        found.sort(key=lambda d: d.size, reverse=True)
        self._timings.detect = (time.perf_counter() - t0) * 1e3
        return found[: self._det_cfg.max_faces]

    def head_pose(self, frame_bgr: ImageArray, detection: Detection) -> tuple[float, float, float]:
        """insightface's 3D-landmark pose when the pack has it, else the five-point fallback."""
        if self._landmark3d is None:
            return five_point_pose(detection.landmarks)
        face = InsightFace(
            bbox=np.asarray(detection.bbox, np.float32),
            kps=np.asarray(detection.landmarks, np.float32),
            det_score=detection.det_score,
        )
        self._landmark3d.get(frame_bgr, face)
        raw = face.get("pose")
        return five_point_pose(detection.landmarks) if raw is None else pose_from_insightface(raw)

    def embed_aligned(self, aligned_bgr: ImageArray) -> npt.NDArray[np.float32]:
        # Standard insightface: the BGR crop goes in, ArcFaceONNX swaps it to RGB itself.
        feat = np.asarray(self._recognizer.get_feat(aligned_bgr), np.float32).reshape(-1)
        norm = float(np.linalg.norm(feat))
        result: npt.NDArray[np.float32] = feat / norm if norm > 0 else feat
        return result
