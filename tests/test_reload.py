"""SIGHUP reloads the settings (server/reload.py): which keys apply at run time and which need a
restart, the running components taking them (the engine at its next frame, the gallery, the
registration once idle, the liveness challenge), a real SIGHUP to a running app, and to a real
`facegate serve` under a stand-in for systemd's notification socket."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace as replace_state
from pathlib import Path
from typing import Any

import cv2
import httpx2 as httpx
import msgspec
import numpy as np
import pytest
from starlette.testclient import TestClient

from facegate.events import Event
from facegate.identity.gallery import Gallery
from facegate.identity.store import Store
from facegate.live.engine import Engine
from facegate.live.focus import RegistrationFocus
from facegate.live.registrar import Registrar
from facegate.live.registration import Phase, State
from facegate.live.sources import Frame, ImageFolderSource
from facegate.server.app import create_app
from facegate.server.reload import (
    HOT,
    Reloader,
    changed_keys,
    classify,
    install,
    is_hot,
    leaves,
    overlay,
)
from facegate.server.runtime import Runtime
from facegate.settings import Settings, load_settings
from fakes import NoFaces
from ports import free_port

replace = msgspec.structs.replace
VIDEO = "intel_face-demographics-walking-and-pause.mp4"


def changed(settings: Settings, **sections: dict[str, Any]) -> Settings:
    for name, values in sections.items():
        settings = replace(settings, **{name: replace(getattr(settings, name), **values)})
    return settings


# -- which keys ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "hot"),
    [
        ("recognition.threshold", True),
        ("recognition.margin", True),
        ("recognition.duplicate_threshold", True),
        ("quality.recognition.min_face_px", True),
        ("quality.enrolment.min_sharpness", True),
        ("engine.stable_seconds", True),
        ("engine.left_after_seconds", True),
        ("engine.max_embeddings_per_frame", True),
        ("engine.unknowns_kept", True),
        ("registration.decision_timeout_seconds", True),
        ("registration.poses.left.yaw", True),
        ("liveness.challenge_seconds", True),
        ("liveness.planarity_cutoff", True),
        ("liveness.directions", True),
        ("events.retention_days", True),
        ("events.max_rows", True),
        # Only with a restart: loaded models, the built index, the open store, the gate's
        # identity, the bound server, the connected MQTT bridge, whether history is kept, and
        # whether the challenge runs at all (its models are loaded at start only when on).
        ("models.pack", False),
        ("models.dir", False),
        ("detection.min_score", False),
        ("index.nprobe", False),
        ("store.url", False),
        ("store.thumbnails", False),
        ("gate.id", False),
        ("server.port", False),
        ("server.host", False),
        ("server.token", False),
        ("server.tracks_per_second", False),
        ("mqtt.url", False),
        ("mqtt.publish_names", False),
        ("events.enabled", False),
        ("liveness.challenge", False),
        ("liveness.passive_score", False),
    ],
)
def test_each_key_is_applied_or_needs_a_restart(key: str, hot: bool) -> None:
    assert key in leaves(Settings()), f"{key} is not a setting"
    assert is_hot(key) is hot


def test_every_hot_entry_names_settings() -> None:
    keys = leaves(Settings())
    for entry in HOT:
        assert any(k == entry or k.startswith(entry + ".") for k in keys), entry


def test_changed_keys_are_the_leaves_that_differ() -> None:
    old = Settings()
    poses = dict(old.registration.poses)
    poses["left"] = replace(poses["left"], yaw=[-50.0, -20.0])
    new = changed(
        old,
        recognition={"threshold": 0.5},
        registration={"poses": poses},
        server={"port": 9000},
    )
    assert changed_keys(old, new) == [
        "recognition.threshold",
        "registration.poses.left.yaw",
        "server.port",
    ]
    plan = classify(old, new)
    assert plan.applied == ["recognition.threshold", "registration.poses.left.yaw"]
    assert plan.restart == ["server.port"]
    assert changed_keys(old, old) == []


def test_overlay_takes_only_the_given_keys() -> None:
    running = changed(Settings(), server={"port": 9999, "token": "from-the-command-line"})
    new = changed(Settings(), recognition={"threshold": 0.5}, server={"port": 8002})
    out = overlay(running, new, ["recognition.threshold"])
    assert out.recognition.threshold == 0.5
    assert out.server == running.server  # what `serve` set stays
    assert overlay(running, new, []) is running


# -- the reload --------------------------------------------------------------------------------
class Target:
    """Stands in for the Runtime: records what it was given."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.given: list[Settings] = []

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings
        self.given.append(settings)


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text("[recognition]\nthreshold = 0.44\n")
    return path


