"""The Starlette app: the route table and `create_app(runtime)`.

Each job has its own module: who may do what and the middleware that enforces it
(`security.py`, over the table in `access.py`), the WebSocket endpoint and its messages
(`websocket.py`, `protocol.py`), the handlers (`api.py`, `persons.py`, `unknown_faces.py`,
`video.py`) and how uvicorn runs the app (`http.py`). The lifespan starts the runtime (store,
engine thread, bus, registration, history), the WebSocket hub and its tasks, and stops them
on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from facegate.identity.store import StoreUnavailableError
from facegate.server import api, health, persons, unknown_faces, video, websocket
from facegate.server.http import GracefulServer
from facegate.server.hub import Hub
from facegate.server.panel import static_dir
from facegate.server.protocol import wire_schema
from facegate.server.runtime import Runtime
from facegate.server.security import AuditWriter, is_loopback, middleware, tokens_of
from facegate.server.throttle import AuthThrottle, RateLimiter
from facegate.server.uploads import UploadWorker
from facegate.server.websocket import MAX_WS_MESSAGE

# Imported from here by `facegate serve`, the bench and the tests.
__all__ = ["MAX_WS_MESSAGE", "STATIC", "GracefulServer", "create_app", "is_loopback"]

# The panel's files, from the installed package (server/panel.py).
STATIC = static_dir()


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
    audit = AuditWriter(
        throttle,
        lambda: runtime.store,
        retention_seconds=settings.store.audit_retention_days * 86400.0,
        max_rows=settings.store.audit_max_rows,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        tasks = [
            asyncio.create_task(hub.run(runtime.bus.subscribe("websockets", maxsize=8192))),
            asyncio.create_task(hub.reap()),
            asyncio.create_task(audit.run()),
            asyncio.create_task(websocket.send_tracks(runtime, hub)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await websocket.disconnect_all(hub)
            uploads.close()
            audit.flush(everything=True)
            await runtime.stop()

    ws_endpoint = websocket.endpoint(
        runtime, hub, tokens=tokens, throttle=throttle, limiter=limiter
    )
    # Each route's role, body and rate limit: access.ROUTES (a route missing there is refused).
    routes: list[BaseRoute] = [
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
        Route("/api/gates", api.gates(runtime)),
        Route("/api/stats", api.stats(runtime, hub)),
        Route("/api/schema", lambda r: JSONResponse(wire_schema())),
        Route("/metrics", api.metrics(runtime, hub)),
        *health.routes(runtime),  # /healthz, /readyz
        Route("/snapshot.jpg", video.snapshot(runtime)),
        Route("/video.mjpg", video.video(runtime)),
        WebSocketRoute("/ws", ws_endpoint),
    ]
    if STATIC.is_dir():
        routes.append(Mount("/", StaticFiles(directory=STATIC), name="static"))
    app = Starlette(
        routes=routes,
        middleware=middleware(
            server,
            routes=routes,
            tokens=tokens,
            throttle=throttle,
            limiter=limiter,
            page_available=(STATIC / "index.html").is_file,
        ),
        lifespan=lifespan,
        exception_handlers={HTTPException: _json_error, StoreUnavailableError: _store_away},
    )
    app.state.hub = hub
    app.state.runtime = runtime
    app.state.throttle = throttle
    app.state.limiter = limiter
    app.state.uploads = uploads
    app.state.write_audit = audit.flush
    return app


async def _store_away(request: Request, exc: Exception) -> Response:
    """The shared store is away (PostgreSQL restarting, the network cut): 503, try again;
    recognition goes on with the gate's index meanwhile."""
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "2"})


async def _json_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (404, 405, malformed multipart) as JSON like every other."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
