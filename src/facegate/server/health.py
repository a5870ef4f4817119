"""`/healthz` and `/readyz`: for supervisors (systemd, Docker, Kubernetes) and load balancers.

- `GET /healthz` (liveness): 200 `{"status": "ok"}` whenever the process answers HTTP. It
  checks nothing else on purpose: a supervisor restarts a process that fails it, and neither
  an unplugged camera nor a database that is restarting is cured by restarting the gate.
- `GET /readyz` (readiness): whether the gate can do its job now, 200 if so, else 503, with
  `{"ready": bool, "checks": {...}}`:
  - `serving`: the server is not shutting down;
  - `models`: the engine's models are loaded (the runtime started; `serve` loads them first);
  - `store`: the store is open and answers a query within STORE_SECONDS (a shared PostgreSQL
    that is away answers 503 until it is back);
  - `engine`: the engine runs (not stopped, not ended with its source, not failed);
  - `source`: the camera's state. Only "connected" is ready: "starting" (not opened yet),
    "unavailable" (unplugged, a stream away: the capture retries) and "ended" (a file played
    to its end) are not. A gate whose camera is gone recognises nobody, so a load balancer
    should send nobody to it; /healthz stays 200 meanwhile, so a supervisor does not restart a
    gate that is waiting for its camera, and the panel and the API still answer.

Both are public (no token, like the panel's files; a wrong token is ignored) and tell nothing
but these states: no source name or URL, no store location, no counts, no version. They pass
the trusted-host check like every route: a probe from another machine must send a Host the
gate accepts (`server.allowed_hosts`, or the address it binds). Responses are not cached.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from facegate.server.api import Handler
from facegate.server.runtime import NotStartedError, Runtime

STORE_SECONDS = 2.0  # a store that takes longer to answer is not ready
NO_STORE = {"Cache-Control": "no-store"}


def routes(runtime: Runtime) -> list[BaseRoute]:
    """The two routes (their access rules: access.ROUTES, public)."""
    return [Route("/healthz", healthz), Route("/readyz", readyz(runtime))]


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


def readyz(runtime: Runtime) -> Handler:
    probe = StoreProbe(runtime)

    async def handler(request: Request) -> Response:
        checks = await readiness(runtime, probe)
        ready = all(checks[k] is True for k in checks if k != "source")
        ready = ready and checks["source"] == "connected"
        return JSONResponse(
            {"ready": ready, "checks": checks}, status_code=200 if ready else 503, headers=NO_STORE
        )

    return handler


async def readiness(runtime: Runtime, probe: StoreProbe) -> dict[str, bool | str]:
    """Each check's state (see the module docstring)."""
    try:
        pipeline = runtime.pipeline
    except NotStartedError:
        started = engine = False
    else:
        started, engine = True, pipeline.running
    return {
        "serving": not runtime.closing.is_set(),
        "models": started,
        "store": started and await probe(),
        "engine": engine,
        "source": runtime.source_state,
    }


class StoreProbe:
    """Whether the store answers a query within `seconds`. The query runs in a worker thread;
    a probe that has not finished is waited for again by the next request rather than started
    anew, so a store that hangs never holds more than one thread."""

    def __init__(self, runtime: Runtime, seconds: float = STORE_SECONDS) -> None:
        self.runtime = runtime
        self.seconds = seconds
        self._pending: asyncio.Future[Any] | None = None

    async def __call__(self) -> bool:
        if self._pending is None or self._pending.done():
            store = self.runtime.store
            self._pending = asyncio.ensure_future(asyncio.to_thread(store.generation))
            self._pending.add_done_callback(_retrieve)
        try:
            await asyncio.wait_for(asyncio.shield(self._pending), self.seconds)
        except Exception:  # away (StoreUnavailableError), closed, or too slow (TimeoutError)
            return False
        return True


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a probe's exception as seen (its caller may have stopped waiting)."""
    with contextlib.suppress(asyncio.CancelledError):
        future.exception()
