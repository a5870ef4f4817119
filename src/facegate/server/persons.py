"""HTTP handlers for the gallery: persons (list, enrol, rename, erase), their photos and
thumbnails, and identifying the faces of an uploaded photo.

Errors are JSON `{"error": ...}`: 400 bad input, 404 unknown ids, 409 refused enrolments,
413 uploads over the limit (BodyLimit), 415 image formats other than JPEG, PNG, WebP and BMP,
503 while the upload worker is full. Uploaded images are decoded and analysed on the upload
worker's thread, never on the event loop.

Enrolment (`POST /api/persons`, `POST /api/persons/{id}/photos`) is multipart: `files` (the
photos), optional `force` (1/true/yes: enrol a face that matches someone else, or add one that
does not look like the person; audited; never stores the same photo twice) and optional `face`
(N: take face N of the one photo sent, 1-based in the detector's order as `POST /api/identify`
lists them, instead of choosing; a photo with two faces of similar size is refused without
it). The rules are `facegate.identity.enrolment`'s; identification reports every face.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from facegate.identity.enrolment import EnrolResult, PhotoEnroller, Refusal, Wording
from facegate.identity.gallery import Gallery, Identification
from facegate.identity.names import InvalidNameError, clean_name
from facegate.identity.store import (
    ErasurePendingError,
    Person,
    Store,
    StoreError,
    StoreUnavailableError,
    UnknownPersonError,
)
from facegate.server.api import Handler, _iso, _json_body, error
from facegate.server.uploads import UploadsBusyError, UploadWorker
from facegate.vision.face import Face, FaceAnalyzer, ImageArray
from facegate.vision.images import (
    ACCEPTED_FORMATS,
    ImageError,
    UnsupportedImageError,
    accepted_format,
    decode_image,
)
from facegate.vision.quality import QualityValidator

if TYPE_CHECKING:
    from facegate.server.runtime import Runtime

API_WORDING = Wording(
    face="send the field face=N (faces numbered as POST /api/identify lists them)",
    force="send force=1",
)


def _options(form: Any, files: list[tuple[str, bytes | None]]) -> tuple[bool, int | None] | str:
    """The form's `force` and `face` fields, or what is wrong with them."""
    force = str(form.get("force") or "").lower() in ("1", "true", "yes")
    raw = form.get("face")
    if raw is None or raw == "":
        return force, None
    if not isinstance(raw, str) or not re.fullmatch(r"[1-9][0-9]{0,3}", raw.strip()):
        return "field `face`: a face number 1, 2, ... (as POST /api/identify lists them)"
    if len(files) != 1:
        return "field `face` takes exactly one photo (faces differ photo to photo)"
    return force, int(raw)


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
        "last_seen": None if seen is None else _iso(seen.at),
        "last_seen_gate": None if seen is None else seen.gate,  # the gate that saw them
    }


def _person_json(runtime: Runtime, person_id: str) -> dict[str, Any]:
    return _person_dict(runtime.store, runtime.store.person(person_id))


def _person_list(store: Store) -> list[dict[str, Any]]:
    return [_person_dict(store, p) for p in store.persons()]


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
        if request.method == "GET":
            return JSONResponse(await asyncio.to_thread(_person_list, store))
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
            options = _options(form, files)
        if isinstance(options, str):
            return error(options, 400)
        force, face = options
        return await _enrol_uploaded(runtime, uploads, gallery, files, force, name=name, face=face)

    return handler


