"""Frame sources and the capture thread: scripted sources with an injected clock for the logic,
the real Hamilton clip and a folder of PNGs for the OpenCV side. No camera, no network."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from facegate.events import SourceStatus
from facegate.live.sources import (
    CameraSource,
    Capture,
    Frame,
    ImageFolderSource,
    SourceError,
    StreamSource,
    VideoFileSource,
    mask_url,
    open_source,
)
from facegate.vision.face import ImageArray

CLIP_FRAMES = 275
CLIP_FPS = 29.97


# -- helpers ------------------------------------------------------------------------------------
def numbered(n: int) -> ImageArray:
    img = np.zeros((4, 4, 3), np.uint8)
    img[0, 0, 0], img[0, 0, 1] = n % 256, n // 256
    return img


def number_of(img: ImageArray) -> int:
    return int(img[0, 0, 0]) + 256 * int(img[0, 0, 1])


class FakeSource:
    """A scripted FrameSource: `frames` numbered frames per open (None: endless), raising on the
    reads whose 0-based index (over all read calls) is in `raise_on`, failing the opens whose
    0-based index is in `fail_opens` (or every open from `fail_from` on), and, with `gate`,
    blocking each read until the test releases it."""

    def __init__(
        self,
        frames: int | None = 5,
        *,
        live: bool = False,
        fps: float | None = 10.0,
        raise_on: set[int] | None = None,
        fail_opens: set[int] | None = None,
        fail_from: int | None = None,
        gate: threading.Semaphore | None = None,
        read_delay: float = 0.0,
        name: str = "fake",
    ) -> None:
        self.name, self.live, self.fps = name, live, fps
        self.frames, self.raise_on = frames, raise_on or set()
        self.fail_opens, self.fail_from = fail_opens or set(), fail_from
        self.gate, self.read_delay = gate, read_delay
        self.opens = self.reads = self.delivered = 0
        self.in_pass = 0
        self.is_open = False

    def open(self) -> None:
        attempt = self.opens
        self.opens += 1
        if attempt in self.fail_opens or (self.fail_from is not None and attempt >= self.fail_from):
            raise SourceError(f"{self.name}: open {attempt} refused")
        self.is_open, self.in_pass = True, 0

    def read(self) -> ImageArray | None:
        assert self.is_open
        if self.gate is not None:
            assert self.gate.acquire(timeout=5)
        if self.read_delay:
            time.sleep(self.read_delay)
        call = self.reads
        self.reads += 1
        if call in self.raise_on:
            raise SourceError(f"{self.name}: read {call} broke")
        if self.frames is not None and self.in_pass >= self.frames:
            return None
        self.in_pass += 1
        self.delivered += 1
        return numbered(self.delivered - 1)

    def close(self) -> None:
        self.is_open = False


class FakeClock:
    """A clock that only moves when the capture thread sleeps; records the sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Statuses:
    def __init__(self) -> None:
        self.items: list[SourceStatus] = []
        self._cond = threading.Condition()

    def __call__(self, status: SourceStatus) -> None:
        with self._cond:
            self.items.append(status)
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[SourceStatus]], bool], timeout: float = 3.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: pred(self.items), timeout), self.items

    def states(self) -> list[str]:
        return [s.state for s in self.items]


def drain(capture: Capture, limit: int = 10_000) -> list[Frame]:
    """Every frame until the capture ends."""
    frames: list[Frame] = []
    while not capture.ended and len(frames) < limit:
        frame = capture.next_frame(timeout=3.0)
        if frame is not None:
            frames.append(frame)
    assert capture.ended
    return frames


