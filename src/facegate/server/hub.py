"""WebSocket clients: each with a bounded outgoing queue and its own writer task.

A client that stops reading fills its queue; once the queue has stayed full for
`ws_stall_seconds` the client is disconnected. Nobody else waits for it: broadcasting only
appends to queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketState

from facegate.bus import Subscription
from facegate.events import Event, stamp, to_wire

log = logging.getLogger(__name__)
CLOSE_TOO_SLOW = 1008  # policy violation: the client does not read its messages


class Client:
    def __init__(self, ws: WebSocket, maxsize: int, name: str) -> None:
        self.ws = ws
        self.name = name
        self.maxsize = maxsize
        self.queue: deque[str] = deque()
        self.wake = asyncio.Event()
        self.full_since: float | None = None
        self.sent = 0
        self.dropped = 0
        self.writer: asyncio.Task[None] | None = None
        self.closed = False

    def offer(self, text: str, now: float) -> None:
        if len(self.queue) >= self.maxsize:
            self.dropped += 1
            if self.full_since is None:
                self.full_since = now
            return
        self.queue.append(text)
        self.wake.set()


class Hub:
    def __init__(
        self,
        *,
        maxsize: int = 512,
        stall_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maxsize = maxsize
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.clients: set[Client] = set()
        self.disconnected_slow = 0
        self._counter = 0
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, ws: WebSocket) -> Client:
        self._counter += 1
        client = Client(ws, self.maxsize, f"ws-{self._counter}")
        client.writer = asyncio.create_task(self._write(client))
        self.clients.add(client)
        return client

    async def remove(self, client: Client) -> None:
        self.clients.discard(client)
        client.closed = True
        if client.writer is not None and client.writer is not asyncio.current_task():
            client.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await client.writer

    def send(self, client: Client, event: Event) -> None:
        """A reply to one client (not a bus event: seq 0, but timestamped)."""
        client.offer(to_wire(stamp(event, 0)).decode(), self.clock())

    def broadcast(self, event: Event) -> None:
        text = to_wire(event).decode()
        now = self.clock()
        for client in list(self.clients):
            client.offer(text, now)

    async def _write(self, client: Client) -> None:
        try:
            while not client.closed:
                await client.wake.wait()
                client.wake.clear()
                while client.queue:
                    text = client.queue.popleft()
                    await client.ws.send_text(text)
                    client.sent += 1
                    client.full_since = None
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away; the endpoint cleans up
            client.closed = True

    async def run(self, subscription: Subscription) -> None:
        """Fan the bus out to every client."""
        async for event in subscription:
            self.broadcast(event)

    async def reap(self) -> None:
        """Disconnect clients whose queue has been full for `stall_seconds`."""
        while True:
            await asyncio.sleep(min(1.0, self.stall_seconds / 4))
            now = self.clock()
            for client in list(self.clients):
                if client.full_since is not None and now - client.full_since >= self.stall_seconds:
                    log.warning(
                        "%s: not reading for %.0f s; disconnected",
                        client.name,
                        now - client.full_since,
                    )
                    self.disconnected_slow += 1
                    await self.remove(client)
                    # The close frame waits behind the client's unread backlog: send it in the
                    # background, however long that takes, so the client learns to reconnect.
                    task = asyncio.create_task(_close(client.ws))
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)


async def _close(ws: WebSocket) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=CLOSE_TOO_SLOW, reason="client too slow")


async def close_quietly(ws: WebSocket, code: int, reason: str = "") -> None:
    if ws.application_state is WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, reason=reason), timeout=1.0)
