"""The InsightFace-pack analyzer: pose conventions, the five-point fallback, and the analyzer
itself on a synthetic pack of tiny ONNX models built here (real packs are not reachable from
this machine; a test on a real pack runs when one is installed, else skips)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from insightface.data import get_object
from insightface.utils import transform
from insightface.utils.face_align import arcface_dst
from onnx import TensorProto, helper, numpy_helper

from facegate.settings import DetectionSettings, load_settings, models_dir
from facegate.vision.face import Detection, ImageArray, Point
from facegate.vision.insightface_pack import (
    InsightFaceAnalyzer,
    five_point_model,
    five_point_pose,
    pose_from_insightface,
)
from facegate.vision.modelpack import INSIGHTFACE_PACKS, ModelPackError, fix_command, pack_status

F64 = npt.NDArray[np.float64]


def rotation(axis: str, degrees: float) -> F64:
    """A physical head rotation in image axes (x right, y down, z toward the camera), named in
    this project's convention: yaw > 0 moves the nose toward the image's left, pitch > 0 moves
    it up (looking up), roll > 0 turns the face clockwise in the image."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    if axis == "yaw":
        return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    if axis == "pitch":
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def mean_shape() -> F64:
    return np.asarray(get_object("meanshape_68.pkl"), np.float64)


def insightface_pose(points68: F64) -> tuple[float, float, float]:
    """What insightface's Landmark.get computes for 68 3D points (pitch, yaw, roll)."""
    p = transform.estimate_affine_matrix_3d23d(mean_shape(), points68)
    _, r, _ = transform.P2sRt(p)
    pitch, yaw, roll = transform.matrix2angle(r)
    return float(pitch), float(yaw), float(roll)


def as_points(xy: F64) -> tuple[Point, Point, Point, Point, Point]:
    a, b, c, d, e = ((float(x), float(y)) for x, y in xy.reshape(5, 2))
    return (a, b, c, d, e)


# -- pose conventions ---------------------------------------------------------------------------
def test_mean_shape_axes_are_image_axes() -> None:
    m = mean_shape()
    assert m[0, 0] < 0 < m[16, 0]  # jaw point 0 (subject's right) is on the image's left
    assert m[8, 1] > m[27, 1]  # chin below the nose bridge: y points down
    assert m[30, 2] > m[0, 2]  # nose tip nearer the camera than the jaw: z toward the camera


@pytest.mark.parametrize("axis", ["yaw", "pitch", "roll"])
@pytest.mark.parametrize("degrees", [-30.0, -10.0, 20.0])
def test_insightface_pose_converted_to_project_convention(axis: str, degrees: float) -> None:
    m = mean_shape()
    pts = (m @ rotation(axis, degrees).T) * 90.0 + np.array([320.0, 240.0, 0.0])
    if axis == "yaw":  # the physical meaning of the synthetic rotation
        assert np.sign(pts[30, 0] - pts[27, 0]) == -np.sign(degrees)
    yaw, pitch, roll = pose_from_insightface(insightface_pose(pts))
    expected = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0} | {axis: degrees}
    assert yaw == pytest.approx(expected["yaw"], abs=0.01)
    assert pitch == pytest.approx(expected["pitch"], abs=0.01)
    assert roll == pytest.approx(expected["roll"], abs=0.01)


def test_pose_from_insightface_is_a_sign_flip_of_yaw_only() -> None:
    assert pose_from_insightface([5.0, 10.0, -3.0]) == (-10.0, 5.0, -3.0)


# -- five-point fallback ------------------------------------------------------------------------
def test_five_point_model_is_symmetric_and_frontal() -> None:
    m = five_point_model()
    assert m[0, 0] == pytest.approx(-0.5) and m[1, 0] == pytest.approx(0.5)
    assert m[2, 0] == 0.0 and m[3, 0] == pytest.approx(-m[4, 0])
    assert m[2, 2] > m[3, 2] > m[0, 2]  # nose, then mouth, then eyes toward the camera


