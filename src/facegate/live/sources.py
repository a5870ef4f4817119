"""Frame sources (webcam, video file, network stream, image folder) behind the small
`FrameSource` protocol, and `Capture`, which runs one in its own thread in one of two modes:

- latest (live sources; files/folders with `realtime=True`, paced at their fps): read
  continuously into a one-slot buffer; a frame overwritten before the consumer took it counts as
  dropped, so the consumer always gets the newest frame, never a backlog;
- lockstep (files/folders otherwise): read the next frame only once the consumer took the last.

A failing live source is reopened with exponential backoff; a failing file ends. Both report
`SourceStatus` events (connected / unavailable / ended).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import cv2
import msgspec
import numpy as np

from facegate.events import SourceStatus
from facegate.vision.face import ImageArray
from facegate.vision.images import ImageError, read_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
_State = Literal["connected", "unavailable", "ended"]


class SourceError(Exception):
    """A source that failed; the message says which source and why."""


class FrameSource(Protocol):
    name: str  # for messages; credentials in URLs are masked
    live: bool  # webcam/stream: reopened with backoff on failure; files/folders: not
    fps: float | None  # nominal frame rate, when known (after `open` for files and cameras)

    def open(self) -> None: ...  # (re)open from the start; raises SourceError
    def read(self) -> ImageArray | None: ...  # BGR; None: end of a file/folder; SourceError
    def close(self) -> None: ...  # idempotent


def mask_url(url: str) -> str:
    """The URL with its password (or a lone user token) and secret query values as `***`."""

    def hide(m: re.Match[str]) -> str:
        user, colon, _ = m[2].partition(":")
        return f"{m[1]}{user}:***@" if colon else f"{m[1]}***@"

    # Up to the last "@" before any query: a password may hold an unencoded "/" or "@".
    url = re.sub(r"^([A-Za-z][\w+.-]*://)([^?#]*)@", hide, url, count=1)
    secret = r"(?i)([?&](?:password|passwd|pass|pwd|token|auth|key|secret)=)[^&#]*"
    return re.sub(secret, r"\1***", url)


def quiet_opencv() -> None:
    """OpenCV's own warnings (cap_v4l on every camera retry, FFmpeg chatter) off: the capture
    reports a source's state itself, once per change."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class _OpenCVSource:
    """What the OpenCV-backed sources share; a live one raises when it gets no frame."""

    live = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.fps: float | None = None
        self._cap: cv2.VideoCapture | None = None

    def _create(self) -> cv2.VideoCapture:
        raise NotImplementedError

    _open_error = "cannot open"

    def open(self) -> None:
        self.close()
        quiet_opencv()
        try:
            cap = self._create()
        except cv2.error:
            raise SourceError(f"{self.name}: {self._open_error}") from None
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.name}: {self._open_error}")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else None
        self._cap = cap

    def read(self) -> ImageArray | None:
        if self._cap is None:
            raise SourceError(f"{self.name}: not open")
        try:
            ok, frame = self._cap.read()
        except cv2.error as exc:
            raise SourceError(f"{self.name}: read failed ({exc.err or exc})") from None
        if not ok or frame is None:
            if self.live:
                raise SourceError(f"{self.name}: no frame (disconnected, busy or stalled?)")
            return None
        return np.asarray(frame, np.uint8)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class CameraSource(_OpenCVSource):
    """A local camera by OpenCV index."""

    live = True

    # No camera at that index (or it is busy, or not readable by this user): say how to run
    # on something else, since a first run on a machine without a camera lands here.
    _open_error = (
        "cannot open the camera (none connected, busy, or no permission: the user needs the"
        " `video` group). To run on something else: --source clip.mp4, --source"
        " rtsp://user:pass@host/stream or --source a-folder-of-images"
    )

    def __init__(self, index: int) -> None:
        super().__init__(f"webcam {index}")
        self.index = index

    def _create(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.index)


class StreamSource(_OpenCVSource):
    """An rtsp/http(s) stream through OpenCV's FFmpeg backend, with open and read timeouts."""

    live = True

    def __init__(self, url: str, *, open_timeout: float = 10.0, read_timeout: float = 5.0) -> None:
        super().__init__(mask_url(url))
        self._url = url
        self._timeouts = (open_timeout, read_timeout)

    def _create(self) -> cv2.VideoCapture:
        params: list[int] = []
        for name, seconds in zip(("OPEN", "READ"), self._timeouts, strict=True):
            prop = getattr(cv2, f"CAP_PROP_{name}_TIMEOUT_MSEC", None)  # absent from old builds
            if isinstance(prop, int):
                params += [prop, round(seconds * 1000)]
        return cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)


