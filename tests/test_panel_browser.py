"""The web panel end to end in a real browser: the real server (uvicorn, the Starlette app,
the runtime with the real models) fed by a scripted cooperative person from Pointing'04 in
place of the camera, driven through Debian's Chromium with Playwright.

One operator registers the stranger from one tab while a second tab follows along; then the
server restarts under the open panel, which reconnects by itself.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from facegate.events import Event, UnknownPersonDetected
from facegate.live.pose_guide import INSTRUCTIONS
from facegate.server.app import GracefulServer, create_app
from facegate.server.http import uvicorn_config
from facegate.server.runtime import Runtime
from facegate.settings import POSE_ORDER, GateSettings, Settings, load_settings
from facegate.vision.analyzers import open_analyzer

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

if not CHROMIUM.is_file():
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python not installed")

from fakes import ScriptedPerson  # noqa: E402  (after the skips above)
from ports import free_port  # noqa: E402
from test_registrar import Person  # noqa: E402

pytestmark = [pytest.mark.shared_data, pytest.mark.models]

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# Installed in the page: every text #instruction shows and every data-progress #progress takes,
# in order (a MutationObserver misses nothing that Python polling could).
RECORDER = """() => {
  const ins = document.getElementById("instruction");
  const bar = document.getElementById("progress");
  window.__instructions = [ins.textContent];
  window.__progress = [Number(bar.dataset.progress)];
  new MutationObserver(() => {
    const t = ins.textContent;
    if (window.__instructions.at(-1) !== t) window.__instructions.push(t);
  }).observe(ins, { childList: true, characterData: true, subtree: true });
  new MutationObserver(() => {
    const p = Number(bar.dataset.progress);
    if (window.__progress.at(-1) !== p) window.__progress.push(p);
  }).observe(bar, { attributes: true, attributeFilter: ["data-progress"] });
}"""
VIDEO_PLAYING = "document.getElementById('video').naturalWidth === 640"  # the MJPEG shows
WATCH_DIALOG = """() => {
  const d = document.getElementById("register-dialog");
  let told = false;
  new MutationObserver(() => {
    if (d.open && !told) { told = true; window.__dialogOpened(); }
  }).observe(d, { attributes: true, attributeFilter: ["open"] });
}"""


class LiveServer:
    """The real app on a real uvicorn in a background thread."""

    def __init__(self, settings: Settings, data_dir: Path, source: ScriptedPerson, port: int):
        self.runtime = Runtime(settings, data_dir, source, lambda: open_analyzer(settings))
        source.runtime = self.runtime
        self.unknown_at: list[float] = []
        self.runtime.on_event.append(self._hook)
        # As `facegate serve` configures uvicorn.
        config = uvicorn_config(create_app(self.runtime), settings.server, port=port)
        # As `facegate serve`: open video streams end when shutdown begins.
        self.server = GracefulServer(config, self.runtime)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn:{port}", daemon=True)

    def _hook(self, event: Event) -> None:
        if isinstance(event, UnknownPersonDetected):
            self.unknown_at.append(time.monotonic())

    def start(self, timeout: float = 30.0) -> LiveServer:
        self.thread.start()
        until = time.monotonic() + timeout
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < until, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.join(timeout)

    def join(self, timeout: float = 15.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def pointing(shared_data: Path) -> Path:
    return shared_data / "pose" / "pointing04"


@pytest.fixture
def settings(faceplugin_dir: Path) -> Settings:
    base = load_settings(environ={})
    return msgspec.structs.replace(
        base, engine=msgspec.structs.replace(base.engine, stable_seconds=1.0)
    )


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC), f"{path} is not a PNG"


def gallery_names(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#gallery .person[data-person-id] .person-name", "els => els.map(e => e.textContent)"
    )


def until(page: Any, expression: str, timeout: float = 30_000) -> None:
    """Poll a JS expression until it is truthy. Not `wait_for_function`: Playwright evaluates
    that predicate inside the page with eval(), which the panel's CSP (rightly) forbids."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout / 1000:.0f} s: {expression}"
        page.wait_for_timeout(20)


