"""The one gate every request passes: cross-site refusal, authentication, roles, content
types, command rates, body sizes and the browser's security headers; and the audit of failed
authentications.

The middleware, outermost first (`middleware`): `TrustedHostMiddleware` (400 for a Host that
is not ours), `Guard`, `BodyLimit` (413 for a body over `server.max_upload_mb`).

For each HTTP request, `Guard` checks, in this order:
1. Any method but GET/HEAD from a browser page of another site is refused (403): its
   `Origin` (or, without one, `Sec-Fetch-Site`) must be the panel's own origin or one in
   `server.allowed_origins`. Requests with neither header (curl, scripts) pass on to step 3.
2. The WebSocket handshake is held to the same origin rule (403 before it is accepted).
3. The route is resolved as the router will resolve it, and its rule read from
   `access.ROUTES`; a route without a rule is refused (fail closed).
4. An address with too many failed authentications gets 429 with Retry-After.
5. The bearer token (or `?token=` for images an <img> loads) gives a role; too low a role
   is 401 (no or wrong token) or 403 (a valid token of a lesser role).
6. A JSON endpoint needs `Content-Type: application/json`, an upload endpoint
   `multipart/form-data` (415 otherwise): no "simple" cross-site request can reach them.
7. Commands (reset, registration decisions) are rate-limited per client address (429).
Every response carries `X-Frame-Options: DENY` and a Content-Security-Policy with
`frame-ancestors 'none'`, `nosniff` and `Referrer-Policy: no-referrer` (tokens travel in
image URLs).

Wrong tokens (HTTP, `?token=` or a WebSocket's `auth` message) are counted by the
`AuthThrottle`; `AuditWriter` writes them to the store's audit log as one row per address per
minute, every `AUDIT_FLUSH_SECONDS` and on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import msgspec
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facegate.identity.store import StoreError
from facegate.server.access import ROUTES, Access, Body, Role, Tokens, rule
from facegate.server.throttle import AuthThrottle, FailureWindow, RateLimiter
from facegate.settings import ServerSettings

log = logging.getLogger(__name__)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SCOPE_ROLE = "facegate.role"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:;"
    " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
    " frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
MEDIA_TYPES = {Body.JSON: "application/json", Body.FORM: "multipart/form-data"}
AUDIT_FLUSH_SECONDS = 10.0
# Host headers always accepted (loopback, and Starlette's TestClient).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "testserver")


def middleware(
    server: ServerSettings,
    *,
    routes: Sequence[BaseRoute],
    tokens: Tokens,
    throttle: AuthThrottle,
    limiter: RateLimiter,
    page_available: Callable[[], bool],
) -> list[Middleware]:
    """The app's middleware, outermost first: trusted hosts, the `Guard`, the body limit."""
    hosts = [*LOCAL_HOSTS, server.host, *server.allowed_hosts]
    return [
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        Middleware(
            Guard,
            routes=routes,
            tokens=tokens,
            allowed_origins=server.allowed_origins,
            throttle=throttle,
            limiter=limiter,
            page_available=page_available,
        ),
        Middleware(BodyLimit, limit=int(server.max_upload_mb * 2**20)),
    ]


def tokens_of(server: ServerSettings) -> Tokens:
    return Tokens(admin=server.token, operator=server.operator_token, viewer=server.viewer_token)


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback only (`serve` refuses others without a token)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def headers_of(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", [])}


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def same_origin(scope: Scope, allowed: Sequence[str]) -> bool:
    """Whether the request comes from the panel's own page (or an allowed origin), or from
    no browser page at all (no Origin, no Sec-Fetch-Site: curl, scripts)."""
    headers = headers_of(scope)
    origin = headers.get(b"origin")
    if origin is None:
        site = headers.get(b"sec-fetch-site")
        return site is None or site in (b"same-origin", b"none")
    text = origin.decode("latin-1").strip()
    if text in allowed:
        return True
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, file:) and anything odd
    host = headers.get(b"host", b"").decode("latin-1").lower()
    return bool(host) and parts.netloc.lower() == host


