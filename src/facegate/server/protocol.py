"""Messages between the server and WebSocket clients that are not engine events.

Client -> server: one tagged union, `{"type": ..., "data": {...}}`, decoded by one
`msgspec.json.Decoder` and dispatched with `match` (`server/websocket.py`). Server -> client:
the engine's events and `tracks` (`facegate.events`) plus the replies to one client below
(`Reply`), in the same envelope; `wire_schema` is the JSON Schema of all of them
(`GET /api/schema`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from facegate.events import Event, json_schema


# -- client -> server ------------------------------------------------------------------------
class DecisionData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    register: bool
    name: str | None = None


class Empty(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class AuthData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: str


class RegistrationDecision(
    msgspec.Struct, frozen=True, tag="registration_decision", tag_field="type"
):
    data: DecisionData


class RegistrationTyping(msgspec.Struct, frozen=True, tag="registration_typing", tag_field="type"):
    """The operator is typing a name into the registration prompt: its deadline is extended
    (once per prompt), so the question does not vanish under their fingers."""

    data: Empty = msgspec.field(default_factory=Empty)


class ResetSystem(msgspec.Struct, frozen=True, tag="reset_system", tag_field="type"):
    data: Empty = msgspec.field(default_factory=Empty)


class Ping(msgspec.Struct, frozen=True, tag="ping", tag_field="type"):
    data: Empty = msgspec.field(default_factory=Empty)


class Auth(msgspec.Struct, frozen=True, tag="auth", tag_field="type"):
    data: AuthData


ClientMessage = RegistrationDecision | RegistrationTyping | ResetSystem | Ping | Auth
client_decoder = msgspec.json.Decoder(ClientMessage)


def decode_client(raw: str | bytes) -> ClientMessage:
    """Raises msgspec.DecodeError / ValidationError with a message naming the problem."""
    try:
        message: ClientMessage = client_decoder.decode(raw)
    except RecursionError:
        # msgspec skips an unknown field's value recursively: deep nesting there (a 2 KB
        # message of brackets) exhausts the stack instead of failing validation.
        raise msgspec.DecodeError("JSON nested too deeply") from None
    return message


# -- server -> client (replies) ----------------------------------------------------------------
class Connected(Event, frozen=True, kw_only=True, tag="connected"):
    """The first message on a socket; its `gate_id` is the gate the socket is on."""

    message: str
    current_event: str
    system_ready: bool
    status: dict[str, Any]
    # The client's role (viewer, operator or admin): what it may send and ask for.
    role: str = "admin"


class Pong(Event, frozen=True, kw_only=True, tag="pong"):
    pass


class Error(Event, frozen=True, kw_only=True, tag="error"):
    message: str


class DecisionResult(Event, frozen=True, kw_only=True, tag="decision_result"):
    ok: bool
    message: str


Reply = Connected | Pong | Error | DecisionResult
REPLIES: tuple[type[Event], ...] = Reply.__args__


def wire_schema() -> dict[str, Any]:
    """JSON Schema of every message the server sends: events, `tracks` and the replies."""
    return json_schema(*REPLIES, title="facegate server messages")
