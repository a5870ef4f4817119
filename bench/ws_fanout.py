"""WebSocket fan-out of `facegate serve`: 500 clients, bursts of events, one stalled client;
then 300 clients that never read beside one normal client that pings.

    .venv/bin/python bench/ws_fanout.py [--clients 500] [--events 200] [--non-readers 300]
        [--event-bytes 1000] [--only fanout|non-readers]

Starts the real app on uvicorn (127.0.0.1, a free port) with a source that shows no face (a
blank image folder, and an analyzer that finds nothing, so the engine costs nothing), connects
N WebSocket clients (the `websockets` asyncio client), then publishes a burst of events
through `runtime.bus.publish` on the server's loop, each stamped with time.perf_counter_ns()
at publication, and measures at the clients the delivery latency (receive time - publication
time) and the messages delivered per second.

Then the same again with one more client that is connected but never reads (a raw socket with
a 4 KiB receive buffer, its kernel buffers filled first so its writer is blocked): the others'
latency should not rise, and the hub drops the stalled client `ws_stall_seconds` after its
writer blocked.

Last, on a fresh server (`ws_stall_seconds` 2): 300 clients that never read (raw sockets, as
the stalled one) and one normal client that sends a ping every 20 ms, while a burst of events
(padded to --event-bytes) goes out. It prints the normal client's ping round trip (ping sent
-> pong received) p50/p99/max from the burst until it has drained, whether and when the hub
dropped the non-readers, and the messages the server wrote per second (and the CPU time of
the server's thread, which every burst line shows too: on a busy machine it varies less than
the wall-clock figures). On Linux loopback a socket's kernel buffers grow to ~3 MB, so a burst
smaller than that per client leaves the non-readers' sends unblocked: they are not dropped,
and nothing on the server could tell them from slow readers.

The server (uvicorn, the app, its event loop) runs in this process, in a thread; the WebSocket
clients that read run in a second process (multiprocessing, spawn), so their work does not
share the server's GIL (a client in the server's process adds GIL hand-offs to every send the
server makes). The raw sockets that never read stay in this process: they do nothing.
perf_counter_ns is CLOCK_MONOTONIC, one clock for both processes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import multiprocessing
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import uvicorn
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from facegate.events import SystemReady, to_wire
from facegate.live.sources import ImageFolderSource
from facegate.server.app import create_app
from facegate.server.http import uvicorn_config
from facegate.server.runtime import Runtime
from facegate.settings import load_settings
from fakes import NoFaces  # the analyzer that finds nobody (tests/fakes.py)

STALL_SECONDS = 8.0  # fan-out server: outlasts the runs made while the stalled client is there
NON_READER_STALL_SECONDS = 2.0
PACED_RATE = 20.0  # events a second in the paced runs (a busy gate: several faces at once)
PACED_EVENTS = 60
FILLER = "x" * 16_000
PING_EVERY = 0.02  # the normal client's pings in the non-reader scenario


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

    def __init__(self, data: Path, frames: Path, stall_seconds: float) -> None:
        settings = load_settings(environ={})
        replace = msgspec.structs.replace
        settings = replace(
            settings, server=replace(settings.server, ws_stall_seconds=stall_seconds)
        )
        self.runtime = Runtime(
            settings, data, ImageFolderSource(frames, fps=2), NoFaces, loop_source=True
        )
        self.app = create_app(self.runtime)
        self.port = free_port()
        # As `facegate serve` configures uvicorn (timeouts, limits, WebSocket protocol).
        config = uvicorn_config(
            self.app,
            settings.server,
            host="127.0.0.1",
            port=self.port,
            log_level="error",
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

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def cpu_seconds(self) -> float:
        """CPU time of the server's thread so far."""
        assert self.thread.ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread.ident))


# -- the clients that read: in a second process --------------------------------------------
class Readers:
    """N `websockets` clients that read everything and time the tagged events."""

    def __init__(self) -> None:
        self.conns: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.latencies: list[float] = []
        self.received = 0
        self.last_at = 0.0
        self.run_tag = ""

    async def connect(self, url: str, count: int, batch: int = 50) -> int:
        for start in range(0, count, batch):
            conns = await asyncio.gather(
                *(websockets.connect(url, open_timeout=30) for _ in range(batch))
            )
            for ws in conns[: count - start]:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "connected", hello
                self.conns.append(ws)
                self.tasks.append(asyncio.create_task(self._read(ws)))
            for ws in conns[count - start :]:
                await ws.close()
        return len(self.conns)

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

    def start(self, tag: str) -> None:
        self.latencies, self.received, self.run_tag = [], 0, tag

    async def wait(self, expected: int, timeout: float) -> dict[str, Any]:
        deadline = time.perf_counter() + timeout
        while self.received < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # anything late or extra
        return {"received": self.received, "latencies": self.latencies, "last_at": self.last_at}

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in self.conns), return_exceptions=True)


