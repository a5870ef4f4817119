"""The Starlette app: the original design's endpoints, the panel's API, `/ws`, `/metrics`.

`create_app(runtime)`: the lifespan starts the runtime (store, engine thread, bus,
registration, history) and the WebSocket hub, and stops them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from facegate.events import Tracks
from facegate.names import InvalidNameError
from facegate.server import api, persons, unknown_faces, video
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
    ResetSystem,
    decode_client,
)
from facegate.server.runtime import Runtime
from facegate.server.security import SCOPE_ROLE, Guard, client_address
from facegate.server.throttle import AuthThrottle, FailureWindow, RateLimiter
from facegate.server.uploads import UploadWorker
from facegate.settings import ServerSettings
from facegate.store import StoreError

STATIC = Path(__file__).resolve().parents[3] / "static"
MAX_WS_MESSAGE = 64 * 1024
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013
AUTH_WAIT_SECONDS = 5.0
AUDIT_FLUSH_SECONDS = 10.0


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BodyLimit:
    """413 for request bodies over the limit, without reading the rest: by Content-Length
    when given, else by counting the streamed chunks."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLargeError
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLargeError:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        mb = self.limit / 2**20
        response = JSONResponse({"error": f"upload larger than {mb:g} MiB"}, status_code=413)
        await response(scope, receive, send)


class _TooLargeError(Exception):
    pass


def tokens_of(server: ServerSettings) -> Tokens:
    return Tokens(admin=server.token, operator=server.operator_token, viewer=server.viewer_token)


