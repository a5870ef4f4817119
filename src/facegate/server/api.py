"""HTTP handlers: the original design's endpoints and the panel's API.

Every error is JSON `{"error": ...}`: 400 bad input, 404 unknown ids, 409 refused
enrolments or registration offers, 413 uploads over the limit (BodyLimit), 415 image formats
other than JPEG, PNG, WebP and BMP, 503 while the upload worker is full. Access, origins and
content types are checked before any handler runs (security.Guard). Uploaded images are
decoded and analysed on the upload worker's thread, never on the event loop.

The video (`/video.mjpg`, `/snapshot.jpg`) is the camera's plain picture: the panel draws the
boxes itself from the `tracks` WebSocket message. `?overlay=1` draws them on the server, from
the faces of that very frame (`Engine.latest_view`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
import numpy as np
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from facegate import __version__
from facegate.enrolment import EnrolResult, PhotoEnroller, Refusal
from facegate.events import AnyEvent, Tracks, json_schema
from facegate.face import Face, FaceAnalyzer, ImageArray
from facegate.gallery import Gallery, Identification
from facegate.images import (
    ACCEPTED_FORMATS,
    ImageError,
    UnsupportedImageError,
    accepted_format,
    decode_image,
)
from facegate.names import InvalidNameError, clean_name
from facegate.quality import QualityValidator
from facegate.server.annotate import annotate, blank, jpeg, placeholder
from facegate.server.uploads import UploadsBusyError, UploadWorker
from facegate.sources import Frame
from facegate.store import ErasurePendingError, Person, Store, StoreError, UnknownPersonError
from facegate.unknowns import UnknownFace

if TYPE_CHECKING:
    from facegate.server.hub import Hub
    from facegate.server.runtime import Runtime

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
MJPEG_FPS = 12.0


MAX_SEQ = 2**63 - 1
MAX_EVENTS = 1000
MAX_TRACK_ID = 2**31
MAX_PERSON_ID = 64
MAX_TYPE_PARAM = 1024
EVENT_TYPES = frozenset(str(kind.__struct_config__.tag) for kind in AnyEvent.__args__)


def error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def bounded_int(request: Request, key: str, default: int, low: int, high: int) -> int:
    """A query parameter as an integer within [low, high]; ValueError naming the bounds."""
    raw = request.query_params.get(key)
    if raw is None:
        return default
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 20):
        raise ValueError(f"`{key}` must be an integer from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"`{key}` must be an integer from {low} to {high}")
    return value


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def system_status(runtime: Runtime, hub: Hub) -> dict[str, Any]:
    reg = runtime.registrar
    base: dict[str, Any] = (
        msgspec.to_builtins(reg.status())
        if reg is not None
        else {
            "current_event": "starting",
            "registration_in_progress": False,
            "waiting_for_user_response": False,
            "current_registration_angle": None,
            "registration_progress": 0.0,
            "person_in_detection_area": False,
            "person_data": None,
        }
    )
    base["websocket_connections"] = len(hub)
    base["source_state"] = runtime.source_state
    return base


def root(runtime: Runtime, hub: Hub, static: Path) -> Handler:
    async def handler(request: Request) -> Response:
        index = static / "index.html"
        if "text/html" in request.headers.get("accept", "") and index.is_file():
            return FileResponse(index)
        scheme = "wss" if request.url.scheme == "https" else "ws"
        return JSONResponse(
            {
                "server": "facegate",
                "version": __version__,
                "websocket_url": f"{scheme}://{request.url.netloc}/ws",
                "active_connections": len(hub),
                "system_status": system_status(runtime, hub),
            }
        )

    return handler


def get_user_response(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        reg = runtime.registrar
        status = reg.status() if reg else None
        return JSONResponse(
            {
                "waiting_for_user_response": bool(status and status.waiting_for_user_response),
                "last_decision": reg.last_decision if reg else None,
            }
        )

    return handler


class EmptyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


def reset_system(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        if await request.body():  # optional; `{}` when given
            body = await _json_body(request, EmptyBody)
            if isinstance(body, JSONResponse):
                return body
        if runtime.registrar is not None:
            runtime.registrar.reset()
        return JSONResponse({"ok": True, "message": "System reset"})

    return handler


class DecisionBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    register: bool
    name: str | None = None


async def _json_body(request: Request, kind: type[T]) -> T | JSONResponse:
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=kind)
    except RecursionError:
        return error("invalid JSON: nested too deeply", 400)
    except msgspec.ValidationError as exc:
        return error(f"invalid body: {exc}", 400)
    except msgspec.DecodeError as exc:
        return error(f"invalid JSON: {exc}", 400)


def registration_decision(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        body = await _json_body(request, DecisionBody)
        if isinstance(body, JSONResponse):
            return body
        if runtime.registrar is None:
            return error("not ready", 503)
        try:
            reply = runtime.registrar.decide(body.register, body.name, _client(request))
        except InvalidNameError as exc:
            return error(str(exc), 400)
        return JSONResponse(
            {"ok": reply.ok, "message": reply.message}, status_code=200 if reply.ok else 409
        )

    return handler


def _client(request: Request) -> str:
    return f"http:{request.client.host if request.client else '?'}"


class OfferBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    track_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_TRACK_ID)]
    name: str | None = None


def registration(runtime: Runtime) -> Handler:
    """`POST /api/registration {"track_id": 7, "name": "Ada" | null}`: offer a face in view
    for registration (again: after "Not now", a timeout or a failed capture)."""

    async def handler(request: Request) -> Response:
        body = await _json_body(request, OfferBody)
        if isinstance(body, JSONResponse):
            return body
        if body.name is not None and body.name.strip():
            try:  # refused before the registrar is asked, whatever the face's state
                clean_name(body.name)
            except InvalidNameError as exc:
                return error(f"`name`: {exc}", 400)
        registrar = runtime.registrar
        if registrar is None:
            return error("not ready", 503)
        try:
            reply = registrar.offer(body.track_id, body.name, client=_client(request))
        except InvalidNameError as exc:
            return error(f"`name`: {exc}", 400)
        if reply.ok:
            return JSONResponse({"ok": True, "message": reply.message})
        status = 404 if reply.message.startswith("not in view") else 409
        return JSONResponse(
            {"ok": False, "message": reply.message, "error": reply.message}, status_code=status
        )

    return handler


# -- recent unknown faces --------------------------------------------------------------------
def _track_id(request: Request) -> int | JSONResponse:
    raw = request.path_params["track_id"]
    if not (
        isinstance(raw, str)
        and raw.isascii()
        and raw.isdigit()
        and len(raw) <= 10
        and 1 <= int(raw) <= MAX_TRACK_ID
    ):
        return error(f"a track id is an integer from 1 to {MAX_TRACK_ID}", 400)
    return int(raw)


def _unknown_json(face: UnknownFace) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(face)
    data["thumbnail"] = f"/api/unknowns/{face.track_id}/thumbnail" if face.has_thumbnail else None
    return data


def unknowns(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        return JSONResponse([_unknown_json(u) for u in runtime.unknowns.list()])

    return handler


def unknown(runtime: Runtime) -> Handler:
    """`DELETE /api/unknowns/{track_id}`: dismiss the face (off the list, no more prompts)."""

    async def handler(request: Request) -> Response:
        track_id = _track_id(request)
        if isinstance(track_id, JSONResponse):
            return track_id
        if not runtime.unknowns.dismiss(track_id):
            return error(f"no recent unknown face #{track_id}", 404)
        return JSONResponse({"track_id": track_id, "dismissed": True})

    return handler


def unknown_thumbnail(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        track_id = _track_id(request)
        if isinstance(track_id, JSONResponse):
            return track_id
        data = runtime.unknowns.thumbnail(track_id)
        if data is None:
            known = runtime.unknowns.get(track_id) is not None
            what = "no thumbnail for this face" if known else "no recent unknown face"
            return error(f"{what} #{track_id}", 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    return handler


# -- persons ---------------------------------------------------------------------------------
def _person_dict(store: Store, p: Person) -> dict[str, Any]:
    seen = store.last_seen(p.id)
    return {
        "person_id": p.id,
        "name": p.name,
        "note": p.note,
        "embeddings": p.embeddings,
        "poses": p.poses,
        "created_at": _iso(p.created_at),
        "updated_at": _iso(p.updated_at),
        "last_seen": None if seen is None else _iso(seen),
    }


def _person_json(runtime: Runtime, person_id: str) -> dict[str, Any]:
    assert runtime.store is not None
    return _person_dict(runtime.store, runtime.store.person(person_id))


async def _incomplete_multipart(request: Request) -> JSONResponse | None:
    """400 for a multipart body without its closing boundary. The parser would drop the cut
    part silently (and leave its temporary file open); the body is bounded by the upload
    limit, so reading it whole first is cheap, and the form is then parsed from it."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        return error("multipart body without a boundary parameter", 400)
    body, closing = await request.body(), b"--" + boundary + b"--"
    if not (body.startswith(closing) or b"\r\n" + closing in body):
        return error("truncated multipart body (no closing boundary)", 400)
    return None


