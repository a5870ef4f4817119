"""`facegate serve`'s Starlette app through Starlette's TestClient: every endpoint and every
WebSocket message, with the real model pack on real photos (skipped when either is absent).

Each test builds its own Runtime over a temporary data directory; the two analyzers (engine and
uploads) come from one session pool so a test does not pay for loading the models again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import struct
import threading
import time
import tomllib
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import pytest
from starlette.datastructures import UploadFile
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from facegate.events import AnyEvent, SystemReady
from facegate.live.sources import FrameSource, ImageFolderSource, open_source
from facegate.server.annotate import blank as blank_frame
from facegate.server.annotate import jpeg, placeholder
from facegate.server.app import STATIC, create_app
from facegate.server.runtime import Runtime
from facegate.settings import Settings, load_settings
from facegate.vision.face import FaceAnalyzer
from fuzzing import recv

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.models,
]

STATUS_FIELDS = {
    "current_event",
    "registration_in_progress",
    "waiting_for_user_response",
    "person_data",
    "websocket_connections",
    "current_registration_angle",
    "registration_progress",
    "person_in_detection_area",
}
MIB = 2**20
JSON = {"Content-Type": "application/json"}
WsSession = Any  # starlette.testclient.WebSocketTestSession
REPO = Path(__file__).resolve().parents[1]
# Starlette parses forms (every upload endpoint) with python-multipart, else a 500.
uploads = pytest.mark.skipif(
    importlib.util.find_spec("python_multipart") is None,
    reason="python-multipart is not installed: Starlette cannot parse uploads",
)


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def analyzer_pool(faceplugin_dir: Path) -> list[FaceAnalyzer]:
    """Two analyzers as `facegate serve` opens them: one for the engine, one for uploads."""
    from facegate.vision.analyzers import open_analyzer

    settings = load_settings(environ={})
    return [open_analyzer(settings), open_analyzer(settings)]


def still(path: Path, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return cv2.resize(image, size)


def blank(size: tuple[int, int] = (640, 480)) -> np.ndarray:
    w, h = size
    img = np.full((h, w, 3), 128, np.uint8)
    cv2.rectangle(img, (50, 60), (250, 200), (30, 90, 160), -1)  # a shape, still no face
    return img


def encode(image: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return bytes(data.tobytes())


@pytest.fixture
def face_dir(tmp_path: Path, deepface: Path) -> Path:
    """A folder of one still real face (img1, 640x480), played in a loop."""
    folder = tmp_path / "faces"
    folder.mkdir()
    image = still(deepface / "img1.jpg")
    for i in range(5):
        cv2.imwrite(str(folder / f"frame{i}.jpg"), image)
    return folder


@pytest.fixture
def blank_dir(tmp_path: Path) -> Path:
    """A folder of frames without a face: the engine runs, nothing is ever offered."""
    folder = tmp_path / "blank"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"frame{i}.jpg"), blank())
    return folder


class GatedSource:
    """Frames without a face until `gate` is set, then a still face: lets the clients connect
    before the engine sees anybody."""

    live = False

    def __init__(self, face: np.ndarray, fps: float = 10.0) -> None:
        self.name = "gated test source"
        self.fps: float | None = fps
        self.gate = threading.Event()
        self._face = face
        self._blank = blank((face.shape[1], face.shape[0]))

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        return (self._face if self.gate.is_set() else self._blank).copy()

    def close(self) -> None:
        pass


def configure(
    settings: Settings,
    server: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
) -> Settings:
    replace = msgspec.structs.replace
    if server:
        settings = replace(settings, server=replace(settings.server, **server))
    if engine:
        settings = replace(settings, engine=replace(settings.engine, **engine))
    return settings


Serve = Callable[..., contextlib.AbstractContextManager[tuple[TestClient, Runtime]]]


@pytest.fixture
def serve(tmp_path: Path, analyzer_pool: list[FaceAnalyzer], blank_dir: Path) -> Serve:
    """`serve(source=None, server={...}, engine={...})` -> (TestClient, Runtime), started."""

    @contextlib.contextmanager
    def _serve(
        source: FrameSource | None = None,
        *,
        server: dict[str, Any] | None = None,
        engine: dict[str, Any] | None = None,
    ) -> Iterator[tuple[TestClient, Runtime]]:
        settings = configure(load_settings(environ={}), server, engine)
        pool = iter(analyzer_pool)
        runtime = Runtime(
            settings,
            tmp_path / "data",
            source if source is not None else ImageFolderSource(blank_dir, fps=10),
            lambda: next(pool),
            loop_source=True,
        )
        with TestClient(create_app(runtime)) as client:
            yield client, runtime

    return _serve


@pytest.fixture
def app(serve: Serve) -> Iterator[tuple[TestClient, Runtime]]:
    with serve() as pair:
        yield pair


@pytest.fixture
def client(app: tuple[TestClient, Runtime]) -> TestClient:
    return app[0]


def wait_for(ws: WsSession, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The first message of type `kind`, skipping the others."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = recv(ws, left)
        except TimeoutError:
            break
        if msg["type"] == kind:
            return msg
    raise AssertionError(f"no {kind} message within {timeout} s")


def collect(ws: WsSession, kinds: set[str], timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """The first message of each type in `kinds` (order of arrival ignored)."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while not kinds <= seen.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"missing {kinds - seen.keys()} after {timeout} s")
        msg = recv(ws, left)
        seen.setdefault(msg["type"], msg)
    return seen


