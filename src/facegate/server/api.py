"""HTTP handlers: the original design's endpoints, the registration offer, events, stats, the
schema and metrics, and the helpers the other handler modules share (`error`, `bounded_int`,
`Handler`...).

Every error is JSON `{"error": ...}`: 400 bad input, 404 unknown ids, 409 refused
registration offers. Access, origins and content types are checked before any handler runs
(security.Guard).

The rest of the API lives in:
- `persons`: persons, their photos and thumbnails, `/api/identify` (the uploads: 413, 415, 503);
- `unknown_faces`: the recent unknown faces, `/api/unknowns`;
- `video`: the video, `/video.mjpg` and `/snapshot.jpg`.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from facegate import __version__
from facegate.events import AnyEvent
from facegate.identity.names import InvalidNameError, clean_name
from facegate.settings import GATE_ID_PATTERN

if TYPE_CHECKING:
    from facegate.identity.store import LoggedEvent
    from facegate.server.hub import Hub
    from facegate.server.runtime import Runtime

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


MAX_SEQ = 2**63 - 1
MAX_EVENTS = 1000
MAX_TRACK_ID = 2**31
MAX_PERSON_ID = 64
MAX_TYPE_PARAM = 1024
EVENT_TYPES = frozenset(str(kind.__struct_config__.tag) for kind in AnyEvent.__args__)
GATE_ID = re.compile(GATE_ID_PATTERN)  # as `gate.id`, 1 to MAX_GATE_ID characters
MAX_GATE_ID = 64
ALL_GATES = "all"  # `gate=all`: every gate sharing the store
MAX_UNTIL = 1e11  # unix seconds (year 5138): bounds `until`


def error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def bounded_int(request: Request, key: str, default: int, low: int, high: int) -> int:
    """A query parameter as an integer within [low, high]; ValueError naming the bounds."""
    raw = request.query_params.get(key)
    if raw is None:
        return default
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 20):
        raise ValueError(f"`{key}` must be an integer from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"`{key}` must be an integer from {low} to {high}")
    return value


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def system_status(runtime: Runtime, hub: Hub) -> dict[str, Any]:
    base: dict[str, Any] = msgspec.to_builtins(runtime.registrar.status())
    base["websocket_connections"] = len(hub)
    base["source_state"] = runtime.source_state
    return base


def root(runtime: Runtime, hub: Hub, static: Path) -> Handler:
    async def handler(request: Request) -> Response:
        index = static / "index.html"
        if "text/html" in request.headers.get("accept", "") and index.is_file():
            return FileResponse(index)
        scheme = "wss" if request.url.scheme == "https" else "ws"
        return JSONResponse(
            {
                "server": "facegate",
                "version": __version__,
                "websocket_url": f"{scheme}://{request.url.netloc}/ws",
                "active_connections": len(hub),
                "system_status": system_status(runtime, hub),
            }
        )

    return handler


def get_user_response(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        registrar = runtime.registrar
        return JSONResponse(
            {
                "waiting_for_user_response": registrar.status().waiting_for_user_response,
                "last_decision": registrar.last_decision,
            }
        )

    return handler


class EmptyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


def reset_system(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        if await request.body():  # optional; `{}` when given
            body = await _json_body(request, EmptyBody)
            if isinstance(body, JSONResponse):
                return body
        runtime.registrar.reset()
        return JSONResponse({"ok": True, "message": "System reset"})

    return handler


class DecisionBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    register: bool
    name: str | None = None


async def _json_body(request: Request, kind: type[T]) -> T | JSONResponse:
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=kind)
    except RecursionError:
        return error("invalid JSON: nested too deeply", 400)
    except msgspec.ValidationError as exc:
        return error(f"invalid body: {exc}", 400)
    except msgspec.DecodeError as exc:
        return error(f"invalid JSON: {exc}", 400)


def registration_decision(runtime: Runtime) -> Handler:
    async def handler(request: Request) -> Response:
        body = await _json_body(request, DecisionBody)
        if isinstance(body, JSONResponse):
            return body
        try:
            reply = runtime.registrar.decide(body.register, body.name, _client(request))
        except InvalidNameError as exc:
            return error(str(exc), 400)
        return JSONResponse(
            {"ok": reply.ok, "message": reply.message}, status_code=200 if reply.ok else 409
        )

    return handler


def _client(request: Request) -> str:
    return f"http:{request.client.host if request.client else '?'}"


class OfferBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    track_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_TRACK_ID)]
    name: str | None = None


def registration(runtime: Runtime) -> Handler:
    """`POST /api/registration {"track_id": 7, "name": "Ada" | null}`: offer a face in view
    for registration (again: after "Not now", a timeout or a failed capture)."""

    async def handler(request: Request) -> Response:
        body = await _json_body(request, OfferBody)
        if isinstance(body, JSONResponse):
            return body
        if body.name is not None and body.name.strip():
            try:  # refused before the registrar is asked, whatever the face's state
                clean_name(body.name)
            except InvalidNameError as exc:
                return error(f"`name`: {exc}", 400)
        try:
            reply = runtime.registrar.offer(body.track_id, body.name, client=_client(request))
        except InvalidNameError as exc:
            return error(f"`name`: {exc}", 400)
        if reply.ok:
            return JSONResponse({"ok": True, "message": reply.message})
        status = 404 if reply.message.startswith("not in view") else 409
        return JSONResponse(
            {"ok": False, "message": reply.message, "error": reply.message}, status_code=status
        )

    return handler


def _event_types(values: list[str]) -> tuple[str, ...]:
    """`type=a,b` (or `type=a&type=b`): known event type names; ValueError naming the first
    unknown one."""
    if not values:
        return ()
    raw = ",".join(values)
    if len(raw) > MAX_TYPE_PARAM:
        raise ValueError(f"`type` is longer than {MAX_TYPE_PARAM} characters")
    names = [n for n in (part.strip() for part in raw.split(",")) if n]
    if not names:
        raise ValueError("`type` names no event type")
    for name in names:
        if name not in EVENT_TYPES:
            raise ValueError(
                f"`type`: unknown event type {name[:64]!r}; known types:"
                f" {', '.join(sorted(EVENT_TYPES))}"
            )
    return tuple(dict.fromkeys(names))


def _gate_param(request: Request, this: str) -> str | None:
    """`gate=<id>` (default: this gate), or None for `gate=all`; ValueError when it is
    neither a gate id nor "all"."""
    raw = request.query_params.get("gate")
    if raw is None:
        return this
    if raw == ALL_GATES:
        return None
    if not (len(raw) <= MAX_GATE_ID and GATE_ID.fullmatch(raw)):
        raise ValueError(
            "`gate` must be a gate id (1 to 64 letters, digits, - or _) or `all`;"
            " GET /api/gates lists the gates"
        )
    return raw


def _until(request: Request) -> float | None:
    """`until=<unix seconds>` (gate=all's cursor): a finite number, or None when absent."""
    raw = request.query_params.get("until")
    if raw is None:
        return None
    try:
        value = float(raw.strip()) if len(raw) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_UNTIL):
        raise ValueError("`until` must be a time in unix seconds (a number from 0)")
    return value