def wait_until(pred: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


@pytest.fixture
def clip(shared_data: Path) -> Path:
    path = shared_data / "video" / "hamilton_short_clip.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


# -- real files ---------------------------------------------------------------------------------
def test_lockstep_delivers_every_frame_of_the_video_once_in_order(clip: Path) -> None:
    cap = cv2.VideoCapture(str(clip))
    expected = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        expected.append(int(img.sum()))
    cap.release()
    assert len(expected) == CLIP_FRAMES

    statuses = Statuses()
    capture = Capture(VideoFileSource(clip), on_status=statuses)
    capture.start()
    frames = drain(capture)
    capture.stop()

    assert [f.number for f in frames] == list(range(CLIP_FRAMES))
    assert [int(f.image.sum()) for f in frames] == expected
    assert frames[0].image.shape == (360, 640, 3)
    assert frames[-1].position == pytest.approx((CLIP_FRAMES - 1) / CLIP_FPS)
    assert (capture.captured, capture.dropped) == (CLIP_FRAMES, 0)
    assert statuses.states() == ["connected", "ended"]
    assert capture.next_frame(timeout=0.01) is None


def test_realtime_file_is_paced_at_its_fps_on_the_injected_clock(clip: Path) -> None:
    clock = FakeClock()
    capture = Capture(VideoFileSource(clip), realtime=True, clock=clock, sleep=clock.sleep)
    start = clock.now
    capture.start()
    frames = drain(capture)
    capture.stop()

    # Reading 275 frames at 29.97 fps takes 275 frame periods (the end is noticed one period
    # after the last frame), and each frame is stamped on that cadence.
    assert clock.now - start == pytest.approx(CLIP_FRAMES / CLIP_FPS, abs=1e-6)
    assert all(f.captured_at - start == pytest.approx(f.number / CLIP_FPS) for f in frames)
    assert capture.captured == CLIP_FRAMES
    assert len(frames) + capture.dropped == CLIP_FRAMES
    assert frames[-1].number == CLIP_FRAMES - 1  # the consumer gets the newest, the last


def test_loop_restarts_the_video_and_keeps_numbering(clip: Path) -> None:
    capture = Capture(VideoFileSource(clip), loop=True)
    capture.start()
    frames = [capture.next_frame(timeout=3.0) for _ in range(CLIP_FRAMES + 5)]
    capture.stop()
    assert all(f is not None for f in frames)
    got = [f for f in frames if f is not None]
    assert [f.number for f in got] == list(range(CLIP_FRAMES + 5))
    assert np.array_equal(got[CLIP_FRAMES].image, got[0].image)
    assert got[CLIP_FRAMES].position == 0.0
    assert not capture.ended


def test_image_folder_in_order_skipping_a_corrupt_file(tmp_path: Path) -> None:
    for i in (1, 2, 10):
        assert cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((8, 6, 3), i, np.uint8))
    (tmp_path / "img3.jpg").write_bytes(b"\xff\xd8 not really a jpeg \xff\xd9")
    (tmp_path / "notes.txt").write_text("ignored")
    source = ImageFolderSource(tmp_path, fps=5.0)
    statuses = Statuses()
    capture = Capture(source, on_status=statuses)
    capture.start()
    frames = drain(capture)
    capture.stop()
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 10]  # natural order, 3 skipped
    assert [f.position for f in frames] == [0.0, 0.2, 0.4]
    assert source.skipped == 1
    assert statuses.states() == ["connected", "ended"]
    assert "1 unreadable files skipped" in statuses.items[-1].message


def test_empty_or_missing_folder_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(tmp_path).open()
    with pytest.raises(SourceError, match="no such directory"):
        ImageFolderSource(tmp_path / "gone").open()


def test_missing_or_corrupt_video_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"missing\.mp4: no such file"):
        VideoFileSource(tmp_path / "missing.mp4").open()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    with pytest.raises(SourceError, match=r"corrupt\.mp4: not a readable video"):
        VideoFileSource(corrupt).open()

    statuses = Statuses()
    capture = Capture(VideoFileSource(corrupt), on_status=statuses)
    capture.start()
    assert capture.next_frame(timeout=3.0) is None
    capture.stop()
    assert capture.ended
    assert statuses.states() == ["unavailable"]
    assert statuses.items[0].retry_in_seconds is None


def test_open_source_parses_specs(tmp_path: Path) -> None:
    camera = open_source("0")
    assert isinstance(camera, CameraSource)
    assert (camera.name, camera.live) == ("webcam 0", True)
    assert open_source(" 2 ").name == "webcam 2"

    for url in ("rtsp://cam/x", "rtsps://cam/x", "http://cam/x.mjpg", "HTTPS://cam/x"):
        stream = open_source(url)
        assert isinstance(stream, StreamSource)
        assert stream.live

    secret = open_source("rtsp://admin:s3cr3t@10.0.0.5:554/Streaming/101")
    assert secret.name == "rtsp://admin:***@10.0.0.5:554/Streaming/101"
    assert "s3cr3t" not in secret.name
    assert mask_url("rtsp://token@cam/x") == "rtsp://***@cam/x"
    assert mask_url("rtsp://u:p@ss@cam/x?y=1") == "rtsp://u:***@cam/x?y=1"
    assert mask_url("rtsp://u:pa/ss@cam/x") == "rtsp://u:***@cam/x"
    assert (
        mask_url("http://cam/x.mjpg?user=a&pwd=b&fps=5") == "http://cam/x.mjpg?user=a&pwd=***&fps=5"
    )
    assert mask_url("http://cam/x") == "http://cam/x"

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    folder = open_source(str(tmp_path), folder_fps=4.0)
    assert isinstance(folder, ImageFolderSource)
    assert (folder.live, folder.fps, folder.name) == (False, 4.0, f"folder {tmp_path}/")

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    opened = open_source(str(video))
    assert isinstance(opened, VideoFileSource)
    assert (opened.live, opened.name) == (False, f"video {video}")

    with pytest.raises(SourceError, match=r"nothere\.mp4: no such file"):
        open_source(str(tmp_path / "nothere.mp4"))
    with pytest.raises(SourceError):
        open_source("  ")