def reloader_for(path: Path, running: Settings | None = None) -> tuple[Reloader, Target]:
    def load() -> Settings:
        return load_settings(path, environ={})

    loaded = load()
    target = Target(running or loaded)
    return Reloader(target, load, loaded), target


def test_a_reload_applies_hot_keys_and_names_the_others(
    settings_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="facegate.server.reload")
    # `serve --port 9999` with FACEGATE_TOKEN: the running settings differ from the file.
    running = changed(
        load_settings(settings_file, environ={}), server={"port": 9999, "token": "t0"}
    )
    reloader, target = reloader_for(settings_file, running)
    settings_file.write_text(
        "[recognition]\nthreshold = 0.5\n[engine]\nstable_seconds = 1.0\n"
        '[server]\nport = 8002\ntoken = "new-secret-token"\n'
    )
    outcome = reloader.reload()
    assert outcome.error is None
    assert outcome.applied == {
        "engine.stable_seconds": (2.0, 1.0),
        "recognition.threshold": (0.44, 0.5),
    }
    assert outcome.restart == ["server.port", "server.token"]
    assert target.settings.recognition.threshold == 0.5
    assert target.settings.engine.stable_seconds == 1.0
    assert target.settings.server == running.server  # port 9999 and token t0 kept
    text = caplog.text
    assert "applied engine.stable_seconds 2.0 -> 1.0, recognition.threshold 0.44 -> 0.5" in text
    assert "server.port, server.token changed but need a restart" in text
    assert "new-secret-token" not in text  # a secret's name, never its value

    # Nothing new: the applied keys are not applied again, the restart keys still pending.
    again = reloader.reload()
    assert again.applied == {} and again.restart == ["server.port", "server.token"]
    assert len(target.given) == 1