class Pinger:
    """The normal client of the non-reader scenario: a ping every 20 ms, and it reads."""

    def __init__(self) -> None:
        self.ws: Any = None
        self.pinged: collections.deque[float] = collections.deque()
        self.rtts: list[float] = []
        self.latencies: list[float] = []
        self.received = 0
        self.tag = "n:"
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, url: str) -> None:
        self.ws = await websockets.connect(url, open_timeout=30)
        assert json.loads(await self.ws.recv())["type"] == "connected"
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._ping())]

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                now = time.perf_counter_ns()
                msg = json.loads(raw)
                if msg["type"] == "pong" and self.pinged:
                    self.rtts.append(now / 1e9 - self.pinged.popleft())
                elif msg["type"] == "system_ready":
                    text: str = msg["data"]["message"]
                    if text.startswith(self.tag):
                        sent = int(text[len(self.tag) :].split(" ", 1)[0])
                        self.latencies.append((now - sent) / 1e9)
                        self.received += 1

    async def _ping(self) -> None:
        while True:
            self.pinged.append(time.perf_counter_ns() / 1e9)
            await self.ws.send('{"type": "ping"}')
            await asyncio.sleep(PING_EVERY)

    def take_rtts(self) -> list[float]:
        rtts, self.rtts = self.rtts, []
        return rtts

    async def stop(self) -> dict[str, Any]:
        for task in self.tasks:
            task.cancel()
        await self.ws.close()
        return {"rtts": self.rtts, "latencies": self.latencies, "received": self.received}


async def serve_commands(conn: Connection) -> None:
    readers, pinger = Readers(), Pinger()
    while True:
        cmd, *args = await asyncio.to_thread(conn.recv)
        reply: Any = None
        if cmd == "connect":
            reply = await readers.connect(*args)
        elif cmd == "start":
            readers.start(*args)
        elif cmd == "wait":
            reply = await readers.wait(*args)
        elif cmd == "pinger":
            await pinger.start(*args)
        elif cmd == "rtts":
            reply = pinger.take_rtts()
        elif cmd == "received":
            reply = pinger.received
        elif cmd == "pinger_stop":
            reply = await pinger.stop()
        elif cmd == "close":
            await readers.close()
            conn.send(None)
            return
        conn.send(reply)


def client_process_main(conn: Connection, fds: int) -> None:
    raise_fd_limit(fds)
    asyncio.run(serve_commands(conn))


class ClientProcess:
    """The reading clients, in a second process, driven through a pipe."""

    def __init__(self, fds: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=client_process_main, args=(child, fds), name="ws-clients", daemon=True
        )
        self.proc.start()
        self.count = 0

    def ask(self, *cmd: Any) -> Any:
        self.conn.send(cmd)
        return self.conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.ask("close")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# -- the scenarios ---------------------------------------------------------------------------
def publish_burst(server: Server, tag: str, count: int, pad: str = "") -> float:
    """`count` events published back to back on the server's loop; the start (perf_counter)."""

    def burst() -> float:
        start = time.perf_counter()
        for _ in range(count):
            message = f"{tag}{time.perf_counter_ns()}{pad}"
            server.runtime.bus.publish(SystemReady(message=message))
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


