"""WebSocket fan-out of `facegate serve`: 500 clients, bursts of events, one stalled client.

    .venv/bin/python bench/ws_fanout.py [--clients 500] [--events 200]

Starts the real app on uvicorn (127.0.0.1, a free port) with a source that shows no face (a
blank image folder, and an analyzer that finds nothing, so the engine costs nothing), connects
N WebSocket clients (the `websockets` asyncio client), then publishes a burst of events
through `runtime.bus.publish` on the server's loop, each stamped with time.perf_counter_ns()
at publication (same process, same clock), and measures at the clients the delivery latency
(receive time - publication time) and the messages delivered per second.

Then the same again with one more client that is connected but never reads (a raw socket with
a 4 KiB receive buffer, its kernel buffers filled first so its writer is blocked): the others'
latency should not rise, and the hub drops the stalled client after `ws_stall_seconds`.

Server, uvicorn and all clients run in ONE process (two threads, one GIL) on this machine's
cores: the figures are a floor for what the server alone can do.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import uvicorn
import websockets

from facegate.events import SystemReady
from facegate.face import Detection, Face, ImageArray, StageTimings
from facegate.server.app import create_app
from facegate.server.runtime import Runtime
from facegate.settings import load_settings
from facegate.sources import ImageFolderSource

STALL_SECONDS = 2.0
PACED_RATE = 20.0  # events a second in the paced runs (a busy gate: several faces at once)
PACED_EVENTS = 60
FILLER = "x" * 16_000


class NoFaces:
    """An analyzer that finds nobody: the engine loop runs, but costs nothing."""

    name = "none"
    embedding_size = 512
    timings = StageTimings()

    def detect(self, frame_bgr: ImageArray) -> list[Detection]:
        return []

    def describe(
        self, frame_bgr: ImageArray, detection: Detection, *, embed: bool = True, pose: bool = True
    ) -> Face:
        raise AssertionError("no face is ever detected")

    def analyze(
        self, frame_bgr: ImageArray, *, embed: bool = True, pose: bool = True
    ) -> list[Face]:
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Server:
    """uvicorn serving the app on its own loop in a thread."""

    def __init__(self, data: Path, frames: Path) -> None:
        settings = load_settings(environ={})
        replace = msgspec.structs.replace
        settings = replace(
            settings, server=replace(settings.server, ws_stall_seconds=STALL_SECONDS)
        )
        self.runtime = Runtime(
            settings, data, ImageFolderSource(frames, fps=2), NoFaces, loop_source=True
        )
        self.app = create_app(self.runtime)
        self.port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="error",
            ws_max_size=65536,
            ws_per_message_deflate=False,  # as `facegate serve`
            backlog=4096,
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> None:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise SystemExit("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def hub(self) -> Any:
        return self.app.state.hub

    def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the server's loop; its result."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


class Clients:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conns: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.latencies: list[float] = []
        self.received = 0
        self.last_at = 0.0
        self.run_tag = ""

    async def connect(self, count: int, batch: int = 50) -> None:
        for start in range(0, count, batch):
            conns = await asyncio.gather(
                *(websockets.connect(self.url, open_timeout=30) for _ in range(batch))
            )
            for ws in conns[: count - start]:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "connected", hello
                self.conns.append(ws)
                self.tasks.append(asyncio.create_task(self._read(ws)))
            for ws in conns[count - start :]:
                await ws.close()

    async def _read(self, ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                now = time.perf_counter_ns()
                msg = json.loads(raw)
                text: str = msg["data"].get("message", "")
                if msg["type"] == "system_ready" and text.startswith(self.run_tag):
                    sent = int(text[len(self.run_tag) :])
                    self.latencies.append((now - sent) / 1e9)
                    self.received += 1
                    self.last_at = time.perf_counter()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in self.conns), return_exceptions=True)


def publish_burst(server: Server, tag: str, count: int) -> float:
    """`count` events published back to back on the server's loop; the start (perf_counter)."""

    def burst() -> float:
        start = time.perf_counter()
        for _ in range(count):
            server.runtime.bus.publish(SystemReady(message=f"{tag}{time.perf_counter_ns()}"))
        return start

    result: float = server.call(burst)
    return result


def publish_paced(server: Server, tag: str, count: int, rate: float) -> float:
    """`count` events at `rate` a second on the server's loop; the start (perf_counter)."""

    async def paced() -> float:
        start = time.perf_counter()
        for i in range(count):
            server.runtime.bus.publish(SystemReady(message=f"{tag}{time.perf_counter_ns()}"))
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        return start

    result: float = asyncio.run_coroutine_threadsafe(paced(), server.loop).result(120)
    return result


