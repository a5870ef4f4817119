"""The one gate every request passes: cross-site refusal, authentication, roles, content
types, command rates and the browser's security headers.

For each HTTP request, in this order:
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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facegate.server.access import ROUTES, Access, Body, Role, Tokens, rule
from facegate.server.throttle import AuthThrottle, RateLimiter

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
