"""The panel shows the liveness challenge (issue 15) on the person's box, in the event feed and in
the event history, in a real browser (Debian's Chromium through Playwright) against the real
server (uvicorn, the Starlette app, the runtime with its bus, hub and history).

No model runs: the camera delivers no frame (so the engine never processes one) and the
analyzer finds nobody (`NoFaces`). The test plays the engine's part on the wire: its events go
through the runtime's bus (`publish_threadsafe`, as the engine thread hands them over), and the
faces of a frame through `Engine.latest`, where the engine leaves each processed frame with its
`Tracks` view: `/video.mjpg` serves that picture (labelled with its frame number) and the
WebSocket sends that view, exactly as for a frame the engine processed.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facegate.events import (
    Event,
    LivenessChallenge,
    LivenessPoseFeedback,
    LivenessResult,
    PersonRecognized,
    Tracks,
    TrackView,
)
from facegate.live.sources import Frame
from facegate.server.app import GracefulServer, create_app
from facegate.server.http import uvicorn_config
from facegate.server.runtime import Runtime
from facegate.settings import Settings
from fakes import NoFaces

# The browser fixture and helpers of the first panel test (it skips this module too without
# Chromium or Playwright).
from test_panel_browser import ARTIFACTS, browser, free_port, until  # noqa: F401  (fixture)

WIDTH, HEIGHT = 640, 480
THRESHOLD = 0.45
GREEN = "#35c46a"  # the "known" colour of overlay.js: a welcome
EVIL = 'Eve <img src=x onerror="window.__pwned=1">'  # a name is user input
TURN_LEFT = "Turn your head to your left, then back"
TRACKS = "JSON.parse(document.getElementById('overlay').dataset.tracks || '[]')"
REASONS = {
    "planar": "moved like a photo or screen",
    "timeout": "did not turn in time",
    "track_lost": "face lost during the check",
    "identity_changed": "another face during the check",
}


class NoFrames:
    """A live camera that delivers no frame until the server shuts down: the engine never
    processes one, so the frame and faces the test leaves in `Engine.latest` stay there."""

    live = True
    fps: float | None = 10.0
    name = "no frames"

    def __init__(self) -> None:
        self.closing = threading.Event()  # the runtime's, once it exists

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        while not self.closing.wait(0.1):
            pass
        time.sleep(0.1)
        return np.full((HEIGHT, WIDTH, 3), 60, np.uint8)

    def close(self) -> None:
        pass


class Gate:
    """The real app on a real uvicorn (as `facegate serve` runs it) and the engine's voice."""

    def __init__(self, data_dir: Path, port: int) -> None:
        source = NoFrames()
        self.runtime = Runtime(Settings(), data_dir, source, NoFaces)
        source.closing = self.runtime.closing
        config = uvicorn_config(create_app(self.runtime), self.runtime.settings.server, port=port)
        self.server = GracefulServer(config, self.runtime)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn:{port}", daemon=True)
        self.url = f"http://127.0.0.1:{port}/"
        self.frame = 0
        self.picture = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)

    def start(self, timeout: float = 30.0) -> Gate:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def publish(self, *events: Event) -> None:
        """As the engine thread hands its events to the loop."""
        for event in events:
            self.runtime.bus.publish_threadsafe(event)

    def show(self, *faces: TrackView) -> int:
        """A new processed frame with these faces, where the engine leaves it; its number."""
        self.frame += 1
        n = self.frame
        frame = Frame(self.picture, n, time.monotonic(), None)
        view = Tracks(
            frame=n,
            frame_time=n / 10,
            width=WIDTH,
            height=HEIGHT,
            threshold=THRESHOLD,
            tracks=list(faces),
        )
        self.runtime.engine.latest = (frame, view)
        return n


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "data", free_port()).start()
    try:
        yield g
    finally:
        with contextlib.suppress(AssertionError):
            g.stop()


def face(
    track_id: int,
    liveness: str | None,
    *,
    name: str = "Bob",
    person_id: str = "p-bob",
    x: float = 60.0,
    instruction: str | None = None,
) -> TrackView:
    return TrackView(
        track_id=track_id,
        bbox=[x, 100.0, x + 150.0, 290.0],
        state="known",
        person_id=person_id,
        name=name,
        similarity=0.62,
        liveness=liveness,  # type: ignore[arg-type]
        instruction=instruction,
    )


def recognized(track_id: int, name: str, person_id: str, access: str) -> PersonRecognized:
    return PersonRecognized(
        track_id=track_id,
        person_id=person_id,
        name=name,
        message=f"Welcome, {name}",
        similarity=0.62,
        threshold=THRESHOLD,
        confidence=0.62,
        distance=0.38,
        access=access,  # type: ignore[arg-type]
    )


def result(
    track_id: int, reason: str, *, name: str = "Bob", person_id: str = "p-bob", **kw: Any
) -> LivenessResult:
    passed = reason == "passed"
    fields: dict[str, Any] = {
        "residual": 0.21 if passed else 0.021,
        "cutoff": 0.128,
        "seconds": 2.4,
        "passive_score": 0.9,
    }
    fields.update(kw)
    return LivenessResult(
        track_id=track_id,
        person_id=person_id,
        name=name,
        passed=passed,
        reason=reason,
        message="Live" if passed else "Not live",
        access="granted" if passed else "denied",
        **fields,
    )


