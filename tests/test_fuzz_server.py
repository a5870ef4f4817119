"""Fuzz of `facegate serve`'s inputs (Hypothesis): the WebSocket decoder, `/ws` end to end,
every JSON endpoint, query and path parameters, and the multipart parser.

Properties: no 500 and no unhandled exception (TestClient re-raises those of HTTP handlers;
`CrashRecorder` catches those of the WebSocket endpoint), no hang (every wait has a timeout),
JSON error bodies for the handlers' 4xx, the server still answering afterwards, and the
process's memory bounded at the end of the module.

One app for the whole module, without the model pack (an analyzer that finds no face), so
10,000 examples are 10,000 requests, not 10,000 app starts. FACEGATE_FUZZ_EXAMPLES sets the
examples per target (100 by default).
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote

import httpx2 as httpx
import msgspec
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from facegate.events import SystemReady, json_schema
from facegate.identity.store import NewEmbedding
from facegate.server.app import MAX_WS_MESSAGE
from facegate.server.protocol import Auth, Ping, RegistrationDecision, ResetSystem, decode_client
from facegate.server.runtime import Runtime
from fuzzing import (
    GREY_JPEG,
    CrashRecorder,
    WsSession,
    client_bytes,
    client_messages,
    decision_data,
    deep_json,
    dumped,
    fuzz_settings,
    header_text,
    json_values,
    junk_images,
    multipart_requests,
    mutated,
    names,
    nested,
    no_leaks,
    oversize_bytes,
    oversize_text,
    plain,
    recv,
    rss_bytes,
    serve_without_models,
    utf8,
    weighted,
)

MIB = 2**20
MEMORY_GROWTH_LIMIT = 256 * MIB  # 10,000 examples a target: ~110 MiB, mostly Hypothesis's
LEAK_LIMIT = 8 * MIB
HISTORY_CAP = 1000  # /api/events never returns more rows than this
PING = '{"type":"ping","data":{}}'
REPLIES = {"error", "pong", "decision_result"}
EVENTS = {v["properties"]["type"]["const"] for v in json_schema()["oneOf"]}
# 1000 nested arrays in a field no message has: a 2 KiB message deeper than Python's default
# recursion limit, wherever the decoder runs.
DEEP_UNKNOWN_FIELD = nested('{"type":"ping","x":{X}}', "[", "]", 1000)


@dataclass
class Served:
    client: TestClient
    runtime: Runtime
    recorder: CrashRecorder
    person_id: str  # one enrolled person, for PATCH; never deleted
    rss_start: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_without_models(tmp_path_factory.mktemp("fuzz-server")) as (client, rt, recorder):
        assert client.portal is not None
        gallery = rt.gallery
        assert gallery is not None and rt.store is not None
        vector = np.zeros(512, np.float32)
        vector[0] = 1.0
        person = client.portal.call(
            lambda: gallery.create_person("Fuzz Target", [NewEmbedding(vector)], actor="fuzz")
        )
        # More history than /api/events may return at once, so its cap is tested.
        for i in range(HISTORY_CAP + 10):
            client.portal.call(rt.bus.publish, SystemReady(message=f"fuzz history {i}"))
        store = rt.store
        deadline = time.monotonic() + 30
        while len(client.portal.call(store.events, 0, 2 * HISTORY_CAP)) <= HISTORY_CAP:
            assert time.monotonic() < deadline, "the history was not written"
            time.sleep(0.01)
        # Warm up every path once before the memory baseline.
        client.post("/api/identify", files={"file": ("a.jpg", GREY_JPEG, "image/jpeg")})
        client.post("/api/persons", data={"name": "x"}, files={"files": ("a.jpg", b"x")})
        client.post("/registration_decision", json={"register": False})
        with client.websocket_connect("/ws") as ws:
            recv(ws)
        gc.collect()
        yield Served(client, rt, recorder, person.id, rss_bytes())


def alive(client: TestClient) -> None:
    """The server still answers."""
    r = client.get("/system_status")
    assert r.status_code == 200, r.text
    assert "registration_in_progress" in r.json()


def send(
    served: Served, method: str, url: str, *, json_errors: bool = True, **kwargs: Any
) -> httpx.Response:
    """The request, checked: no 5xx, a 4xx from our handlers is a JSON object, nothing left
    unclosed, and the server still answers afterwards."""
    with no_leaks() as leaks:
        r = served.client.request(method, url, **kwargs)
    where = f"{method} {r.request.url}"
    assert r.status_code < 500, f"{where}: {r.status_code} {r.text[:300]}"
    if json_errors and r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), (
            f"{where}: {r.status_code} not JSON: {r.text[:300]!r}"
        )
        body = r.json()
        assert isinstance(body, dict) and body, body
    assert not leaks, f"{where} ({r.status_code}) left {leaks}"
    alive(served.client)
    return r


# -- 1. the WebSocket decoder ------------------------------------------------------------------
frames_text = client_messages() | oversize_text()
frames_bytes = client_bytes() | oversize_bytes()


@fuzz_settings()
@given(raw=frames_text | frames_bytes)
def test_decoder_returns_a_message_or_a_decode_error(raw: str | bytes) -> None:
    try:
        message = decode_client(plain(raw))
    except msgspec.DecodeError:  # msgspec.ValidationError is one too
        return
    assert isinstance(message, RegistrationDecision | ResetSystem | Ping | Auth)


@pytest.mark.parametrize("raw", [DEEP_UNKNOWN_FIELD, DEEP_UNKNOWN_FIELD.encode()], ids=repr)
def test_decoder_deep_nesting_in_an_unknown_field_is_a_decode_error(raw: str | bytes) -> None:
    """Found by the fuzz: msgspec skips an unknown field's value recursively, and raised
    RecursionError (not a DecodeError) past ~1000 levels."""
    with pytest.raises(msgspec.DecodeError):
        decode_client(plain(raw))


# -- 2. /ws end to end -------------------------------------------------------------------------
Frame = tuple[Literal["text", "bytes"], str | bytes]
frames = frames_text.map(lambda t: ("text", t)) | frames_bytes.map(lambda b: ("bytes", b))


def size(frame: Frame) -> int:
    payload = frame[1]
    return len(payload.encode()) if isinstance(payload, str) else len(payload)


def is_ping(frame: Frame) -> bool:
    try:
        return isinstance(decode_client(plain(frame[1])), Ping)
    except Exception:
        return False


def exchange(ws: WsSession, sent: list[Frame]) -> int | None:
    """Send the frames then a ping; read every reply up to the last pong. None when the
    socket stayed open, else the close code."""
    assert recv(ws)["type"] == "connected"
    pongs = 1 + sum(map(is_ping, sent))
    try:
        for kind, payload in sent:
            if kind == "text":
                assert isinstance(payload, str)
                ws.send_text(str(payload))
            else:
                assert isinstance(payload, bytes)
                ws.send_bytes(bytes(payload))
        ws.send_text(PING)
        while pongs:
            try:
                message = recv(ws, timeout=10)
            except TimeoutError:
                raise AssertionError("the server went silent (hang?)") from None
            kind = message["type"]
            assert kind in REPLIES | EVENTS, message
            if kind == "error":
                assert isinstance(message["data"]["message"], str) and message["data"]["message"]
            pongs -= kind == "pong"
    except WebSocketDisconnect as exc:
        return exc.code
    return None


def ping_pong(client: TestClient) -> None:
    """A fresh connection gets `connected` and a pong."""
    with client.websocket_connect("/ws") as ws:
        assert exchange(ws, []) is None


@fuzz_settings()
@given(sent=st.lists(frames, min_size=1, max_size=3))
def test_ws_any_frame_gets_replies_or_a_clean_close(served: Served, sent: list[Frame]) -> None:
    client, recorder = served.client, served.recorder
    recorder.crashes.clear()
    with client.websocket_connect("/ws") as ws:
        code = exchange(ws, sent)
    assert not recorder.crashes, recorder.crashes[0]
    too_big = any(size(f) > MAX_WS_MESSAGE for f in sent)
    if code is None:
        assert not too_big, "a frame over 64 KiB was accepted"
    else:
        assert code == 1009 and too_big, f"closed with {code}"
        ping_pong(client)


def test_ws_deep_nesting_gets_an_error_reply(served: Served) -> None:
    """Found by the fuzz: the RecursionError above escaped the WebSocket endpoint."""
    served.recorder.crashes.clear()
    with served.client.websocket_connect("/ws") as ws:
        assert exchange(ws, [("text", DEEP_UNKNOWN_FIELD)]) is None
    assert not served.recorder.crashes, served.recorder.crashes[0]


# -- 3. JSON endpoints -------------------------------------------------------------------------
JSON = "application/json"
content_type_values = weighted(
    (6, st.just(JSON)),
    (
        2,
        st.sampled_from(
            [
                "application/json; charset=utf-8",
                "Application/JSON",
                " application/json ;charset=latin-1",
                "application/vnd.api+json",
                "application/json, text/plain",
            ]
        ),
    ),
    (
        1,
        st.sampled_from(
            [
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "",
            ]
        )
        | header_text(60),
    ),
)
content_types = weighted((9, content_type_values), (1, st.none()))
rename_bodies = st.fixed_dictionaries({}, optional={"name": names(), "extra": json_values})
json_bodies = (
    utf8(dumped(json_values))
    | utf8(dumped(decision_data()))
    | utf8(dumped(rename_bodies))
    | utf8(deep_json(budget=256 * 1024))
    | mutated(utf8(dumped(decision_data() | rename_bodies)))
    | st.binary(max_size=300)
)


@fuzz_settings()
@given(
    endpoint=st.sampled_from(["decision", "reset", "rename", "rename-unknown"]),
    body=json_bodies,
    content_type=content_types,
)
def test_json_endpoints(
    served: Served, endpoint: str, body: bytes, content_type: str | None
) -> None:
    method, url = {
        "decision": ("POST", "/registration_decision"),
        "reset": ("POST", "/reset_system"),
        "rename": ("PATCH", f"/api/persons/{served.person_id}"),
        "rename-unknown": ("PATCH", "/api/persons/nobody"),
    }[endpoint]
    headers = {} if content_type is None else {b"content-type": content_type.encode()}
    send(served, method, url, content=plain(body), headers=headers)


query_values = (
    st.integers(0, 2000).map(str)
    | st.integers().map(str)
    | st.integers(min_value=2**63 - 4, max_value=2**80).map(str)
    | st.integers(min_value=-(2**80), max_value=-(2**63) + 4).map(str)
    | st.floats().map(repr)
    | st.text(max_size=30)
    | st.sampled_from(["", "0x10", "1_000", " 7 ", "\u0663", "1e3", "+5", "-0", "-1", "9" * 4301])
)


@fuzz_settings()
@given(
    params=st.lists(
        st.tuples(
            st.sampled_from(["since", "limit", "since", "limit", "x", "gate", "until", "before"]),
            query_values | st.sampled_from(["all", "gate", "porch", "ALL", "a/b"]),
        ),
        max_size=4,
    )
)
def test_events_query_parameters(served: Served, params: list[tuple[str, str]]) -> None:
    r = send(served, "GET", "/api/events", params=params)
    if r.status_code == 200:
        rows = r.json()
        assert isinstance(rows, list)
        assert len(rows) <= HISTORY_CAP, f"{len(rows)} rows for {params}"


person_ids = (
    st.text(max_size=60)
    | st.sampled_from(
        [".", "..", "../..", "%2e%2e", "a/b", "..%2F..", "\x00", "\u00fc", " ", "%", "%zz", "?x"]
    )
    | st.sampled_from(["a" * 5000, "\U0001f600" * 100, "nobody", "thumbnail"])
    | st.lists(st.sampled_from(["..", ".", "/", "%2F", "a", "\\"]), max_size=8).map("".join)
)
PERSON_ROUTE = re.compile(r"/api/persons/[^/]+(/thumbnail)?")


@fuzz_settings()
@given(
    pid=person_ids,
    method=st.sampled_from(["GET", "PATCH", "DELETE", "THUMBNAIL"]),
    safe=st.sampled_from(["", "/", "/.", "%", ".~"]),
)
def test_person_path_parameters(served: Served, pid: str, method: str, safe: str) -> None:
    assume(pid != served.person_id)
    url = "/api/persons/" + quote(pid, safe=safe)
    kwargs: dict[str, Any] = {}
    if method == "THUMBNAIL":
        method, url = "GET", url + "/thumbnail"
    elif method == "PATCH":
        kwargs = {"json": {"name": "Renamed"}}
    # Paths outside the route get Starlette's own (plain text) 404/405/redirect. (httpx
    # normalises dot segments, and TestClient decodes the path again: %252F reaches the app
    # as "/".)
    routed = PERSON_ROUTE.fullmatch(unquote(httpx.URL("http://testserver" + url).path)) is not None
    r = send(served, method, url, json_errors=routed, **kwargs)
    if routed and method in ("GET", "PATCH"):
        assert r.status_code in (200, 404), r.text


ROUTES = [
    "/",
    "/system_status",
    "/get_user_response",
    "/reset_system",
    "/registration_decision",
    "/api/persons",
    "/api/identify",
    "/api/events",
    "/api/gates",
    "/api/stats",
    "/api/schema",
    "/metrics",
    "/snapshot.jpg",
    "/index.html",
    "/app.js",
    "/%2e%2e/pyproject.toml",
    "/..%2Fpyproject.toml",
    "/static/../pyproject.toml",
    "//etc/passwd",
]


headers_of = st.fixed_dictionaries(
    {},
    optional={
        b"accept": st.sampled_from(["text/html", "application/json", "*/*"]) | header_text(),
        b"content-type": content_type_values,
    },
).map(lambda h: {k: v.encode() for k, v in h.items()})


@fuzz_settings()
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
    url=st.tuples(st.sampled_from(ROUTES), st.text(max_size=40)).map(
        lambda rq: rq[0] + "?" + quote(rq[1], safe="=&")
    ),
    body=st.binary(max_size=200) | utf8(dumped(json_values)),
    headers=headers_of,
)
def test_every_route_with_junk(
    served: Served, method: str, url: str, body: bytes, headers: dict[bytes, bytes]
) -> None:
    r = send(served, method, url, json_errors=False, content=body, headers=headers)
    assert b"[build-system]" not in r.content, f"{url} served a file outside static/"


# -- 4. the multipart parser -------------------------------------------------------------------
# Raw bodies: status < 500, errors as JSON (the app turns Starlette's own refusals, such as
# its 400 "Invalid multipart data.", into JSON too).
@fuzz_settings()
@given(request=multipart_requests(["name", "files", "force"], ["name", "files"]))
def test_persons_multipart(served: Served, request: tuple[str, bytes]) -> None:
    content_type, body = request
    headers = {b"content-type": content_type.encode()}
    send(served, "POST", "/api/persons", content=body, headers=headers)


@fuzz_settings()
@given(request=multipart_requests(["file"], ["file"]))
def test_identify_multipart(served: Served, request: tuple[str, bytes]) -> None:
    content_type, body = request
    headers = {b"content-type": content_type.encode()}
    send(served, "POST", "/api/identify", content=body, headers=headers)


TRUNCATED_FILE_PART = (
    b'--facegate\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\nabc'
)


@pytest.mark.parametrize("path", ["/api/persons", "/api/identify"])
def test_a_truncated_upload_leaves_no_file_open(served: Served, path: str) -> None:
    """Found by the fuzz: a file part without its closing boundary is parsed without error,
    left out of the form, and never closed (Starlette 1.10's MultiPartParser)."""
    headers = {"content-type": "multipart/form-data; boundary=facegate"}
    send(served, "POST", path, content=TRUNCATED_FILE_PART, headers=headers)


filenames = weighted(
    (3, st.sampled_from(["a.jpg", "photo.png", "\u00e9t\u00e9.webp"])),
    (1, st.none() | header_text(60)),
)
photos = st.tuples(filenames, junk_images(), st.sampled_from(["image/jpeg", "image/png", "x/y"]))


@fuzz_settings()
@given(
    name=st.none() | st.text(max_size=250),
    force=st.none() | st.sampled_from(["1", "true", "yes", "no", ""]) | st.text(max_size=10),
    files=st.lists(photos, max_size=5),
)
def test_persons_valid_multipart_junk_photos(
    served: Served, name: str | None, force: str | None, files: list[Any]
) -> None:
    data = {k: v for k, v in (("name", name), ("force", force)) if v is not None}
    uploads = [("files", (fn or "", content, ctype)) for fn, content, ctype in files]
    r = send(served, "POST", "/api/persons", data=data, files=uploads)
    assert r.status_code != 201, "NoFaces never finds a face: nobody can be enrolled"


@fuzz_settings()
@given(photo=photos)
def test_identify_valid_multipart_junk_photo(served: Served, photo: Any) -> None:
    fn, content, ctype = photo
    r = send(served, "POST", "/api/identify", files={"file": (fn or "", content, ctype)})
    if r.status_code == 200:
        assert r.json() == {"faces": []}


# -- memory (last: after every target above) ---------------------------------------------------
def burst(served: Served, rounds: int = 30) -> None:
    """The same mix of requests each time, big uploads included, so a leak per request
    shows as RSS growth: 30 rounds leaking one upload each would be 15 MiB."""
    client = served.client
    big = b"\xff\xd8" + bytes(512 * 1024)  # not a JPEG: refused after being read whole
    multipart = {"content-type": "multipart/form-data; boundary=facegate"}
    for i in range(rounds):
        client.post("/api/persons", data={"name": "Ann"}, files={"files": ("a.jpg", big)})
        client.post("/api/identify", files={"file": ("a.jpg", GREY_JPEG, "image/jpeg")})
        client.post("/api/identify", content=b"--facegate\r\n" + big, headers=multipart)
        client.patch(f"/api/persons/{served.person_id}", json={"name": f"Fuzz {i % 2}"})
        client.post("/registration_decision", json={"register": False, "name": "x" * 300})
        client.get("/api/events", params={"since": "0", "limit": "1000"})
        with client.websocket_connect("/ws") as ws:
            exchange(ws, [("text", '{"type":"nope"}'), ("bytes", b"\xff" * 1000)])


def test_memory_stayed_bounded(served: Served) -> None:
    alive(served.client)
    ping_pong(served.client)
    gc.collect()
    growth = rss_bytes() - served.rss_start
    assert growth < MEMORY_GROWTH_LIMIT, f"RSS grew by {growth / MIB:.0f} MiB over the fuzz"
    # The total above includes Hypothesis's own bookkeeping; this is the server's leak rate.
    burst(served)
    gc.collect()
    before = rss_bytes()
    burst(served)
    burst(served)
    gc.collect()
    growth = rss_bytes() - before
    assert growth < LEAK_LIMIT, f"RSS grew by {growth / MIB:.1f} MiB over 60 identical rounds"