class VideoFileSource(_OpenCVSource):
    """A video file; `read` returns None at its end. Open decodes the first frame, so an
    unreadable or corrupt file fails there."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"video {path}")
        self.path = Path(path)
        self._first: ImageArray | None = None

    def _create(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)

    _open_error = "not a readable video (corrupt or unsupported format)"

    def open(self) -> None:
        if not self.path.is_file():
            why = "not a file" if self.path.exists() else "no such file"
            raise SourceError(f"{self.name}: {why}")
        super().open()
        first = super().read()
        if first is None:
            self.close()
            raise SourceError(f"{self.name}: no decodable frame (corrupt or empty video)")
        self._first = first

    def read(self) -> ImageArray | None:
        first, self._first = self._first, None
        return first if first is not None else super().read()

    def close(self) -> None:
        self._first = None
        super().close()


def _natural_key(path: Path) -> tuple[str, str]:
    """`img2.png` before `img10.png`; the plain name breaks ties."""
    return re.sub(r"\d+", lambda m: m.group().zfill(20), path.name.lower()), path.name


class ImageFolderSource:
    """The images of a directory in natural name order at a nominal fps; undecodable ones are
    skipped (and counted), not fatal."""

    live = False

    def __init__(self, directory: str | Path, fps: float = 10.0) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, not {fps}")
        self.directory = Path(directory)
        shown = str(directory)
        self.name = f"folder {shown if shown.endswith('/') else shown + '/'}"
        self.fps: float | None = fps
        self.skipped = 0  # undecodable files in the current pass
        self._files: list[Path] = []
        self._next = 0

    def open(self) -> None:
        if not self.directory.is_dir():
            raise SourceError(f"{self.name}: no such directory")
        try:
            files = [p for p in self.directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot list: {exc.strerror or exc}") from None
        if not files:
            raise SourceError(f"{self.name}: no images (jpg, jpeg, png, bmp, webp)")
        self._files, self._next, self.skipped = sorted(files, key=_natural_key), 0, 0

    def read(self) -> ImageArray | None:
        while self._next < len(self._files):
            path = self._files[self._next]
            self._next += 1
            try:
                return read_image(path)
            except ImageError as exc:
                self.skipped += 1
                log.warning("%s: skipped %s", self.name, exc)
        return None

    def close(self) -> None:
        self._files, self._next = [], 0


def open_source(spec: str, *, folder_fps: float = 10.0) -> FrameSource:
    """The source a command-line spec names (not yet opened): a camera index, an
    rtsp(s)/http(s) URL, an image directory, or a video file (which must exist)."""
    text = spec.strip()
    if not text:
        raise SourceError("no source given")
    if re.fullmatch(r"[0-9]+", text):
        return CameraSource(int(text))
    if text.lower().startswith(STREAM_SCHEMES):
        return StreamSource(text)
    path = Path(text).expanduser()
    if path.is_dir():
        folder = ImageFolderSource(path, folder_fps)
        folder.open()  # an empty or unreadable folder is refused now, not after start-up
        folder.close()
        return folder
    if path.is_file():
        return VideoFileSource(path)
    why = "not a file or directory" if path.exists() else "no such file or directory"
    raise SourceError(f"{text}: {why}")


class Frame(msgspec.Struct, frozen=True):
    image: ImageArray
    number: int  # 0-based count of frames read from the source (across reopens and loops)
    captured_at: float  # the capture clock's time when read
    position: float | None  # seconds into the file (index in this pass / fps); None for live


def _describe(source: FrameSource, exc: Exception) -> str:
    if isinstance(exc, SourceError):
        return str(exc)
    return f"{source.name}: {type(exc).__name__}: {exc}"


class Capture:
    """Runs a FrameSource in its own thread (see the module docstring for the two modes).

    `sleep` (with `clock`) is injectable for tests; the default waits on the stop event, so
    `stop()` interrupts backoff and pacing at once."""

    def __init__(
        self,
        source: FrameSource,
        *,
        realtime: bool = False,
        loop: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        on_status: Callable[[SourceStatus], None] | None = None,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (first, max) with 0 < first <= max, not {backoff}")
        self.source = source
        self._realtime, self._loop, self._backoff = realtime, loop, backoff
        self._clock, self._sleep, self._on_status = clock, sleep, on_status
        self._lockstep = not source.live and not realtime
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self.captured = 0  # frames read (written under the lock)
        self.dropped = 0  # frames overwritten before the consumer took them
        self._ended = self._finished = False
        self._thread: threading.Thread | None = None
        self._logged: tuple[str, str] | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("capture already started")
        self._thread = threading.Thread(
            target=self._run, name=f"capture {self.source.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread, join it, close the source."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():  # stuck inside the source; it closes the source on return
                log.warning("%s: capture thread still busy after %.1f s", self.source.name, timeout)
                return
        self._close_source()

    def next_frame(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken; None on timeout, when ended or stopped."""
        with self._cond:
            self._cond.wait_for(lambda: self._slot is not None or self._idle(), timeout)
            frame, self._slot = self._slot, None
            if frame is not None:
                self._cond.notify_all()
            return frame

    def _idle(self) -> bool:  # no frame will come
        return self._ended or self._finished or self._stop.is_set()

    @property
    def ended(self) -> bool:
        """A non-live source reached its end (or failed) and its last frame was taken."""
        with self._cond:
            return self._ended and self._slot is None

    def _run(self) -> None:
        try:
            if self.source.live:
                self._run_live()
            else:
                self._run_file()
        except Exception:  # a bug here; the thread still ends cleanly
            log.exception("%s: capture failed", self.source.name)
        finally:
            self._close_source()
            with self._cond:
                self._finished = True
                if not self.source.live and not self._stop.is_set():
                    self._ended = True
                self._cond.notify_all()

    def _run_live(self) -> None:
        src = self.source
        delay = self._backoff[0]
        while not self._stop.is_set():
            got_frame = False
            try:
                src.open()
                self._emit("connected", f"{src.name}: connected")
                while not self._stop.is_set():
                    image = src.read()
                    if image is None:
                        raise SourceError(f"{src.name}: no frame")
                    got_frame = True
                    self._publish(image, None)
                return
            except Exception as exc:
                problem = _describe(src, exc)
            if got_frame:
                delay = self._backoff[0]
            self._emit("unavailable", problem, delay)
            self._close_source()
            if self._wait(delay):
                return
            delay = min(delay * 2, self._backoff[1])

    def _open_file(self) -> bool:
        try:
            self.source.open()
        except Exception as exc:
            self._emit("unavailable", _describe(self.source, exc))
            return False
        return True

    def _run_file(self) -> None:
        src = self.source
        if not self._open_file():
            return
        self._emit("connected", f"{src.name}: opened")
        fps = src.fps if src.fps is not None and src.fps > 0 else None
        period = 1.0 / fps if self._realtime and fps is not None else None
        due: float | None = None
        index = 0  # frames read in this pass
        while not self._stop.is_set():
            if period is not None and due is not None:
                now = self._clock()
                if due > now and self._wait(due - now):
                    return
            try:
                image = src.read()
            except Exception as exc:
                self._emit("unavailable", _describe(src, exc))
                return
            if image is None:
                if not self._loop or index == 0:
                    done = f"ended after {self.captured} frames" if index else "no frames"
                    skipped = getattr(src, "skipped", 0)  # ImageFolderSource's count
                    note = f" ({skipped} unreadable files skipped)" if skipped else ""
                    self._emit("ended", f"{src.name}: {done}{note}")
                    return
                self._close_source()
                if not self._open_file():
                    return
                index = 0
                continue
            if period is not None:
                now = self._clock()
                # Keep the cadence; after a hiccup longer than a frame, restart it from now.
                due = now + period if due is None or now - due > period else due + period
            self._publish(image, index / fps if fps is not None else None)
            index += 1

    def _publish(self, image: ImageArray, position: float | None) -> None:
        now = self._clock()
        with self._cond:
            if self._slot is not None:
                self.dropped += 1
            self._slot = Frame(
                image=image, number=self.captured, captured_at=now, position=position
            )
            self.captured += 1
            self._cond.notify_all()
            if self._lockstep:
                self._cond.wait_for(lambda: self._slot is None or self._stop.is_set())

    def _wait(self, seconds: float) -> bool:
        """Wait (interruptibly unless `sleep` was injected); True when stop was requested."""
        if seconds > 0:
            (self._sleep or self._stop.wait)(seconds)
        return self._stop.is_set()

    def _emit(self, state: _State, message: str, retry_in: float | None = None) -> None:
        # One log line per change of state or reason, not one per retry (the events still
        # carry every retry's delay for the panel).
        if (state, message) != self._logged:
            self._logged = (state, message)
            level = logging.WARNING if state == "unavailable" else logging.INFO
            retrying = " (retrying with backoff)" if retry_in else ""
            log.log(level, "%s%s", message, retrying)
        if self._on_status is None:
            return
        status = SourceStatus(
            state=state, source=self.source.name, message=message, retry_in_seconds=retry_in
        )
        try:
            self._on_status(status)
        except Exception:
            log.exception("%s: on_status callback failed", self.source.name)

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:
            log.exception("%s: close failed", self.source.name)
