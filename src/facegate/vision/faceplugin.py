"""The default pack's analyzer: the ONNX models of `faceplugin-face-recognition-js@0.0.1`.

The recipe is the measured one of `../shared/docs/model-pack-faceplugin.md`, not the package's
own JavaScript (which mixes channel orders and aligns on three points).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from insightface.model_zoo import model_zoo
from onnx import helper, numpy_helper

from facegate.settings import DetectionSettings
from facegate.vision import alignment, headpose
from facegate.vision.face import BBox, Detection, ImageArray, StageTimings

DETECT_SIZE = (320, 240)  # width, height the detector sees
LANDMARK_SIZE = 64
POSE_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)  # RGB
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class FacepluginAnalyzer(alignment.AlignedAnalyzer):
    """Detector + 68-point landmarks + pose net + ArcFace-style embedding, all on CPU."""

    name = "faceplugin"
    embedding_size = 512

    def __init__(
        self, model_dir: Path, detection: DetectionSettings | None = None, threads: int = 1
    ) -> None:
        self._det_cfg = detection or DetectionSettings()
        self._detect = session(model_dir / "fr_detect.onnx", threads)
        self._landmark = session(model_dir / "fr_landmark.onnx", threads)
        self._pose = session(model_dir / "fr_pose.onnx", threads)
        # Recognition goes through insightface: ArcFaceONNX with the pack's exact scaling,
        # run on an exactly equivalent graph that is 20% faster (see `fast_prelu`).
        feature = model_dir / "fr_feature.onnx"
        self._recognizer: Any = model_zoo.get_model(
            str(feature),
            model_task="recognition",
            model_metadata={"preprocessing": {"mean": 127.0, "std": 128.0}},
            providers=["CPUExecutionProvider"],
            sess_options=_recognizer_options(threads),
        )
        self._recognizer.session = ort.InferenceSession(
            fast_prelu(feature),
            sess_options=_recognizer_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self._timings = StageTimings()

    # -- detection -------------------------------------------------------------------------
    def detect(self, frame_bgr: ImageArray) -> list[Detection]:
        self._timings = StageTimings()
        t0 = time.perf_counter()
        boxes, scores = self._run_detector(frame_bgr)
        t1 = time.perf_counter()
        detections = [
            self._landmarks(frame_bgr, box, score) for box, score in zip(boxes, scores, strict=True)
        ]
        t2 = time.perf_counter()
        self._timings.detect = (t1 - t0) * 1e3
        self._timings.landmarks = (t2 - t1) * 1e3
        detections.sort(key=lambda d: d.size, reverse=True)
        return detections

    def _run_detector(self, frame_bgr: ImageArray) -> tuple[list[BBox], list[float]]:
        h, w = frame_bgr.shape[:2]
        small = cv2.resize(frame_bgr, DETECT_SIZE, interpolation=cv2.INTER_AREA)
        # RGB, (x - 127) / 128, NCHW.
        blob = cv2.dnn.blobFromImage(small, 1.0 / 128.0, DETECT_SIZE, (127, 127, 127), swapRB=True)
        scores, boxes = self._detect.run(None, {"input": blob})
        conf = scores[0, :, 1]
        keep = conf >= self._det_cfg.min_score
        if not keep.any():
            return [], []
        cand = boxes[0, keep] * np.array([w, h, w, h], np.float32)
        conf = conf[keep]
        xywh = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in cand]
        idx = cv2.dnn.NMSBoxes(xywh, conf.tolist(), self._det_cfg.min_score, self._det_cfg.nms_iou)
        order = sorted(np.asarray(idx).reshape(-1).tolist(), key=lambda i: -conf[i])
        order = order[: self._det_cfg.max_faces]
        out_boxes: list[BBox] = []
        for i in order:
            x1, y1, x2, y2 = (float(v) for v in cand[i])
            out_boxes.append(alignment.square_box((x1, y1, x2, y2)))
        return out_boxes, [float(conf[i]) for i in order]

    def _landmarks(self, frame_bgr: ImageArray, box: BBox, score: float) -> Detection:
        points = self.landmarks68(frame_bgr, box)
        return Detection(
            bbox=box,
            det_score=score,
            landmarks=alignment.five_points_from_68(points),
            dense_landmarks=points,
        )

    def landmarks68(self, frame_bgr: ImageArray, box: BBox) -> npt.NDArray[np.float32]:
        return landmarks68(self._landmark, frame_bgr, box)

    # -- description -----------------------------------------------------------------------

    def pose_net(self, frame_bgr: ImageArray, bbox: BBox) -> tuple[float, float, float]:
        """Raw (yaw, pitch, roll) of the pose network, in this project's sign convention."""
        x1, y1, x2, y2 = bbox
        dx, dy = (x2 - x1) / 4.0, (y2 - y1) / 4.0
        crop = alignment.crop_box(frame_bgr, (x1 - dx, y1 - dy, x2 + dx, y2 + dy), POSE_SIZE)
        blob = np.asarray(
            cv2.dnn.blobFromImage(crop, 1.0 / 255.0, (POSE_SIZE, POSE_SIZE), swapRB=True),
            np.float32,
        )
        blob -= IMAGENET_MEAN
        blob /= IMAGENET_STD
        yaw_bins, pitch_bins, roll_bins = self._pose.run(None, {"input": blob})
        return headpose.decode_bins(yaw_bins[0], pitch_bins[0], roll_bins[0])

    def head_pose(self, frame_bgr: ImageArray, detection: Detection) -> tuple[float, float, float]:
        net = self.pose_net(frame_bgr, detection.bbox)
        points = detection.dense_landmarks
        if points is None:
            points = self.landmarks68(frame_bgr, detection.bbox)
        return headpose.fuse(net, points)

    def embed_aligned(self, aligned_bgr: ImageArray) -> npt.NDArray[np.float32]:
        # ArcFaceONNX swaps R and B itself; this network wants BGR, so hand it RGB.
        rgb = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2RGB)
        feat = np.asarray(self._recognizer.get_feat(rgb), np.float32).reshape(-1)
        norm = float(np.linalg.norm(feat))
        result: npt.NDArray[np.float32] = feat / norm if norm > 0 else feat
        return result