def note(page: Any, track_id: int) -> dict[str, Any] | None:
    """The liveness note under a face's box: its state and visible texts."""
    got: dict[str, Any] | None = page.evaluate(
        """(id) => {
          const n = document.querySelector(`#overlay-notes .liveness-note[data-track-id="${id}"]`);
          if (!n) return null;
          const text = (c) => {
            const e = n.querySelector(c);
            return e.hidden ? null : e.textContent;
          };
          return { liveness: n.dataset.liveness, main: text(".ln-main"), hint: text(".ln-hint"),
            left: text(".ln-left"), detail: text(".ln-detail"), visible: n.offsetWidth > 0 };
        }""",
        track_id,
    )
    return got


def wait_note(page: Any, track_id: int, liveness: str) -> dict[str, Any]:
    until(
        page,
        f"""document.querySelector('#overlay-notes .liveness-note[data-track-id="{track_id}"]')
            ?.dataset.liveness === '{liveness}'""",
        10_000,
    )
    got = note(page, track_id)
    assert got is not None and got["visible"], got
    return got


def colours(page: Any) -> dict[int, str]:
    return {t["track_id"]: t["colour"] for t in page.evaluate(TRACKS)}


def feed_texts(page: Any) -> list[str]:
    texts: list[str] = page.eval_on_selector_all(
        "#feed li span", "els => els.map(e => e.textContent)"
    )
    return texts


def wait_feed(page: Any, text: str) -> str:
    until(
        page,
        "[...document.querySelectorAll('#feed li span')]"
        f".some(e => e.textContent.includes({json.dumps(text)}))",
        10_000,
    )
    return next(t for t in feed_texts(page) if text in t)


def assert_no_injection(page: Any) -> None:
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert page.evaluate("window.__pwned === undefined")


