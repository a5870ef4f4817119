"""HTTP handlers for the recent unknown faces (`/api/unknowns`): the list, dismissing a face
and its thumbnail. Errors are JSON `{"error": ...}` (400 bad track ids, 404 unknown ones).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from facegate.live.unknowns import UnknownFace
from facegate.server.api import MAX_TRACK_ID, Handler, error

if TYPE_CHECKING:
    from facegate.server.runtime import Runtime


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