def close_code(ws: WsSession, timeout: float = 5.0) -> int:
    """Read until the server closes; the close code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            recv(ws, max(0.01, deadline - time.monotonic()))
        except WebSocketDisconnect as exc:
            return exc.code
        except TimeoutError:
            break
    raise AssertionError(f"not closed within {timeout} s")


def connect(client: TestClient, url: str = "/ws", **kwargs: Any) -> Any:
    return client.websocket_connect(url, **kwargs)


# -- photos ------------------------------------------------------------------------------------
def photo(deepface: Path, name: str) -> tuple[str, bytes, str]:
    return (name, (deepface / name).read_bytes(), "image/jpeg")


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" + b"\x00" * 3)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def enrol(client: TestClient, name: str, *files: tuple[str, bytes, str]) -> Any:
    return client.post("/api/persons", data={"name": name}, files=[("files", f) for f in files])


# -- the original design's endpoints -----------------------------------------------------------
def test_root_json_describes_the_server(client: TestClient) -> None:
    r = client.get("/", headers={"Accept": "application/json"})
    assert r.status_code == 200
    body = r.json()
    assert body["server"] == "facegate"
    assert body["websocket_url"] == "ws://testserver/ws"
    assert body["active_connections"] == 0
    assert body["system_status"].keys() >= STATUS_FIELDS
    with connect(client) as ws:
        recv(ws)
        assert client.get("/").json()["active_connections"] == 1


def test_root_serves_the_panel_to_browsers(client: TestClient) -> None:
    r = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert r.status_code == 200
    if not (STATIC / "index.html").is_file():
        pytest.skip("static/index.html not there yet: only the JSON answer was checked")
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()


def test_system_status_has_the_original_fields(client: TestClient) -> None:
    status = client.get("/system_status").json()
    assert status.keys() >= STATUS_FIELDS
    assert status["registration_in_progress"] is False
    assert status["waiting_for_user_response"] is False
    assert status["person_data"] is None
    assert status["websocket_connections"] == 0


def test_get_user_response_when_nothing_was_asked(client: TestClient) -> None:
    assert client.get("/get_user_response").json() == {
        "waiting_for_user_response": False,
        "last_decision": None,
    }


def test_reset_system_announces_system_ready(client: TestClient) -> None:
    with connect(client) as ws:
        assert recv(ws)["type"] == "connected"
        r = client.post("/reset_system", json={})
        assert r.status_code == 200 and r.json()["ok"] is True
        assert wait_for(ws, "system_ready")["data"]["message"]


def test_registration_decision_over_http_validates_and_refuses(client: TestClient) -> None:
    r = client.post("/registration_decision", json={"register": True, "name": "Ann"})
    assert r.status_code == 409
    assert r.json()["ok"] is False
    assert "no registration" in r.json()["message"]

    r = client.post("/registration_decision", content=b"{not json", headers=JSON)
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]

    r = client.post("/registration_decision", json={"register": "yes"})
    assert r.status_code == 400 and "register" in r.json()["error"]

    r = client.post("/registration_decision", json={"register": False, "name": 7})
    assert r.status_code == 400 and "name" in r.json()["error"]

    r = client.post("/registration_decision", json={"register": False, "extra": 1})
    assert r.status_code == 400 and "extra" in r.json()["error"]


# -- persons API -------------------------------------------------------------------------------
def test_python_multipart_is_a_dependency() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"python-multipart\b", d) for d in deps), deps


@uploads
def test_uploads_close_their_files(
    client: TestClient, deepface: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str | None] = []
    original = UploadFile.close

    async def close(self: UploadFile) -> None:
        closed.append(self.filename)
        await original(self)

    monkeypatch.setattr(UploadFile, "close", close)
    enrol(client, "Angelina", photo(deepface, "img1.jpg"))
    client.post("/api/identify", files={"file": photo(deepface, "img2.jpg")})
    assert closed == ["img1.jpg", "img2.jpg"]


@uploads
def test_persons_enrol_list_thumbnail_rename_delete(client: TestClient, deepface: Path) -> None:
    r = enrol(client, "Angelina", photo(deepface, "img1.jpg"), photo(deepface, "img2.jpg"))
    assert r.status_code == 201, r.text
    created = r.json()
    pid = created["person_id"]
    assert created["name"] == "Angelina" and created["embeddings"] == 2
    assert created["refused"] == []

    listed = client.get("/api/persons").json()
    assert [(p["person_id"], p["name"], p["embeddings"]) for p in listed] == [(pid, "Angelina", 2)]

    thumb = client.get(f"/api/persons/{pid}/thumbnail")
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR) is not None

    r = client.patch(f"/api/persons/{pid}", json={"name": "Angelina Jolie"})
    assert r.status_code == 200 and r.json()["name"] == "Angelina Jolie"
    assert client.get(f"/api/persons/{pid}").json()["name"] == "Angelina Jolie"
    r = client.patch(f"/api/persons/{pid}", json={"name": 3})
    assert r.status_code == 400 and "name" in r.json()["error"]

    r = client.delete(f"/api/persons/{pid}")
    assert r.status_code == 200 and r.json()["deleted"] is True
    r = client.get(f"/api/persons/{pid}")
    assert r.status_code == 404 and "error" in r.json()
    assert client.get("/api/persons").json() == []


@uploads
def test_persons_refuses_bad_photos_one_by_one(client: TestClient, deepface: Path) -> None:
    no_face = ("wall.jpg", encode(blank()), "image/jpeg")
    broken = ("cut.jpg", encode(blank())[:400], "image/jpeg")
    r = enrol(client, "Angelina", photo(deepface, "img1.jpg"), no_face, broken)
    assert r.status_code == 201, r.text
    refused = {x["path"]: x["reason"] for x in r.json()["refused"]}
    assert refused.keys() == {"wall.jpg", "cut.jpg"}
    assert "no face" in refused["wall.jpg"]
    assert "truncated" in refused["cut.jpg"]
    assert r.json()["embeddings"] == 1

    r = enrol(client, "Nobody", no_face)
    assert r.status_code == 409
    assert r.json()["person_id"] is None
    assert "no face" in r.json()["refused"][0]["reason"]

    r = enrol(client, "Nobody", broken)
    assert r.status_code == 400
    assert "truncated" in r.json()["refused"][0]["reason"]


@uploads
def test_persons_refuses_formats_other_than_the_four_with_415(
    client: TestClient, deepface: Path
) -> None:
    garbage = ("notes.jpg", b"this is not an image at all", "image/jpeg")
    tiff = ("scan.tif", b"II*\x00" + b"\x00" * 64, "image/tiff")
    for bad in (garbage, tiff):
        r = enrol(client, "Angelina", photo(deepface, "img1.jpg"), bad)
        assert r.status_code == 415, r.text
        assert r.json()["accepted"] == ["JPEG", "PNG", "WebP", "BMP"]
        assert bad[0] in r.json()["error"]
    assert client.get("/api/persons").json() == []


@uploads
def test_persons_requires_a_name_and_a_photo(client: TestClient, deepface: Path) -> None:
    r = client.post("/api/persons", files=[("files", photo(deepface, "img1.jpg"))])
    assert r.status_code == 400 and "name" in r.json()["error"]
    r = client.post(
        "/api/persons", data={"name": "  "}, files=[("files", photo(deepface, "img1.jpg"))]
    )
    assert r.status_code == 400 and "name" in r.json()["error"]
    r = client.post("/api/persons", data={"name": "Ann"}, files={"other": ("x", b"1", "a/b")})
    assert r.status_code == 400 and "files" in r.json()["error"]
    r = client.post("/api/persons", data={"name": "Ann"})  # urlencoded: no photo can come
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    assert client.get("/api/persons").json() == []


@uploads
def test_persons_same_face_twice_is_refused(client: TestClient, deepface: Path) -> None:
    assert enrol(client, "Angelina", photo(deepface, "img1.jpg")).status_code == 201
    r = enrol(client, "Angie", photo(deepface, "img1.jpg"))
    assert r.status_code == 409
    assert r.json()["person_id"] is None
    assert "already enrolled" in r.json()["refused"][0]["reason"]
    assert len(client.get("/api/persons").json()) == 1


@uploads
def test_upload_over_the_limit_is_413_by_content_length(client: TestClient) -> None:
    big = ("big.jpg", b"\xff\xd8" + b"\0" * (6 * MIB), "image/jpeg")
    r = client.post("/api/persons", data={"name": "Big"}, files=[("files", big)])
    assert r.status_code == 413
    assert "MiB" in r.json()["error"]
    r = client.post("/api/identify", files=[("file", big)])
    assert r.status_code == 413


@uploads
def test_upload_over_the_limit_is_413_without_content_length(client: TestClient) -> None:
    boundary = "facegateboundary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nBig\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files";'
            ' filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        for _ in range(7):
            yield b"\0" * MIB
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/api/persons",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413
    assert client.get("/api/persons").json() == []


@uploads
def test_huge_images_are_refused_by_megapixels(client: TestClient) -> None:
    bomb = png_claiming(20_000, 20_000)
    assert len(bomb) < 100
    # A real PNG of 42 megapixels that compresses to a few hundred KiB.
    real = encode(np.zeros((7000, 6000), np.uint8), ".png")
    assert len(real) < 5 * MIB
    r = enrol(client, "Huge", ("bomb.png", bomb, "image/png"), ("real.png", real, "image/png"))
    assert r.status_code == 400
    reasons = {x["path"]: x["reason"] for x in r.json()["refused"]}
    assert "megapixel" in reasons["bomb.png"] and "megapixel" in reasons["real.png"]
    r = client.post("/api/identify", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 400 and "megapixel" in r.json()["error"]


def test_unknown_person_ids_are_404(client: TestClient) -> None:
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/api/persons/nope", {}),
        ("PATCH", "/api/persons/nope", {"json": {"name": "X"}}),
        ("DELETE", "/api/persons/nope", {}),
        ("GET", "/api/persons/nope/thumbnail", {}),
    ]
    for method, url, kwargs in cases:
        r = client.request(method, url, **kwargs)
        assert r.status_code == 404, (method, url)
        assert isinstance(r.json()["error"], str) and r.json()["error"], (method, url)


@uploads
def test_identify_a_known_face(client: TestClient, deepface: Path) -> None:
    r = enrol(client, "Angelina", photo(deepface, "img1.jpg"))
    assert r.status_code == 201
    pid = r.json()["person_id"]
    r = client.post("/api/identify", files={"file": photo(deepface, "img2.jpg")})
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert len(faces) == 1
    assert faces[0]["decision"] == "known"
    assert (faces[0]["person_id"], faces[0]["name"]) == (pid, "Angelina")
    assert len(faces[0]["bbox"]) == 4

    r = client.post("/api/identify", files={"file": ("blank.jpg", encode(blank()), "image/jpeg")})
    assert r.status_code == 200 and r.json() == {"faces": []}


@uploads
def test_identify_bad_input(client: TestClient, deepface: Path) -> None:
    r = client.post("/api/identify", files={"file": ("x.jpg", b"garbage", "image/jpeg")})
    assert r.status_code == 415 and "x.jpg" in r.json()["error"]
    cut = encode(blank())[:400]
    r = client.post("/api/identify", files={"file": ("cut.jpg", cut, "image/jpeg")})
    assert r.status_code == 400 and "truncated" in r.json()["error"]
    r = client.post("/api/identify", files={"other": photo(deepface, "img1.jpg")})
    assert r.status_code == 400 and "file" in r.json()["error"]
    r = client.post("/api/identify", data={"file": "not a file"})
    assert r.status_code == 415  # a urlencoded form cannot carry a photo


# -- history, stats, schema, metrics, video ----------------------------------------------------
def ours_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if str(r["data"].get("message", "")).startswith("test event")]


def test_events_since_returns_the_history_in_order(app: tuple[TestClient, Runtime]) -> None:
    client, runtime = app
    assert client.portal is not None
    published = [
        client.portal.call(runtime.bus.publish, SystemReady(message=f"test event {i}"))
        for i in range(5)
    ]
    after = published[1].seq
    deadline = time.monotonic() + 5
    while True:
        rows = client.get(f"/api/events?since={after}").json()
        messages = [r["data"].get("message") for r in rows]
        if "test event 4" in messages or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    seqs = [r["data"]["seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(s > after for s in seqs)
    ours = [m for m in messages if m and m.startswith("test event")]
    assert ours == ["test event 2", "test event 3", "test event 4"]
    # Ours come back as what they are (the running source may add its own events between).
    assert {r["type"] for r in rows if r in ours_rows(rows)} == {"system_ready"}

    everything = client.get("/api/events?since=0").json()
    assert [r["data"]["seq"] for r in everything][-3:] == seqs[-3:]
    for bad, key in (("since=abc", "since"), ("since=1&limit=x", "limit")):
        r = client.get(f"/api/events?{bad}")
        assert r.status_code == 400 and key in r.json()["error"]


def test_stats(client: TestClient) -> None:
    stats = client.get("/api/stats").json()
    assert {"monitor", "websocket_connections", "persons", "embeddings", "bus"} <= stats.keys()
    assert stats["persons"] == 0 and stats["websocket_connections"] == 0
    assert "source_state" in stats["monitor"]
    store = stats["store"]
    assert store["kind"] == "sqlite" and store["where"].endswith("facegate.db")
    assert store["generation"] == 0 and store["reloads"] == 0


def test_schema_is_the_json_schema_of_the_events(client: TestClient) -> None:
    schema = client.get("/api/schema").json()
    assert schema["$schema"].startswith("https://json-schema.org/")
    names = {v["properties"]["type"]["const"] for v in schema["oneOf"]}
    assert {
        "person_recognized",
        "unknown_person_detected",
        "person_left_area",
        "system_ready",
        "source_status",
        "registration_complete",
    } <= names


def test_schema_lists_every_message_the_server_sends(client: TestClient) -> None:
    """Every event, `tracks` and the four replies to one client are in /api/schema, and what
    the server really sends validates against it."""
    schema = client.get("/api/schema").json()
    names = [v["properties"]["type"]["const"] for v in schema["oneOf"]]
    assert len(names) == len(set(names))
    events = {kind.__struct_config__.tag for kind in AnyEvent.__args__}
    replies = {"connected", "pong", "error", "decision_result"}
    assert events | {"tracks"} | replies == set(names)
    with connect(client) as ws:
        sent = [recv(ws)]
        ws.send_json({"type": "ping"})
        sent.append(wait_for(ws, "pong"))
        ws.send_text("not json")
        sent.append(wait_for(ws, "error"))
        ws.send_json({"type": "registration_decision", "data": {"register": False}})
        sent.append(wait_for(ws, "decision_result"))
    assert [m["type"] for m in sent] == ["connected", "pong", "error", "decision_result"]
    assert set(sent[0]["data"]) >= {"message", "current_event", "system_ready", "status", "role"}
    for message in sent:
        assert conforms(message, schema, schema), message
    # ... and the check is a real one.
    broken = {**sent[0], "data": {k: v for k, v in sent[0]["data"].items() if k != "status"}}
    assert not conforms(broken, schema, schema)
    assert not conforms(
        {**sent[0], "data": {**sent[0]["data"], "system_ready": "yes"}}, schema, schema
    )
    assert not conforms({**sent[1], "type": "pang"}, schema, schema)


JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def conforms(value: Any, node: dict[str, Any], root: dict[str, Any]) -> bool:
    """Whether `value` is valid under `node`: the subset of JSON Schema msgspec generates
    ($ref, oneOf, anyOf, const, enum, type, properties, required, additionalProperties, items).
    jsonschema is not a dependency."""
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return conforms(value, target, root)
    if "oneOf" in node and sum(conforms(value, n, root) for n in node["oneOf"]) != 1:
        return False
    if "anyOf" in node and not any(conforms(value, n, root) for n in node["anyOf"]):
        return False
    if "const" in node and value != node["const"]:
        return False
    if "enum" in node and value not in node["enum"]:
        return False
    if "type" in node:
        kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
        is_bool = isinstance(value, bool)
        if not any(
            isinstance(value, JSON_TYPES[k]) and (k == "boolean" or not is_bool) for k in kinds
        ):
            return False
    if isinstance(value, dict):
        properties = node.get("properties", {})
        if any(key not in value for key in node.get("required", [])):
            return False
        if node.get("additionalProperties") is False and set(value) - set(properties):
            return False
        if not all(conforms(v, properties[k], root) for k, v in value.items() if k in properties):
            return False
    if isinstance(value, list) and "items" in node:
        return all(conforms(v, node["items"], root) for v in value)
    return True


METRIC_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?P<labels>\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})?'
    r" (?P<value>\S+)(?: -?\d+)?$"
)


def test_metrics_is_prometheus_text(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    values: dict[str, float] = {}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            assert not line or line.startswith(("# HELP ", "# TYPE ")), line
            continue
        m = METRIC_LINE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        values[m["name"] + (m["labels"] or "")] = float(m["value"])
    assert values["facegate_websocket_connections"] == 0
    assert values["facegate_persons"] == 0
    assert values["facegate_uptime_seconds"] >= 0


def test_metrics_count_every_event_the_bus_published(app: tuple[TestClient, Runtime]) -> None:
    """facegate_events_total is the bus's own count: engine events, registration events,
    source status and anything else published, however many."""

    def total() -> tuple[float, int]:
        text = client.get("/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("facegate_events_total "))
        return float(line.split()[1]), runtime.bus.published

    client, runtime = app
    assert client.portal is not None
    before, published_before = total()
    assert before == published_before
    n = 36
    for i in range(n):
        client.portal.call(runtime.bus.publish, SystemReady(message=f"counted {i}"))
    after, published_after = total()
    assert after - before == published_after - published_before >= n
    assert after == published_after


def test_snapshot_is_a_jpeg_of_the_video(serve: Serve, face_dir: Path) -> None:
    with serve(ImageFolderSource(face_dir, fps=10)) as (client, runtime):
        deadline = time.monotonic() + 5
        while runtime.engine is not None and runtime.engine.latest_frame is None:
            assert time.monotonic() < deadline, "no frame processed"
            time.sleep(0.05)
        r = client.get("/snapshot.jpg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (480, 640, 3)
        # Which frame it is, as the tracks message names frames (to draw its own boxes only).
        frame = int(r.headers["x-frame"])
        assert frame >= 0 and float(r.headers["x-frame-time"]) >= 0
        assert int(r.headers["x-scene"]) >= 0


def test_each_mjpeg_part_names_its_frame(serve: Serve, face_dir: Path) -> None:
    with serve(ImageFolderSource(face_dir, fps=10)) as (client, _runtime):
        with client.stream("GET", "/video.mjpg") as r:
            buf = b""
            for chunk in r.iter_bytes():
                buf += chunk
                if buf.count(b"X-Frame:") >= 4:
                    break
        frames = []
        for part in buf.split(b"--frame\r\n")[1:]:
            head = part.partition(b"\r\n\r\n")[0]
            headers = dict(h.split(b": ", 1) for h in head.split(b"\r\n"))
            if b"X-Frame" in headers:  # (a part sent before the first frame has none)
                frames.append((int(headers[b"X-Frame"]), float(headers[b"X-Frame-Time"])))
        assert len(frames) >= 3
        assert frames == sorted(frames) and len({f for f, _ in frames}) == len(frames)


def test_video_mjpg_streams_jpeg_parts(client: TestClient) -> None:
    with client.stream("GET", "/video.mjpg") as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        buf = b""
        for chunk in r.iter_bytes():
            buf += chunk
            if buf.count(b"--frame") >= 2:
                break
    part = buf.split(b"--frame\r\n")[1]
    head, _, rest = part.partition(b"\r\n\r\n")
    headers = dict(h.split(b": ", 1) for h in head.split(b"\r\n"))
    assert headers[b"Content-Type"] == b"image/jpeg"
    data = rest[: int(headers[b"Content-Length"])]
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


# -- WebSocket ---------------------------------------------------------------------------------
def test_ws_connected_then_ping_pong(client: TestClient) -> None:
    with connect(client) as ws:
        hello = recv(ws)
        assert hello["type"] == "connected"
        assert hello["data"]["system_ready"] is True
        assert hello["data"]["status"].keys() >= STATUS_FIELDS
        assert hello["data"]["status"]["websocket_connections"] == 1
        ws.send_json({"type": "ping"})
        assert wait_for(ws, "pong")["type"] == "pong"
        ws.send_json({"type": "ping", "data": {}})
        assert wait_for(ws, "pong")["type"] == "pong"


def test_ws_bad_messages_get_errors_and_the_socket_stays_open(client: TestClient) -> None:
    with connect(client) as ws:
        recv(ws)
        ws.send_text("{not json")
        assert "invalid JSON" in wait_for(ws, "error")["data"]["message"]
        ws.send_json({"type": "make_coffee", "data": {}})
        assert "make_coffee" in wait_for(ws, "error")["data"]["message"]
        ws.send_json({"type": "registration_decision", "data": {"register": "yes"}})
        err = wait_for(ws, "error")["data"]["message"]
        assert "register" in err and "bool" in err
        ws.send_bytes(b"\xff\xfe")
        assert wait_for(ws, "error")
        ws.send_json({"type": "ping"})
        assert wait_for(ws, "pong")


def test_ws_decision_with_nothing_pending(client: TestClient) -> None:
    with connect(client) as ws:
        recv(ws)
        ws.send_json({"type": "registration_decision", "data": {"register": True, "name": "A"}})
        result = wait_for(ws, "decision_result")["data"]
        assert result["ok"] is False and "no registration" in result["message"]


def test_ws_reset_system_message(client: TestClient) -> None:
    with connect(client) as ws:
        recv(ws)
        ws.send_json({"type": "reset_system"})
        assert wait_for(ws, "system_ready")


def test_ws_message_over_64_kib_is_closed_with_1009(client: TestClient) -> None:
    with connect(client) as ws:
        recv(ws)
        ws.send_text(json.dumps({"type": "ping", "data": {}, "pad": "x" * (65 * 1024)}))
        assert close_code(ws) == 1009


def test_ws_message_over_64_kib_in_utf8_bytes_is_closed(client: TestClient) -> None:
    with connect(client) as ws:
        recv(ws)
        ws.send_text(json.dumps({"type": "ping", "pad": "€" * 30_000}, ensure_ascii=False))
        assert close_code(ws, timeout=2) == 1009


def test_ws_origin_check(serve: Serve) -> None:
    with serve(server={"allowed_origins": ["https://panel.example"]}) as (client, _):
        evil = {"Origin": "https://evil.example"}
        with pytest.raises(WebSocketDisconnect) as refused, connect(client, headers=evil):
            pass
        assert refused.value.code == 1008
        for origin in ("http://testserver", "https://panel.example"):
            with connect(client, headers={"Origin": origin}) as ws:
                assert recv(ws)["type"] == "connected"
        with connect(client) as ws:  # no Origin: not a browser
            assert recv(ws)["type"] == "connected"


def test_first_decision_wins_between_two_clients(serve: Serve, deepface: Path) -> None:
    source = GatedSource(still(deepface / "img1.jpg"))
    with (
        serve(source, engine={"stable_seconds": 0.3}) as (client, _),
        connect(client) as a,
        connect(client) as b,
    ):
        assert recv(a)["type"] == recv(b)["type"] == "connected"
        source.gate.set()
        offer_a = wait_for(a, "unknown_person_detected", timeout=15)
        offer_b = wait_for(b, "unknown_person_detected", timeout=5)
        assert offer_a["data"]["seq"] == offer_b["data"]["seq"]
        assert offer_a["data"]["action_required"] is True
        status = client.get("/system_status").json()
        assert status["waiting_for_user_response"] is True
        assert client.get("/get_user_response").json()["waiting_for_user_response"] is True

        a.send_json({"type": "registration_decision", "data": {"register": False}})
        got_a = collect(a, {"decision_result", "registration_cancelled"})
        assert got_a["decision_result"]["data"]["ok"] is True
        assert got_a["registration_cancelled"]["data"]["reason"] == "declined"

        b.send_json({"type": "registration_decision", "data": {"register": True}})
        got_b = collect(b, {"decision_result", "registration_cancelled"})
        late = got_b["decision_result"]["data"]
        assert late["ok"] is False
        assert "already decided" in late["message"] or "no registration" in late["message"]
        assert got_b["registration_cancelled"]["data"]["reason"] == "declined"

        last = client.get("/get_user_response").json()
        assert last["waiting_for_user_response"] is False
        assert last["last_decision"]["register"] is False


# -- token, hosts, a dead camera ---------------------------------------------------------------
def test_token_protects_http(serve: Serve) -> None:
    with serve(server={"token": "s3cret"}) as (client, runtime):
        assert client.get("/system_status").status_code == 401
        r = client.get("/api/persons", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "token" in r.json()["error"]
        assert client.post("/reset_system", json={}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert client.get("/system_status", headers=ok).status_code == 200
        assert client.get("/api/persons", headers=ok).json() == []
        assert client.get("/metrics", headers=ok).status_code == 200
        # An <img> cannot send headers: video and snapshot (only) take ?token=.
        snap = client.get("/snapshot.jpg?token=s3cret")
        assert snap.status_code == 200 and snap.headers["content-type"] == "image/jpeg"
        with client.stream("GET", "/video.mjpg?token=s3cret") as r:
            assert r.status_code == 200
            assert b"--frame" in next(r.iter_bytes())
        assert client.get("/snapshot.jpg?token=wrong").status_code == 401
        assert client.get("/api/persons?token=s3cret").status_code == 401
        assert runtime.store is not None
        client.app.state.write_audit(everything=True)  # type: ignore[attr-defined]
        # Wrong tokens (not missing ones) count: one row per address per minute.
        failures = [a for a in runtime.store.audit() if a.action == "auth_failed"]
        assert len(failures) == 1
        assert failures[0].detail["failures"] == 2
        assert set(failures[0].detail["paths"]) == {"/api/persons", "/snapshot.jpg"}

        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200
        for asset in ("index.html", "app.js", "style.css"):
            if (STATIC / asset).is_file():
                assert client.get(f"/{asset}").status_code == 200, asset


def test_token_protects_the_json_root(serve: Serve) -> None:
    with serve(server={"token": "s3cret"}) as (client, _):
        r = client.get("/", headers={"Accept": "application/json"})
        assert r.status_code == 401


def test_token_protects_the_websocket(serve: Serve) -> None:
    with serve(server={"token": "s3cret"}) as (client, runtime):
        with connect(client, "/ws?token=s3cret") as ws:
            assert recv(ws)["type"] == "connected"
        with connect(client) as ws:
            ws.send_json({"type": "auth", "data": {"token": "s3cret"}})
            assert recv(ws)["type"] == "connected"
            ws.send_json({"type": "ping"})
            assert wait_for(ws, "pong")
        with connect(client) as ws:
            ws.send_json({"type": "ping"})
            assert close_code(ws) == 1008
        with connect(client, "/ws?token=wrong") as ws:
            ws.send_json({"type": "auth", "data": {"token": "wrong"}})
            assert close_code(ws) == 1008
        with connect(client) as ws:
            ws.send_text("not json")
            assert close_code(ws) == 1008
        assert runtime.store is not None
        client.app.state.write_audit(everything=True)  # type: ignore[attr-defined]
        failures = [a for a in runtime.store.audit() if a.action == "auth_failed"]
        assert [a.detail["failures"] for a in failures] == [2]  # ?token=wrong, then auth


def test_untrusted_host_header_is_400(serve: Serve) -> None:
    with serve(server={"allowed_hosts": ["gate.example"]}) as (client, _):
        assert client.get("/system_status", headers={"Host": "evil.example"}).status_code == 400
        assert client.get("/system_status", headers={"Host": "gate.example"}).status_code == 200
        assert client.get("/system_status", headers={"Host": "127.0.0.1:8001"}).status_code == 200


def test_a_missing_camera_still_serves(serve: Serve) -> None:
    with serve(open_source("7")) as (client, runtime):
        with connect(client) as ws:
            recv(ws)
            status = wait_for(ws, "source_status", timeout=10)["data"]
            assert status["state"] == "unavailable"
            assert status["source"] == "webcam 7"
            assert status["retry_in_seconds"] > 0
        assert runtime.source_state == "unavailable"
        r = client.get("/system_status")
        assert r.status_code == 200 and r.json()["source_state"] == "unavailable"
        snap = client.get("/snapshot.jpg")
        assert snap.status_code == 200 and snap.headers["content-type"] == "image/jpeg"
        # Plain: a blank frame (the panel says "camera unavailable" itself, once).
        assert snap.content == jpeg(blank_frame())
        drawn = client.get("/snapshot.jpg?overlay=1")
        assert drawn.content == jpeg(placeholder("camera unavailable - retrying"))
        assert cv2.imdecode(np.frombuffer(snap.content, np.uint8), cv2.IMREAD_COLOR) is not None


def test_the_drawn_overlay_never_greets_a_face_whose_liveness_check_failed_or_runs() -> None:
    from facegate.events import Tracks, TrackView
    from facegate.server.annotate import CHECKING, KNOWN, NOT_LIVE, annotate, label

    def drawn(liveness: str | None) -> tuple[str, tuple[int, ...]]:
        track = TrackView(
            track_id=1,
            bbox=[100.0, 100.0, 200.0, 200.0],
            state="known",
            person_id="p1",
            name="Pat",
            liveness=liveness,  # type: ignore[arg-type]
        )
        view = Tracks(
            frame=0, frame_time=0.0, width=320, height=240, threshold=0.44, tracks=[track]
        )
        out = annotate(blank_frame((320, 240)), view)
        return label(track), tuple(int(v) for v in out[150, 100])

    assert drawn(None) == ("#1 Pat", KNOWN)
    assert drawn("passed") == ("#1 Pat", KNOWN)
    assert drawn("failed") == ("#1 Pat - NOT LIVE", NOT_LIVE)
    assert drawn("asked") == ("#1 Pat - turn your head", CHECKING)
    assert drawn("waiting")[1] == CHECKING
