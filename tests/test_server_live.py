"""`facegate serve` for real: uvicorn on 127.0.0.1 with real WebSocket and HTTP clients, and the
CLI as a subprocess (start, serve, SIGTERM; refusing a public address without a token).

Needs the real model pack and ../shared/data (skipped with a reason when absent).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx2 as httpx
import msgspec
import numpy as np
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from facegate.events import SystemReady
from facegate.live.sources import ImageFolderSource
from facegate.server.app import create_app
from facegate.server.http import uvicorn_config
from facegate.server.runtime import Runtime
from facegate.settings import load_settings
from facegate.vision.face import FaceAnalyzer
from ports import free_port

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.models,
]
MIB = 2**20
VIDEO = "intel_face-demographics-walking-and-pause.mp4"


# -- a real server in a thread -----------------------------------------------------------------
@pytest.fixture(scope="module")
def analyzer_pool(faceplugin_dir: Path) -> list[FaceAnalyzer]:
    from facegate.vision.analyzers import open_analyzer

    settings = load_settings(environ={})
    return [open_analyzer(settings), open_analyzer(settings)]


class Live:
    def __init__(self, app: Starlette, runtime: Runtime, port: int) -> None:
        self.app = app
        self.runtime = runtime
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws"

    @property
    def hub(self) -> Any:
        return self.app.state.hub


@pytest.fixture
def live(tmp_path: Path, analyzer_pool: list[FaceAnalyzer]) -> Callable[..., Any]:
    """`with live(server={...}) as srv:` a started uvicorn on a free port, stopped after."""
    folder = tmp_path / "blank"
    folder.mkdir()
    cv2.imwrite(str(folder / "blank.jpg"), np.full((480, 640, 3), 128, np.uint8))

    @contextlib.contextmanager
    def _live(server: dict[str, Any] | None = None) -> Iterator[Live]:
        settings = load_settings(environ={})
        if server:
            replace = msgspec.structs.replace
            settings = replace(settings, server=replace(settings.server, **server))
        pool = iter(analyzer_pool)
        runtime = Runtime(
            settings,
            tmp_path / "data",
            ImageFolderSource(folder, fps=5),
            lambda: next(pool),
            loop_source=True,
        )
        app = create_app(runtime)
        port = free_port()
        # As `facegate serve` configures uvicorn (timeouts, limits, WebSocket options).
        config = uvicorn_config(app, settings.server, host="127.0.0.1", port=port)
        srv = uvicorn.Server(config)
        thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not srv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        try:
            yield Live(app, runtime, port)
        finally:
            srv.should_exit = True
            thread.join(15)
            assert not thread.is_alive(), "uvicorn did not stop"

    return _live


async def next_of(ws: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            msg: dict[str, Any] = json.loads(await ws.recv())
            if msg["type"] == kind:
                return msg


# -- a WebSocket client that never reads -------------------------------------------------------
def stalled_socket(port: int) -> socket.socket:
    """A WebSocket handshake on a raw socket with a tiny receive buffer, then nothing is read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_until_close(sock: socket.socket, timeout: float) -> int | None:
    """Read server frames until a close frame (its code) or EOF/silence for `timeout` (None)."""
    sock.settimeout(timeout)
    buf = b""

    def need(n: int) -> bytes:
        nonlocal buf
        while len(buf) < n:
            data = sock.recv(1 << 20)
            if not data:
                raise EOFError
            buf += data
        out, buf = buf[:n], buf[n:]
        return out

    try:
        while True:
            b0, b1 = need(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", need(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", need(8))[0]
            payload = need(length)
            if b0 & 0x0F == 0x8:
                code: int = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                return code
    except (TimeoutError, EOFError, ConnectionError):
        return None


PAD = "x" * 16_000  # 16 kB events: the stalled socket's buffers fill in a second or two


def stamped(i: int) -> SystemReady:
    return SystemReady(message=f"t={time.perf_counter_ns()} i={i} {PAD}")


