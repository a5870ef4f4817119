"""WebSocket clients: each with bounded outgoing queues and its own writer task.

The rules:

- Broadcasting never waits for a client: `Hub.broadcast` only appends the event to each
  client's queue (`Client.offer`).
- A client's event queue is bounded by a count (`maxsize`, `server.ws_queue`) and by bytes
  (`max_bytes`; `queued_bytes` counts its queued replies too). An event that would exceed
  either is refused, counted (`Client.dropped`), and the queue marked full (`full_since`). An
  empty queue always takes one event, however big: a client that keeps up gets every event.
- Replies to one client (`Hub.send`: connected, pong, decision_result, error) have a small
  queue of their own (`REPLY_QUEUE`), which the writer empties first: a ping is answered
  ahead of the client's event backlog.
- Loop turns stay short. In one event-loop turn each writer sends at most `per_turn()` =
  `turn_messages / clients` messages (at least one) and then yields; `Hub.run` broadcasts as
  many events per turn. So one turn of all writers is about `turn_messages` sends however
  many clients have a backlog, and a normal client's ping waits a few such turns, not behind
  everyone's backlog. With few clients a writer still sends a long run at once, which costs
  the server far less CPU per message than going round the clients one message at a time.
- A client that does not read is disconnected (`Hub.disconnected_slow`) once its current send
  has been blocked for `stall_seconds` (`server.ws_stall_seconds`), or once its queue has been
  full, with nothing sent since, for `stall_seconds`, whatever the event rate. `Hub.reap`
  looks every `reap_every` seconds (`stall_seconds / 10`, within 0.05 .. 0.5 s): the drop comes
  at most that late. A send blocks only once the socket's buffers are full: uvicorn's (64 KiB)
  and the kernel's (Linux grows a socket's send buffer up to `net.ipv4.tcp_wmem`'s maximum,
  a few MB on loopback); until then a client that does not read cannot be told from one that
  does. The close frame (1008, "client too slow") is sent in the background: it waits behind
  the client's unread backlog, however long that takes.
- Time comes from the injected `clock` (time.monotonic by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketState

from facegate.events import Event, stamp, to_wire
from facegate.live.bus import Subscription

log = logging.getLogger(__name__)
CLOSE_TOO_SLOW = 1008  # policy violation: the client does not read its messages
REPLY_QUEUE = 32  # replies waiting for one client; more are refused like a full event queue
MAX_BYTES = 1 << 20  # default byte budget of a client's event queue
TURN_MESSAGES = 1024  # messages sent (and appended) by all writers together in one loop turn


class Client:
    """One WebSocket client: its queues, what it has been sent, and whether it is stuck."""

    def __init__(
        self,
        ws: WebSocket,
        maxsize: int,
        name: str,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.ws = ws
        self.name = name
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.queue: deque[tuple[str, int]] = deque()  # events: (text, its size in bytes)
        self.replies: deque[tuple[str, int]] = deque()  # replies to this client, sent first
        self.queued_bytes = 0  # the size of everything in `queue` and `replies`
        self.wake = asyncio.Event()
        self.full_since: float | None = None  # a message was refused, none sent since
        self.sending_since: float | None = None  # the current send started (not finished)
        self.sent = 0
        self.dropped = 0  # messages refused: the queue was full
        self.writer: asyncio.Task[None] | None = None
        self.closed = False

    def offer(self, text: str, now: float, size: int | None = None) -> bool:
        """Queue an event (`size`: its UTF-8 length, computed when not given); False when
        refused, the queue being at its count or byte limit."""
        if self.closed:
            return False
        if size is None:
            size = len(text.encode())
        if self.queue and (
            len(self.queue) >= self.maxsize or self.queued_bytes + size > self.max_bytes
        ):
            return self._refuse(now)
        self.queue.append((text, size))
        self.queued_bytes += size
        self.wake.set()
        return True

    def reply(self, text: str, now: float) -> bool:
        """Queue a reply, sent before any queued event; False when refused (too many)."""
        if self.closed:
            return False
        if len(self.replies) >= REPLY_QUEUE:
            return self._refuse(now)
        size = len(text.encode())
        self.replies.append((text, size))
        self.queued_bytes += size
        self.wake.set()
        return True

    def _refuse(self, now: float) -> bool:
        self.dropped += 1
        if self.full_since is None:
            self.full_since = now
        return False

    def next_message(self) -> str | None:
        """The next message to send (a reply first), out of its queue; None when none."""
        source = self.replies or self.queue
        if not source:
            return None
        text, size = source.popleft()
        self.queued_bytes -= size
        return text

    def stalled_for(self, now: float) -> float:
        """For how long this client has not been reading: its current send blocked, or its
        queue full with nothing sent since; 0 when neither."""
        since = [t for t in (self.sending_since, self.full_since) if t is not None]
        return now - min(since) if since else 0.0


class Hub:
    """The connected clients, under the module's rules. `maxsize` and `max_bytes` bound each
    client's event queue, `stall_seconds` is how long a client may not read, `clock` tells the
    time for that, `turn_messages` is the sends of all writers in one loop turn."""

    def __init__(
        self,
        *,
        maxsize: int = 512,
        max_bytes: int = MAX_BYTES,
        stall_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        turn_messages: int = TURN_MESSAGES,
    ) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.stall_seconds = stall_seconds
        self.turn_messages = turn_messages
        self.reap_every = min(0.5, max(0.05, stall_seconds / 10))
        self.clock = clock
        self.clients: set[Client] = set()
        self.disconnected_slow = 0
        self._counter = 0
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, ws: WebSocket) -> Client:
        self._counter += 1
        client = Client(ws, self.maxsize, f"ws-{self._counter}", self.max_bytes)
        client.writer = asyncio.create_task(self._write(client))
        self.clients.add(client)
        return client

    async def remove(self, client: Client) -> None:
        self.clients.discard(client)
        client.closed = True
        client.queue.clear()
        client.replies.clear()
        client.queued_bytes = 0
        if client.writer is not None and client.writer is not asyncio.current_task():
            client.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await client.writer

    def send(self, client: Client, event: Event) -> None:
        """A reply to one client (not a bus event: seq 0, but timestamped), sent ahead of the
        events queued for it."""
        client.reply(to_wire(stamp(event, 0)).decode(), self.clock())

    def broadcast(self, event: Event) -> None:
        data = to_wire(event)
        text, size, now = data.decode(), len(data), self.clock()
        for client in list(self.clients):
            client.offer(text, now, size)

    def per_turn(self) -> int:
        """How many messages one writer sends (and `run` broadcasts) in one loop turn."""
        return max(1, self.turn_messages // max(1, len(self.clients)))

    async def _write(self, client: Client) -> None:
        try:
            this_turn = 0
            while not client.closed:
                text = client.next_message()
                if text is None:
                    client.wake.clear()
                    this_turn = 0
                    await client.wake.wait()
                    continue
                client.sending_since = self.clock()
                await client.ws.send_text(text)
                client.sending_since = None
                client.sent += 1
                client.full_since = None
                this_turn += 1
                if this_turn >= self.per_turn():
                    this_turn = 0
                    await asyncio.sleep(0)  # the other writers' turn, and everyone else's
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away; the endpoint cleans up
            client.sending_since = None
            client.closed = True

    async def run(self, subscription: Subscription) -> None:
        """Fan the bus out to every client, `per_turn()` events per loop turn."""
        this_turn = 0
        async for event in subscription:
            self.broadcast(event)
            this_turn += 1
            if this_turn >= self.per_turn():
                this_turn = 0
                await asyncio.sleep(0)

    async def reap(self) -> None:
        """Disconnect, every `reap_every` seconds, the clients that have stopped reading."""
        while True:
            await asyncio.sleep(self.reap_every)
            await self.reap_once()

    async def reap_once(self) -> int:
        """Disconnect the clients stalled for `stall_seconds` now; how many."""
        now = self.clock()
        stalled = [c for c in self.clients if c.stalled_for(now) >= self.stall_seconds]
        for client in stalled:
            blocked = client.sending_since is not None and client.sending_since == min(
                t for t in (client.sending_since, client.full_since) if t is not None
            )
            log.warning(
                "%s: not reading for %.1f s (%s); disconnected",
                client.name,
                client.stalled_for(now),
                "send blocked" if blocked else "queue full",
            )
            self.disconnected_slow += 1
            await self.remove(client)
            # The close frame waits behind the client's unread backlog: send it in the
            # background, however long that takes, so the client learns to reconnect.
            task = asyncio.create_task(_close(client.ws))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return len(stalled)


async def _close(ws: WebSocket) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=CLOSE_TOO_SLOW, reason="client too slow")


async def close_quietly(ws: WebSocket, code: int, reason: str = "") -> None:
    if ws.application_state is WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, reason=reason), timeout=1.0)