async def run_burst(
    server: Server, clients: Clients, tag: str, events: int, rate: float | None = None
) -> dict[str, float]:
    """Publish (all at once, or paced at `rate`/s) and wait for every client to get them."""
    clients.latencies, clients.received, clients.run_tag = [], 0, tag
    expected = events * len(clients.conns)
    if rate is None:
        start = await asyncio.to_thread(publish_burst, server, tag, events)
    else:
        start = await asyncio.to_thread(publish_paced, server, tag, events, rate)
    deadline = time.perf_counter() + 60
    while clients.received < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # anything late or extra
    lat = sorted(clients.latencies)
    took = max(clients.last_at - start, 1e-9)
    return {
        "expected": expected,
        "received": clients.received,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": (lat[-1] if lat else float("nan")) * 1e3,
        "seconds": took,
        "msgs_per_s": clients.received / took,
    }


def stalled_socket(port: int) -> socket.socket:
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
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"stalled client refused: {head!r}")
    return sock


def fill_stalled(server: Server, known: set[str]) -> Any:
    """Find the stalled client in the hub and fill its buffers until its writer blocks."""
    client = server.call(lambda: next(c for c in server.hub.clients if c.name not in known))
    big = SystemReady(message=FILLER)
    for _ in range(20):
        server.call(lambda: [server.hub.send(client, big) for _ in range(100)])
        time.sleep(0.2)
        if server.call(lambda: len(client.queue)) > 0:  # the writer can no longer keep up
            time.sleep(0.3)
            if server.call(lambda: len(client.queue)) > 0:
                return client
    raise SystemExit("could not stall the client (its buffers never filled)")


def show(label: str, r: dict[str, float]) -> None:
    lost = r["expected"] - r["received"]
    print(
        f"{label:<34} delivered {r['received']:>7.0f}/{r['expected']:<7.0f}"
        f" (lost {lost:.0f})  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
        f"  max {r['max_ms']:7.1f} ms  {r['msgs_per_s']:>8.0f} msg/s ({r['seconds']:.2f} s)"
    )


async def bench(server: Server, n_clients: int, events: int) -> None:
    clients = Clients(f"ws://127.0.0.1:{server.port}/ws")
    t0 = time.perf_counter()
    await clients.connect(n_clients)
    print(f"connected {len(clients.conns)} clients in {time.perf_counter() - t0:.1f} s")
    await run_burst(server, clients, "warmup:", 10)

    base = await run_burst(server, clients, "a:", events)
    show(f"burst of {events}, {n_clients} readers", base)
    paced = await run_burst(server, clients, "p:", PACED_EVENTS, PACED_RATE)
    show(f"{PACED_RATE:g} events/s, {n_clients} readers", paced)

    known = server.call(lambda: {c.name for c in server.hub.clients})
    sock = await asyncio.to_thread(stalled_socket, server.port)
    deadline = time.monotonic() + 5
    while server.call(len, server.hub) <= n_clients and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stalled = await asyncio.to_thread(fill_stalled, server, known)
    queued = server.call(lambda: len(stalled.queue))
    print(f"+1 stalled client ({stalled.name}): writer blocked, {queued} messages queued")
    with_stalled = await run_burst(server, clients, "b:", events)
    show(f"burst of {events}, + 1 stalled", with_stalled)
    paced_stalled = await run_burst(server, clients, "q:", PACED_EVENTS, PACED_RATE)
    show(f"{PACED_RATE:g} events/s, + 1 stalled", paced_stalled)

    # Keep the stalled client's queue full until the hub gives up on it.
    t_full = time.perf_counter()
    while not server.call(lambda: server.hub.disconnected_slow):
        if time.perf_counter() - t_full > STALL_SECONDS + 10:
            break
        server.call(lambda: [server.hub.send(stalled, SystemReady()) for _ in range(600)])
        await asyncio.sleep(0.2)
    dropped = server.call(lambda: server.hub.disconnected_slow)
    left = server.call(len, server.hub)
    print(
        f"stalled client dropped by the hub: {'yes' if dropped else 'NO'}"
        f" ({time.perf_counter() - t_full:.1f} s after its queue was kept full;"
        f" ws_stall_seconds={STALL_SECONDS:g}); clients in hub: {left}"
    )
    after = await run_burst(server, clients, "c:", events)
    show(f"burst of {events}, after the drop", after)
    print(
        "p99 with a stalled client / without:"
        f" burst {with_stalled['p99_ms'] / base['p99_ms']:.2f}x,"
        f" paced {paced_stalled['p99_ms'] / paced['p99_ms']:.2f}x"
    )
    sock.close()
    await clients.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    raise_fd_limit(4 * args.clients + 256)
    print("== WebSocket fan-out (facegate serve on uvicorn, `websockets` clients) ==")
    print(
        f"server, uvicorn and {args.clients} clients share ONE process (one GIL) on"
        f" {os.cpu_count()} cores; latency = client receive time - publication time"
        " (time.perf_counter_ns, same clock)"
    )
    with tempfile.TemporaryDirectory(prefix="facegate-bench-") as tmp:
        frames = Path(tmp) / "frames"
        frames.mkdir()
        cv2.imwrite(str(frames / "blank.jpg"), np.full((480, 640, 3), 128, np.uint8))
        server = Server(Path(tmp) / "data", frames)
        server.start()
        try:
            asyncio.run(bench(server, args.clients, args.events))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
