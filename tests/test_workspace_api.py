# ruff: noqa: F811  (the fixtures imported below are named again as test arguments)
"""The operator's workspace API: offering a face for registration, the recent unknown faces,
person details (last seen, more photos), paging and filtering the event history, the camera's
figures in `/api/stats`, and the plain or server-drawn video.

Server logic runs on the real app (Guard, routes, store, engine thread, bus, history, the
registrar) with an analyzer that finds no face (`fakes.NoFaces`); what needs a face in view
(the overlay, photos added to a person, an offer through the real registrar) runs the real
model pack on real photos, as `test_server.py` does, with its fixtures.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import pytest
from starlette.testclient import TestClient

from facegate.events import Event, PersonLeftArea, PersonRecognized, SystemReady
from facegate.identity.store import NewEmbedding
from facegate.live.sources import ImageFolderSource, open_source
from facegate.server.access import Role
from facegate.server.annotate import blank, jpeg, placeholder
from facegate.server.app import create_app
from facegate.server.runtime import Runtime
from fakes import NoFaces
from test_security import (  # fixtures by import, not copies
    BEARER,
    JSON,
    TOKENS,
    Build,
    build,  # noqa: F401
    configured,
    frames,  # noqa: F401
    jpeg_bytes,
)
from test_server import (
    GatedSource,
    Serve,
    analyzer_pool,  # noqa: F401
    blank_dir,  # noqa: F401
    collect,
    connect,
    enrol,
    face_dir,  # noqa: F401
    photo,
    recv,
    serve,  # noqa: F401
    still,
    wait_for,
)
from test_server import blank as blank_picture
from test_server import encode as encode_image
from test_server import uploads as needs_multipart

MAX_SEQ = 2**63 - 1
# Commands (offers, dismissals) are rate-limited per address; these tests send many.
UNLIMITED = {"commands_per_second": 1000.0, "command_burst": 1000}


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.02)
    return value


def publish(client: TestClient, runtime: Runtime, event: Event) -> Event:
    assert client.portal is not None
    published: Event = client.portal.call(runtime.bus.publish, event)
    return published


def recognized(person_id: str, name: str = "Ada") -> PersonRecognized:
    return PersonRecognized(
        person_id=person_id,
        name=name,
        message=f"Welcome {name}",
        similarity=0.8,
        threshold=0.5,
        confidence=0.8,
        distance=0.2,
    )


def logged(runtime: Runtime, seq: int) -> None:
    """Wait until the history holds the event `seq` (it is written in batches)."""
    store = runtime.store
    assert store is not None
    gate = runtime.settings.gate.id
    wait_until(lambda: store.last_event_seq(gate) >= seq, what=f"event {seq} in the history")


def person_in_store(runtime: Runtime, name: str = "Ada") -> str:
    """A person straight into the gallery (no photo needed: the vector is what is stored)."""
    assert runtime.gallery is not None
    vector = np.random.default_rng(7).standard_normal(512).astype(np.float32)
    vector /= np.linalg.norm(vector)
    person = runtime.gallery.create_person(name, [NewEmbedding(vector=vector)], actor="test")
    return person.id


def decoded(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


# -- POST /api/registration ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1]", "invalid body"),
        (b'{"track_id": 3, "extra": 1}', "extra"),
        (b'{"name": "Ada"}', "track_id"),
        (b'{"track_id": 0}', "track_id"),
        (b'{"track_id": -4}', "track_id"),
        (f'{{"track_id": {2**31 + 1}}}'.encode(), "track_id"),
        (f'{{"track_id": {2**80}}}'.encode(), "track_id"),
        (b'{"track_id": "7"}', "track_id"),
        (b'{"track_id": true}', "track_id"),
        (b'{"track_id": 1.5}', "track_id"),
        (b'{"track_id": 3, "name": 7}', "name"),
        (b'{"track_id": 3, "name": "Ada\\u202eecalevol"}', "1-200 characters"),
        (('{"track_id": 3, "name": "' + "x" * 5000 + '"}').encode(), "1-200 characters"),
        (b"[" * 100_000, "invalid body"),
        (b'{"x": ' + b"[" * 100_000, "invalid"),
    ],
)
def test_registration_offer_refuses_bad_bodies(build: Build, body: bytes, needle: str) -> None:
    with build(server=UNLIMITED) as (client, _):
        r = client.post("/api/registration", content=body, headers=JSON)
        assert r.status_code == 400, r.text
        assert needle in r.json()["error"]


def test_registration_offer_needs_json(build: Build) -> None:
    with build() as (client, _):
        r = client.post("/api/registration", content=b'{"track_id": 3}')
        assert r.status_code == 415
        r = client.post(
            "/api/registration", content=b'{"track_id": 3}', headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 415


def test_registration_offer_of_a_face_not_in_view_is_404(build: Build) -> None:
    """Through the real registrar: nobody is in view of a camera that sees no face."""
    with build(server=UNLIMITED) as (client, runtime):
        r = client.post("/api/registration", json={"track_id": 42, "name": "Ada"})
        assert r.status_code == 404, r.text
        body = r.json()
        assert body["ok"] is False and body["message"].startswith("not in view")
        assert body["error"] == body["message"]
        r = client.post("/api/registration", json={"track_id": 2**31, "name": None})
        assert r.status_code == 404
        assert runtime.store is not None and runtime.store.persons() == []


# -- roles -----------------------------------------------------------------------------------
def test_a_viewer_may_not_see_unknowns_or_offer_faces(build: Build) -> None:
    with build(server={**TOKENS, **UNLIMITED}) as (client, runtime):
        runtime.unknowns.seen(5, 1.0, None)
        viewer, operator, admin = BEARER[Role.VIEWER], BEARER[Role.OPERATOR], BEARER[Role.ADMIN]
        refused = [
            client.get("/api/unknowns", headers=viewer),
            client.get("/api/unknowns/5/thumbnail", headers=viewer),
            client.delete("/api/unknowns/5", headers=viewer),
            client.post("/api/registration", json={"track_id": 5}, headers=viewer),
        ]
        for r in refused:
            assert r.status_code == 403 and "operator role" in r.json()["error"], r.request.url
        assert client.get("/api/unknowns").status_code == 401
        listed = client.get("/api/unknowns", headers=operator)
        assert listed.status_code == 200 and [u["track_id"] for u in listed.json()] == [5]
        assert client.get("/api/unknowns", headers=admin).status_code == 200
        # Adding photos to a person is the admin's.
        files = {"files": ("a.jpg", jpeg_bytes(), "image/jpeg")}
        for headers in (viewer, operator):
            r = client.post("/api/persons/abc/photos", files=files, headers=headers)
            assert r.status_code == 403 and "admin role" in r.json()["error"]
        r = client.post("/api/persons/abc/photos", files=files, headers=admin)
        assert r.status_code == 404


# -- registration_typing over the WebSocket ---------------------------------------------------
def test_registration_typing_needs_the_operator_role(build: Build) -> None:
    with (
        build(server=TOKENS) as (client, _),
        client.websocket_connect("/ws?token=view-secret") as ws,
    ):
        assert ws.receive_json()["type"] == "connected"
        ws.send_json({"type": "registration_typing", "data": {}})
        reply = ws.receive_json()
        assert reply["type"] == "error" and "operator role" in reply["data"]["message"]
        ws.send_json({"type": "registration_typing", "data": {"extra": 1}})
        assert ws.receive_json()["type"] == "error"


def test_registration_typing_reaches_the_registrar(build: Build) -> None:
    with build() as (client, _), client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "connected"
        for message in (
            {"type": "registration_typing"},
            {"type": "registration_typing", "data": {}},
        ):
            ws.send_json(message)
            reply = ws.receive_json()
            assert reply["type"] == "decision_result", reply
            assert reply["data"]["ok"] is False  # nobody is being asked
            assert reply["data"]["message"]


# -- recent unknown faces --------------------------------------------------------------------
def test_unknowns_list_thumbnail_and_dismiss(build: Build) -> None:
    thumb = jpeg_bytes()
    with build(server=UNLIMITED) as (client, runtime):
        unknowns = runtime.unknowns
        unknowns.clear()
        unknowns.seen(7, 10.0, 0.31, score=1.0, thumbnail=lambda: thumb)
        unknowns.seen(7, 12.5, 0.28, score=0.5, thumbnail=lambda: b"worse view")
        unknowns.offered(7)
        unknowns.seen(9, 13.0, None)
        unknowns.left(9)

        listed = client.get("/api/unknowns")
        assert listed.status_code == 200
        faces = listed.json()
        assert [f["track_id"] for f in faces] == [9, 7]  # most recently seen first
        nine, seven = faces
        assert seven.keys() == {
            "track_id",
            "first_seen",
            "last_seen",
            "seconds_seen",
            "present",
            "similarity",
            "offered",
            "has_thumbnail",
            "thumbnail",
        }
        assert seven["seconds_seen"] == 2.5 and seven["similarity"] == 0.28
        assert seven["present"] is True and seven["offered"] is True
        assert seven["has_thumbnail"] is True
        assert seven["thumbnail"] == "/api/unknowns/7/thumbnail"
        assert nine["present"] is False and nine["offered"] is False
        assert nine["similarity"] is None
        assert nine["has_thumbnail"] is False and nine["thumbnail"] is None

        r = client.get(seven["thumbnail"])
        assert r.status_code == 200 and r.content == thumb
        assert r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"] == "no-store"
        r = client.get("/api/unknowns/9/thumbnail")
        assert r.status_code == 404 and "no thumbnail" in r.json()["error"]
        r = client.get("/api/unknowns/12345/thumbnail")
        assert r.status_code == 404 and "no recent unknown face #12345" in r.json()["error"]

        r = client.delete("/api/unknowns/7")
        assert r.status_code == 200 and r.json() == {"track_id": 7, "dismissed": True}
        assert unknowns.dismissed(7)
        r = client.delete("/api/unknowns/7")
        assert r.status_code == 404 and "#7" in r.json()["error"]
        assert client.get("/api/unknowns/7/thumbnail").status_code == 404
        assert [f["track_id"] for f in client.get("/api/unknowns").json()] == [9]
        assert client.delete("/api/unknowns/8").status_code == 404


@pytest.mark.parametrize(
    "track", ["abc", "0", "-1", "+3", "1e3", "2147483649", "9" * 40, "%20 1", "\u0661\u0662", "1.0"]
)
def test_unknown_track_ids_are_checked(build: Build, track: str) -> None:
    with build(server=UNLIMITED) as (client, runtime):
        runtime.unknowns.seen(1, 0.0, None, score=1.0, thumbnail=jpeg_bytes)
        for r in (
            client.delete(f"/api/unknowns/{track}"),
            client.get(f"/api/unknowns/{track}/thumbnail"),
        ):
            assert r.status_code == 400, (track, r.status_code)
            assert "integer from 1 to 2147483648" in r.json()["error"]
        assert client.get("/api/unknowns/2147483648/thumbnail").status_code == 404
        assert client.get("/api/unknowns/1/thumbnail").status_code == 200


# -- persons: last seen, more photos -----------------------------------------------------------
def test_last_seen_is_the_latest_recognition(build: Build) -> None:
    with build() as (client, runtime):
        pid = person_in_store(runtime, "Ada")
        other = person_in_store(runtime, "Bob")
        detail = client.get(f"/api/persons/{pid}").json()
        assert detail["last_seen"] is None and detail["last_seen_gate"] is None
        assert detail["embeddings"] == 1 and detail["poses"] == ["front"]

        publish(client, runtime, recognized(pid))
        later = publish(client, runtime, recognized(pid))
        logged(runtime, later.seq)
        assert runtime.store is not None
        last = runtime.store.last_seen(pid)
        assert last is not None and last.gate == "gate"
        detail = client.get(f"/api/persons/{pid}").json()
        seen = datetime.fromisoformat(detail["last_seen"])
        assert seen.tzinfo is not None and abs(seen.timestamp() - last.at) < 1.0
        assert detail["last_seen_gate"] == "gate"  # where: this gate (gate.id)
        assert abs(seen.timestamp() - time.time()) < 60
        listed = {p["person_id"]: p for p in client.get("/api/persons").json()}
        assert listed[pid]["last_seen"] == detail["last_seen"]
        assert listed[pid]["last_seen_gate"] == "gate"
        assert listed[other]["last_seen"] is None  # only this person's recognitions count
        assert {"poses", "embeddings", "created_at", "updated_at"} <= listed[pid].keys()


def test_last_seen_counts_only_recognitions(build: Build) -> None:
    with build() as (client, runtime):
        pid = person_in_store(runtime)
        done = publish(client, runtime, PersonLeftArea(person_id=pid, name="Ada"))
        logged(runtime, done.seq)
        assert client.get(f"/api/persons/{pid}").json()["last_seen"] is None


def test_adding_photos_refuses_bad_input(build: Build) -> None:
    with build() as (client, runtime):
        pid = person_in_store(runtime)
        url = f"/api/persons/{pid}/photos"
        wall = ("wall.jpg", encode_image(blank_picture()), "image/jpeg")

        r = client.post("/api/persons/nosuchperson/photos", files={"files": wall})
        assert r.status_code == 404 and "nosuchperson" in r.json()["error"]
        r = client.post(url, files={"other": wall})
        assert r.status_code == 400 and "files" in r.json()["error"]
        r = client.post(url, files={"files": ("notes.jpg", b"not an image", "image/jpeg")})
        assert r.status_code == 415 and r.json()["accepted"] == ["JPEG", "PNG", "WebP", "BMP"]
        r = client.post(url, files={"files": wall})  # decoded, but nobody in it
        assert r.status_code == 409
        assert r.json()["person_id"] is None and r.json()["embeddings"] == 0
        assert "no face" in r.json()["refused"][0]["reason"]
        cut = ("cut.jpg", encode_image(blank_picture())[:400], "image/jpeg")
        r = client.post(url, files={"files": cut})
        assert r.status_code == 400 and "truncated" in r.json()["refused"][0]["reason"]
        r = client.post(url, content=b"{}", headers=JSON)
        assert r.status_code == 415
        boundary = "xyz"
        r = client.post(
            url,
            content=b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"'
            b"\r\n\r\n",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 400 and "truncated" in r.json()["error"]
        assert client.get(f"/api/persons/{pid}").json()["embeddings"] == 1


# -- the event history: paging and filters ----------------------------------------------------
def test_events_page_back_newest_first_and_filter(build: Build) -> None:
    with build() as (client, runtime):
        ada, bob = "adaadaadaada", "bobbobbobbob"
        seqs: dict[str, list[int]] = {ada: [], bob: []}
        last = None
        for i in range(6):
            who = ada if i % 2 == 0 else bob
            last = publish(client, runtime, recognized(who, name=f"n{i}"))
            seqs[who].append(last.seq)
            publish(client, runtime, SystemReady(message=f"between {i}"))
        assert last is not None
        marker = publish(client, runtime, SystemReady(message="the end"))
        logged(runtime, marker.seq)
        everyone = sorted(seqs[ada] + seqs[bob])

        def get(query: str) -> list[dict[str, Any]]:
            r = client.get(f"/api/events?{query}")
            assert r.status_code == 200, (query, r.text)
            rows: list[dict[str, Any]] = r.json()
            return rows

        def seq_of(rows: list[dict[str, Any]]) -> list[int]:
            return [row["data"]["seq"] for row in rows]

        # Newest first, a page at a time, down to nothing.
        newest = get(f"before={MAX_SEQ}&limit=3")
        assert seq_of(newest) == [marker.seq, marker.seq - 1, marker.seq - 2]
        page1 = get(f"type=person_recognized&before={MAX_SEQ}&limit=4")
        assert seq_of(page1) == everyone[::-1][:4]
        page2 = get(f"type=person_recognized&before={page1[-1]['data']['seq']}&limit=4")
        assert seq_of(page2) == everyone[::-1][4:]
        assert get(f"type=person_recognized&before={everyone[0]}") == []
        assert get("before=0") == []

        # since keeps its meaning: after it, oldest first.
        assert seq_of(get(f"since={everyone[0]}&type=person_recognized")) == everyone[1:]

        # Filters, alone and together.
        assert seq_of(get(f"person_id={ada}")) == seqs[ada]
        assert seq_of(get(f"person_id={bob}&before={MAX_SEQ}")) == seqs[bob][::-1]
        assert all(row["data"]["person_id"] == bob for row in get(f"person_id={bob}"))
        both = get("type=system_ready,person_recognized&limit=1000")
        assert {row["type"] for row in both} == {"system_ready", "person_recognized"}
        assert set(everyone) <= set(seq_of(both))
        same = get("type=system_ready&type=person_recognized&limit=1000")
        assert seq_of(same) == seq_of(both)
        ready = get("type=system_ready&limit=1000")
        assert "the end" in [row["data"]["message"] for row in ready]
        assert all(row["type"] == "system_ready" for row in ready)
        assert get(f"type=system_ready&person_id={ada}") == []
        assert get("type=registration_complete") == []
        assert get("person_id=' OR 1=1 --") == []
        assert get("person_id=%25") == []  # not a LIKE pattern


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("since=1&before=5", "not both"),
        ("before=-1", "before"),
        ("before=abc", "before"),
        (f"before={2**64}", "before"),
        ("type=bogus", "'bogus'"),
        ("type=person_recognized,bogus", "'bogus'"),
        ("type=Person_Recognized", "'Person_Recognized'"),
        ("type=tracks", "'tracks'"),  # not an event of the history
        ("type=", "names no event type"),
        ("type=,,", "names no event type"),
        ("type=" + "a" * 2000, "longer than"),
        ("type=" + "%1b%5b2J", "known types"),
        ("person_id=", "person_id"),
        ("person_id=" + "x" * 65, "person_id"),
        ("limit=0&before=10", "limit"),
    ],
)
def test_events_bad_queries_are_400(build: Build, query: str, needle: str) -> None:
    with build() as (client, _):
        r = client.get(f"/api/events?{query}")
        assert r.status_code == 400, (query, r.text)
        assert needle in r.json()["error"]
        assert "\x1b" not in r.text


# -- stats -------------------------------------------------------------------------------------
def test_stats_has_the_cameras_state_and_rates(build: Build) -> None:
    with build() as (client, runtime):
        wait_until(lambda: runtime.monitor.snapshot().frames_processed > 0, what="a frame")
        stats = client.get("/api/stats").json()
        source = stats["source"]
        assert source.keys() == {
            "name",
            "state",
            "capture_fps",
            "processed_fps",
            "frames_dropped",
        }
        assert source["name"] == runtime.source.name
        assert source["state"] == runtime.source_state == "connected"
        assert source["capture_fps"] > 0 and source["processed_fps"] > 0
        assert isinstance(source["frames_dropped"], int)
        assert {"monitor", "persons", "embeddings", "bus"} <= stats.keys()


# -- video: plain by default, server-drawn boxes on request ------------------------------------
@contextlib.contextmanager
def dead_camera(tmp_path: Path, **server: Any) -> Iterator[tuple[TestClient, Runtime]]:
    runtime = Runtime(
        configured(server=server), tmp_path / "data", open_source("7"), NoFaces, loop_source=True
    )
    with TestClient(create_app(runtime)) as client:
        yield client, runtime


def test_without_a_frame_the_plain_video_is_blank_and_the_overlay_says_why(
    tmp_path: Path,
) -> None:
    with dead_camera(tmp_path) as (client, runtime):
        wait_until(lambda: runtime.source_state == "unavailable", what="the camera given up")
        plain = client.get("/snapshot.jpg")
        assert plain.status_code == 200 and plain.headers["content-type"] == "image/jpeg"
        assert plain.content == jpeg(blank())
        image = decoded(plain.content)
        assert int(image.max()) - int(image.min()) <= 2  # no text drawn: one flat colour
        assert client.get("/snapshot.jpg?overlay=0").content == plain.content
        drawn = client.get("/snapshot.jpg?overlay=1")
        assert drawn.content == jpeg(placeholder("camera unavailable - retrying"))
        assert int(decoded(drawn.content).max()) > 150  # the text


@pytest.mark.parametrize("value", ["2", "true", "yes", "", "01", "1 ", "-1"])
def test_overlay_is_1_or_0(build: Build, value: str) -> None:
    with build() as (client, _):
        for path in ("/snapshot.jpg", "/video.mjpg"):
            r = client.get(f"{path}?overlay={value}")
            assert r.status_code == 400, (path, value)
            assert "overlay" in r.json()["error"]
        assert client.get("/snapshot.jpg?overlay=1&overlay=0").status_code == 400


def test_video_takes_the_token_and_overlay_in_the_query(build: Build) -> None:
    with build(server=TOKENS) as (client, runtime):
        wait_until(lambda: runtime.engine is not None and runtime.engine.latest_frame is not None)
        for query in (
            "token=view-secret",
            "overlay=1&token=view-secret",
            "token=op-secret&overlay=0",
        ):
            r = client.get(f"/snapshot.jpg?{query}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", query
            assert decoded(r.content).shape == (240, 320, 3)
        assert client.get("/snapshot.jpg?overlay=1").status_code == 401
        assert client.get("/snapshot.jpg?overlay=1&token=wrong").status_code == 401
        with client.stream("GET", "/video.mjpg?overlay=1&token=view-secret") as r:
            assert r.status_code == 200
            assert b"--frame" in next(r.iter_bytes())


def test_plain_video_is_the_cameras_picture(build: Build, frames: Path) -> None:
    with build() as (client, runtime):
        wait_until(lambda: runtime.engine is not None and runtime.engine.latest_frame is not None)
        image = decoded(client.get("/snapshot.jpg").content)
        source = cv2.imread(str(frames / "blank.jpg"))
        assert np.abs(image.astype(int) - source.astype(int)).mean() < 2


def test_plain_and_overlay_differ_where_a_face_is_tracked(serve: Serve, face_dir: Path) -> None:
    with serve(ImageFolderSource(face_dir, fps=10)) as (client, runtime):
        engine = runtime.engine
        assert engine is not None
        view = wait_until(
            lambda: (
                engine.latest_view if engine.latest_view and engine.latest_view.tracks else None
            ),
            timeout=15,
            what="a tracked face",
        )
        plain = decoded(client.get("/snapshot.jpg").content).astype(int)
        drawn = decoded(client.get("/snapshot.jpg?overlay=1").content).astype(int)
        source = still(next(face_dir.iterdir())).astype(int)
        assert plain.shape == drawn.shape == source.shape
        assert np.abs(plain - source).mean() < 3  # the picture as the camera took it
        changed = np.abs(drawn - plain).sum(axis=2) > 60
        x1, y1, x2, y2 = (round(v) for v in view.tracks[0].bbox)
        near = np.zeros_like(changed)  # the box, its label above it, a margin for jitter
        near[max(0, y1 - 40) : y2 + 10, max(0, x1 - 10) : x2 + 200] = True
        assert (changed & near).sum() > 300, "no box drawn over the face"
        assert (changed & ~near).sum() < 50  # nothing drawn anywhere else
        assert view.tracks[0].state in ("pending", "known", "unknown", "registering")


# -- with real faces: photos added to a person, an offer through the registrar -----------------
@needs_multipart
def test_photos_are_added_to_a_known_person(serve: Serve, deepface: Path) -> None:
    with serve() as (client, _):
        created = enrol(client, "Angelina", photo(deepface, "img1.jpg"))
        assert created.status_code == 201, created.text
        pid = created.json()["person_id"]
        url = f"/api/persons/{pid}/photos"

        r = client.post(url, files=[("files", photo(deepface, "img2.jpg"))])
        assert r.status_code == 201, r.text
        added = r.json()
        assert added == {
            "person_id": pid,
            "name": "Angelina",
            "embeddings": 1,
            "warnings": [],
            "refused": [],
        }
        detail = client.get(f"/api/persons/{pid}").json()
        assert detail["embeddings"] == 2 and detail["poses"]

        wall = ("wall.jpg", encode_image(blank_picture()), "image/jpeg")
        r = client.post(url, files=[("files", wall)])
        assert r.status_code == 409 and r.json()["person_id"] is None
        assert client.get(f"/api/persons/{pid}").json()["embeddings"] == 2


@needs_multipart
def test_photos_of_someone_else_are_refused_unless_forced(serve: Serve, deepface: Path) -> None:
    with serve() as (client, _):
        first = enrol(client, "Angelina", photo(deepface, "img1.jpg")).json()["person_id"]
        other = client.post(
            "/api/persons",
            data={"name": "Other", "force": "1"},
            files=[("files", photo(deepface, "img2.jpg"))],
        ).json()["person_id"]
        url = f"/api/persons/{other}/photos"
        r = client.post(url, files=[("files", photo(deepface, "img1.jpg"))])
        assert r.status_code == 409
        assert "already enrolled" in r.json()["refused"][0]["reason"]
        assert first in r.json()["refused"][0]["reason"]
        r = client.post(url, data={"force": "true"}, files=[("files", photo(deepface, "img1.jpg"))])
        assert r.status_code == 201 and r.json()["warnings"]


def test_an_operator_offers_a_declined_face_again(serve: Serve, deepface: Path) -> None:
    """Through the real engine, registrar and recent-unknowns list."""
    source = GatedSource(still(deepface / "img1.jpg"))
    with (
        serve(source, engine={"stable_seconds": 0.3}, server=UNLIMITED) as (client, runtime),
        connect(client) as ws,
    ):
        assert recv(ws)["type"] == "connected"
        source.gate.set()
        offer = wait_for(ws, "unknown_person_detected", timeout=15)["data"]
        track = offer["track_id"]
        listed = wait_until(
            lambda: [u for u in client.get("/api/unknowns").json() if u["track_id"] == track],
            what="the face in /api/unknowns",
        )
        assert listed[0]["present"] is True

        ws.send_json({"type": "registration_decision", "data": {"register": False}})
        got = collect(ws, {"decision_result", "registration_cancelled"})
        assert got["decision_result"]["data"]["ok"] is True

        r = client.post("/api/registration", json={"track_id": track + 1000, "name": "Ada"})
        assert r.status_code == 404 and r.json()["message"].startswith("not in view")
        r = client.post("/api/registration", json={"track_id": track, "name": "Ada"})
        assert r.status_code == 200, r.text
        assert r.json()["ok"] is True and r.json()["message"]
        assert msgspec.json.decode(r.content).keys() == {"ok", "message"}
        r = client.post("/api/registration", json={"track_id": track, "name": "Ada"})
        assert r.status_code == 409 and r.json()["ok"] is False and r.json()["error"]
        client.post("/reset_system", json={})
        assert runtime.registrar is not None