def test_an_empty_image_folder_is_refused_when_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))


class DeadCamera:
    """A live source that never opens, with the same reason every time (a camera unplugged)."""

    name, live, fps = "webcam 9", True, None

    def open(self) -> None:
        raise SourceError("webcam 9: cannot open")

    def read(self) -> ImageArray | None:
        raise AssertionError("never opened")

    def close(self) -> None:
        pass


def test_retries_log_once_per_change_not_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    statuses = Statuses()
    capture = Capture(
        DeadCamera(), clock=clock, sleep=clock.sleep, on_status=statuses, backoff=(0.5, 1.0)
    )
    with caplog.at_level("INFO", logger="facegate.live.sources"):
        capture.start()
        deadline = time.monotonic() + 5
        while len(statuses.items) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        capture.stop()
    assert len(statuses.items) >= 20  # every retry is still an event (the panel shows it)
    lines = [r.getMessage() for r in caplog.records if "webcam 9" in r.getMessage()]
    assert lines == ["webcam 9: cannot open (retrying with backoff)"]


def test_stream_source_opens_through_ffmpeg_with_timeouts(clip: Path) -> None:
    # No network here: FFmpeg reads a local file as it would a stream.
    stream = StreamSource(str(clip), open_timeout=2.0, read_timeout=2.0)
    stream.open()
    try:
        frame = stream.read()
        assert frame is not None
        assert frame.shape == (360, 640, 3)
        assert stream.fps == pytest.approx(CLIP_FPS)
    finally:
        stream.close()
    with pytest.raises(SourceError, match=r"password=\*\*\*: cannot open"):
        StreamSource("file:///nonexistent/x.mp4?password=abc").open()


def test_camera_that_cannot_open_raises_and_says_how_to_run_without_one() -> None:
    with pytest.raises(SourceError, match="webcam 99: cannot open") as info:
        CameraSource(99).open()
    # A first run on a machine without a camera: the message says what else to run on.
    assert "--source clip.mp4" in str(info.value) and "rtsp://" in str(info.value)


# -- scripted sources ---------------------------------------------------------------------------
def test_latest_mode_drops_unconsumed_frames_and_gives_the_newest() -> None:
    gate = threading.Semaphore(0)
    source = FakeSource(None, live=True, gate=gate)
    capture = Capture(source)
    capture.start()
    try:
        gate.release(5)
        wait_until(lambda: capture.captured == 5)
        frame = capture.next_frame(timeout=1.0)
        assert frame is not None
        assert (frame.number, number_of(frame.image), capture.dropped) == (4, 4, 4)
        assert frame.position is None

        gate.release(3)
        wait_until(lambda: capture.captured == 8)
        frame = capture.next_frame(timeout=1.0)
        assert frame is not None
        assert (frame.number, capture.dropped) == (7, 6)
        assert capture.next_frame(timeout=0.05) is None  # no backlog
    finally:
        gate.release(1000)
        capture.stop()


def test_latest_mode_with_a_slow_consumer() -> None:
    capture = Capture(FakeSource(None, live=True, read_delay=0.001))
    capture.start()
    taken: list[int] = []
    for _ in range(5):
        frame = capture.next_frame(timeout=1.0)
        assert frame is not None
        taken.append(frame.number)
        time.sleep(0.02)
    capture.stop()
    assert taken == sorted(set(taken))
    assert max(b - a for a, b in itertools.pairwise(taken)) > 1
    assert capture.dropped > 0
    assert capture.captured - capture.dropped - len(taken) in (0, 1)  # at most one left unread


def test_lockstep_waits_for_the_consumer() -> None:
    source = FakeSource(3)
    capture = Capture(source)
    capture.start()
    wait_until(lambda: capture.captured == 1)
    time.sleep(0.05)
    assert source.reads == 1  # nothing read ahead while the first frame is untaken
    frames = drain(capture)
    capture.stop()
    assert [f.number for f in frames] == [0, 1, 2]
    assert capture.dropped == 0


def test_realtime_pacing_in_real_time() -> None:
    capture = Capture(FakeSource(10, fps=100.0), realtime=True)
    start = time.monotonic()
    capture.start()
    frames = drain(capture)
    elapsed = time.monotonic() - start
    capture.stop()
    assert 0.09 <= elapsed < 1.0
    assert frames[-1].number == 9