def _event_json(row: LoggedEvent) -> bytes:
    """A history row as the API gives it: the event's JSON, which names its gate (rows
    written before events carried `gate_id` get the row's gate)."""
    data = row.data.encode()
    if not row.gate or b'"gate_id":' in data:
        return data
    doc = msgspec.json.decode(data)
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        doc["data"]["gate_id"] = row.gate
        return msgspec.json.encode(doc)
    return data


def events(runtime: Runtime) -> Handler:
    """`GET /api/events`: this gate's events: `since=SEQ` (after it, oldest first; the
    default) or `before=SEQ` (before it, newest first: paging back), `limit`, `type=a,b`,
    `person_id=ID`. `gate=ID`: another gate's events (sharing the store), with the same
    cursors (each gate numbers its own events); `gate=all`: every gate's, newest first, paged
    back with `until=<unix seconds>` (older than it)."""

    async def handler(request: Request) -> Response:
        query = request.query_params
        try:
            gate = _gate_param(request, runtime.settings.gate.id)
            if gate is None and ("since" in query or "before" in query):
                raise ValueError(
                    "`since` and `before` are one gate's sequence numbers: with `gate=all`"
                    " page back with `until=<unix seconds>` (events older than it)"
                )
            if gate is not None and "until" in query:
                raise ValueError(
                    "`until` pages `gate=all`; for one gate use `before=SEQ` (or `since=SEQ`)"
                )
            if "since" in query and "before" in query:
                raise ValueError(
                    "give `since` (newer events, oldest first) or `before` (older events,"
                    " newest first), not both"
                )
            since = bounded_int(request, "since", 0, 0, MAX_SEQ)
            before = bounded_int(request, "before", MAX_SEQ, 0, MAX_SEQ)
            until = _until(request)
            limit = bounded_int(request, "limit", 500, 1, MAX_EVENTS)
            types = _event_types(query.getlist("type"))
            person_id = query.get("person_id")
            if person_id is not None and not 1 <= len(person_id) <= MAX_PERSON_ID:
                raise ValueError(f"`person_id` must be 1 to {MAX_PERSON_ID} characters")
        except ValueError as exc:
            return error(str(exc), 400)
        # Off the loop: a shared store answers over the network (or not at all for a while).
        if gate is None:
            rows = await asyncio.to_thread(
                functools.partial(
                    runtime.store.events,
                    limit=limit,
                    types=types,
                    person_id=person_id,
                    gate=None,
                    until=until,
                )
            )
        else:
            rows = await asyncio.to_thread(
                functools.partial(
                    runtime.store.events,
                    since,
                    limit,
                    before=before if "before" in query else None,
                    types=types,
                    person_id=person_id,
                    gate=gate,
                )
            )
        body = b"[" + b",".join(_event_json(r) for r in rows) + b"]"
        return Response(body, media_type="application/json")

    return handler