def _uploads(form: Any, field: str) -> list[tuple[str, UploadFile | str]]:
    return [
        ((item.filename or "upload") if isinstance(item, UploadFile) else "field", item)
        for item in form.getlist(field)
    ]


async def _read(items: list[tuple[str, UploadFile | str]]) -> list[tuple[str, bytes | None]]:
    """The bytes of each uploaded file (None for a part that is not a file)."""
    return [
        (label, await item.read() if isinstance(item, UploadFile) else None)
        for label, item in items
    ]


def _unsupported(files: list[tuple[str, bytes | None]]) -> JSONResponse | None:
    """415 when any file is of a format that is not accepted (nothing is analysed then)."""
    for label, data in files:
        if data:
            try:
                accepted_format(data, label)
            except UnsupportedImageError as exc:
                return JSONResponse(
                    {"error": str(exc), "accepted": list(ACCEPTED_FORMATS)}, status_code=415
                )
    return None


def persons(runtime: Runtime, uploads: UploadWorker) -> Handler:
    async def handler(request: Request) -> Response:
        store, gallery = runtime.store, runtime.gallery
        assert store is not None and gallery is not None
        if request.method == "GET":
            return JSONResponse([_person_dict(store, p) for p in store.persons()])
        limit = int(runtime.settings.server.max_upload_mb * 2**20)
        if (broken := await _incomplete_multipart(request)) is not None:
            return broken
        async with request.form(max_files=20, max_fields=20, max_part_size=limit) as form:
            raw_name = form.get("name") or ""
            if not isinstance(raw_name, str):
                return error("field `name` must be text, not a file", 400)
            try:
                name = clean_name(raw_name)
            except InvalidNameError as exc:
                return error(f"field `name`: {exc}", 400)
            files = await _read(_uploads(form, "files"))
            force = str(form.get("force") or "").lower() in ("1", "true", "yes")
        if not files:
            return error("at least one photo in field `files` is required", 400)
        if (unsupported := _unsupported(files)) is not None:
            return unsupported
        try:
            result, decoded = await uploads.run(
                _enrol, _enroller(runtime, gallery), files, name, force
            )
        except UploadsBusyError as exc:
            return error(str(exc), 503, {"Retry-After": "1"})
        return _enrolled(result, decoded)

    return handler