def test_loop_on_a_scripted_file() -> None:
    source = FakeSource(3, fps=10.0)
    statuses = Statuses()
    capture = Capture(source, loop=True, on_status=statuses)
    capture.start()
    frames = [capture.next_frame(timeout=1.0) for _ in range(8)]
    capture.stop()
    got = [f for f in frames if f is not None]
    assert [f.number for f in got] == list(range(8))
    assert [f.position for f in got] == pytest.approx([0, 0.1, 0.2] * 2 + [0, 0.1])
    assert source.opens == 3
    assert statuses.states() == ["connected"]  # loop reopens are not reconnections


def test_live_source_failing_at_open_backs_off_then_connects() -> None:
    clock = FakeClock()
    statuses = Statuses()
    source = FakeSource(None, live=True, fail_opens={0, 1, 2, 3}, read_delay=0.001)
    capture = Capture(
        source, clock=clock, sleep=clock.sleep, on_status=statuses, backoff=(0.5, 3.0)
    )
    capture.start()
    frame = capture.next_frame(timeout=3.0)
    capture.stop()
    assert frame is not None
    assert number_of(frame.image) == frame.number  # the newest frame, numbered from 0 on
    assert statuses.states() == ["unavailable"] * 4 + ["connected"]
    assert [s.retry_in_seconds for s in statuses.items[:4]] == [0.5, 1.0, 2.0, 3.0]
    assert "open 0 refused" in statuses.items[0].message
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0]


def test_live_source_failing_mid_stream_reconnects_and_keeps_going() -> None:
    clock = FakeClock()
    statuses = Statuses()
    # Open 0 works; read 3 breaks; opens 1 and 2 fail; open 3 works; read 7 breaks again.
    source = FakeSource(None, live=True, raise_on={3, 7}, fail_opens={1, 2}, read_delay=0.001)
    capture = Capture(source, clock=clock, sleep=clock.sleep, on_status=statuses)
    capture.start()
    statuses.wait_for(lambda items: len(items) >= 6)
    wait_until(lambda: capture.captured >= 10)
    frame = capture.next_frame(timeout=1.0)
    capture.stop()
    assert statuses.states()[:6] == [
        "connected",
        "unavailable",
        "unavailable",
        "unavailable",
        "connected",
        "unavailable",
    ]
    delays = [s.retry_in_seconds for s in statuses.items[:6]]
    assert delays == [None, 0.5, 1.0, 2.0, None, 0.5]  # reset once frames flowed again
    assert "read 3 broke" in statuses.items[1].message
    assert statuses.items[6].state == "connected"
    assert all(s.source == "fake" for s in statuses.items)
    assert frame is not None
    assert number_of(frame.image) == frame.number  # failed reads are not numbered


def test_live_source_returning_no_frame_counts_as_a_failure() -> None:
    clock = FakeClock()
    statuses = Statuses()
    capture = Capture(FakeSource(2, live=True), clock=clock, sleep=clock.sleep, on_status=statuses)
    capture.start()
    statuses.wait_for(lambda items: len(items) >= 4)
    capture.stop()
    assert statuses.states()[:4] == ["connected", "unavailable", "connected", "unavailable"]
    assert "no frame" in statuses.items[1].message


def test_file_source_raising_mid_stream_ends_unavailable() -> None:
    source = FakeSource(10, raise_on={4})
    statuses = Statuses()
    capture = Capture(source, on_status=statuses)
    capture.start()
    frames = drain(capture)
    capture.stop()
    assert [f.number for f in frames] == [0, 1, 2, 3]
    assert statuses.states() == ["connected", "unavailable"]
    assert statuses.items[1].retry_in_seconds is None
    assert "read 4 broke" in statuses.items[1].message
    assert source.opens == 1
    assert not source.is_open


@pytest.mark.parametrize(
    ("source", "realtime"),
    [
        (FakeSource(None, live=True, fail_from=0), False),  # waiting in backoff
        (FakeSource(100), False),  # waiting for the consumer (lockstep)
        (FakeSource(100, fps=0.2), True),  # waiting for the next frame's time (pacing)
    ],
    ids=["backoff", "lockstep", "pacing"],
)
def test_stop_is_prompt(source: FakeSource, realtime: bool) -> None:
    statuses = Statuses()
    capture = Capture(source, realtime=realtime, on_status=statuses, backoff=(5.0, 10.0))
    capture.start()
    statuses.wait_for(lambda items: len(items) >= 1)
    wait_until(lambda: capture.captured >= 1 or source.live)
    time.sleep(0.02)
    start = time.monotonic()
    capture.stop()
    assert time.monotonic() - start < 0.5
    assert not source.is_open
    if source.live:
        assert statuses.items[0].retry_in_seconds == 5.0
        assert source.opens == 1


def test_capture_survives_a_broken_status_callback() -> None:
    def boom(status: SourceStatus) -> None:
        raise RuntimeError("callback bug")

    capture = Capture(FakeSource(2), on_status=boom)
    capture.start()
    assert [f.number for f in drain(capture)] == [0, 1]
    capture.stop()