def test_frontal_symmetric_points_read_zero() -> None:
    yaw, pitch, roll = five_point_pose(as_points(np.asarray(arcface_dst, np.float64) * 3.0))
    assert abs(yaw) < 1.0 and abs(pitch) < 1.0 and abs(roll) < 1.0


def test_nose_toward_image_left_is_positive_yaw() -> None:
    pts = np.asarray(arcface_dst, np.float64).copy()
    pts[2, 0] -= 8.0
    yaw, _, _ = five_point_pose(as_points(pts))
    assert yaw > 10.0
    pts[2, 0] += 16.0
    assert five_point_pose(as_points(pts))[0] < -10.0


def test_nose_up_is_positive_pitch_and_right_eye_low_is_positive_roll() -> None:
    pts = np.asarray(arcface_dst, np.float64).copy()
    pts[2, 1] -= 6.0
    assert five_point_pose(as_points(pts))[1] > 5.0
    pts = np.asarray(arcface_dst, np.float64).copy()
    pts[1, 1] += 10.0  # the eye on the image's right lower: clockwise
    assert five_point_pose(as_points(pts))[2] > 10.0


@pytest.mark.parametrize(
    ("axis", "degrees"),
    [("yaw", 35.0), ("yaw", -20.0), ("pitch", 25.0), ("pitch", -15.0), ("roll", 12.0)],
)
def test_five_point_pose_recovers_a_rotated_model(axis: str, degrees: float) -> None:
    xy = (five_point_model() @ rotation(axis, degrees).T)[:, :2] * 60.0 + np.array([300.0, 200.0])
    got = dict(zip(("yaw", "pitch", "roll"), five_point_pose(as_points(xy)), strict=True))
    assert got[axis] == pytest.approx(degrees, abs=0.01)
    assert all(abs(v) < 0.01 for k, v in got.items() if k != axis)


def test_degenerate_points_do_not_crash() -> None:
    assert five_point_pose(as_points(np.zeros((5, 2)))) == (0.0, 0.0, 0.0)


@pytest.mark.shared_data
@pytest.mark.models
def test_five_point_fallback_on_pointing04(shared_data: Path, analyzer: object) -> None:
    """Signs and rough scale of the fallback on real faces (five points from the default pack)."""
    root = shared_data / "pose" / "pointing04"
    with (root / "manifest.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["series"] == "2"]
    rows = [r for r in rows if abs(int(r["yaw"])) <= 60 and abs(int(r["pitch"])) <= 30]
    truth, est = [], []
    for r in rows:
        img = cv2.imread(str(root / r["path"]))
        dets: list[Detection] = analyzer.detect(img)  # type: ignore[attr-defined]
        if not dets:
            continue
        cx, cy = float(r["face_cx"]), float(r["face_cy"])
        d = min(dets, key=lambda d: abs((d.bbox[0] + d.bbox[2]) / 2 - cx) + abs(d.bbox[1] - cy))
        truth.append((float(r["yaw"]), float(r["pitch"])))
        est.append(five_point_pose(d.landmarks)[:2])
    t, e = np.array(truth), np.array(est)
    assert len(t) > 0.9 * len(rows)
    yaw_slope = np.polyfit(t[:, 0], e[:, 0], 1)[0]
    pitch_slope = np.polyfit(t[:, 1], e[:, 1], 1)[0]
    assert np.corrcoef(t[:, 0], e[:, 0])[0, 1] > 0.9 and 0.7 < yaw_slope < 1.3
    assert np.corrcoef(t[:, 1], e[:, 1])[0, 1] > 0.6 and pitch_slope > 0.3


# -- a synthetic pack: tiny ONNX models with the shapes insightface routes on ------------------
def save_model(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def constant_outputs(path: Path, input_shape: list[int], arrays: dict[str, F64]) -> None:
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, input_shape)
    outs = [
        helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
        for k, v in arrays.items()
    ]
    nodes = [
        helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v.astype(np.float32)))
        for k, v in arrays.items()
    ]
    save_model(path, nodes, [inp], outs, [])