def test_the_panel_registers_a_stranger_and_survives_a_server_restart(
    browser: Any, settings: Settings, pointing: Path, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    source = ScriptedPerson(Person(pointing, "p04_person01"))
    live = LiveServer(settings, data_dir, source, port).start()
    stopped = False
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page, other = context.new_page(), context.new_page()
        violations: list[str] = []
        for tab in (page, other):
            tab.on(
                "console",
                lambda msg: (
                    violations.append(msg.text) if "Content Security Policy" in msg.text else None
                ),
            )
        for tab in (page, other):
            tab.goto(url)
            tab.wait_for_selector("#connection[data-state='online']", timeout=15_000)
            assert tab.text_content("#connection") == "online"
        assert not page.is_visible("#register-dialog"), "a dialog before anyone stepped in"
        until(page, VIDEO_PLAYING, timeout=10_000)
        assert page.is_hidden("#camera-status")
        page.evaluate(RECORDER)

        # -- the stranger steps in and is offered: the dialog opens in both tabs -----------------
        # The page reports the moment its dialog opens through a binding, stamped on
        # receipt with Python's monotonic clock (as the server's hook stamps the event).
        opened: list[float] = []
        page.expose_function("__dialogOpened", lambda: opened.append(time.monotonic()))
        page.evaluate(WATCH_DIALOG)
        page.bring_to_front()  # the operator's tab is the one in front
        source.present.set()
        page.wait_for_selector("#register-dialog[open]", state="visible", timeout=20_000)
        seen_at = time.monotonic()
        while not opened:
            page.wait_for_timeout(10)
        assert live.unknown_at, "the dialog opened without unknown_person_detected"
        latency = opened[0] - live.unknown_at[0]
        print(
            f"\nunknown_person_detected -> dialog open: {latency * 1000:.0f} ms"
            f" (seen by wait_for_selector after {(seen_at - live.unknown_at[0]) * 1000:.0f} ms)"
        )
        assert latency >= 0  # the target (<= 300 ms) is a figure of `make bench`, not a test
        other.wait_for_selector("#register-dialog[open]", state="visible", timeout=5_000)

        # -- the operator answers in the first tab; the second tab's dialog closes -------------
        page.fill("#register-name", "Grace")
        page.click("#register-yes")
        assert not page.is_visible("#register-dialog")
        other.wait_for_selector("#register-dialog", state="hidden", timeout=5_000)

        # -- the guided capture ------------------------------------------------------------------
        page.wait_for_selector("#registration[data-state='active']", timeout=10_000)
        until(page, "Number(document.querySelector('#progress').dataset.progress) > 0")
        page.screenshot(path=str(ARTIFACTS / "panel-capture.png"), full_page=True)
        page.wait_for_selector("#result.success", timeout=40_000)
        result = page.text_content("#result") or ""
        assert "Grace" in result and "registered" in result, result

        instructions: list[str] = page.evaluate("window.__instructions")
        progress: list[float] = page.evaluate("window.__progress")
        asked = [t for t in instructions if t in INSTRUCTIONS.values()]
        assert asked == [INSTRUCTIONS[pose] for pose in POSE_ORDER], instructions
        assert progress == sorted(progress), progress
        assert progress[-1] == 100 and len(progress) >= 6, progress
        assert source.poses_shown == {"front", "left", "right", "up", "down"}

        # -- Grace in the gallery, her thumbnail loaded (both tabs) ------------------------------
        for tab in (page, other):
            until(
                tab,
                """() => [...document.querySelectorAll("#gallery .person[data-person-id]")]
                    .some(p => p.querySelector(".person-name")?.textContent === "Grace"
                      && p.querySelector(".thumb img")?.complete
                      && p.querySelector(".thumb img").naturalWidth > 0)""",
                timeout=10_000,
            )
        assert gallery_names(page) == ["Grace"]
        until(
            page,
            "document.querySelector('#stats [data-stat=persons]').textContent === '1'",
            timeout=5_000,
        )
        assert len(live.runtime.registrar.stored) == 1  # type: ignore[union-attr]
        page.screenshot(path=str(ARTIFACTS / "panel-done.png"), full_page=True)
        for name in ("panel-capture.png", "panel-done.png"):
            assert_png(ARTIFACTS / name)

        # -- the server goes away: the panel says so ------------------------------------------
        went = time.monotonic()
        live.server.should_exit = True
        page.wait_for_selector("#connection[data-state='offline']", timeout=5_000)
        assert "offline" in (page.text_content("#connection") or "")
        print(f"offline shown {time.monotonic() - went:.1f} s after the server was told to stop")
        live.join()
        stopped = True
        print(f"server stopped after {time.monotonic() - went:.1f} s")

        # -- a new server (new runtime, same data) on the same port: the panel comes back ----
        source = ScriptedPerson(Person(pointing, "p04_person01"))
        live = LiveServer(settings, data_dir, source, port).start()
        stopped = False
        back = time.monotonic()
        page.wait_for_selector("#connection[data-state='online']", timeout=20_000)
        print(f"online again {time.monotonic() - back:.1f} s after the new server started")
        until(
            page,
            """() => [...document.querySelectorAll("#gallery .person-name")]
                .some(e => e.textContent === "Grace")""",
            timeout=10_000,
        )
        assert gallery_names(page) == ["Grace"]
        until(page, VIDEO_PLAYING, timeout=10_000)  # the MJPEG stream restarted
        assert page.is_hidden("#camera-status")
        assert violations == [], "the panel broke its own Content-Security-Policy"
        context.close()
    finally:
        if not stopped:
            with contextlib.suppress(AssertionError):
                live.stop()


def test_a_viewer_sees_the_gate_and_its_boxes_but_is_not_asked_to_decide(
    browser: Any, settings: Settings, pointing: Path, tmp_path: Path
) -> None:
    tokens = {"token": "admin-secret", "viewer_token": "view-secret"}
    settings = msgspec.structs.replace(
        settings,
        gate=GateSettings(id="front-door"),
        server=msgspec.structs.replace(settings.server, **tokens),
    )
    port = free_port()
    source = ScriptedPerson(Person(pointing, "p04_person01"))
    live = LiveServer(settings, tmp_path / "data", source, port).start()
    try:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.goto(f"http://127.0.0.1:{port}/?token=view-secret")
        page.wait_for_selector("#connection[data-state='online']", timeout=15_000)
        until(page, "document.body.dataset.role === 'viewer'")
        until(page, VIDEO_PLAYING, timeout=10_000)  # a viewer sees the video
        assert page.is_hidden("#reset")
        until(page, "document.querySelector('#gallery').textContent.includes('Only an admin')")
        source.present.set()
        until(page, "document.querySelector('#feed').textContent.includes('operator')", 20_000)
        assert live.unknown_at, "the stranger was offered"
        assert not page.is_visible("#register-dialog")
        # The viewer sees the boxes, but no Register on them, no unknown faces, no person filter.
        tracks = "JSON.parse(document.getElementById('overlay').dataset.tracks || '[]')"
        until(page, f"{tracks}.some(t => t.state === 'unknown')", 20_000)
        assert not page.query_selector("#overlay-buttons .overlay-register")
        assert page.is_hidden("#unknowns-card")
        assert page.is_hidden("#history-person-label")
        until(page, "document.querySelector('#history-body tr[data-seq]')", 10_000)
        # The history names the gate that saw each event: this one, by its gate.id.
        heads = page.eval_on_selector_all("#history thead th", "hs => hs.map(h => h.textContent)")
        assert heads[1] == "Gate", heads
        gates = page.eval_on_selector_all(
            "#history-body tr td.h-gate", "ts => ts.map(t => t.textContent)"
        )
        assert gates and set(gates) == {"front-door"}, gates
        assert page.text_content("#gate-name") == "front-door"
        until(
            page,
            "document.getElementById('history-gate').options[0].text === 'This gate (front-door)'",
        )
        data = json.loads(page.get_attribute("#overlay", "data-tracks") or "[]")
        assert all(t["name"] is None for t in data), data
    finally:
        live.stop()