def test_a_bad_file_changes_nothing(settings_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    reloader, target = reloader_for(settings_file)
    before = target.settings
    for text, says in (
        ("[recognition\nthreshold = 0.5\n", "not valid TOML"),
        ("[recognition]\nthreshold = 7\n", "setting recognition.threshold"),
        ("[recognition]\nthreshhold = 0.5\n", "threshhold"),
    ):
        settings_file.write_text(text)
        outcome = reloader.reload()
        assert outcome.error is not None and says in outcome.error, outcome.error
        assert target.settings is before and target.given == []
        assert "settings not reloaded" in caplog.text
        assert "still running on the previous settings" in caplog.text
    settings_file.unlink()
    assert reloader.reload().error is not None  # a file that went away: the same


def test_a_reload_tells_systemd(settings_file: Path) -> None:
    sent: list[str] = []
    reloader, _ = reloader_for(settings_file)
    reloader.notify = sent.append
    reloader.reload()
    assert sent[0].startswith("RELOADING=1\nMONOTONIC_USEC=") and sent[1] == "READY=1"


# -- the components take them ------------------------------------------------------------------
@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    with Store.open(tmp_path / "data") as store:
        yield Gallery.open(store, Settings())


def test_the_engine_takes_new_settings_at_its_next_frame(gallery: Gallery) -> None:
    old = Settings()
    engine = Engine(NoFaces(), gallery, old, lambda e: None)  # type: ignore[arg-type]
    new = changed(
        old,
        recognition={"threshold": 0.5},
        engine={"scene_cut_distance": 0.5, "unknowns_kept": 7, "min_iou": 0.4},
        quality={"recognition": replace(old.quality.recognition, min_face_px=60)},
        liveness={"challenge_seconds": 12.0},
        registration={"feedback_interval_seconds": 0.5},
    )
    engine.update_settings(new)
    assert engine.settings is old  # not between frames
    view: list[Event] = []
    engine.on_tracks = view.append  # type: ignore[assignment]
    engine.process(Frame(np.zeros((120, 160, 3), np.uint8), 0, 0.0, 0.0))
    assert engine.settings is new
    assert engine.tracker.settings is new.engine
    assert engine.validator._settings is new.quality
    assert engine.scene.max_distance == 0.5
    assert engine.unknowns.capacity == 7
    assert engine.challenger.cfg is new.liveness
    assert engine.challenger.machine_cfg.challenge_seconds == 12.0
    assert engine.challenger.feedback_interval == 0.5
    assert engine.latest_view is not None and engine.latest_view.threshold == 0.5


def test_the_registrar_takes_new_settings_once_no_registration_is_under_way(
    gallery: Gallery,
) -> None:
    old = Settings()
    registrar = Registrar(gallery, old, lambda e: None, focus=RegistrationFocus())
    new = changed(old, registration={"decision_timeout_seconds": 5.0})
    registrar.update_settings(new)
    assert registrar.cfg is new.registration  # idle: at once

    newer = changed(new, registration={"decision_timeout_seconds": 9.0})
    registrar.state = replace_state(
        State(), phase=Phase.AWAITING_DECISION, track_id=1, deadline=registrar.clock() + 60
    )
    registrar.update_settings(newer)
    registrar.tick()
    assert registrar.cfg is new.registration  # the question keeps its rules
    registrar.reset()
    for _ in range(3):
        registrar.tick()
    assert registrar.state.phase is Phase.IDLE
    assert registrar.cfg is newer.registration and registrar.settings is newer


# -- a real SIGHUP to a running app ------------------------------------------------------------
def wait(condition: Any, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what or "condition not met in time"
        time.sleep(0.02)


def test_sighup_reloads_a_running_gate(
    tmp_path: Path, settings_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="facegate.server.reload")
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "blank.jpg"), np.full((240, 320, 3), 128, np.uint8))

    def load() -> Settings:
        return load_settings(settings_file, tmp_path / "data", environ={})

    loaded = load()
    running = changed(loaded, server={"port": 9999})  # as `serve --port 9999` runs it
    runtime = Runtime(
        running,
        tmp_path / "data",
        ImageFolderSource(frames, fps=20),
        NoFaces,  # type: ignore[arg-type]
        loop_source=True,
    )
    restore = install(Reloader(runtime, load, loaded), runtime)
    try:
        with TestClient(create_app(runtime)):
            settings_file.write_text(
                "[recognition]\nthreshold = 0.5\n[registration]\ndecision_timeout_seconds = 5.0\n"
                "[events]\nretention_days = 7.0\n[server]\nport = 8002\n"
            )
            os.kill(os.getpid(), signal.SIGHUP)
            wait(lambda: runtime.settings.recognition.threshold == 0.5, what="not reloaded")
            assert runtime.gallery.settings.recognition.threshold == 0.5
            assert runtime.registrar.cfg.decision_timeout_seconds == 5.0
            assert runtime.pipeline._histories[0].settings.retention_days == 7.0
            wait(lambda: runtime.engine.settings.recognition.threshold == 0.5, what="engine")
            view = runtime.engine.latest_view
            wait(lambda: runtime.engine.latest_view is not view, what="no frame since")
            assert runtime.engine.latest_view is not None
            assert runtime.engine.latest_view.threshold == 0.5
            assert runtime.settings.server.port == 9999  # needs a restart: as it started
    finally:
        restore()
    assert "applied" in caplog.text and "recognition.threshold 0.44 -> 0.5" in caplog.text
    assert "server.port changed but needs a restart" in caplog.text