# Faces the fake SCRFD reports in a 640x640 frame: (stride, row, col, score, half box w, h).
FAKE_FACES = [
    (32, 8, 10, 0.90, 64.0, 80.0),
    (16, 10, 8, 0.95, 32.0, 32.0),
    (8, 60, 60, 0.30, 40.0, 40.0),
]


def fake_landmarks(cx: float, cy: float, half_w: float) -> F64:
    pts: F64 = (np.asarray(arcface_dst, np.float64) - 56.0) * (half_w / 56.0) + (cx, cy)
    return pts


def write_detector(path: Path) -> None:
    arrays: dict[str, F64] = {}
    per_stride = {}
    for stride in (8, 16, 32):
        n = (640 // stride) ** 2 * 2
        per_stride[stride] = (np.zeros((n, 1)), np.ones((n, 4)), np.zeros((n, 10)))
    for stride, row, col, score, hw, hh in FAKE_FACES:
        scores, boxes, kps = per_stride[stride]
        index = (row * (640 // stride) + col) * 2
        cx, cy = col * stride, row * stride
        scores[index] = score
        boxes[index] = np.array([hw, hh, hw, hh]) / stride
        kps[index] = ((fake_landmarks(cx, cy, hw) - np.array([cx, cy])) / stride).reshape(-1)
    for kind, pos in (("score", 0), ("bbox", 1), ("kps", 2)):
        for stride in (8, 16, 32):
            arrays[f"{kind}_{stride}"] = per_stride[stride][pos]
    constant_outputs(path, [1, 3, 640, 640], arrays)


def write_recognizer(path: Path) -> None:
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 512])
    weights = np.random.default_rng(0).normal(size=(192, 512)).astype(np.float32)
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["pool"], kernel_shape=[14, 14], strides=[14, 14]
        ),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["fc1"]),
    ]
    save_model(path, nodes, [inp], [out], [numpy_helper.from_array(weights, "w")])


YAW_3D = 20.0  # the head rotation the fake 3D-landmark model reports


def write_landmark3d(path: Path) -> None:
    pred = np.zeros((1, 3309))
    pred[0, -68 * 3 :] = ((mean_shape() @ rotation("yaw", YAW_3D).T) * 0.5).reshape(-1)
    constant_outputs(path, [1, 3, 192, 192], {"fc1": pred})


@pytest.fixture(scope="module")
def fake_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fakepack")
    write_detector(folder / "det_fake.onnx")
    write_recognizer(folder / "rec_fake.onnx")
    write_landmark3d(folder / "1k3d68.onnx")
    return folder


FRAME = np.full((640, 640, 3), 90, np.uint8)


def test_synthetic_pack_detects_largest_first_above_min_score(fake_pack: Path) -> None:
    an = InsightFaceAnalyzer(fake_pack, DetectionSettings(min_score=0.5))
    dets = an.detect(FRAME)
    assert [d.det_score for d in dets] == pytest.approx([0.90, 0.95])  # the 0.30 face is cut
    assert dets[0].bbox == pytest.approx((256.0, 176.0, 384.0, 336.0))
    assert np.allclose(dets[0].landmarks, fake_landmarks(320.0, 256.0, 64.0), atol=1e-3)
    assert an.timings.detect > 0
    assert len(InsightFaceAnalyzer(fake_pack, DetectionSettings(max_faces=1)).detect(FRAME)) == 1
    assert InsightFaceAnalyzer(fake_pack, DetectionSettings(min_score=0.99)).detect(FRAME) == []