def create_app(runtime: Runtime) -> Starlette:
    settings = runtime.settings
    server = settings.server
    hub = Hub(
        maxsize=server.ws_queue,
        max_bytes=server.ws_queue_bytes,
        stall_seconds=server.ws_stall_seconds,
    )
    tokens = tokens_of(server)
    throttle = AuthThrottle(limit=server.auth_failures_per_minute)
    limiter = RateLimiter(server.commands_per_second, server.command_burst)
    uploads = UploadWorker(server.max_pending_uploads)

    def store_audit(windows: list[FailureWindow]) -> None:
        """Failed logins as one row per address per minute; the audit log within limits."""
        store = runtime.store
        if store is None:
            return
        for window in windows:
            with contextlib.suppress(StoreError):
                store.record("auth", "auth_failed", **msgspec.to_builtins(window))
        with contextlib.suppress(StoreError):
            store.prune_audit(
                retention_seconds=settings.store.audit_retention_days * 86400.0,
                max_rows=settings.store.audit_max_rows,
            )

    def write_audit(*, everything: bool = False) -> None:
        store_audit(throttle.drain(everything=everything))

    async def audit_writer() -> None:
        while True:
            await asyncio.sleep(AUDIT_FLUSH_SECONDS)
            # The throttle is the loop's; only the writing goes to a thread.
            await asyncio.to_thread(store_audit, throttle.drain())

    async def send_tracks() -> None:
        """The faces of the latest processed frame to every client, at most
        `tracks_per_second`; a frame without faces once, when the last face goes."""
        last: Tracks | None = None
        while True:
            await asyncio.sleep(1.0 / server.tracks_per_second)
            view = runtime.engine.latest_view if runtime.engine is not None else None
            if view is None or view is last:
                continue
            if view.tracks or (last is not None and last.tracks):
                hub.broadcast(view)
            last = view

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        tasks = [
            asyncio.create_task(hub.run(runtime.bus.subscribe("websockets", maxsize=8192))),
            asyncio.create_task(hub.reap()),
            asyncio.create_task(audit_writer()),
            asyncio.create_task(send_tracks()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for client in list(hub.clients):
                await hub.remove(client)
                await close_quietly(client.ws, 1001, "server shutting down")
            uploads.close()
            write_audit(everything=True)
            await runtime.stop()

    async def ws_endpoint(websocket: WebSocket) -> None:
        role: Role | None = websocket.scope.get(SCOPE_ROLE)
        await websocket.accept()
        if role is None:
            role = await _auth_first_message(websocket, tokens, throttle)
        if role is None or role < ROUTES["/ws"]["WEBSOCKET"].role:
            await close_quietly(websocket, 1008, "authentication required")
            return
        if len(hub) >= server.ws_max_clients:
            await close_quietly(websocket, CLOSE_TRY_LATER, "too many clients; try again later")
            return
        client = hub.add(websocket)
        reg = runtime.registrar
        status = api.system_status(runtime, hub)
        hub.send(
            client,
            Connected(
                message="Connected to facegate",
                current_event=reg.last_event if reg else "",
                system_ready=runtime.engine is not None,
                status=status,
                role=role.label,
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
                hub_reply = _dispatch(
                    runtime, raw, client.name, role=role, limiter=limiter, address=address
                )
                if hub_reply is not None:
                    hub.send(client, hub_reply)
        finally:
            await hub.remove(client)

    routes = [
        Route("/", api.root(runtime, hub, STATIC)),
        Route("/system_status", lambda r: JSONResponse(api.system_status(runtime, hub))),
        Route("/get_user_response", api.get_user_response(runtime)),
        Route("/reset_system", api.reset_system(runtime), methods=["POST"]),
        Route("/registration_decision", api.registration_decision(runtime), methods=["POST"]),
        Route("/api/registration", api.registration(runtime), methods=["POST"]),
        Route("/api/unknowns", unknown_faces.unknowns(runtime)),
        Route("/api/unknowns/{track_id}", unknown_faces.unknown(runtime), methods=["DELETE"]),
        Route("/api/unknowns/{track_id}/thumbnail", unknown_faces.unknown_thumbnail(runtime)),
        Route("/api/persons", persons.persons(runtime, uploads), methods=["GET", "POST"]),
        Route(
            "/api/persons/{person_id}",
            persons.person(runtime),
            methods=["GET", "PATCH", "DELETE"],
        ),
        Route("/api/persons/{person_id}/thumbnail", persons.thumbnail(runtime)),
        Route(
            "/api/persons/{person_id}/photos",
            persons.person_photos(runtime, uploads),
            methods=["POST"],
        ),
        Route("/api/identify", persons.identify(runtime, uploads), methods=["POST"]),
        Route("/api/events", api.events(runtime)),
        Route("/api/stats", api.stats(runtime, hub)),
        Route("/api/schema", api.schema),
        Route("/metrics", api.metrics(runtime, hub)),
        Route("/snapshot.jpg", video.snapshot(runtime)),
        Route("/video.mjpg", video.video(runtime)),
        WebSocketRoute("/ws", ws_endpoint),
    ]
    if STATIC.is_dir():
        routes.append(Mount("/", StaticFiles(directory=STATIC), name="static"))
    hosts = [
        "127.0.0.1",
        "localhost",
        "::1",
        "[::1]",
        "testserver",
        server.host,
        *server.allowed_hosts,
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        Middleware(
            Guard,
            routes=routes,
            tokens=tokens,
            allowed_origins=server.allowed_origins,
            throttle=throttle,
            limiter=limiter,
            page_available=(STATIC / "index.html").is_file,
        ),
        Middleware(BodyLimit, limit=int(server.max_upload_mb * 2**20)),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _json_error},
    )
    app.state.hub = hub
    app.state.runtime = runtime
    app.state.throttle = throttle
    app.state.limiter = limiter
    app.state.uploads = uploads
    app.state.write_audit = write_audit
    return app


async def _json_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (404, 405, malformed multipart) as JSON like every other."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _auth_first_message(ws: WebSocket, tokens: Tokens, throttle: AuthThrottle) -> Role | None:
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


def _dispatch(
    runtime: Runtime,
    raw: str | bytes,
    client: str,
    *,
    role: Role,
    limiter: RateLimiter,
    address: str,
) -> Any:
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
            if registrar is not None:
                registrar.reset()
            return None
        case RegistrationDecision(data=data):
            if registrar is None:
                return DecisionResult(ok=False, message="not ready")
            try:
                reply = registrar.decide(data.register, data.name, client)
            except InvalidNameError as exc:
                return DecisionResult(ok=False, message=str(exc))
            return DecisionResult(ok=reply.ok, message=reply.message)
        case RegistrationTyping():
            if registrar is None:
                return DecisionResult(ok=False, message="not ready")
            reply = registrar.typing(client)
            return DecisionResult(ok=reply.ok, message=reply.message)


class GracefulServer(uvicorn.Server):
    """uvicorn's server that tells the runtime first on shutdown, so open video streams end
    instead of holding up the exit until the graceful timeout."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: Any = None) -> None:
        self.runtime.closing.set()
        await super().shutdown(sockets)