def gates(runtime: Runtime) -> Handler:
    """`GET /api/gates`: the gates in the shared history, this one first (listed even before
    its first event): `[{"gate", "events", "last_at" (unix seconds or null), "this"}]`."""

    async def handler(request: Request) -> Response:
        this = runtime.settings.gate.id
        seen = {g.gate: g for g in await asyncio.to_thread(runtime.store.gates) if g.gate}
        mine = seen.pop(this, None)
        others = sorted(seen.values(), key=lambda g: (-g.last_at, g.gate))
        listed = [
            {
                "gate": this,
                "events": mine.events if mine else 0,
                "last_at": mine.last_at if mine else None,
                "this": True,
            },
            *(
                {"gate": g.gate, "events": g.events, "last_at": g.last_at, "this": False}
                for g in others
            ),
        ]
        return JSONResponse(listed)

    return handler


def stats(runtime: Runtime, hub: Hub) -> Handler:
    async def handler(request: Request) -> Response:
        monitor = runtime.monitor.snapshot()
        return JSONResponse(
            {
                "source": {
                    "name": runtime.source.name,
                    "state": runtime.source_state,
                    "capture_fps": round(monitor.capture_fps, 2),
                    "processed_fps": round(monitor.processed_fps, 2),
                    "frames_dropped": monitor.frames_dropped,
                },
                "monitor": msgspec.to_builtins(monitor),
                "websocket_connections": len(hub),
                "websocket_disconnected_slow": hub.disconnected_slow,
                "persons": runtime.gallery.person_count,
                "embeddings": len(runtime.gallery),  # in this gate's index
                "store": {
                    "kind": runtime.store.kind,
                    "where": runtime.store.where,  # a URL without its password
                    "generation": runtime.gallery.generation,
                    "changes_followed": runtime.gallery.followed,
                    "reloads": runtime.gallery.reloads,
                    "reconnections": runtime.pipeline.follower.reconnections,
                },
                "bus": runtime.bus.stats(),
            }
        )

    return handler


def metrics(runtime: Runtime, hub: Hub) -> Handler:
    async def handler(request: Request) -> Response:
        text = runtime.monitor.prometheus()
        text += (
            "# HELP facegate_websocket_connections Connected WebSocket clients.\n"
            "# TYPE facegate_websocket_connections gauge\n"
            f"facegate_websocket_connections {len(hub)}\n"
            "# HELP facegate_persons Persons in the gallery.\n"
            "# TYPE facegate_persons gauge\n"
            f"facegate_persons {runtime.gallery.person_count}\n"
        )
        return Response(text, media_type="text/plain; version=0.0.4")

    return handler