def run_burst(
    server: Server, clients: ClientProcess, tag: str, events: int, rate: float | None = None
) -> dict[str, float]:
    """Publish (all at once, or paced at `rate`/s) and wait for every client to get them."""
    clients.ask("start", tag)
    expected = events * clients.count
    cpu = server.cpu_seconds()
    if rate is None:
        start = publish_burst(server, tag, events)
    else:
        start = publish_paced(server, tag, events, rate)
    got = clients.ask("wait", expected, 60.0)
    cpu = server.cpu_seconds() - cpu
    lat = sorted(got["latencies"])
    took = max(got["last_at"] - start, 1e-9)
    return {
        "expected": expected,
        "received": got["received"],
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": (lat[-1] if lat else float("nan")) * 1e3,
        "seconds": took,
        "msgs_per_s": got["received"] / took,
        "server_cpu": cpu,
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


def offer(server: Server, client: Any, event: SystemReady, count: int) -> None:
    """`count` copies of `event` into one client's event queue (as a broadcast would)."""
    text = to_wire(event).decode()
    server.call(lambda: [client.offer(text, server.hub.clock()) for _ in range(count)])


def blocked(server: Server, client: Any) -> bool:
    """Messages wait in the client's queue (and its writer is inside a send, where the hub
    tells that)."""

    def check() -> bool:
        return len(client.queue) > 0 and getattr(client, "sending_since", 0) is not None

    result: bool = server.call(check)
    return result


def fill_stalled(server: Server, known: set[str]) -> Any:
    """Find the stalled client in the hub and fill its buffers until its writer blocks."""
    client = server.call(lambda: next(c for c in server.hub.clients if c.name not in known))
    for _ in range(40):
        offer(server, client, SystemReady(message=FILLER), 50)
        time.sleep(0.2)
        if blocked(server, client):  # the writer can no longer keep up
            time.sleep(0.3)
            if blocked(server, client):
                return client
    raise SystemExit("could not stall the client (its buffers never filled)")


def show(label: str, r: dict[str, float]) -> None:
    lost = r["expected"] - r["received"]
    print(
        f"{label:<34} delivered {r['received']:>7.0f}/{r['expected']:<7.0f}"
        f" (lost {lost:.0f})  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
        f"  max {r['max_ms']:7.1f} ms  {r['msgs_per_s']:>8.0f} msg/s ({r['seconds']:.2f} s;"
        f" server CPU {r['server_cpu']:.2f} s)"
    )


def fanout(server: Server, clients: ClientProcess, n_clients: int, events: int) -> None:
    t0 = time.perf_counter()
    clients.count = clients.ask("connect", f"ws://127.0.0.1:{server.port}/ws", n_clients)
    print(f"connected {clients.count} clients in {time.perf_counter() - t0:.1f} s")
    run_burst(server, clients, "warmup:", 10)

    base = run_burst(server, clients, "a:", events)
    show(f"burst of {events}, {n_clients} readers", base)
    paced = run_burst(server, clients, "p:", PACED_EVENTS, PACED_RATE)
    show(f"{PACED_RATE:g} events/s, {n_clients} readers", paced)

    known = server.call(lambda: {c.name for c in server.hub.clients})
    sock = stalled_socket(server.port)
    deadline = time.monotonic() + 5
    while server.call(len, server.hub) <= n_clients and time.monotonic() < deadline:
        time.sleep(0.01)
    stalled = fill_stalled(server, known)
    blocked_at = time.perf_counter()
    queued = server.call(lambda: len(stalled.queue))
    print(f"+1 stalled client ({stalled.name}): writer blocked, {queued} messages queued")
    with_stalled = run_burst(server, clients, "b:", events)
    show(f"burst of {events}, + 1 stalled", with_stalled)
    paced_stalled = run_burst(server, clients, "q:", PACED_EVENTS, PACED_RATE)
    show(f"{PACED_RATE:g} events/s, + 1 stalled", paced_stalled)
    still_there = server.call(lambda: stalled in server.hub.clients)

    # Keep the stalled client's queue full until the hub gives up on it.
    while not server.call(lambda: server.hub.disconnected_slow):
        if time.perf_counter() - blocked_at > STALL_SECONDS + 20:
            break
        offer(server, stalled, SystemReady(), 600)
        time.sleep(0.2)
    dropped = server.call(lambda: server.hub.disconnected_slow)
    left = server.call(len, server.hub)
    print(
        f"stalled client dropped by the hub: {'yes' if dropped else 'NO'}"
        f" ({time.perf_counter() - blocked_at:.1f} s after its writer blocked;"
        f" ws_stall_seconds={STALL_SECONDS:g}; {'after' if still_there else 'DURING'} the"
        f" runs with it); clients in hub: {left}"
    )
    after = run_burst(server, clients, "c:", events)
    show(f"burst of {events}, after the drop", after)
    print(
        "p99 with a stalled client / without:"
        f" burst {with_stalled['p99_ms'] / base['p99_ms']:.2f}x,"
        f" paced {paced_stalled['p99_ms'] / paced['p99_ms']:.2f}x"
    )
    sock.close()


def hub_state(server: Server) -> dict[str, Any]:
    """Per client: messages sent so far; messages queued; the hub's slow-client drops."""

    def state() -> dict[str, Any]:
        hub = server.hub
        return {
            "sent": {c.name: c.sent for c in hub.clients},
            "queued": sum(len(c.queue) for c in hub.clients),
            "clients": len(hub.clients),
            "dropped": hub.disconnected_slow,
        }

    result: dict[str, Any] = server.call(state)
    return result


def non_readers(
    server: Server, clients: ClientProcess, count: int, events: int, event_bytes: int
) -> None:
    """`count` clients that never read + one normal client that pings every 20 ms."""
    with ThreadPoolExecutor(50) as pool:
        socks = list(pool.map(stalled_socket, [server.port] * count))
    deadline = time.monotonic() + 10
    while server.call(len, server.hub) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    clients.ask("pinger", f"ws://127.0.0.1:{server.port}/ws")
    print(f"{len(socks)} non-reading clients + 1 normal client (pinging) connected")
    time.sleep(0.5)
    idle = sorted(clients.ask("rtts"))  # pings with nothing else going on
    base = hub_state(server)
    cpu0 = server.cpu_seconds()
    start = publish_burst(server, "n:", events, " " + "x" * max(0, event_bytes - 100))
    sent: dict[str, int] = dict(base["sent"])
    last_sent_at = start
    drained_at: float | None = None
    all_dropped_at: float | None = None
    received = 0
    while time.perf_counter() < start + NON_READER_STALL_SECONDS + 6:
        state = hub_state(server)
        received = clients.ask("received")
        now = time.perf_counter()
        for name, n in state["sent"].items():
            if n > sent.get(name, 0):
                sent[name] = n
                last_sent_at = now
        if all_dropped_at is None and state["dropped"] - base["dropped"] >= count:
            all_dropped_at = now
        if drained_at is None and received >= events and state["queued"] == 0:
            drained_at = now
        if received >= events and (all_dropped_at or drained_at):
            break
        time.sleep(0.05)
    time.sleep(0.2)
    cpu = server.cpu_seconds() - cpu0
    got = clients.ask("pinger_stop")
    state = hub_state(server)
    for sock in socks:
        sock.close()

    written = sum(n - base["sent"].get(name, 0) for name, n in sent.items())
    took = max(last_sent_at - start, 1e-9)
    rtts, lat = sorted(got["rtts"]), sorted(got["latencies"])
    dropped = state["dropped"] - base["dropped"]
    print(
        f"idle: ping round trip p50 {percentile(idle, 50) * 1e3:.1f} ms"
        f"  p99 {percentile(idle, 99) * 1e3:.1f} ms ({len(idle)} pings)"
    )
    print(
        f"burst of {events} events of ~{event_bytes} B: ping round trip"
        f" p50 {percentile(rtts, 50) * 1e3:.1f} ms  p99 {percentile(rtts, 99) * 1e3:.1f} ms"
        f"  max {(rtts[-1] if rtts else float('nan')) * 1e3:.1f} ms"
        f" ({len(rtts)} pings over {time.perf_counter() - start:.1f} s)"
    )
    print(
        f"  the normal client got {got['received']}/{events} events: latency"
        f" p50 {percentile(lat, 50) * 1e3:.1f} ms  p99 {percentile(lat, 99) * 1e3:.1f} ms"
    )
    print(
        f"  the server wrote {written} messages in {took:.2f} s ({written / took:.0f} msg/s);"
        f" its thread's CPU {cpu:.2f} s"
    )
    if all_dropped_at is not None:
        when = f"all {count}, {all_dropped_at - start:.1f} s after the burst"
    else:
        when = f"{dropped}/{count} in {NON_READER_STALL_SECONDS + 6:g} s"
    print(
        f"  non-readers dropped by the hub: {when} (ws_stall_seconds"
        f" {NON_READER_STALL_SECONDS:g}); in the hub after: {state['clients']} clients,"
        f" {state['queued']} messages queued"
    )


def run_server(tmp: Path, frames: Path, stall_seconds: float, fn: Any, *args: Any) -> None:
    server = Server(tmp, frames, stall_seconds)
    server.start()
    try:
        fn(server, *args)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--non-readers", type=int, default=300)
    parser.add_argument("--event-bytes", type=int, default=1000, help="non-reader burst")
    parser.add_argument("--only", choices=["fanout", "non-readers"])
    args = parser.parse_args()
    raise_fd_limit(2 * (args.clients + 2 * args.non_readers) + 256)
    with tempfile.TemporaryDirectory(prefix="facegate-bench-") as tmp:
        frames = Path(tmp) / "frames"
        frames.mkdir()
        cv2.imwrite(str(frames / "blank.jpg"), np.full((480, 640, 3), 128, np.uint8))
        clients = ClientProcess(fds=args.clients + 256)
        try:
            if args.only != "non-readers":
                print("== WebSocket fan-out (facegate serve on uvicorn, `websockets` clients) ==")
                print(
                    f"the server in this process, its {args.clients} clients in a second"
                    f" process; {os.cpu_count()} cores; latency = client receive time"
                    " - publication time (time.perf_counter_ns, one clock)"
                )
                data = Path(tmp) / "data"
                run_server(data, frames, STALL_SECONDS, fanout, clients, args.clients, args.events)
            if args.only != "fanout":
                print(f"== {args.non_readers} clients that never read + 1 normal client ==")
                data = Path(tmp) / "data2"
                sizes = (args.non_readers, args.events, args.event_bytes)
                run_server(data, frames, NON_READER_STALL_SECONDS, non_readers, clients, *sizes)
        finally:
            clients.close()


if __name__ == "__main__":
    main()