def test_synthetic_pack_describes_with_3d_pose_and_unit_embedding(fake_pack: Path) -> None:
    an = InsightFaceAnalyzer(fake_pack)
    assert an.name == fake_pack.name and an.embedding_size == 512 and an.has_pose_model
    faces = an.analyze(FRAME)
    assert len(faces) == 2
    face = faces[0]
    assert face.yaw == pytest.approx(YAW_3D, abs=0.05)
    assert face.pitch == pytest.approx(0.0, abs=0.05)
    assert face.roll == pytest.approx(0.0, abs=0.05)
    assert face.embedding is not None and face.embedding.dtype == np.float32
    assert face.embedding.shape == (512,)
    assert float(np.linalg.norm(face.embedding)) == pytest.approx(1.0, abs=1e-5)
    assert face.aligned is not None and face.aligned.shape == (112, 112, 3)
    assert face.quality.face_px == pytest.approx(128.0)
    assert an.timings.pose > 0 and an.timings.embed > 0 and an.timings.align > 0
    bare = an.describe(FRAME, an.detect(FRAME)[0], embed=False, pose=False)
    assert bare.embedding is None and bare.yaw is None
    assert an.timings.embed == 0.0 and an.timings.pose == 0.0


def test_synthetic_pack_without_3d_model_uses_five_points(fake_pack: Path, tmp_path: Path) -> None:
    for name in ("det_fake.onnx", "rec_fake.onnx"):
        (tmp_path / name).write_bytes((fake_pack / name).read_bytes())
    an = InsightFaceAnalyzer(tmp_path)
    assert not an.has_pose_model
    det = an.detect(FRAME)[0]
    face = an.describe(FRAME, det)
    assert (face.yaw, face.pitch, face.roll) == five_point_pose(det.landmarks)
    assert abs(face.yaw or 0.0) < 1.0


def test_pack_without_recognizer_or_with_a_broken_file(fake_pack: Path, tmp_path: Path) -> None:
    (tmp_path / "det_fake.onnx").write_bytes((fake_pack / "det_fake.onnx").read_bytes())
    with pytest.raises(ModelPackError, match="no recognition model"):
        InsightFaceAnalyzer(tmp_path)
    (tmp_path / "w600k_r50.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ModelPackError, match=r"w600k_r50\.onnx cannot be loaded"):
        InsightFaceAnalyzer(tmp_path)
    with pytest.raises(ModelPackError, match=r"no \.onnx files"):
        InsightFaceAnalyzer(tmp_path / "absent")


# -- a real pack, when one is installed -----------------------------------------------------
@pytest.mark.models
@pytest.mark.parametrize("pack", sorted(INSIGHTFACE_PACKS))
def test_real_pack(pack: str) -> None:
    where = models_dir(load_settings(environ={}))
    status = pack_status(where, pack)
    if not status.verified:
        pytest.skip(
            f"InsightFace pack {pack} not installed: put its .onnx files in {where / pack}/"
            f" (or run `{fix_command(where, pack)}` on a machine that reaches GitHub)"
        )
    an = InsightFaceAnalyzer(Path(status.model_dir), name=pack)
    # A face drawn from the ArcFace template would not fool a real detector; use a photo.
    photo = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "deepface"
    if not (photo / "img1.jpg").is_file():
        pytest.skip(f"no test photo at {photo}/img1.jpg")
    raw = cv2.imread(str(photo / "img1.jpg"))
    assert raw is not None
    img: ImageArray = np.ascontiguousarray(raw, dtype=np.uint8)
    faces = an.analyze(img)
    assert faces, f"{pack} found no face in img1.jpg"
    face = faces[0]
    assert face.embedding is not None and face.embedding.shape == (an.embedding_size,)
    assert float(np.linalg.norm(face.embedding)) == pytest.approx(1.0, abs=1e-4)
    assert face.yaw is not None and abs(face.yaw) < 45.0
    # Mirroring the photo must flip the sign of a clearly non-zero yaw.
    mirrored = an.analyze(np.ascontiguousarray(img[:, ::-1]))
    assert mirrored and mirrored[0].yaw is not None
    if abs(face.yaw) > 8.0:
        assert np.sign(mirrored[0].yaw) == -np.sign(face.yaw)