def test_the_panel_shows_the_liveness_challenge_and_its_verdict_on_the_box(
    browser: Any,  # noqa: F811  (fixture)
    gate: Gate,
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if m.type == "error" else None)
    page.goto(gate.url)
    page.wait_for_selector("#connection[data-state='online']", timeout=15_000)

    # -- Eve is recognized: access pending, she is asked to turn; Bob waits his turn ----------
    gate.publish(
        recognized(1, EVIL, "p-eve", "pending"),
        LivenessChallenge(
            track_id=1,
            person_id="p-eve",
            name=EVIL,
            direction="left",
            instruction=TURN_LEFT,
            message=f"{EVIL}, please turn your head to your left, then back",
            target_yaw=[25.0, 60.0],
            target_pitch=[-15.0, 15.0],
            timeout_seconds=8.0,
        ),
        recognized(2, "Bob", "p-bob", "pending"),
    )
    gate.show(
        face(1, "asked", name=EVIL, person_id="p-eve", instruction=TURN_LEFT),
        face(2, "waiting", x=400.0),
    )
    asked = wait_note(page, 1, "asked")
    assert asked["main"] == TURN_LEFT, asked
    waiting = wait_note(page, 2, "waiting")
    assert waiting["main"] == "liveness check next", waiting
    # The live pose hint and the time left, from liveness_pose_feedback for that face.
    gate.publish(
        LivenessPoseFeedback(
            track_id=1,
            person_id="p-eve",
            direction="left",
            phase="turn",
            yaw=5.0,
            pitch=0.0,
            target_yaw=[25.0, 60.0],
            target_pitch=[-15.0, 15.0],
            seconds_left=6.5,
            hint="turn a little more to your left",
        )
    )
    until(
        page,
        "document.querySelector('.liveness-note[data-track-id=\"1\"] .ln-hint')?.textContent"
        " === 'turn a little more to your left'",
        10_000,
    )
    now = note(page, 1)
    assert now is not None and now["main"] == TURN_LEFT, now
    left = now["left"] or ""
    assert left.endswith(" s left") and 0 <= int(left.split()[0]) <= 7, now
    # Recognized but not yet live: nothing says welcome.
    assert GREEN not in colours(page).values(), colours(page)
    pending = wait_feed(page, "checking liveness…")
    assert EVIL in pending or "Bob" in pending, pending
    assert wait_feed(page, f"Liveness check for {EVIL}: {TURN_LEFT}")
    until(page, "document.getElementById('presence').textContent.includes('checking liveness…')")
    page.screenshot(path=str(ARTIFACTS / "panel-liveness-asked.png"), full_page=True)

    # -- Eve moved like a photo: denied; Bob turned like a real head: granted ------------------
    gate.publish(result(1, "planar", name=EVIL, person_id="p-eve"), result(2, "passed"))
    gate.show(face(1, "failed", name=EVIL, person_id="p-eve"), face(2, "passed", x=400.0))
    failed = wait_note(page, 1, "failed")
    assert failed["main"] == "Not live ✗ — access denied", failed
    assert failed["detail"] == "moved like a photo or screen", failed
    passed = wait_note(page, 2, "passed")
    assert passed["main"] == "Live ✓ — access granted", passed
    shown = colours(page)
    assert shown[1] != GREEN and shown[2] == GREEN, shown
    denied = wait_feed(page, "Not live ✗")
    assert denied == (
        f"Not live ✗ {EVIL}: moved like a photo or screen — access denied"
        " (score 0.021 ≤ cut-off 0.128, 2.4 s)"
    ), denied
    granted = wait_feed(page, "Live ✓ Bob")
    assert granted == "Live ✓ Bob — access granted (score 0.21 > cut-off 0.128, 2.4 s)", granted
    page.screenshot(path=str(ARTIFACTS / "panel-liveness-verdicts.png"), full_page=True)

    # -- every other way to fail, in plain words on the box and in the feed -------------------
    for track_id, reason in enumerate(("timeout", "track_lost", "identity_changed"), start=3):
        # The turn was never reached: no score to show.
        name, person_id = f"P{track_id}", f"p-{track_id}"
        gate.publish(result(track_id, reason, name=name, person_id=person_id, residual=None))
        gate.show(face(track_id, "failed", name=name, person_id=person_id))
        got = wait_note(page, track_id, "failed")
        assert got["main"] == "Not live ✗ — access denied", got
        assert got["detail"] == REASONS[reason], (reason, got)
        line = wait_feed(page, f"Not live ✗ P{track_id}")
        assert line == f"Not live ✗ P{track_id}: {REASONS[reason]} — access denied (2.4 s)", line

    # -- a verdict stands for the person: Eve's new face is shown failed, for the same reason --
    gate.show(face(6, "failed", name=EVIL, person_id="p-eve"))
    again = wait_note(page, 6, "failed")
    assert again["detail"] == REASONS["planar"], again

    # -- the names stayed text -----------------------------------------------------------------
    assert_no_injection(page)
    assert any(EVIL in t for t in feed_texts(page))

    # -- the history renders the three new events readably ------------------------------------
    rows = """[...document.querySelectorAll('#history-body tr[data-seq]')].map(r => ({
      type: r.dataset.type, text: r.querySelector('.h-text').textContent,
      who: r.querySelector('.h-who').textContent,
      kind: r.querySelector('.h-type').textContent }))"""
    until(
        page,
        f"""(() => {{ const rs = {rows};
          return rs.some(r => r.type === 'liveness_result'
              && r.text.includes('{REASONS["identity_changed"]}'))
            && rs.some(r => r.type === 'liveness_challenge'); }})()""",
        10_000,
    )
    history = page.evaluate(rows)
    # The default filter hides the pose readings.
    assert not any(r["type"] == "liveness_pose_feedback" for r in history), history
    by_type = {r["type"]: r for r in reversed(history)}  # the oldest of each type
    challenge = by_type["liveness_challenge"]
    assert challenge["text"] == f"Liveness check for {EVIL}: {TURN_LEFT} (8 s)", challenge
    assert challenge["who"] == EVIL and challenge["kind"] == "liveness challenge", challenge
    verdicts = [r for r in history if r["type"] == "liveness_result"]
    texts = [r["text"] for r in verdicts]
    assert (
        f"Not live ✗ {EVIL}: moved like a photo or screen — access denied"
        " (score 0.021 ≤ cut-off 0.128, 2.4 s)"
    ) in texts, texts
    assert "Live ✓ Bob — access granted (score 0.21 > cut-off 0.128, 2.4 s)" in texts, texts
    for reason, words in REASONS.items():
        assert any(words in t for t in texts), (reason, texts)
    recog = [r["text"] for r in history if r["type"] == "person_recognized"]
    assert recog and all(t.endswith("— checking liveness…") for t in recog), recog
    for r in history:
        assert not r["text"].startswith("{") and "unknown" not in r["text"].lower(), r
    # All events: the pose reading reads as one.
    page.select_option("#history-type", "")
    until(
        page,
        "[...document.querySelectorAll("
        "'#history-body tr[data-type=\"liveness_pose_feedback\"] .h-text')]"
        ".some(e => e.textContent.includes('yaw 5°'))",
        10_000,
    )
    reading = page.eval_on_selector(
        "#history-body tr[data-type='liveness_pose_feedback'] .h-text", "e => e.textContent"
    )
    assert reading == (
        "Liveness turn left (face #1): yaw 5°, pitch 0° — turn a little more to your left, 7 s left"
    ), reading
    # Only the liveness checks.
    page.select_option("#history-type", "liveness_challenge,liveness_result")
    until(
        page,
        """document.getElementById('history').dataset.loading === 'false'
          && [...document.querySelectorAll('#history-body tr[data-seq]')]
            .every(r => r.dataset.type.startsWith('liveness_'))""",
        10_000,
    )
    assert_no_injection(page)
    page.screenshot(path=str(ARTIFACTS / "panel-liveness-history.png"), full_page=True)
    csp = [v for v in violations if "Content Security Policy" in v]
    assert csp == [], csp
