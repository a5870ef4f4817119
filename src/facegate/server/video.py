"""HTTP handlers for the video (`/video.mjpg`, `/snapshot.jpg`): the camera's plain picture,
the panel draws the boxes itself from the `tracks` WebSocket message. `?overlay=1` draws them
on the server, from the faces of that very frame (`Engine.latest`).

Each JPEG (each part of the MJPEG stream, and the snapshot) says which frame it is:
`X-Frame` (the source's frame number), `X-Frame-Time` (stream time) and `X-Scene` (scene cuts
so far), the fields of the `tracks` message, so a client draws on a picture only the boxes
of that picture (or of a moment before it in the same scene), never another frame's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from facegate.events import Tracks
from facegate.live.sources import Frame
from facegate.server.annotate import annotate, blank, jpeg, placeholder
from facegate.server.api import Handler, error

if TYPE_CHECKING:
    from facegate.server.runtime import Runtime

MJPEG_FPS = 12.0


def overlay_of(request: Request) -> bool:
    """`?overlay=1`: boxes drawn by the server; `0` or absent: the plain picture."""
    values = request.query_params.getlist("overlay")
    if len(values) > 1 or (values and values[0] not in ("0", "1")):
        raise ValueError("`overlay` must be given once, as 1 (boxes drawn) or 0 (plain)")
    return values == ["1"]


@functools.cache
def _blank_jpeg() -> bytes:
    return jpeg(blank())


def _latest(runtime: Runtime) -> tuple[Frame | None, Tracks | None]:
    """The latest processed frame and the faces of that very frame."""
    latest = runtime.engine.latest
    return (None, None) if latest is None else latest


def _frame_headers(view: Tracks | None) -> dict[str, str]:
    if view is None:
        return {}
    return {
        "X-Frame": str(view.frame),
        "X-Frame-Time": f"{view.frame_time:.3f}",
        "X-Scene": str(view.scene),
    }


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
        frame, view = _latest(runtime)
        data = await asyncio.to_thread(_render, runtime, frame, view, overlay)
        headers = {"Cache-Control": "no-store", **_frame_headers(view)}
        return Response(data, media_type="image/jpeg", headers=headers)

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
                frame, view = _latest(runtime)
                if frame is None or frame is not last:
                    last = frame
                    data = await asyncio.to_thread(jpeg_of, frame, view, overlay)
                    head = "".join(f"{k}: {v}\r\n" for k, v in _frame_headers(view).items())
                    yield (
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(data)).encode()
                        + b"\r\n"
                        + head.encode()
                        + b"\r\n"
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
