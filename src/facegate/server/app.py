"""The Starlette app: the original design's endpoints, the panel's API, `/ws`, `/metrics`.

`create_app(runtime)`: the lifespan starts the runtime (store, engine thread, bus,
registration, history) and the WebSocket hub, and stops them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from facegate.server import api
from facegate.server.hub import Hub, close_quietly
from facegate.server.protocol import (
    Auth,
    Connected,
    DecisionResult,
    Error,
    Ping,
    Pong,
    RegistrationDecision,
    ResetSystem,
    decode_client,
)
from facegate.server.runtime import Runtime

STATIC = Path(__file__).resolve().parents[3] / "static"
MAX_WS_MESSAGE = 64 * 1024
CLOSE_TOO_BIG = 1009
AUTH_WAIT_SECONDS = 5.0
IMAGE_PATHS = ("/video.mjpg", "/snapshot.jpg")


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


class BearerAuth:
    """Bearer-token check for HTTP when a token is configured (constant-time compare)."""

    def __init__(self, app: ASGIApp, token: str, on_failure: Any) -> None:
        self.app = app
        self.token = token.encode()
        self.on_failure = on_failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token or _public(scope):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        given = header[7:] if header.lower().startswith(b"bearer ") else b""
        if not given and scope.get("path") in IMAGE_PATHS:
            # An <img> cannot send headers: the panel's video and snapshot carry ?token=.
            query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
            given = (query.get("token") or [""])[0].encode()
        if not hmac.compare_digest(given, self.token):
            self.on_failure(scope.get("path", ""), scope.get("client"))
            response = JSONResponse(
                {"error": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _public(scope: Scope) -> bool:
    """The panel's own files load without a token (the page then sends it); `/` only as the
    panel's HTML, never as the JSON status."""
    path: str = scope.get("path", "")
    if scope.get("method") != "GET":
        return False
    if path == "/":
        accept = dict(scope["headers"]).get(b"accept", b"")
        return b"text/html" in accept and (STATIC / "index.html").is_file()
    return path == "/index.html" or path.endswith((".js", ".css", ".svg", ".png", ".ico"))


def create_app(runtime: Runtime) -> Starlette:
    settings = runtime.settings
    server = settings.server
    hub = Hub(maxsize=server.ws_queue, stall_seconds=server.ws_stall_seconds)
    token = server.token

    def audit_failure(path: str, client: Any) -> None:
        if runtime.store is not None:
            with contextlib.suppress(Exception):
                runtime.store.record("auth", "auth_failed", path=path, client=str(client))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        tasks = [
            asyncio.create_task(hub.run(runtime.bus.subscribe("websockets", maxsize=8192))),
            asyncio.create_task(hub.reap()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for client in list(hub.clients):
                await hub.remove(client)
                await close_quietly(client.ws, 1001, "server shutting down")
            await runtime.stop()

    async def ws_endpoint(websocket: WebSocket) -> None:
        origin = websocket.headers.get("origin")
        if origin is not None and not _origin_ok(origin, websocket, server.allowed_origins):
            await websocket.close(code=1008)  # before accept: the handshake gets HTTP 403
            return
        authed = not token or hmac.compare_digest(
            websocket.query_params.get("token", "").encode(), token.encode()
        )
        await websocket.accept()
        if not authed and not await _auth_first_message(websocket, token):
            audit_failure("/ws", websocket.client)
            await close_quietly(websocket, 1008, "authentication required")
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
            ),
        )
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text") or message.get("bytes") or b""
                size = len(raw.encode()) if isinstance(raw, str) else len(raw)
                if size > MAX_WS_MESSAGE:
                    await close_quietly(websocket, CLOSE_TOO_BIG, "message over 64 KiB")
                    break
                hub_reply = _dispatch(runtime, raw, client.name)
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
        Route("/api/persons", api.persons(runtime), methods=["GET", "POST"]),
        Route("/api/persons/{person_id}", api.person(runtime), methods=["GET", "PATCH", "DELETE"]),
        Route("/api/persons/{person_id}/thumbnail", api.thumbnail(runtime)),
        Route("/api/identify", api.identify(runtime), methods=["POST"]),
        Route("/api/events", api.events(runtime)),
        Route("/api/stats", api.stats(runtime, hub)),
        Route("/api/schema", api.schema),
        Route("/metrics", api.metrics(runtime, hub)),
        Route("/snapshot.jpg", api.snapshot(runtime)),
        Route("/video.mjpg", api.video(runtime)),
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
        Middleware(BodyLimit, limit=int(server.max_upload_mb * 2**20)),
        Middleware(BearerAuth, token=token, on_failure=audit_failure),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.hub = hub
    app.state.runtime = runtime
    return app


def _origin_ok(origin: str, ws: WebSocket, allowed: list[str]) -> bool:
    own = {f"http://{ws.headers.get('host', '')}", f"https://{ws.headers.get('host', '')}"}
    return origin in own or origin in allowed


async def _auth_first_message(ws: WebSocket, token: str) -> bool:
    try:
        raw = await asyncio.wait_for(ws.receive_text(), timeout=AUTH_WAIT_SECONDS)
        msg = decode_client(raw)
    except Exception:
        return False
    return isinstance(msg, Auth) and hmac.compare_digest(msg.data.token.encode(), token.encode())


def _dispatch(runtime: Runtime, raw: str | bytes, client: str) -> Any:
    """One client message -> the reply to send back to that client (or None)."""
    try:
        msg = decode_client(raw)
    except msgspec.ValidationError as exc:
        return Error(message=f"invalid message: {exc}")
    except msgspec.DecodeError as exc:
        return Error(message=f"invalid JSON: {exc}")
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
            reply = registrar.decide(data.register, data.name, client)
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