def person_photos(runtime: Runtime, uploads: UploadWorker) -> Handler:
    """`POST /api/persons/{person_id}/photos` (multipart `files`, optional `force`): more
    photos of a known person, refused one by one as `POST /api/persons` refuses them."""

    async def handler(request: Request) -> Response:
        store, gallery = runtime.store, runtime.gallery
        assert store is not None and gallery is not None
        pid = request.path_params["person_id"]
        try:
            store.person(pid)
        except UnknownPersonError as exc:
            return error(str(exc), 404)
        limit = int(runtime.settings.server.max_upload_mb * 2**20)
        if (broken := await _incomplete_multipart(request)) is not None:
            return broken
        async with request.form(max_files=20, max_fields=20, max_part_size=limit) as form:
            files = await _read(_uploads(form, "files"))
            force = str(form.get("force") or "").lower() in ("1", "true", "yes")
        if not files:
            return error("at least one photo in field `files` is required", 400)
        if (unsupported := _unsupported(files)) is not None:
            return unsupported
        try:
            result, decoded = await uploads.run(
                _enrol, _enroller(runtime, gallery), files, None, force, pid
            )
        except UploadsBusyError as exc:
            return error(str(exc), 503, {"Retry-After": "1"})
        except UnknownPersonError as exc:  # erased while the photos were analysed
            return error(str(exc), 404)
        return _enrolled(result, decoded)

    return handler


