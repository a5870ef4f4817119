"""HTTP handlers: the original design's endpoints and the panel's API.

Every error is JSON `{"error": ...}`: 400 bad input, 404 unknown ids, 413 uploads over the
limit (BodyLimit middleware), 409 refused enrolments.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from facegate import __version__
from facegate.enrolment import PhotoEnroller, Refusal
from facegate.events import json_schema
from facegate.images import ImageError, decode_image
from facegate.quality import QualityValidator
from facegate.server.annotate import annotate, jpeg, placeholder
from facegate.store import ErasurePendingError, StoreError, UnknownPersonError

if TYPE_CHECKING:
    from facegate.server.hub import Hub
    from facegate.server.runtime import Runtime

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
MJPEG_FPS = 12.0


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


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


def reset_system(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
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
        reply = runtime.registrar.decide(body.register, body.name, client)
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


async def _photos(form: Any) -> tuple[list[tuple[str, Any]], list[Refusal]]:
    photos: list[tuple[str, Any]] = []
    refused: list[Refusal] = []
    for item in form.getlist("files"):
        if not isinstance(item, UploadFile):
            refused.append(Refusal(str(item)[:40], "not a file"))
            continue
        label = item.filename or "upload"
        try:
            photos.append((label, decode_image(await item.read(), label)))
        except ImageError as exc:
            refused.append(Refusal(label, str(exc)))
    return photos, refused


def persons(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        store, gallery = runtime.store, runtime.gallery
        assert store is not None and gallery is not None
        if request.method == "GET":
            return JSONResponse([_person_json(runtime, p.id) for p in store.persons()])
        limit = int(runtime.settings.server.max_upload_mb * 2**20)
        async with request.form(max_files=20, max_part_size=limit) as form:
            return await _enrol(runtime, form)

    return handler


async def _enrol(runtime: Runtime, form: Any) -> Response:
    gallery = runtime.gallery
    assert gallery is not None
    name = str(form.get("name") or "").strip()
    if not name:
        return error("field `name` is required", 400)
    photos, refused = await _photos(form)
    if not photos and not refused:
        return error("at least one photo in field `files` is required", 400)
    enroller = PhotoEnroller(
        gallery,
        runtime.upload_analyzer(),
        QualityValidator(runtime.settings.quality),
        thumbnails=runtime.settings.store.thumbnails,
    )
    force = str(form.get("force") or "").lower() in ("1", "true", "yes")
    result = await asyncio.to_thread(
        enroller.enrol, photos, name=name, force=force, actor="api", refused=refused
    )
    status = 201 if result.person_id else (400 if not photos else 409)
    return JSONResponse(msgspec.to_builtins(result), status_code=status)


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
                gallery.rename(pid, body.name, actor="api")
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


def identify(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        gallery = runtime.gallery
        assert gallery is not None
        limit = int(runtime.settings.server.max_upload_mb * 2**20)
        async with request.form(max_files=1, max_part_size=limit) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return error("a photo in field `file` is required", 400)
            try:
                image = decode_image(await upload.read(), upload.filename or "upload")
            except ImageError as exc:
                return error(str(exc), 400)
        analyzer = runtime.upload_analyzer()
        faces = await asyncio.to_thread(analyzer.analyze, image)
        vectors = [f.embedding for f in faces if f.embedding is not None]
        found = gallery.identify(np.stack(vectors)) if vectors else []
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


def events(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        assert runtime.store is not None
        try:
            since = int(request.query_params.get("since", "0"))
            limit = min(1000, int(request.query_params.get("limit", "500")))
        except ValueError:
            return error("`since` and `limit` must be integers", 400)
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
