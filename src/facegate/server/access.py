"""Who may do what: the roles, and the one table that gives every route and every WebSocket
message the role it needs.

- `viewer`: the panel, video, snapshot, events (of every gate), gates, stats, metrics, schema,
  the WebSocket feed.
- `operator`: a viewer who may also answer registration prompts, offer a face in view for
  registration, see and dismiss the recent unknown faces, and reset the gate.
- `admin`: an operator who may also list, enrol, rename and erase persons and identify photos.

Tokens choose the role (`server.token` / FACEGATE_TOKEN is the admin's, `server.operator_token`
and `server.viewer_token` the others'). With no token configured at all (only allowed on a
loopback bind) everyone who reaches the port is admin, as a local tool should be. The panel's
static files are public: they hold no data; so are `/healthz` and `/readyz`, which tell only
states (health.py).

`Guard` (security.py) enforces the HTTP table; the WebSocket endpoint enforces the message
table. A route missing from the table is refused (fail closed), and a test walks the app's
routes so that none can be added without an entry here.
"""

from __future__ import annotations

import enum
import hmac

import msgspec


class Role(enum.IntEnum):
    PUBLIC = 0
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Body(enum.Enum):
    NONE = "none"  # no body expected (GET, DELETE)
    JSON = "json"  # Content-Type: application/json, else 415
    FORM = "form"  # Content-Type: multipart/form-data (photo uploads), else 415


class Access(msgspec.Struct, frozen=True):
    role: Role
    body: Body = Body.NONE
    # Commands a client could flood (reset, decisions): rate-limited per client address.
    limited: bool = False
    # `GET /` answers a browser with the panel's page (public) and others with JSON status.
    page: bool = False
    # Images an <img> loads: the token may come as ?token= (an <img> cannot send headers).
    query_token: bool = False


VIEWER, OPERATOR, ADMIN = Role.VIEWER, Role.OPERATOR, Role.ADMIN

# path template (as routed) -> method -> what it takes. HEAD goes with GET.
ROUTES: dict[str, dict[str, Access]] = {
    "/": {"GET": Access(VIEWER, page=True)},
    "/system_status": {"GET": Access(VIEWER)},
    "/get_user_response": {"GET": Access(VIEWER)},
    "/reset_system": {"POST": Access(OPERATOR, Body.JSON, limited=True)},
    "/registration_decision": {"POST": Access(OPERATOR, Body.JSON, limited=True)},
    # Offer a face in view for registration again (after "Not now" or a failed capture).
    "/api/registration": {"POST": Access(OPERATOR, Body.JSON, limited=True)},
    # Faces of strangers seen recently (kept in memory only): the operator's to register.
    "/api/unknowns": {"GET": Access(OPERATOR)},
    "/api/unknowns/{track_id}": {"DELETE": Access(OPERATOR, limited=True)},
    "/api/unknowns/{track_id}/thumbnail": {"GET": Access(OPERATOR)},
    "/api/persons": {"GET": Access(ADMIN), "POST": Access(ADMIN, Body.FORM)},
    "/api/persons/{person_id}": {
        "GET": Access(ADMIN),
        "PATCH": Access(ADMIN, Body.JSON),
        "DELETE": Access(ADMIN),
    },
    "/api/persons/{person_id}/thumbnail": {"GET": Access(ADMIN)},
    "/api/persons/{person_id}/photos": {"POST": Access(ADMIN, Body.FORM)},
    "/api/identify": {"POST": Access(ADMIN, Body.FORM)},
    "/api/events": {"GET": Access(VIEWER)},
    # The gates sharing the store's history (ids, event counts, last event): like the events.
    "/api/gates": {"GET": Access(VIEWER)},
    "/api/stats": {"GET": Access(VIEWER)},
    "/api/schema": {"GET": Access(VIEWER)},
    "/metrics": {"GET": Access(VIEWER)},
    "/snapshot.jpg": {"GET": Access(VIEWER, query_token=True)},
    "/video.mjpg": {"GET": Access(VIEWER, query_token=True)},
    "/ws": {"WEBSOCKET": Access(VIEWER)},
    # Liveness and readiness for supervisors and load balancers (health.py): states only.
    "/healthz": {"GET": Access(Role.PUBLIC)},
    "/readyz": {"GET": Access(Role.PUBLIC)},
    # The panel's files (the static mount).
    "": {"GET": Access(Role.PUBLIC)},
}

# WebSocket message type -> the role it needs (the socket itself needs a viewer).
MESSAGES: dict[str, Access] = {
    "auth": Access(Role.PUBLIC),
    "ping": Access(VIEWER),
    "reset_system": Access(OPERATOR, limited=True),
    "registration_decision": Access(OPERATOR, limited=True),
    "registration_typing": Access(OPERATOR, limited=True),
}


def rule(path: str, method: str) -> Access | None:
    """The access rule of a routed path template and method; None when the route has no
    such method (the router answers 405) or is not in the table."""
    methods = ROUTES.get(path)
    if methods is None:
        return None
    return methods.get("GET" if method == "HEAD" else method)


class Tokens:
    """The configured tokens and the role each one grants (constant-time comparisons)."""

    def __init__(self, *, admin: str = "", operator: str = "", viewer: str = "") -> None:
        self._tokens = [
            (t.encode(), role)
            for t, role in ((admin, ADMIN), (operator, OPERATOR), (viewer, VIEWER))
            if t
        ]

    @property
    def open(self) -> bool:
        """No token configured: everyone is admin (loopback binds only)."""
        return not self._tokens

    def role_of(self, given: str | bytes | None) -> Role | None:
        """The role a presented token grants; None for a wrong token (or none given)."""
        if self.open:
            return Role.ADMIN
        if not given:
            return None
        raw = given.encode(errors="replace") if isinstance(given, str) else given
        found: Role | None = None
        for token, role in self._tokens:  # compare with every token: no early exit
            if hmac.compare_digest(raw, token) and (found is None or role > found):
                found = role
        return found