def _enroller(runtime: Runtime, gallery: Gallery) -> PhotoEnroller:
    return PhotoEnroller(
        gallery,
        runtime.upload_analyzer(),
        QualityValidator(runtime.settings.quality),
        thumbnails=runtime.settings.store.thumbnails,
    )


def _enrolled(result: EnrolResult, decoded: int) -> JSONResponse:
    """201 when photos were stored; else 400 when none could even be decoded, 409 when the
    decoded ones were refused (no face, quality, already enrolled as someone else)."""
    status = 201 if result.person_id else (400 if not decoded else 409)
    return JSONResponse(msgspec.to_builtins(result), status_code=status)


def _enrol(
    enroller: PhotoEnroller,
    files: list[tuple[str, bytes | None]],
    name: str | None,
    force: bool,
    person_id: str | None = None,
) -> tuple[EnrolResult, int]:
    """On the upload worker: each photo is decoded only when it is analysed (one decoded
    image in memory at a time). A new person `name`, or more photos of `person_id`.
    Returns the result and how many photos could be decoded."""
    refused: list[Refusal] = []
    decoded = 0

    def images() -> Iterator[tuple[str, ImageArray]]:
        nonlocal decoded
        for label, data in files:
            if data is None:
                refused.append(Refusal(label, "not a file"))
                continue
            try:
                image = decode_image(data, label)
            except ImageError as exc:
                refused.append(Refusal(label, str(exc)))
                continue
            decoded += 1
            yield label, image

    result = enroller.enrol(
        images(), name=name, person_id=person_id, force=force, actor="api", refused=refused
    )
    return result, decoded


class RenameBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str