class Guard:
    """ASGI middleware in front of the router; see the module docstring for the rules."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        tokens: Tokens,
        allowed_origins: Sequence[str],
        throttle: AuthThrottle,
        limiter: RateLimiter,
        page_available: Callable[[], bool] = lambda: True,
    ) -> None:
        self.app = app
        self.routes = routes
        self.tokens = tokens
        self.allowed_origins = list(allowed_origins)
        self.throttle = throttle
        self.limiter = limiter
        self.page_available = page_available

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            if not same_origin(scope, self.allowed_origins):
                # Closing before accepting answers the handshake with HTTP 403.
                await send({"type": "websocket.close", "code": 1008, "reason": "origin"})
                return
            scope[SCOPE_ROLE] = self.role_from_query(scope)
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        denial = self.check(scope)
        if denial is not None:
            await denial(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    # -- the checks ------------------------------------------------------------------------
    def check(self, scope: Scope) -> JSONResponse | None:
        """None to let the request through, else the refusal to send."""
        method: str = scope.get("method", "GET")
        if method not in SAFE_METHODS and not same_origin(scope, self.allowed_origins):
            return deny(403, "cross-site request refused: this origin may not change the gate")
        path = self.resolve(scope)
        if path is None:
            return None  # nothing matches: the router answers 404
        if path not in ROUTES:
            log.error("route %r has no access rule; refused", path)
            return deny(403, "this route has no access rule")
        access = rule(path, method)
        if access is None:
            return deny(405, f"{method} is not allowed here")
        needed = access.role
        if access.page and self._wants_page(scope):
            needed = Role.PUBLIC
        role = self.authenticate(scope, access)
        if isinstance(role, JSONResponse):
            if needed is Role.PUBLIC:
                role = Role.PUBLIC
            else:
                return role
        scope[SCOPE_ROLE] = role
        if role < needed:
            if role is Role.PUBLIC:
                return deny(
                    401,
                    f"this needs the {needed.label} role: send Authorization: Bearer <token>",
                    {"WWW-Authenticate": "Bearer"},
                )
            return deny(403, f"this needs the {needed.label} role; your token is {role.label}")
        if access.body in MEDIA_TYPES and not _media_type_is(scope, MEDIA_TYPES[access.body]):
            return deny(415, f"send Content-Type: {MEDIA_TYPES[access.body]}")
        if access.limited and not self.limiter.allow(client_address(scope)):
            return deny(429, "too many commands: slow down", {"Retry-After": "1"})
        return None

    def resolve(self, scope: Scope) -> str | None:
        """The path template of the route the router will pick (first full match, else the
        first partial one), or None when nothing matches."""
        partial: str | None = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", ""))
            if match is Match.PARTIAL and partial is None:
                partial = str(getattr(route, "path", ""))
        return partial

    def authenticate(self, scope: Scope, access: Access) -> Role | JSONResponse:
        """The role of the request's token; 429 while its address is blocked, 401 for a
        wrong token (counted towards the block)."""
        if self.tokens.open:
            return Role.ADMIN
        address = client_address(scope)
        wait = self.throttle.retry_after(address)
        if wait is not None:
            return deny(
                429,
                "too many failed authentications from this address; try again later",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        given = bearer(scope) or (query_token(scope) if access.query_token else None)
        if not given:
            return Role.PUBLIC
        role = self.tokens.role_of(given)
        if role is None:
            self.throttle.failed(address, scope.get("path", ""))
            return deny(401, "wrong token", {"WWW-Authenticate": "Bearer"})
        return role

    def role_from_query(self, scope: Scope) -> Role | None:
        """A WebSocket's role from `?token=` (None: not given or wrong; the endpoint then
        waits for an `auth` message)."""
        if self.tokens.open:
            return Role.ADMIN
        given = query_token(scope)
        if not given or self.throttle.retry_after(client_address(scope)) is not None:
            return None
        role = self.tokens.role_of(given)
        if role is None:
            self.throttle.failed(client_address(scope), scope.get("path", ""))
        return role

    def _wants_page(self, scope: Scope) -> bool:
        return b"text/html" in headers_of(scope).get(b"accept", b"") and self.page_available()


def _media_type_is(scope: Scope, wanted: str) -> bool:
    value = headers_of(scope).get(b"content-type", b"").decode("latin-1")
    return value.split(";", 1)[0].strip().lower() == wanted


def bearer(scope: Scope) -> str | None:
    header = headers_of(scope).get(b"authorization", b"")
    if header[:7].lower() != b"bearer ":
        return None
    return header[7:].strip().decode("latin-1") or None


def query_token(scope: Scope) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values: list[str] = query.get("token") or []
    return values[0] if values else None


def deny(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


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


# -- the audit of failed authentications ----------------------------------------------------------
class AuditLog(Protocol):
    """What `AuditWriter` needs of the store."""

    def record(
        self, actor: str, action: str, person_id: str | None = None, **detail: Any
    ) -> None: ...

    def prune_audit(self, *, retention_seconds: float, max_rows: int) -> int: ...


class AuditWriter:
    """Failed authentications, drained from the throttle, into the audit log as one row per
    address per minute; the audit log pruned to its limits at each write. The throttle is the
    event loop's: `run` drains it on the loop and writes in a thread."""

    def __init__(
        self,
        throttle: AuthThrottle,
        store: Callable[[], AuditLog | None],
        *,
        retention_seconds: float,
        max_rows: int,
    ) -> None:
        self.throttle = throttle
        self.store = store  # None until the runtime has opened it
        self.retention_seconds = retention_seconds
        self.max_rows = max_rows

    def write(self, windows: list[FailureWindow]) -> None:
        store = self.store()
        if store is None:
            return
        for window in windows:
            with contextlib.suppress(StoreError):
                store.record("auth", "auth_failed", **msgspec.to_builtins(window))
        with contextlib.suppress(StoreError):
            store.prune_audit(retention_seconds=self.retention_seconds, max_rows=self.max_rows)

    def flush(self, *, everything: bool = False) -> None:
        """Write the finished minutes now (`everything`: the current ones too, at shutdown)."""
        self.write(self.throttle.drain(everything=everything))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(AUDIT_FLUSH_SECONDS)
            await asyncio.to_thread(self.write, self.throttle.drain())