# -- a real `facegate serve` -------------------------------------------------------------------


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket where systemd would listen ($NOTIFY_SOCKET), on a short path."""
    folder = tempfile.mkdtemp(prefix="fg-notify-")
    path = os.path.join(folder, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        try:
            yield path, sock
        finally:
            os.unlink(path)
            os.rmdir(folder)


def notification(sock: socket.socket, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while True:
        try:
            return sock.recv(4096).decode()
        except TimeoutError:
            assert proc.poll() is None, "facegate serve exited"
            assert time.monotonic() < deadline, "no notification in time"


def thresholds_of_tracks(port: int, count: int, timeout: float) -> list[float]:
    """The thresholds of the first `count` `tracks` views with faces sent over a new
    WebSocket."""
    from websockets.sync.client import connect

    seen: list[float] = []
    deadline = time.monotonic() + timeout
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        while len(seen) < count and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                msg = json.loads(ws.recv(timeout=left))
                if msg["type"] == "tracks" and msg["data"]["tracks"]:
                    seen.append(float(msg["data"]["threshold"]))
    assert len(seen) == count, f"{len(seen)} tracks views in {timeout} s"
    return seen


def until_threshold(port: int, wanted: float, timeout: float) -> None:
    """Until a `tracks` view carries `wanted` (a view from a frame processed before the engine
    took new settings may still come first)."""
    deadline = time.monotonic() + timeout
    seen: list[float] = []
    while time.monotonic() < deadline:
        seen += thresholds_of_tracks(port, 1, deadline - time.monotonic())
        if seen[-1] == wanted:
            return
    raise AssertionError(f"no tracks view with threshold {wanted}: {seen}")


@pytest.mark.shared_data
@pytest.mark.models
def test_sighup_to_facegate_serve(
    tmp_path: Path, shared_data: Path, faceplugin_dir: Path, settings_file: Path
) -> None:
    """A real `facegate serve` on a looping clip, as systemd runs it (Type=notify): READY=1,
    SIGHUP applies recognition.threshold (the faces of the next frames carry it) and logs that
    server.port needs a restart, a bad file keeps it running on what it had, SIGTERM stops it."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    env["FACEGATE_HOME"] = str(tmp_path / "home")
    cmd = [sys.executable, "-m", "facegate.cli", "serve", "--source"]
    cmd += [str(shared_data / "video" / VIDEO), "--loop", "--port", str(port)]
    cmd += ["--data", str(tmp_path / "data"), "--settings", str(settings_file)]
    with notify_socket() as (address, sock), log_path.open("w") as log:
        env["NOTIFY_SOCKET"] = address
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            ready = notification(sock, proc, timeout=60)
            assert ready.startswith("READY=1\nSTATUS=serving on"), ready
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json() == {
                "status": "ok"
            }
            until_threshold(port, 0.44, timeout=30)

            settings_file.write_text(
                f"[recognition]\nthreshold = 0.5\n[server]\nport = {port + 1}\n"
            )
            proc.send_signal(signal.SIGHUP)
            assert notification(sock, proc, timeout=10).startswith("RELOADING=1\nMONOTONIC_USEC=")
            assert notification(sock, proc, timeout=10) == "READY=1"
            until_threshold(port, 0.5, timeout=30)

            settings_file.write_text("[recognition\n")  # broken: ignored
            proc.send_signal(signal.SIGHUP)
            assert notification(sock, proc, timeout=10).startswith("RELOADING=1")
            assert notification(sock, proc, timeout=10) == "READY=1"
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            assert thresholds_of_tracks(port, 3, timeout=30) == [0.5, 0.5, 0.5]

            proc.send_signal(signal.SIGTERM)
            assert notification(sock, proc, timeout=10) == "STOPPING=1"
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert "settings reloaded: applied recognition.threshold 0.44 -> 0.5" in text, text
    assert "server.port changed but needs a restart" in text, text
    assert "settings not reloaded" in text and "not valid TOML" in text, text
    assert "Traceback" not in text, text
