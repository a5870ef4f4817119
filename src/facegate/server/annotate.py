"""The live frame with boxes, names and track state drawn on it, as JPEG."""

from __future__ import annotations

import cv2
import numpy as np

from facegate.face import ImageArray
from facegate.gallery import Gallery
from facegate.tracking import Track

KNOWN = (80, 200, 60)  # BGR
UNKNOWN = (0, 140, 255)
PENDING = (180, 180, 180)
REGISTERING = (255, 160, 0)
JPEG_QUALITY = 80


def placeholder(message: str, size: tuple[int, int] = (640, 360)) -> ImageArray:
    w, h = size
    img = np.full((h, w, 3), 40, np.uint8)
    cv2.putText(
        img, message, (20, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (200, 200, 200), 2, cv2.LINE_AA
    )
    return img


def annotate(
    frame: ImageArray, tracks: list[Track], gallery: Gallery, registering: int | None
) -> ImageArray:
    out = frame.copy()
    for track in tracks:
        x1, y1, x2, y2 = (round(v) for v in track.bbox)
        if track.id == registering:
            color, label = REGISTERING, "registering"
        elif track.identity is not None:
            color, label = KNOWN, gallery.name_of(track.identity) or track.identity
        elif track.settled_unknown:
            color, label = UNKNOWN, "unknown"
        else:
            color, label = PENDING, "..."
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        text = f"#{track.id} {label}"
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


def jpeg(image: ImageArray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(data.tobytes())