def person(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        gallery = runtime.gallery
        assert gallery is not None
        pid = request.path_params["person_id"]
        try:
            if request.method == "GET":
                return JSONResponse(_person_json(runtime, pid))
            if request.method == "PATCH":
                body = await _json_body(request, RenameBody)
                if isinstance(body, JSONResponse):
                    return body
                try:
                    name = clean_name(body.name)
                except InvalidNameError as exc:
                    return error(f"`name`: {exc}", 400)
                gallery.rename(pid, name, actor="api")
                return JSONResponse(_person_json(runtime, pid))
            removed = await asyncio.to_thread(gallery.delete_person, pid, actor="api")
            return JSONResponse(
                {"person_id": pid, "deleted": True, "embeddings": removed, "erased_on_disk": True}
            )
        except UnknownPersonError as exc:
            return error(str(exc), 404)
        except ErasurePendingError as exc:
            return JSONResponse(
                {"person_id": pid, "deleted": True, "erased_on_disk": False, "warning": str(exc)}
            )
        except StoreError as exc:
            return error(str(exc), 400)

    return handler


def thumbnail(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        assert runtime.store is not None
        try:
            data = runtime.store.thumbnail(request.path_params["person_id"])
        except UnknownPersonError as exc:
            return error(str(exc), 404)
        if data is None:
            return error("no thumbnail for this person", 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    return handler


def identify(runtime: Runtime, uploads: UploadWorker) -> Handler:
    async def handler(request: Request) -> Response:
        gallery = runtime.gallery
        assert gallery is not None
        limit = int(runtime.settings.server.max_upload_mb * 2**20)
        if (broken := await _incomplete_multipart(request)) is not None:
            return broken
        async with request.form(max_files=1, max_fields=5, max_part_size=limit) as form:
            files = await _read(_uploads(form, "file"))
        if len(files) != 1 or files[0][1] is None:
            return error("a photo in field `file` is required", 400)
        if (unsupported := _unsupported(files)) is not None:
            return unsupported
        label, data = files[0]
        assert data is not None
        try:
            faces, found = await uploads.run(
                _identify, runtime.upload_analyzer(), gallery, data, label
            )
        except UploadsBusyError as exc:
            return error(str(exc), 503, {"Retry-After": "1"})
        except ImageError as exc:
            return error(str(exc), 400)
        return JSONResponse(
            {
                "faces": [
                    {
                        "bbox": [round(v, 1) for v in f.bbox],
                        "decision": r.decision,
                        "person_id": r.person_id,
                        "name": r.name,
                        "similarity": r.similarity,
                        "runner_up": msgspec.to_builtins(r.runner_up) if r.runner_up else None,
                    }
                    for f, r in zip(faces, found, strict=True)
                ]
            }
        )

    return handler


def _identify(
    analyzer: FaceAnalyzer, gallery: Gallery, data: bytes, label: str
) -> tuple[list[Face], list[Identification]]:
    """On the upload worker: decode, analyse, search."""
    faces = [f for f in analyzer.analyze(decode_image(data, label)) if f.embedding is not None]
    vectors = [f.embedding for f in faces if f.embedding is not None]
    return faces, (gallery.identify(np.stack(vectors)) if vectors else [])


def _event_types(values: list[str]) -> tuple[str, ...]:
    """`type=a,b` (or `type=a&type=b`): known event type names; ValueError naming the first
    unknown one."""
    if not values:
        return ()
    raw = ",".join(values)
    if len(raw) > MAX_TYPE_PARAM:
        raise ValueError(f"`type` is longer than {MAX_TYPE_PARAM} characters")
    names = [n for n in (part.strip() for part in raw.split(",")) if n]
    if not names:
        raise ValueError("`type` names no event type")
    for name in names:
        if name not in EVENT_TYPES:
            raise ValueError(
                f"`type`: unknown event type {name[:64]!r}; known types:"
                f" {', '.join(sorted(EVENT_TYPES))}"
            )
    return tuple(dict.fromkeys(names))


def events(runtime: Runtime) -> Handler:
    """`GET /api/events`: `since=SEQ` (after it, oldest first; the default) or `before=SEQ`
    (before it, newest first: paging back), `limit`, `type=a,b`, `person_id=ID`."""

    async def handler(request: Request) -> Response:
        assert runtime.store is not None
        query = request.query_params
        try:
            if "since" in query and "before" in query:
                raise ValueError(
                    "give `since` (newer events, oldest first) or `before` (older events,"
                    " newest first), not both"
                )
            since = bounded_int(request, "since", 0, 0, MAX_SEQ)
            before = bounded_int(request, "before", MAX_SEQ, 0, MAX_SEQ)
            limit = bounded_int(request, "limit", 500, 1, MAX_EVENTS)
            types = _event_types(query.getlist("type"))
            person_id = query.get("person_id")
            if person_id is not None and not 1 <= len(person_id) <= MAX_PERSON_ID:
                raise ValueError(f"`person_id` must be 1 to {MAX_PERSON_ID} characters")
        except ValueError as exc:
            return error(str(exc), 400)
        rows = runtime.store.events(
            since,
            limit,
            before=before if "before" in query else None,
            types=types,
            person_id=person_id,
        )
        body = b"[" + b",".join(r.data.encode() for r in rows) + b"]"
        return Response(body, media_type="application/json")

    return handler


def stats(runtime: Runtime, hub: Hub) -> Handler:
    async def handler(request: Request) -> Response:
        store = runtime.store
        monitor = runtime.monitor.snapshot()
        return JSONResponse(
            {
                "source": {
                    "name": runtime.source.name,
                    "state": runtime.source_state,
                    "capture_fps": round(monitor.capture_fps, 2),
                    "processed_fps": round(monitor.processed_fps, 2),
                    "frames_dropped": monitor.frames_dropped,
                },
                "monitor": msgspec.to_builtins(monitor),
                "websocket_connections": len(hub),
                "websocket_disconnected_slow": hub.disconnected_slow,
                "persons": runtime.gallery.person_count if runtime.gallery else 0,
                "embeddings": store.embedding_count() if store else 0,
                "bus": runtime.bus.stats(),
            }
        )

    return handler


async def schema(request: Request) -> Response:
    return JSONResponse(json_schema())


def metrics(runtime: Runtime, hub: Hub) -> Handler:
    async def handler(request: Request) -> Response:
        text = runtime.monitor.prometheus()
        text += (
            "# HELP facegate_websocket_connections Connected WebSocket clients.\n"
            "# TYPE facegate_websocket_connections gauge\n"
            f"facegate_websocket_connections {len(hub)}\n"
            "# HELP facegate_persons Persons in the gallery.\n"
            "# TYPE facegate_persons gauge\n"
            f"facegate_persons {runtime.gallery.person_count if runtime.gallery else 0}\n"
        )
        return Response(text, media_type="text/plain; version=0.0.4")

    return handler


def overlay_of(request: Request) -> bool:
    """`?overlay=1`: boxes drawn by the server; `0` or absent: the plain picture."""
    values = request.query_params.getlist("overlay")
    if len(values) > 1 or (values and values[0] not in ("0", "1")):
        raise ValueError("`overlay` must be given once, as 1 (boxes drawn) or 0 (plain)")
    return values == ["1"]


@functools.cache
def _blank_jpeg() -> bytes:
    return jpeg(blank())


def _latest(runtime: Runtime, overlay: bool) -> tuple[Frame | None, Tracks | None]:
    engine = runtime.engine
    if engine is None:
        return None, None
    view = engine.latest_view if overlay else None
    return engine.latest_frame, view


def _render(runtime: Runtime, frame: Frame | None, view: Tracks | None, overlay: bool) -> bytes:
    if frame is None:
        if not overlay:  # the panel shows the camera's state itself
            return _blank_jpeg()
        state = runtime.source_state
        return jpeg(
            placeholder(
                "camera unavailable - retrying"
                if state == "unavailable"
                else f"no video yet ({state})"
            )
        )
    return jpeg(annotate(frame.image, view) if overlay else frame.image)


def snapshot(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        try:
            overlay = overlay_of(request)
        except ValueError as exc:
            return error(str(exc), 400)
        frame, view = _latest(runtime, overlay)
        data = await asyncio.to_thread(_render, runtime, frame, view, overlay)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    return handler


def video(runtime: Runtime) -> Handler:
    # The latest frame's JPEG per mode, encoded once for all the clients of the stream.
    encoded: dict[bool, tuple[Frame, Tracks | None, bytes]] = {}

    def jpeg_of(frame: Frame | None, view: Tracks | None, overlay: bool) -> bytes:
        if frame is None:
            return _render(runtime, frame, view, overlay)
        hit = encoded.get(overlay)
        if hit is not None and hit[0] is frame and hit[1] is view:
            return hit[2]
        data = _render(runtime, frame, view, overlay)
        encoded[overlay] = (frame, view, data)
        return data

    async def handler(request: Request) -> Response:
        try:
            overlay = overlay_of(request)
        except ValueError as exc:
            return error(str(exc), 400)

        async def frames() -> AsyncIterator[bytes]:
            last = None
            while not runtime.closing.is_set() and not await request.is_disconnected():
                frame, view = _latest(runtime, overlay)
                if frame is None or frame is not last:
                    last = frame
                    data = await asyncio.to_thread(jpeg_of, frame, view, overlay)
                    yield (
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(data)).encode()
                        + b"\r\n\r\n"
                        + data
                        + b"\r\n"
                    )
                await asyncio.sleep(1.0 / MJPEG_FPS)

        return StreamingResponse(
            frames(),
            media_type="multipart/x-mixed-replace; boundary=frame",
            headers={"Cache-Control": "no-store"},
        )

    return handler