def landmarks68(
    model: ort.InferenceSession, frame_bgr: ImageArray, box: BBox
) -> npt.NDArray[np.float32]:
    """The 68 iBUG landmarks (frame pixels) of `fr_landmark.onnx` in a square face box."""
    crop = alignment.crop_box(frame_bgr, box, LANDMARK_SIZE)
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32) / 256.0
    out = model.run(None, {"input": grey[None, None]})[0].reshape(68, 2)
    x1, y1, x2, y2 = box
    pts: npt.NDArray[np.float32] = out * np.array([x2 - x1, y2 - y1], np.float32) + np.array(
        [x1, y1], np.float32
    )
    return pts


class Landmarks68:
    """The default pack's landmark model on its own, for packs whose detections carry no 68
    landmarks (the InsightFace packs): the liveness challenge's planarity needs them."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        self._model = session(model_dir / "fr_landmark.onnx", threads)

    def __call__(self, frame_bgr: ImageArray, detection: Detection) -> npt.NDArray[np.float32]:
        return landmarks68(self._model, frame_bgr, alignment.square_box(detection.bbox))


def fast_prelu(model_path: Path) -> bytes:
    """The model with each PRelu(x, s) written as Relu(x) + s * Min(x, 0): the same numbers
    (bit-identical in our check), but onnxruntime's broadcasting PRelu kernel took 7.4 of the
    25 ms of this network on one thread; the rewrite runs in 20.8 ms. The file on disk, and
    so its pinned checksum, is untouched."""
    model = onnx.load(str(model_path))
    zero = "facegate_zero"
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope = node.input
        y = node.output[0]
        nodes += [
            helper.make_node("Relu", [x], [y + "_pos"]),
            helper.make_node("Min", [x, zero], [y + "_neg"]),
            helper.make_node("Mul", [y + "_neg", slope], [y + "_sneg"]),
            helper.make_node("Add", [y + "_pos", y + "_sneg"], [y]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # Min with a broadcast scalar needs opset >= 8; 13 is supported by every onnxruntime.
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 13)
    data: bytes = model.SerializeToString()
    return data


def _recognizer_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # onnxruntime's NCHWc layout pass wraps each of this network's 33 PRelu in layout
    # reorders: 76 ms instead of 25 ms per face on one thread (measured, onnxruntime 1.32).
    opts.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
    return opts
