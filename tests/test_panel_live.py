"""The panel's live view in a real browser: the faces drawn by the browser over the plain video
(from the `tracks` message), the decision and pose countdowns, a face offered again after
"Not now", the greeting right after a registration, no box left behind when the face goes,
the recent unknown faces, the person detail and the event history.

The real server (uvicorn, the app, the runtime with the real models) is fed by a scripted
cooperative person from Pointing'04, as in test_panel_browser.py, whose helpers it uses. The
overlay is checked through the data it draws (`#overlay[data-tracks]`), not its pixels.

Screenshots of the new parts go to test-artifacts/ (git-ignored), or to docs/ with
FACEGATE_SCREENSHOTS=docs.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from facegate.settings import Settings
from fakes import ScriptedPerson

# The helpers and fixtures of the first panel test (it skips this module too without Chromium).
from test_panel_browser import (
    ARTIFACTS,
    REPO,
    VIDEO_PLAYING,
    LiveServer,
    assert_png,
    browser,  # noqa: F401  (fixture)
    free_port,
    gallery_names,
    pointing,  # noqa: F401  (fixture)
    settings,  # noqa: F401  (fixture)
    until,
)
from test_registrar import Person

pytestmark = [pytest.mark.shared_data, pytest.mark.models]

SHOTS = REPO / "docs" if os.environ.get("FACEGATE_SCREENSHOTS") == "docs" else ARTIFACTS
TRACKS = "JSON.parse(document.getElementById('overlay').dataset.tracks || '[]')"
HISTORY_FULL_PAGE = """document.getElementById('history').dataset.loading === 'false'
  && document.querySelectorAll('#history-body tr[data-seq]').length === 15"""

# Installed in the page: every reading the gauge plots, as (yaw, side of the dot).
GAUGE_RECORDER = """() => {
  const svg = document.getElementById("pose-gauge");
  window.__gauge = [];
  new MutationObserver(() => {
    if (svg.dataset.side) window.__gauge.push([Number(svg.dataset.yaw), svg.dataset.side]);
  }).observe(svg, { attributes: true, attributeFilter: ["data-side", "data-yaw"] });
}"""


# What the overlay draws on which picture: the frame shown and the view drawn on it.
SYNC = """(() => { const d = document.getElementById("overlay").dataset;
  return { tracks: JSON.parse(d.tracks || "[]").length, frame: d.frame, drawnTime: d.drawnTime,
    drawnScene: d.drawnScene, shownFrame: d.shownFrame, shownTime: d.shownTime,
    shownScene: d.shownScene }; })()"""
MAX_LAG = 0.25  # s of stream time a view drawn may be older than its picture (overlay.js)


def boxes_match_the_picture(page: Any, samples: int = 40, every_ms: int = 100) -> float:
    """Samples the overlay: whenever boxes are drawn, they are of the picture shown or of a
    moment just before it in the same scene. Returns the share of samples with boxes."""
    drawn = 0
    for _ in range(samples):
        d = page.evaluate(SYNC)
        if d["tracks"]:
            drawn += 1
            assert d["frame"] and d["shownFrame"], d
            assert int(d["frame"]) <= int(d["shownFrame"]), d
            assert d["drawnScene"] == d["shownScene"], d
            lag = float(d["shownTime"]) - float(d["drawnTime"])
            assert 0 <= lag <= MAX_LAG + 1e-6, d
        else:
            assert d["frame"] == "", d
        page.wait_for_timeout(every_ms)
    return drawn / samples


def seconds(page: Any, selector: str) -> int | None:
    raw = page.eval_on_selector(selector, "e => e.hidden ? '' : e.dataset.seconds || ''")
    return int(raw) if raw else None


def tracks(page: Any) -> list[dict[str, Any]]:
    return page.evaluate(TRACKS)  # type: ignore[no-any-return]


def shot(target: Any, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    target.screenshot(path=str(SHOTS / name))
    assert_png(SHOTS / name)


def test_live_overlay_countdowns_reoffer_greeting_and_workspace(
    browser: Any,  # noqa: F811
    settings: Settings,  # noqa: F811
    pointing: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    port = free_port()
    person = Person(pointing, "p04_person01")
    source = ScriptedPerson(person)
    live = LiveServer(settings, tmp_path / "data", source, port).start()
    try:
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        problems: list[str] = []
        page.on(
            "console",
            lambda m: (
                problems.append(m.text)
                if "Content Security Policy" in m.text
                or (m.type == "error" and "Failed to load resource" not in m.text)
                else None
            ),
        )
        page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#connection[data-state='online']", timeout=15_000)
        until(page, VIDEO_PLAYING, timeout=10_000)
        assert page.is_hidden("#camera-status")
        assert tracks(page) == []
        page.evaluate(GAUGE_RECORDER)

        # -- a stranger steps in: a box over the face, and the question with its countdown -------
        source.present.set()
        page.wait_for_selector("#register-dialog[open]", state="visible", timeout=20_000)
        assert page.get_attribute("#register-dialog", "data-mode") == "decision"
        assert "no one enrolled yet" in (page.text_content("#register-why") or "").lower()
        until(page, f"{TRACKS}.some(t => t.state === 'unknown')", timeout=5_000)
        track_id = next(t["track_id"] for t in tracks(page) if t["state"] == "unknown")
        until(page, "document.getElementById('decision-countdown').dataset.seconds", 5_000)
        first = seconds(page, "#decision-countdown")
        assert first is not None and first > 2, first
        page.wait_for_timeout(1_600)
        later = seconds(page, "#decision-countdown")
        assert later is not None and later < first, (first, later)
        assert f"answer within {later} s" in (page.text_content("#decision-countdown") or "")

        # Typing a name tells the gate, which extends the deadline once.
        page.type("#register-name", "Gr")
        extended = "document.getElementById('decision-countdown').dataset.extended === 'true'"
        until(page, extended, 5_000)
        assert page.is_visible("#register-dialog")  # typing never closes it

        # -- "Not now"; the face stays in view and can be offered again ---------------------------
        page.click("#register-no")
        page.wait_for_selector("#register-dialog", state="hidden", timeout=2_000)
        until(page, "document.getElementById('result').textContent.includes('cancelled')", 5_000)
        next_step = page.text_content("#next-step") or ""
        assert page.is_visible("#next-step") and next_step.strip(), "no next step after Not now"

        row = f"#unknowns li[data-track-id='{track_id}']"
        page.wait_for_selector(f"{row}[data-present='true'] .uf-register", timeout=8_000)
        until(page, f'document.querySelector("{row} .thumb img")?.naturalWidth > 0', 8_000)
        shot(page.locator("#unknowns-card"), "panel-unknowns.png")

        button = f"#overlay-buttons .overlay-register[data-track-id='{track_id}']"
        page.wait_for_selector(button, state="visible", timeout=5_000)
        page.click(button)
        page.wait_for_selector("#register-dialog[open][data-mode='offer']", timeout=2_000)
        assert page.get_attribute("#register-dialog", "data-track-id") == str(track_id)
        page.fill("#register-name", "Grace")
        page.click("#register-yes")
        page.wait_for_selector("#registration[data-state='active']", timeout=10_000)

        # -- the capture: the pose countdown and the hint --------------------------------------
        until(page, "document.getElementById('pose-countdown').dataset.seconds", 10_000)
        assert (seconds(page, "#pose-countdown") or 0) > 0
        # One registration at a time: no face offers "Register" while it runs.
        assert not [
            b for b in page.query_selector_all(".uf-register, .overlay-register") if b.is_visible()
        ]
        page.wait_for_selector("#result.success", timeout=45_000)
        result = page.text_content("#result") or ""
        assert "Grace" in result, result

        # -- greeted at once, and the box says who it is ---------------------------------------
        until(page, "document.getElementById('presence').textContent === 'Grace recognized'", 5_000)
        until(page, f"{TRACKS}.some(t => t.state === 'known' && t.name === 'Grace')", 5_000)

        # -- the boxes are those of the picture shown (video.js labels each, overlay.js matches) -
        share = boxes_match_the_picture(page)
        print(f"\nboxes drawn in {share:.0%} of the samples, each on its own picture")
        assert share >= 0.75, share
        shot(page.locator(".video-wrap"), "panel-overlay.png")
        until(page, f'!document.querySelector("{row}")', 4_000)  # no stranger any more

        # The gauge drew each reading as the camera sees it: turned to their own left (yaw < 0),
        # the dot is right of centre, as the nose is in the video.
        readings: list[list[Any]] = page.evaluate("window.__gauge")
        assert readings, "the gauge plotted nothing"
        for yaw, side in readings:
            if yaw < -10:
                assert side == "right", readings
            elif yaw > 10:
                assert side == "left", readings
        assert {side for yaw, side in readings if abs(yaw) > 10} == {"left", "right"}, readings

        # -- the person's detail: facts, more photos (with refusals), erase is there ------------
        until(page, "document.querySelectorAll('#gallery .person[data-person-id]').length === 1")
        assert gallery_names(page) == ["Grace"]
        page.click("#gallery .person[data-person-id] .thumb")
        page.wait_for_selector("#person-dialog[open][data-loaded='true']", timeout=5_000)
        assert int(page.text_content("#person-facts [data-fact='embeddings']") or 0) > 0
        assert "front" in (page.text_content("#person-facts [data-fact='poses']") or "")
        assert page.is_visible("#person-erase")
        wall = tmp_path / "empty-wall.png"  # a photo without a face: refused
        cv2.imwrite(str(wall), np.full((240, 320, 3), 90, np.uint8))
        page.set_input_files("#person-files", [str(person.images[(0, 0)]), str(wall)])
        page.click("#person-upload")
        until(
            page,
            "['success', 'partial', 'failure'].includes("
            "document.getElementById('person-upload-result').dataset.state)",
            30_000,
        )
        upload = page.text_content("#person-upload-result") or ""
        assert "empty-wall.png" in upload and "refused" in upload, upload
        shot(page.locator("#person-dialog"), "panel-person.png")
        page.click("#person-close")

        # -- the event history: filters and paging -------------------------------------------
        page.click("#history-refresh")
        until(page, "document.querySelector('#history-body tr[data-type=registration_complete]')")
        page.select_option("#history-type", "person_recognized")
        until(
            page,
            """(() => { const rows = [...document.querySelectorAll('#history-body tr')];
                return rows.length
                  && rows.every(r => r.dataset.type === 'person_recognized'); })()""",
        )
        assert "Grace" in (page.text_content("#history-body") or "")
        assert "similarity" in (page.text_content("#history-body") or "")
        names = page.eval_on_selector_all("#history-person option", "os => os.map(o => o.text)")
        assert "Grace" in names, names
        page.select_option("#history-type", index=0)  # all but the pose readings
        until(page, "document.querySelectorAll('#history-body tr[data-seq]').length === 15")
        assert page.is_enabled("#history-older")
        kinds = page.eval_on_selector_all("#history-body tr", "rs => rs.map(r => r.dataset.type)")
        assert "registration_pose_feedback" not in kinds, kinds
        newest = page.eval_on_selector_all("#history-body tr", "rs => rs.map(r => +r.dataset.seq)")
        assert newest == sorted(newest, reverse=True), newest
        shot(page.locator("#history-card"), "panel-history.png")
        page.click("#history-older")
        until(page, "document.getElementById('history').dataset.page === '2'")
        until(page, "document.getElementById('history').dataset.loading === 'false'")
        older = page.eval_on_selector_all("#history-body tr", "rs => rs.map(r => +r.dataset.seq)")
        assert older and max(older) < min(newest), (newest, older)
        page.click("#history-newer")
        until(page, "document.getElementById('history').dataset.page === '1'")
        # Every gate sharing the store (only this one here): newest first, paged by time.
        gates = page.eval_on_selector_all("#history-body tr", "rs => rs.map(r => r.dataset.gate)")
        assert set(gates) == {"gate"}, gates
        page.select_option("#history-gate", "all")
        until(page, HISTORY_FULL_PAGE)
        rows = (
            "rs => rs.map(r => [r.dataset.gate, +r.dataset.seq, r.querySelector('time').dateTime])"
        )
        first = page.eval_on_selector_all("#history-body tr", rows)
        assert [r[2] for r in first] == sorted((r[2] for r in first), reverse=True), first
        page.click("#history-older")
        until(page, "document.getElementById('history').dataset.page === '2'")
        until(page, "document.getElementById('history').dataset.loading === 'false'")
        second = page.eval_on_selector_all("#history-body tr[data-seq]", rows)
        # This gate's rows as its own paging showed them (shifted, if an event came since).
        assert second and {r[1] for r in second} <= {*newest, *older}, (second, newest, older)
        assert not {tuple(r) for r in first} & {tuple(r) for r in second}, (first, second)
        assert max(r[2] for r in second) <= min(r[2] for r in first), (first, second)
        page.select_option("#history-gate", "")  # back to this gate's own
        until(page, "document.getElementById('history').dataset.page === '1'")

        # -- the face leaves: no box stays drawn ----------------------------------------------
        source.present.clear()
        gone = time.monotonic()
        until(page, f"{TRACKS}.length === 0", 2_000)
        print(f"\noverlay empty {time.monotonic() - gone:.2f} s after the face left")
        assert not page.query_selector("#overlay-buttons .overlay-register")
        until(page, "document.getElementById('presence').textContent === 'Grace left the area'")

        assert problems == [], problems
        ARTIFACTS.mkdir(exist_ok=True)  # the whole page: for looking at, not for docs/
        page.screenshot(path=str(ARTIFACTS / "panel-live.png"), full_page=True)
        page.context.close()
    finally:
        with contextlib.suppress(AssertionError):
            live.stop()
