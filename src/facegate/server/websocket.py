"""`/ws`: the WebSocket endpoint, its authentication and the dispatch of client messages.

A client connects (its role from `?token=`, read by `security.Guard`, or from a first `auth`
message within `AUTH_WAIT_SECONDS`), gets `connected`, then every event the hub broadcasts
and the faces of the latest frame (`send_tracks`). Each message it sends is decoded
(`protocol.decode_client`), checked against its role and rate in `access.MESSAGES`, and
dispatched; the reply, if any (`protocol.Reply`: `pong`, `error`, `decision_result`), goes to
that client alone, ahead of its queued events. Refusals close the socket: 1008 (no or wrong
token, too low a role), 1009 (a message over `MAX_WS_MESSAGE`), 1013 (`ws_max_clients`
connected).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, assert_never

import msgspec
from starlette.websockets import WebSocket

from facegate.events import Tracks
from facegate.identity.names import InvalidNameError
from facegate.server import api
from facegate.server.access import MESSAGES, ROUTES, Role, Tokens
from facegate.server.hub import Hub, close_quietly
from facegate.server.protocol import (
    Auth,
    Connected,
    DecisionResult,
    Error,
    Ping,
    Pong,
    RegistrationDecision,
    RegistrationTyping,
    Reply,
    ResetSystem,
    decode_client,
)
from facegate.server.security import SCOPE_ROLE, client_address
from facegate.server.throttle import AuthThrottle, RateLimiter

if TYPE_CHECKING:
    from facegate.server.runtime import Runtime

MAX_WS_MESSAGE = 64 * 1024
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013
AUTH_WAIT_SECONDS = 5.0


def endpoint(
    runtime: Runtime,
    hub: Hub,
    *,
    tokens: Tokens,
    throttle: AuthThrottle,
    limiter: RateLimiter,
) -> Callable[[WebSocket], Awaitable[None]]:
    """The `/ws` endpoint: one task per client, reading its messages until it goes."""
    server = runtime.settings.server

    async def ws_endpoint(websocket: WebSocket) -> None:
        role: Role | None = websocket.scope.get(SCOPE_ROLE)
        await websocket.accept()
        if role is None:
            role = await auth_first_message(websocket, tokens, throttle)
        if role is None or role < ROUTES["/ws"]["WEBSOCKET"].role:
            await close_quietly(websocket, 1008, "authentication required")
            return
        if len(hub) >= server.ws_max_clients:
            await close_quietly(websocket, CLOSE_TRY_LATER, "too many clients; try again later")
            return
        client = hub.add(websocket)
        status = api.system_status(runtime, hub)
        hub.send(
            client,
            Connected(
                message="Connected to facegate",
                current_event=runtime.registrar.last_event,
                system_ready=runtime.engine is not None,
                status=status,
                role=role.label,
                gate_id=runtime.settings.gate.id,  # the gate this socket is connected to
            ),
        )
        address = client_address(websocket.scope)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text") or message.get("bytes") or b""
                size = len(raw.encode(errors="surrogatepass")) if isinstance(raw, str) else len(raw)
                if size > MAX_WS_MESSAGE:
                    await close_quietly(websocket, CLOSE_TOO_BIG, "message over 64 KiB")
                    break
                reply = dispatch(
                    runtime, raw, client.name, role=role, limiter=limiter, address=address
                )
                if reply is not None:
                    hub.send(client, reply)
        finally:
            await hub.remove(client)

    return ws_endpoint


async def auth_first_message(ws: WebSocket, tokens: Tokens, throttle: AuthThrottle) -> Role | None:
    """The role of a first `auth` message's token, or None (wrong, late or not an auth)."""
    address = client_address(ws.scope)
    if throttle.retry_after(address) is not None:
        return None
    try:
        raw = await asyncio.wait_for(ws.receive_text(), timeout=AUTH_WAIT_SECONDS)
        msg = decode_client(raw)
    except Exception:
        return None
    if not isinstance(msg, Auth):
        return None
    role = tokens.role_of(msg.data.token)
    if role is None:
        throttle.failed(address, "/ws")
    return role


def dispatch(
    runtime: Runtime,
    raw: str | bytes,
    client: str,
    *,
    role: Role,
    limiter: RateLimiter,
    address: str,
) -> Reply | None:
    """One client message -> the reply to send back to that client (or None)."""
    try:
        msg = decode_client(raw)
    except msgspec.ValidationError as exc:
        return Error(message=f"invalid message: {exc}")
    except msgspec.DecodeError as exc:
        return Error(message=f"invalid JSON: {exc}")
    access = MESSAGES[msg.__struct_config__.tag]  # type: ignore[index]
    if role < access.role:
        return Error(message=f"{access.role.label} role needed; your token is {role.label}")
    if access.limited and not limiter.allow(address):
        return Error(message="too many commands: slow down")
    registrar = runtime.registrar
    match msg:
        case Ping():
            return Pong()
        case Auth():
            return None  # already authenticated
        case ResetSystem():
            registrar.reset()
            return None
        case RegistrationDecision(data=data):
            try:
                reply = registrar.decide(data.register, data.name, client)
            except InvalidNameError as exc:
                return DecisionResult(ok=False, message=str(exc))
            return DecisionResult(ok=reply.ok, message=reply.message)
        case RegistrationTyping():
            reply = registrar.typing(client)
            return DecisionResult(ok=reply.ok, message=reply.message)
        case _:
            assert_never(msg)


async def send_tracks(runtime: Runtime, hub: Hub) -> None:
    """The faces of the latest processed frame to every client, at most
    `tracks_per_second`; a frame without faces once, when the last face goes."""
    period = 1.0 / runtime.settings.server.tracks_per_second
    last: Tracks | None = None
    while True:
        await asyncio.sleep(period)
        view = runtime.engine.latest_view if runtime.engine is not None else None
        if view is None or view is last:
            continue
        if view.tracks or (last is not None and last.tracks):
            hub.broadcast(view)
        last = view


async def disconnect_all(hub: Hub) -> None:
    """Every client closed with 1001 (the server is shutting down)."""
    for client in list(hub.clients):
        await hub.remove(client)
        await close_quietly(client.ws, 1001, "server shutting down")