def person_photos(runtime: Runtime, uploads: UploadWorker) -> Handler:
    """`POST /api/persons/{person_id}/photos` (multipart `files`, optional `force`, `face`):
    more photos of a known person, refused one by one as `POST /api/persons` refuses them, and
    also when a face does not look like the person or is a photo already stored."""

    async def handler(request: Request) -> Response:
        store, gallery = runtime.store, runtime.gallery
        pid = request.path_params["person_id"]
        try:
            await asyncio.to_thread(store.person, pid)
        except UnknownPersonError as exc:
            return error(str(exc), 404)
        limit = int(runtime.settings.server.max_upload_mb * 2**20)
        if (broken := await _incomplete_multipart(request)) is not None:
            return broken
        async with request.form(max_files=20, max_fields=20, max_part_size=limit) as form:
            files = await _read(_uploads(form, "files"))
            options = _options(form, files)
        if isinstance(options, str):
            return error(options, 400)
        force, face = options
        return await _enrol_uploaded(
            runtime, uploads, gallery, files, force, person_id=pid, face=face
        )

    return handler


async def _enrol_uploaded(
    runtime: Runtime,
    uploads: UploadWorker,
    gallery: Gallery,
    files: list[tuple[str, bytes | None]],
    force: bool,
    *,
    name: str | None = None,
    person_id: str | None = None,
    face: int | None = None,
) -> Response:
    """The uploaded photos enrolled as a new person (`name`) or added to `person_id`, on the
    upload worker: 201, or the refusals (400 none decoded, 409 all refused), 415, 503."""
    if not files:
        return error("at least one photo in field `files` is required", 400)
    if (unsupported := _unsupported(files)) is not None:
        return unsupported
    try:
        result, decoded = await uploads.run(
            functools.partial(_enrol, face=face),
            _enroller(runtime, gallery),
            files,
            name,
            force,
            person_id,
        )
    except UploadsBusyError as exc:
        return error(str(exc), 503, {"Retry-After": "1"})
    except UnknownPersonError as exc:  # erased while the photos were analysed
        return error(str(exc), 404)
    return _enrolled(result, decoded)


def _enroller(runtime: Runtime, gallery: Gallery) -> PhotoEnroller:
    return PhotoEnroller(
        gallery,
        runtime.upload_analyzer(),
        QualityValidator(runtime.settings.quality),
        thumbnails=runtime.settings.store.thumbnails,
        wording=API_WORDING,
    )


def _enrolled(result: EnrolResult, decoded: int) -> JSONResponse:
    """201 when photos were stored; else 400 when none could even be decoded, 409 when the
    decoded ones were refused (no face, two similar faces, quality, the same photo again, not
    like the person, already enrolled as someone else)."""
    status = 201 if result.person_id else (400 if not decoded else 409)
    return JSONResponse(msgspec.to_builtins(result), status_code=status)


def _enrol(
    enroller: PhotoEnroller,
    files: list[tuple[str, bytes | None]],
    name: str | None,
    force: bool,
    person_id: str | None = None,
    *,
    face: int | None = None,
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
        images(),
        name=name,
        person_id=person_id,
        force=force,
        actor="api",
        refused=refused,
        face=face,
    )
    return result, decoded


class RenameBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str


def person(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        gallery = runtime.gallery
        pid = request.path_params["person_id"]
        try:
            # The store off the loop: a shared one answers over the network.
            if request.method == "GET":
                return JSONResponse(await asyncio.to_thread(_person_json, runtime, pid))
            if request.method == "PATCH":
                body = await _json_body(request, RenameBody)
                if isinstance(body, JSONResponse):
                    return body
                try:
                    name = clean_name(body.name)
                except InvalidNameError as exc:
                    return error(f"`name`: {exc}", 400)
                await asyncio.to_thread(functools.partial(gallery.rename, pid, name, actor="api"))
                return JSONResponse(await asyncio.to_thread(_person_json, runtime, pid))
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
        except StoreUnavailableError:
            raise  # 503 (app.py)
        except StoreError as exc:
            return error(str(exc), 400)

    return handler


def thumbnail(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        try:
            data = await asyncio.to_thread(
                runtime.store.thumbnail, request.path_params["person_id"]
            )
        except UnknownPersonError as exc:
            return error(str(exc), 404)
        if data is None:
            return error("no thumbnail for this person", 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    return handler


def identify(runtime: Runtime, uploads: UploadWorker) -> Handler:
    async def handler(request: Request) -> Response:
        gallery = runtime.gallery
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
