"""HTTP handlers: the original design's endpoints and the panel's API.

Every error is JSON `{"error": ...}`: 400 bad input, 404 unknown ids, 409 refused
enrolments, 413 uploads over the limit (BodyLimit), 415 image formats other than JPEG, PNG,
WebP and BMP, 503 while the upload worker is full. Access, origins and content types are
checked before any handler runs (security.Guard). Uploaded images are decoded and analysed
on the upload worker's thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import numpy as np
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from facegate import __version__
from facegate.enrolment import EnrolResult, PhotoEnroller, Refusal
from facegate.events import json_schema
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
from facegate.server.annotate import annotate, jpeg, placeholder
from facegate.server.uploads import UploadsBusyError, UploadWorker
from facegate.store import ErasurePendingError, StoreError, UnknownPersonError

if TYPE_CHECKING:
    from facegate.server.hub import Hub
    from facegate.server.runtime import Runtime

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
MJPEG_FPS = 12.0


MAX_SEQ = 2**63 - 1
MAX_EVENTS = 1000


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
        client = f"http:{request.client.host if request.client else '?'}"
        try:
            reply = runtime.registrar.decide(body.register, body.name, client)
        except InvalidNameError as exc:
            return error(str(exc), 400)
        return JSONResponse(
            {"ok": reply.ok, "message": reply.message}, status_code=200 if reply.ok else 409
        )

    return handler


def _person_json(runtime: Runtime, person_id: str) -> dict[str, Any]:
    assert runtime.store is not None
    p = runtime.store.person(person_id)
    return {
        "person_id": p.id,
        "name": p.name,
        "note": p.note,
        "embeddings": p.embeddings,
        "poses": p.poses,
        "created_at": _iso(p.created_at),
        "updated_at": _iso(p.updated_at),
    }


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
            return JSONResponse([_person_json(runtime, p.id) for p in store.persons()])
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
        enroller = PhotoEnroller(
            gallery,
            runtime.upload_analyzer(),
            QualityValidator(runtime.settings.quality),
            thumbnails=runtime.settings.store.thumbnails,
        )
        try:
            result, decoded = await uploads.run(_enrol, enroller, files, name, force)
        except UploadsBusyError as exc:
            return error(str(exc), 503, {"Retry-After": "1"})
        status = 201 if result.person_id else (400 if not decoded else 409)
        return JSONResponse(msgspec.to_builtins(result), status_code=status)

    return handler


def _enrol(
    enroller: PhotoEnroller, files: list[tuple[str, bytes | None]], name: str, force: bool
) -> tuple[EnrolResult, int]:
    """On the upload worker: each photo is decoded only when it is analysed (one decoded
    image in memory at a time). Returns the result and how many photos could be decoded."""
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

    result = enroller.enrol(images(), name=name, force=force, actor="api", refused=refused)
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


def events(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        assert runtime.store is not None
        try:
            since = bounded_int(request, "since", 0, 0, MAX_SEQ)
            limit = bounded_int(request, "limit", 500, 1, MAX_EVENTS)
        except ValueError as exc:
            return error(str(exc), 400)
        rows = runtime.store.events(since, limit)
        body = b"[" + b",".join(r.data.encode() for r in rows) + b"]"
        return Response(body, media_type="application/json")

    return handler


def stats(runtime: Runtime, hub: Hub) -> Handler:
    async def handler(request: Request) -> Response:
        store = runtime.store
        return JSONResponse(
            {
                "monitor": msgspec.to_builtins(runtime.monitor.snapshot()),
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


def _current_jpeg(runtime: Runtime) -> bytes:
    engine = runtime.engine
    frame = engine.latest_frame if engine else None
    if engine is None or frame is None or runtime.gallery is None:
        state = runtime.source_state
        return jpeg(
            placeholder(
                "camera unavailable - retrying"
                if state == "unavailable"
                else f"no video yet ({state})"
            )
        )
    return jpeg(annotate(frame.image, engine.latest_tracks, runtime.gallery, engine.registering))


def snapshot(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        data = await asyncio.to_thread(_current_jpeg, runtime)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    return handler


def video(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        async def frames() -> AsyncIterator[bytes]:
            last = None
            while not runtime.closing.is_set() and not await request.is_disconnected():
                frame = runtime.engine.latest_frame if runtime.engine else None
                if frame is None or frame is not last:
                    last = frame
                    data = await asyncio.to_thread(_current_jpeg, runtime)
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
