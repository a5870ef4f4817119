"""How `facegate serve` runs uvicorn: connection limits that a silent client cannot exhaust.

uvicorn times out idle keep-alive connections (`timeout_keep_alive`) but not a connection
that never sends its request headers: a few thousand sockets that connect and say nothing
(or trickle a header byte now and then) would hold every file descriptor. `HeaderTimeoutH11`
closes a connection whose request headers are not complete `header_timeout_seconds` after
it opened or after its last response. `limit_concurrency` answers 503 past
`max_connections`, and `raise_open_file_limit` lifts the soft descriptor limit to the hard
one at start.

A WebSocket peer that stops reading would also keep its connection for ever once the hub lets
it go: uvicorn waits for room in the buffer before it even writes the close frame, and
asyncio's `close()` waits to flush what the peer never reads. `BoundedCloseWebSockets` aborts a
connection whose buffers have stayed full for `close_grace` seconds (its file descriptor,
buffers and task are freed); the check rides on the transport's flow control (pause/resume),
so the per-message send path is uvicorn's own.

`GracefulServer` is uvicorn's server that tells the runtime first on shutdown.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import threading
from typing import Any, Protocol

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from facegate.settings import ServerSettings

MAX_HEADER_BYTES = 16 * 1024


class FacegateConfig(uvicorn.Config):
    def __init__(
        self, app: Any, *, header_timeout: float = 5.0, close_grace: float = 5.0, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout
        self.close_grace = close_grace


class _AbortingClose:
    """A transport whose `close()` becomes `abort()` when the data it waits to flush has not
    left within `grace` seconds (the peer is not reading). Everything else is the transport's."""

    def __init__(self, transport: asyncio.Transport, grace: float) -> None:
        self._transport = transport
        self._grace = grace
        self._timer: asyncio.TimerHandle | None = None
        # Bound once: every frame sent goes through these (no __getattr__ per call).
        self.write = transport.write
        self.is_closing = transport.is_closing

    def close(self) -> None:
        self._transport.close()
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._grace, self._transport.abort)  # no-op if gone

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedCloseWebSockets(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, whose closing cannot be held up by a peer that does not
    read (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.close_grace: float = getattr(config, "close_grace", 5.0)

        self._full_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_AbortingClose(transport, self.close_grace))  # type: ignore[arg-type]

    def pause_writing(self) -> None:
        """The buffers are full: unless the peer reads within the grace, abort (connection_lost
        follows, and the app sees the disconnect)."""
        super().pause_writing()
        if self._full_timer is None:
            self._full_timer = self.loop.call_later(self.close_grace, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_full_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_full_timer()
        super().connection_lost(exc)

    def _cancel_full_timer(self) -> None:
        if self._full_timer is not None:
            self._full_timer.cancel()
            self._full_timer = None


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers do not arrive."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout: float = getattr(config, "header_timeout", 5.0)
        self._header_timer: asyncio.TimerHandle | None = None
        self._cycles = 0  # requests whose headers arrived; a timer checks it did not move

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.scope
        super().handle_events()
        if self.scope is not before:  # a request's headers arrived
            self._cycles += 1
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers are due as well

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expire, self._cycles)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self, cycles: int) -> None:
        self._header_timer = None
        if self._cycles != cycles or self.transport.is_closing():
            return
        if self.transport.get_protocol() is not self:
            return  # upgraded to a WebSocket
        if self.conn.their_state is not h11.IDLE:
            return  # a request is under way (its body has its own pace)
        self.transport.close()


class Closable(Protocol):
    # Set when the server begins shutting down: long responses (the MJPEG stream) end.
    closing: threading.Event


class GracefulServer(uvicorn.Server):
    """uvicorn's server that tells the runtime first on shutdown, so open video streams end
    instead of holding up the exit until the graceful timeout."""

    def __init__(self, config: uvicorn.Config, runtime: Closable) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: Any = None) -> None:
        self.runtime.closing.set()
        await super().shutdown(sockets)


def uvicorn_config(app: Any, server: ServerSettings, **overrides: Any) -> FacegateConfig:
    """The uvicorn configuration `facegate serve` uses (tests start theirs from it too)."""
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "log_level": "warning",
        "http": HeaderTimeoutH11,
        "ws": BoundedCloseWebSockets,
        "ws_max_size": 64 * 1024,
        # Events are small JSON sent to every client: compressing each one once per client
        # (permessage-deflate) cost 3x the broadcast throughput for little saving.
        "ws_per_message_deflate": False,
        "proxy_headers": server.proxy_headers,
        "timeout_keep_alive": server.keep_alive_seconds,
        "limit_concurrency": server.max_connections,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_graceful_shutdown": 3,
    }
    options.update(overrides)
    return FacegateConfig(
        app,
        header_timeout=server.header_timeout_seconds,
        close_grace=server.ws_close_grace_seconds,
        **options,
    )


def raise_open_file_limit(wanted: int = 65536) -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE towards the hard limit; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (OSError when it cannot be:
    the caller names the port instead of uvicorn printing a traceback after start-up)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = info[0]
    return socket.create_server(address, family=family)
