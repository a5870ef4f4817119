"""The live frame as JPEG: plain (the panel draws the boxes itself from the `tracks` message),
or with the server's own boxes and labels drawn from the faces of that frame (`Tracks`)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from facegate.events import Tracks, TrackView
from facegate.vision.face import ImageArray

KNOWN = (80, 200, 60)  # BGR
UNKNOWN = (0, 140, 255)
PENDING = (180, 180, 180)
REGISTERING = (255, 160, 0)
CHECKING = (220, 80, 160)  # the liveness check waits or runs: not welcome yet
NOT_LIVE = (40, 40, 220)
COLOURS = {"known": KNOWN, "unknown": UNKNOWN, "pending": PENDING, "registering": REGISTERING}
LIVENESS_COLOURS = {"waiting": CHECKING, "asked": CHECKING, "failed": NOT_LIVE}
LIVENESS_LABELS = {"waiting": "check next", "asked": "turn your head", "failed": "NOT LIVE"}
BACKGROUND = 40
PLACEHOLDER_SIZE = (640, 360)
JPEG_QUALITY = 80


def blank(size: tuple[int, int] = PLACEHOLDER_SIZE) -> ImageArray:
    """A dark frame without any text: the plain video before the first frame (the panel
    shows the camera's state itself)."""
    w, h = size
    return np.full((h, w, 3), BACKGROUND, np.uint8)


def placeholder(message: str, size: tuple[int, int] = PLACEHOLDER_SIZE) -> ImageArray:
    img = blank(size)
    cv2.putText(
        img,
        message,
        (20, size[1] // 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.8,
        (200, 200, 200),
        2,
        cv2.LINE_AA,
    )
    return img


def label(track: TrackView) -> str:
    """The box's label: who, and the liveness check's state while it is not passed."""
    check = f" - {LIVENESS_LABELS[track.liveness]}" if track.liveness in LIVENESS_LABELS else ""
    match track.state:
        case "known":
            return f"#{track.track_id} {track.name or track.person_id or 'known'}{check}"
        case "unknown":
            return f"#{track.track_id} unknown{check}"
        case "registering":
            return f"#{track.track_id} registering"
        case _:
            return f"#{track.track_id} ..."


def annotate(frame: ImageArray, view: Tracks | None) -> ImageArray:
    """A copy of the frame with a box and a label for each face of `view` (the faces matched
    to a detection in that frame: no box outlives its face). Boxes are scaled when the view
    was measured on a frame of another size."""
    out = frame.copy()
    if view is None:
        return out
    h, w = out.shape[:2]
    sx = w / view.width if view.width > 0 else 1.0
    sy = h / view.height if view.height > 0 else 1.0
    for track in view.tracks:
        if len(track.bbox) != 4 or not all(math.isfinite(v) for v in track.bbox):
            continue
        x1, x2 = (_clamp(round(v * sx), w) for v in (track.bbox[0], track.bbox[2]))
        y1, y2 = (_clamp(round(v * sy), h) for v in (track.bbox[1], track.bbox[3]))
        color = LIVENESS_COLOURS.get(track.liveness or "", COLOURS.get(track.state, PENDING))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        text = label(track)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.rectangle(out, (x1, max(0, y1 - th - 6)), (x1 + tw + 6, y1), color, -1)
        cv2.putText(
            out,
            text,
            (x1 + 3, max(th, y1 - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (20, 20, 20),
            1,
            cv2.LINE_AA,
        )
    return out


def _clamp(v: int, size: int) -> int:
    """Within a frame's width of the image: cv2 takes C ints."""
    return min(max(v, -size), 2 * size)


def jpeg(image: ImageArray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(data.tobytes())
