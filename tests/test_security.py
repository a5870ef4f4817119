"""Only the operator commands the gate, and no input can stall or fill it.

Each test here is the regression test of one attack tried against `facegate serve` (cross-site
requests, roles, image bombs, token guessing, unbounded queries, hostile names, silent
connections, floods, framing). The app is the real one (Guard, routes, store, engine thread,
bus, history) over a temporary data directory; the analyzer finds no face (what is under
test is the server, not the models), and the server-stack behaviours run on a real uvicorn.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx2 as httpx
import msgspec
import numpy as np
import pytest
import uvicorn
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient

from facegate.events import RegistrationApproved, SystemReady
from facegate.identity.store import Store
from facegate.live.sources import ImageFolderSource
from facegate.server.access import MESSAGES, ROUTES, Role
from facegate.server.app import create_app
from facegate.server.http import uvicorn_config
from facegate.server.protocol import ClientMessage
from facegate.server.runtime import Runtime
from facegate.settings import Settings, load_settings
from facegate.vision.face import ImageArray
from fakes import NoFaces
from ports import free_port

EVIL = "http://evil.example"
JSON = {"Content-Type": "application/json"}
TOKENS = {"token": "admin-secret", "operator_token": "op-secret", "viewer_token": "view-secret"}
BEARER = {
    Role.ADMIN: {"Authorization": "Bearer admin-secret"},
    Role.OPERATOR: {"Authorization": "Bearer op-secret"},
    Role.VIEWER: {"Authorization": "Bearer view-secret"},
    Role.PUBLIC: {},
}


def configured(**sections: dict[str, Any]) -> Settings:
    settings = load_settings(environ={})
    for name, values in sections.items():
        settings = msgspec.structs.replace(
            settings, **{name: msgspec.structs.replace(getattr(settings, name), **values)}
        )
    return settings


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "blank.jpg"), np.full((240, 320, 3), 128, np.uint8))
    return folder


Build = Callable[..., contextlib.AbstractContextManager[tuple[TestClient, Runtime]]]


@pytest.fixture
def build(tmp_path: Path, frames: Path) -> Build:
    """`with build(server={...}, events={...}) as (client, runtime):` the started app."""

    @contextlib.contextmanager
    def _build(**sections: dict[str, Any]) -> Iterator[tuple[TestClient, Runtime]]:
        settings = configured(**sections)
        runtime = Runtime(
            settings, tmp_path / "data", ImageFolderSource(frames, fps=5), NoFaces, loop_source=True
        )
        with TestClient(create_app(runtime)) as client:
            yield client, runtime

    return _build


@contextlib.contextmanager
def live(runtime: Runtime) -> Iterator[str]:
    """The app on a real uvicorn, configured as `facegate serve` configures it."""
    port = free_port()
    app = create_app(runtime)
    config = uvicorn_config(app, runtime.settings.server, host="127.0.0.1", port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def runtime_for(tmp_path: Path, frames: Path) -> Callable[..., Runtime]:
    def make(**sections: dict[str, Any]) -> Runtime:
        return Runtime(
            configured(**sections),
            tmp_path / "data",
            ImageFolderSource(frames, fps=5),
            NoFaces,
            loop_source=True,
        )

    return make


def jpeg_bytes() -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))
    assert ok
    return bytes(data.tobytes())


def webp_bomb(width: int = 16383, height: int = 16383) -> bytes:
    """A lossless WebP whose header claims width x height (a few bytes that decode to GBs)."""
    bits = (width - 1) | ((height - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 16
    chunk = b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# -- 1. cross-site requests ----------------------------------------------------------------------
def test_a_cross_site_page_cannot_enrol_or_approve(build: Build) -> None:
    with build() as (client, runtime):
        r = client.post(
            "/api/persons",
            data={"name": "Mallory"},
            files={"files": ("m.jpg", jpeg_bytes(), "image/jpeg")},
            headers={"Origin": EVIL},
        )
        assert r.status_code == 403 and "cross-site" in r.json()["error"]
        r = client.post(
            "/registration_decision",
            content=b'{"register": true, "name": "Mallory"}',
            headers={"Origin": EVIL, "Content-Type": "text/plain"},
        )
        assert r.status_code == 403
        # Without an Origin, a browser's Sec-Fetch-Site still tells.
        r = client.post("/reset_system", json={}, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        r = client.post("/reset_system", json={}, headers={"Origin": "null"})
        assert r.status_code == 403
        assert runtime.store is not None and runtime.store.persons() == []


def test_every_state_changing_method_on_every_path_is_refused_cross_site(build: Build) -> None:
    paths = [p.replace("{person_id}", "abc") or "/x.js" for p in ROUTES if p != "/ws"]
    paths += ["/no/such/route", "/index.html"]
    with build() as (client, _):
        for path in paths:
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                r = client.request(method, path, headers={"Origin": EVIL, **JSON}, content=b"{}")
                assert r.status_code == 403, (method, path, r.status_code)


def test_the_panels_own_origin_and_listed_origins_pass(build: Build) -> None:
    with build(server={"allowed_origins": ["http://kiosk:8080"]}) as (client, _):
        for origin in ("http://testserver", "http://kiosk:8080"):
            r = client.post("/reset_system", json={}, headers={"Origin": origin})
            assert r.status_code == 200, (origin, r.text)
        r = client.post("/reset_system", json={}, headers={"Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200
        # curl and scripts send neither header: they keep working on loopback.
        assert client.post("/reset_system", json={}).status_code == 200


def test_json_endpoints_need_the_json_content_type(build: Build) -> None:
    with build() as (client, _):
        body = b'{"register": false}'
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": ctype} if ctype else {}
            r = client.post("/registration_decision", content=body, headers=headers)
            assert r.status_code == 415 and "application/json" in r.json()["error"], ctype
        r = client.post("/registration_decision", content=body, headers=JSON)
        assert r.status_code == 409  # reached the handler: nothing to decide
        r = client.patch("/api/persons/abc", data={"name": "x"})
        assert r.status_code == 415


def test_websocket_from_another_site_is_refused(runtime_for: Callable[..., Runtime]) -> None:
    import asyncio

    import websockets
    from websockets.exceptions import InvalidStatus
    from websockets.typing import Origin

    async def attempt(url: str, origin: str) -> int:
        try:
            async with websockets.connect(url, origin=Origin(origin)):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    with live(runtime_for()) as base:
        url = base.replace("http", "ws") + "/ws"
        assert asyncio.run(attempt(url, EVIL)) == 403
        assert asyncio.run(attempt(url, base)) == 101


def test_responses_forbid_framing(build: Build) -> None:
    with build(server=TOKENS) as (client, _):
        for path, headers in (
            ("/", {"Accept": "text/html"}),
            ("/system_status", BEARER[Role.VIEWER]),
            ("/app.js", {}),
            ("/system_status", {}),  # a 401 too
        ):
            r = client.get(path, headers=headers)
            assert r.headers["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
            assert r.headers["x-content-type-options"] == "nosniff"


# -- 2. roles ------------------------------------------------------------------------------------
def test_every_route_of_the_app_has_an_access_rule(build: Build) -> None:
    with build() as (client, _):
        app: Any = client.app
        routes = app.routes
        assert routes, "no routes?"
        for route in routes:
            if isinstance(route, Route):
                assert route.path in ROUTES, f"{route.path} has no entry in access.ROUTES"
                assert route.methods is not None
                for method in route.methods - {"HEAD"}:
                    assert method in ROUTES[route.path], (route.path, method)
            elif isinstance(route, WebSocketRoute):
                assert "WEBSOCKET" in ROUTES.get(route.path, {}), route.path
            elif isinstance(route, Mount):
                assert route.path in ROUTES, route.path
            else:
                pytest.fail(f"unexpected route type {route!r}")
        tags = {m.__struct_config__.tag for m in ClientMessage.__args__}  # type: ignore[attr-defined]
        assert tags == set(MESSAGES), "every WebSocket message needs a role in access.MESSAGES"


def _request(client: TestClient, method: str, path: str, headers: dict[str, str]) -> Any:
    if method == "POST" and path in ("/api/persons", "/api/identify"):
        return client.post(path, headers=headers, files={"x": ("a", b"1", "text/plain")})
    if method in ("POST", "PATCH"):
        return client.request(method, path, headers={**headers, **JSON}, content=b"{}")
    return client.request(method, path, headers=headers)


def test_each_role_reaches_exactly_what_the_table_grants(build: Build) -> None:
    with build(server=TOKENS) as (client, _):
        for template, methods in ROUTES.items():
            if template in ("/ws", "/video.mjpg"):
                continue  # the WebSocket below; the stream never ends
            path = template.replace("{person_id}", "abc") or "/style.css"
            for method, access in methods.items():
                for role, headers in BEARER.items():
                    r = _request(client, method, path, headers)
                    granted = r.status_code not in (401, 403)
                    assert granted == (role >= access.role), (method, path, role, r.status_code)
                    if not granted:
                        assert r.status_code == (401 if role is Role.PUBLIC else 403)


def test_websocket_messages_need_their_role(build: Build) -> None:
    with build(server=TOKENS) as (client, _):
        with client.websocket_connect("/ws?token=view-secret") as ws:
            hello = ws.receive_json()
            assert hello["type"] == "connected" and hello["data"]["role"] == "viewer"
            ws.send_json({"type": "registration_decision", "data": {"register": True}})
            reply = ws.receive_json()
            assert reply["type"] == "error" and "operator role" in reply["data"]["message"]
            ws.send_json({"type": "reset_system", "data": {}})
            assert "operator role" in ws.receive_json()["data"]["message"]
            ws.send_json({"type": "ping", "data": {}})
            assert ws.receive_json()["type"] == "pong"
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"type": "auth", "data": {"token": "op-secret"}})
            assert ws.receive_json()["data"]["role"] == "operator"
            ws.send_json({"type": "registration_decision", "data": {"register": True}})
            reply = ws.receive_json()
            assert reply["type"] == "decision_result"  # reached the registrar
            assert "no registration" in reply["data"]["message"]


def test_websocket_clients_are_capped(build: Build) -> None:
    from starlette.websockets import WebSocketDisconnect

    with (
        build(server={"ws_max_clients": 2}) as (client, _),
        client.websocket_connect("/ws") as a,
        client.websocket_connect("/ws") as b,
    ):
        assert a.receive_json()["type"] == b.receive_json()["type"] == "connected"
        with client.websocket_connect("/ws") as c, pytest.raises(WebSocketDisconnect) as info:
            c.receive_json()
        assert info.value.code == 1013


def test_a_path_that_looks_like_a_static_file_still_needs_the_token(build: Build) -> None:
    with build(server=TOKENS) as (client, _):
        for path in ("/api/persons/abc.png", "/api/persons/x.js", "/api/persons/abc/thumbnail"):
            assert client.get(path).status_code == 401, path


def test_no_token_configured_on_loopback_means_admin(build: Build) -> None:
    with build() as (client, _):
        assert client.get("/api/persons").status_code == 200
        assert client.get("/system_status").status_code == 200


# -- 3. images -----------------------------------------------------------------------------------
def test_an_image_bomb_is_refused_from_its_header(build: Build) -> None:
    with build() as (client, runtime):
        files = [("files", (f"bomb{i}.webp", webp_bomb(), "image/webp")) for i in range(20)]
        r = client.post("/api/persons", data={"name": "Bomb"}, files=files)
        assert r.status_code == 400, r.text
        reasons = [x["reason"] for x in r.json()["refused"]]
        assert len(reasons) == 20 and all("megapixel limit" in x for x in reasons)
        r = client.post("/api/identify", files={"file": ("b.webp", webp_bomb(), "image/webp")})
        assert r.status_code == 400 and "megapixel" in r.json()["error"]
        tiff = b"II*\x00" + b"\x00" * 100
        r = client.post("/api/identify", files={"file": ("b.tif", tiff, "image/tiff")})
        assert r.status_code == 415 and r.json()["accepted"] == ["JPEG", "PNG", "WebP", "BMP"]
        assert runtime.store is not None and runtime.store.persons() == []


def test_uploads_are_decoded_off_the_event_loop(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facegate.server import persons

    threads: list[str] = []
    original = persons.decode_image

    def recording(data: bytes, name: str = "image") -> ImageArray:
        threads.append(threading.current_thread().name)
        return original(data, name)

    monkeypatch.setattr(persons, "decode_image", recording)
    with build() as (client, _):
        r = client.post("/api/identify", files={"file": ("a.jpg", jpeg_bytes(), "image/jpeg")})
        assert r.status_code == 200 and r.json() == {"faces": []}
        r = client.post(
            "/api/persons", data={"name": "Ann"}, files={"files": ("a.jpg", jpeg_bytes(), "a/b")}
        )
        assert r.status_code == 409
    assert threads and all(name.startswith("uploads") for name in threads), threads


def test_a_full_upload_queue_is_503(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    from facegate.server import persons

    release = threading.Event()
    original = persons.decode_image

    def slow(data: bytes, name: str = "image") -> ImageArray:
        release.wait(10)
        return original(data, name)

    monkeypatch.setattr(persons, "decode_image", slow)
    with build(server={"max_pending_uploads": 2}) as (client, _):
        results: list[int] = []

        def post() -> None:
            files = {"file": ("a.jpg", jpeg_bytes(), "image/jpeg")}
            results.append(client.post("/api/identify", files=files).status_code)

        workers = [threading.Thread(target=post) for _ in range(2)]
        for w in workers:
            w.start()
        uploads = client.app.state.uploads  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while uploads.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = client.post("/api/identify", files={"file": ("a.jpg", jpeg_bytes(), "image/jpeg")})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        release.set()
        for w in workers:
            w.join(10)
        assert results == [200, 200]
        assert client.get("/system_status").status_code == 200


# -- 4. abuse limits -----------------------------------------------------------------------------
def test_token_guessing_is_throttled_and_audited_per_minute(build: Build) -> None:
    with build(server=TOKENS) as (client, runtime):
        now = [1000.0]
        throttle = client.app.state.throttle  # type: ignore[attr-defined]
        throttle.clock = lambda: now[0]
        wrong = {"Authorization": "Bearer guess"}
        codes = [client.get("/system_status", headers=wrong).status_code for _ in range(2000)]
        assert codes[:10] == [401] * 10
        assert set(codes[10:]) == {429}
        r = client.get("/system_status", headers=BEARER[Role.ADMIN])
        assert r.status_code == 429  # blocked is blocked, even with the right token now
        assert int(r.headers["retry-after"]) == 60
        now[0] += 61
        assert client.get("/system_status", headers=BEARER[Role.ADMIN]).status_code == 200
        client.app.state.write_audit(everything=True)  # type: ignore[attr-defined]
        assert runtime.store is not None
        rows = [a for a in runtime.store.audit(limit=10_000) if a.action == "auth_failed"]
        assert len(rows) == 1, rows
        assert rows[0].detail["failures"] == 10 and rows[0].detail["throttled"] == 1991
        assert rows[0].detail["client"] == "testclient"


def test_the_audit_log_and_the_history_stay_bounded(build: Build) -> None:
    sections = {"store": {"audit_max_rows": 100}, "events": {"max_rows": 100}}
    with build(**sections) as (client, runtime):
        store = runtime.store
        assert store is not None
        for i in range(400):
            store.record("auth", "auth_failed", client=f"10.0.0.{i}", failures=1)
        client.app.state.write_audit()  # type: ignore[attr-defined]
        assert len(store.audit(limit=10_000)) <= 100
        assert client.portal is not None
        for i in range(1500):
            client.portal.call(runtime.bus.publish, SystemReady(message=f"flood {i}"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = store.events(0, 1000, gate="gate")  # this gate's, oldest first
            if rows and "flood 1499" in rows[-1].data:
                break
            time.sleep(0.05)
        assert "flood 1499" in rows[-1].data
        assert len(rows) <= 100 + 200  # max_rows, plus at most one batch before pruning


def test_reset_and_decisions_are_rate_limited_per_client(build: Build) -> None:
    with build() as (client, _):
        client.app.state.limiter.clock = lambda: 1000.0  # type: ignore[attr-defined]
        codes = [client.post("/reset_system", json={}).status_code for _ in range(30)]
        assert codes == [200] * 5 + [429] * 25  # the burst, then nothing until time passes
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "connected"
            ws.send_json({"type": "registration_decision", "data": {"register": False}})
            reply = ws.receive_json()
            assert "too many commands" in reply["data"]["message"]


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("limit=-1", "limit"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("since=-5", "since"),
        (f"since={2**64}", "since"),
        ("since=1e3", "since"),
        ("since=" + "9" * 400, "since"),
    ],
)
def test_query_parameters_are_bounded(build: Build, query: str, key: str) -> None:
    with build() as (client, _):
        r = client.get(f"/api/events?{query}")
        assert r.status_code == 400 and key in r.json()["error"]
        assert client.get(f"/api/events?since={2**63 - 1}&limit=1000").json() == []


HOSTILE_NAMES = [
    "x" * 10_000,
    "Ada\x1b[31mLovelace",  # ANSI escape
    "Ada\u202eecalevol",  # right-to-left override
    "Ada\u200bLovelace",  # zero-width space (Cf)
    "Ada\nLovelace",
    "\x00",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_everywhere_before_analysis(
    build: Build, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    analysed: list[int] = []
    monkeypatch.setattr(NoFaces, "analyze", lambda *a, **k: analysed.append(1) or [])
    with build() as (client, runtime):
        files = {"files": ("a.jpg", jpeg_bytes(), "image/jpeg")}
        r = client.post("/api/persons", data={"name": name}, files=files)
        assert r.status_code == 400 and "1-200 characters" in r.json()["error"]
        r = client.post("/registration_decision", json={"register": True, "name": name})
        assert r.status_code == 400 and "1-200 characters" in r.json()["error"]
        r = client.patch("/api/persons/abc", json={"name": name})
        assert r.status_code == 400 and "1-200 characters" in r.json()["error"]
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "connected"
            ws.send_json(
                {"type": "registration_decision", "data": {"register": True, "name": name}}
            )
            reply = ws.receive_json()
            assert reply["data"]["ok"] is False and "1-200 characters" in reply["data"]["message"]
        assert runtime.store is not None and runtime.store.persons() == []
    assert analysed == []


def test_a_file_sent_as_the_name_field_is_not_a_name(build: Build) -> None:
    with build() as (client, runtime):
        files = [
            ("name", ("a.txt", b"Ann", "text/plain")),
            ("files", ("a.jpg", jpeg_bytes(), "image/jpeg")),
        ]
        r = client.post("/api/persons", files=files)
        assert r.status_code == 400 and "must be text" in r.json()["error"]
        assert runtime.store is not None and runtime.store.persons() == []


def test_names_are_normalised(build: Build) -> None:
    with build() as (client, _):
        r = client.post(
            "/registration_decision", json={"register": True, "name": "  Zoe\u0301  Saldana "}
        )
        # Nothing is waiting, but the name passed the rule (409, not 400).
        assert r.status_code == 409


def test_cli_refuses_hostile_names_and_prints_old_ones_safely(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Store.open(data).close()
    db = sqlite3.connect(data / "facegate.db")
    db.execute(
        "INSERT INTO persons (id, name, note, created_at, updated_at) VALUES (?, ?, '', 0, 0)",
        ("aaaaaaaaaaaa", "Eve\x1b[2J\u202eevil"),
    )
    db.commit()
    db.close()

    def facegate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "facegate.cli", *args, "--data", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listed = facegate("persons", "list")
    assert listed.returncode == 0
    assert "\x1b" not in listed.stdout and "\u202e" not in listed.stdout
    assert "Eve\\u001b[2J\\u202eevil" in listed.stdout
    renamed = facegate("persons", "rename", "aaaaaaaaaaaa", "Eve\x1b[0m")
    assert renamed.returncode == 2 and "control character" in renamed.stderr
    enrolled = facegate("enroll", "x" * 300, str(tmp_path / "none.jpg"))
    assert enrolled.returncode == 2 and "1-200 characters" in enrolled.stderr


def test_a_name_typed_for_a_registration_stays_only_with_a_person(build: Build) -> None:
    with build() as (client, runtime):
        assert client.portal is not None
        approved = RegistrationApproved(message="Registering Mallory", name="Mallory")
        client.portal.call(runtime.bus.publish, approved)
        client.portal.call(runtime.bus.publish, SystemReady(message="after"))
        assert runtime.store is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rows = runtime.store.events(0, 1000)
            if any("after" in r.data for r in rows):
                break
            time.sleep(0.05)
        kinds = [r.type for r in rows]
        assert "registration_approved" in kinds
        assert not any("Mallory" in r.data for r in rows)


# -- 5. connections ------------------------------------------------------------------------------
def test_silent_and_trickling_connections_are_closed(runtime_for: Callable[..., Runtime]) -> None:
    runtime = runtime_for(server={"header_timeout_seconds": 1.0, "keep_alive_seconds": 1.0})
    with live(runtime) as base:
        port = int(base.rsplit(":", 1)[1])
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.sendall(b"GET / HTTP/1.1\r\n")
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /system_status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for sock in [*silent, trickle, idle]:
            sock.settimeout(5)
        trickle.sendall(b"X-A: 1\r\n")
        time.sleep(0.5)
        trickle.sendall(b"X-B: 2\r\n")  # still trickling: the deadline is not reset
        assert read_until_closed(idle).startswith(b"HTTP/1.1 200")
        for sock in [*silent, trickle]:
            assert read_until_closed(sock) == b""
        for sock in [*silent, trickle, idle]:
            sock.close()
        assert httpx.get(base + "/system_status", timeout=5).status_code == 200


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; a socket timeout (5 s,
    well past the 1 s limits under test) raises if it never does."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_serve_raises_the_open_file_limit() -> None:
    import resource

    from facegate.server.http import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if soft > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        after, _ = raise_open_file_limit()
        assert after > 256 or hard == 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_cross_site_enrolment_is_refused_by_the_real_server(
    runtime_for: Callable[..., Runtime],
) -> None:
    runtime = runtime_for()
    with live(runtime) as base:
        files = {"files": ("m.jpg", jpeg_bytes(), "image/jpeg")}
        r = httpx.post(
            base + "/api/persons", data={"name": "M"}, files=files, headers={"Origin": EVIL}
        )
        assert r.status_code == 403
        r = httpx.post(
            base + "/registration_decision",
            content=b'{"register":true,"name":"M"}',
            headers={"Content-Type": "text/plain"},
        )
        assert r.status_code == 415
        assert r.headers["x-frame-options"] == "DENY"