async def stall_scenario(srv: Live, seconds: float) -> dict[str, Any]:
    """One reader and one stalled socket; bursts of 16 kB events for `seconds`."""
    stalled = await asyncio.to_thread(stalled_socket, srv.port)
    latencies: list[float] = []
    async with websockets.connect(srv.ws) as reader:
        assert json.loads(await reader.recv())["type"] == "connected"
        deadline = time.monotonic() + 5
        while len(srv.hub) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

        async def read() -> None:
            async for raw in reader:
                msg = json.loads(raw)
                text = msg["data"].get("message", "")
                if msg["type"] == "system_ready" and text.startswith("t="):
                    sent = int(text[2:].split(" ", 1)[0])
                    latencies.append((time.perf_counter_ns() - sent) / 1e9)

        task = asyncio.create_task(read())
        start = time.monotonic()
        published = 0
        removed_after: float | None = None
        while time.monotonic() - start < seconds:
            for _ in range(20):
                srv.runtime.bus.publish_threadsafe(stamped(published))
                published += 1
            await asyncio.sleep(0.05)
            if removed_after is None and srv.hub.disconnected_slow:
                removed_after = time.monotonic() - start
        await asyncio.sleep(0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reader_still_there = len(srv.hub) == 1
    return {
        "stalled": stalled,
        "latencies": sorted(latencies),
        "published": published,
        "removed_after": removed_after,
        "reader_still_there": reader_still_there,
    }


# -- tests -------------------------------------------------------------------------------------
def test_live_http_and_websocket(live: Callable[..., Any]) -> None:
    with live(server={"allowed_origins": ["https://panel.example"]}) as srv:
        root = httpx.get(srv.http + "/", timeout=5).json()
        assert root["websocket_url"] == srv.ws

        async def scenario() -> None:
            async with websockets.connect(srv.ws) as ws:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "connected"
                await ws.send(json.dumps({"type": "ping"}))
                assert (await next_of(ws, "pong"))["type"] == "pong"
                await ws.send("{oops")
                assert "invalid JSON" in (await next_of(ws, "error"))["data"]["message"]
                await ws.send(json.dumps({"type": "ping"}))
                await next_of(ws, "pong")
            for origin in (f"http://127.0.0.1:{srv.port}", "https://panel.example"):
                async with websockets.connect(srv.ws, origin=Origin(origin)) as ws:
                    assert json.loads(await ws.recv())["type"] == "connected"
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(srv.ws, origin=Origin("https://evil.example")):
                    pass
            assert refused.value.response.status_code == 403
            async with websockets.connect(srv.ws) as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
                with pytest.raises(ConnectionClosed) as closed:
                    async with asyncio.timeout(5):
                        while True:
                            await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

        asyncio.run(scenario())


@pytest.mark.skipif(
    importlib.util.find_spec("python_multipart") is None,
    reason="python-multipart is not installed: Starlette cannot parse uploads",
)
def test_live_uploads_over_the_limit_are_413(live: Callable[..., Any]) -> None:
    boundary = "facegateboundary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nBig\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files";'
            ' filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        for _ in range(7):
            yield b"\0" * MIB
        yield f"\r\n--{boundary}--\r\n".encode()

    with live() as srv, httpx.Client(base_url=srv.http, timeout=10) as client:
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        r = client.post("/api/persons", content=body(), headers=headers)
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413 and "MiB" in r.json()["error"]
        r = client.post("/api/persons", content=b"".join(body()), headers=headers)
        assert r.status_code == 413
        assert client.get("/api/persons").json() == []


def test_live_a_stalled_client_does_not_hold_up_the_others(live: Callable[..., Any]) -> None:
    with live(server={"ws_queue": 64, "ws_stall_seconds": 1.0}) as srv:
        result = asyncio.run(stall_scenario(srv, seconds=5.0))
        result["stalled"].close()
        lat = result["latencies"]
        assert len(lat) == result["published"], "the reader lost events"
        p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
        assert p99 < 1.0, f"reader p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms"
        assert result["removed_after"] is not None, "the stalled client was never dropped"
        assert result["removed_after"] < 4.0
        assert srv.hub.disconnected_slow == 1
        assert result["reader_still_there"]


def test_live_a_dropped_client_is_told(live: Callable[..., Any]) -> None:
    with live(server={"ws_queue": 64, "ws_stall_seconds": 1.0}) as srv:
        result = asyncio.run(stall_scenario(srv, seconds=4.0))
        assert result["removed_after"] is not None
        with result["stalled"] as sock:
            assert read_until_close(sock, timeout=3.0) == 1008


def test_live_a_stalled_client_is_dropped_at_a_low_event_rate(live: Callable[..., Any]) -> None:
    """Once a client's buffers are full, a few big events a second: its queue (512 messages)
    would take a minute to fill, but its writer's send is blocked, and that is what counts."""
    stall = 1.0
    with live(server={"ws_stall_seconds": stall}) as srv, stalled_socket(srv.port) as sock:
        deadline = time.monotonic() + 5
        while len(srv.hub) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client = next(iter(srv.hub.clients))
        published = 0

        def publish(count: int) -> None:
            nonlocal published
            for _ in range(count):
                srv.runtime.bus.publish_threadsafe(stamped(published))
                published += 1

        def blocked() -> bool:  # events wait, and the writer is inside a send
            return bool(client.queue) and getattr(client, "sending_since", 0) is not None

        # Fill its buffers fast (on loopback the kernel takes a few MB) until its writer blocks.
        deadline = time.monotonic() + 15
        while True:
            assert time.monotonic() < deadline, "the stalled client's buffers never filled"
            publish(20)
            time.sleep(0.05)
            if blocked():
                time.sleep(0.1)
                if blocked():
                    break
        blocked_at = time.monotonic()
        assert len(client.queue) < 100
        # Then 10 events a second.
        while not srv.hub.disconnected_slow and time.monotonic() < blocked_at + stall + 4:
            publish(1)
            time.sleep(0.1)
        dropped_after = time.monotonic() - blocked_at
        assert srv.hub.disconnected_slow == 1, "the stalled client was never dropped"
        assert dropped_after < stall + 1.0, f"dropped {dropped_after:.1f} s after it blocked"
        assert len(srv.hub) == 0
        assert read_until_close(sock, timeout=5.0) == 1008


def server_side_established(port: int, peer_port: int) -> bool:
    """Whether the server's end of the connection to `peer_port` is still open (/proc/net/tcp:
    state 01 = ESTABLISHED, 08 = CLOSE_WAIT)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == peer_port:
            return state in ("01", "08")
    return False


def test_live_a_dropped_client_that_never_reads_is_disconnected(
    live: Callable[..., Any],
) -> None:
    """Its close frame cannot leave (it reads nothing): the connection is aborted after
    the grace, not held open for ever with its file descriptor and buffers."""
    stall = 1.0
    # The grace counts from when its buffers filled: longer than the stall, as by default.
    settings = {"ws_stall_seconds": stall, "ws_close_grace_seconds": 2.0}
    with live(server=settings) as srv, stalled_socket(srv.port) as sock:
        peer_port = sock.getsockname()[1]
        deadline = time.monotonic() + 20
        i = 0
        while not srv.hub.disconnected_slow:
            assert time.monotonic() < deadline, "the stalled client was never dropped"
            for _ in range(20):
                srv.runtime.bus.publish_threadsafe(stamped(i))
                i += 1
            time.sleep(0.05)
        assert server_side_established(srv.port, peer_port)
        deadline = time.monotonic() + 6  # the 2 s grace, with room for a busy machine
        while server_side_established(srv.port, peer_port):
            assert time.monotonic() < deadline, "the dropped connection is still open"
            time.sleep(0.1)


# -- the CLI -----------------------------------------------------------------------------------
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    env["FACEGATE_HOME"] = str(tmp_path / "home")
    env["FACEGATE_ENGINE__STABLE_SECONDS"] = "0.5"
    return env


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, shared_data: Path, faceplugin_dir: Path
) -> dict[str, Any]:
    """`facegate serve` on a looping video: started, asked, listened to, sent SIGTERM."""
    tmp_path = tmp_path_factory.mktemp("serve")
    port = free_port()
    log_path = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "facegate.cli", "serve", "--source"]
    cmd += [str(shared_data / "video" / VIDEO), "--loop", "--port", str(port)]
    cmd += ["--data", str(tmp_path / "data")]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=cli_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    out: dict[str, Any] = {"log": log_path}
    try:
        deadline = time.monotonic() + 30
        while "root" not in out:
            assert proc.poll() is None, f"facegate serve exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, "facegate serve did not come up in 30 s"
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                # Serving starts before the capture thread has opened the video.
                if r.status_code == 200 and r.json()["system_status"]["source_state"] != "starting":
                    out["root"] = r.json()
            time.sleep(0.1)

        async def listen() -> list[str]:
            """The first message and the first event (`tracks` views are not events)."""
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                kinds = [json.loads(await ws.recv())["type"]]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(15):
                        while len(kinds) < 2:
                            kind = json.loads(await ws.recv())["type"]
                            if kind == "tracks":
                                out["tracks"] = True
                            else:
                                kinds.append(kind)
                return kinds

        out["kinds"] = asyncio.run(listen())
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out["code"] = proc.wait(timeout=10)
        out["took"] = time.monotonic() - stopped
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_starts_serves_and_stops_on_sigterm(served: dict[str, Any]) -> None:
    assert served["root"]["server"] == "facegate"
    assert served["root"]["system_status"]["source_state"] == "connected"
    assert served["kinds"][0] == "connected"
    assert len(served["kinds"]) == 2, "no event within 15 s of connecting"
    assert served["kinds"][1] in {
        "unknown_person_detected",
        "person_recognized",
        "person_left_area",
        "source_status",
        "registration_cancelled",
        "system_ready",
    }
    assert served["took"] < 5.0, f"SIGTERM took {served['took']:.1f} s"
    assert served["code"] in (0, -signal.SIGTERM), served["log"].read_text()


def test_cli_serve_exits_0_on_sigterm(served: dict[str, Any]) -> None:
    assert served["code"] == 0


def test_cli_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "facegate.cli", "serve", "--host", "0.0.0.0"]
    cmd += ["--port", str(free_port()), "--data", str(tmp_path / "data"), "--source", "7"]
    done = subprocess.run(
        cmd, check=False, env=cli_env(tmp_path), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to listen on 0.0.0.0 without a token" in done.stderr
    assert "FACEGATE_TOKEN" in done.stderr


def test_cli_serve_names_a_port_in_use_and_exits_2(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "facegate.cli", "serve", "--port", str(port)]
        cmd += ["--data", str(tmp_path / "data"), "--source", "7"]
        done = subprocess.run(
            cmd, check=False, env=cli_env(tmp_path), capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert "--port" in lines[0] and "Traceback" not in done.stderr


def test_cli_refuses_an_image_folder_without_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("serve", "run"):
        cmd = [sys.executable, "-m", "facegate.cli", command, "--source", str(empty)]
        cmd += ["--data", str(tmp_path / "data")]
        done = subprocess.run(
            cmd, check=False, env=cli_env(tmp_path), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, (command, done.stderr)
        assert "no images" in done.stderr, (command, done.stderr)
