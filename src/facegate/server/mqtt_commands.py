"""Commands from the broker to the gate, and the bridge's rate-limited warnings.

- `P/G/recognition/set` "ON"/"OFF" switches the engine's recognition (`Engine.set_recognition`)
  and echoes the state, retained, on `P/G/recognition`.
- `P/G/registration/decision` (`{"register": true, "name": "Ada"}`, validated like the
  WebSocket's `registration_decision` data) is acted on only with `mqtt.registration_commands`
  (whoever can publish there can approve a stranger) and never when retained; otherwise it is
  ignored with one log line (then at most one a minute, with a count: `QuietWarnings`).

`MqttBridge` (mqtt.py) routes the messages here; the lines are logged under its logger's name.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

import msgspec

from facegate.identity.names import InvalidNameError
from facegate.server import homeassistant as ha
from facegate.server.homeassistant import MqttConfig
from facegate.server.mqtt_outbox import Outbox
from facegate.server.protocol import DecisionData
from facegate.server.throttle import RateLimiter

if TYPE_CHECKING:
    from facegate.live.engine import Engine
    from facegate.live.registrar import Registrar

log = logging.getLogger("facegate.server.mqtt")  # the bridge's: one logger for all its lines

MAX_COMMAND_BYTES: Final = 64 * 1024
QUIET_SECONDS: Final = 60.0  # a repeated warning about commands: at most once this often
CLIENT: Final = "mqtt"  # the registrar's name for decisions from the broker


class QuietWarnings:
    """Warnings by key, each at most once per QUIET_SECONDS (the muted ones counted)."""

    def __init__(self) -> None:
        self._quiet: dict[str, tuple[float, int]] = {}  # warning key -> (last logged, muted)

    def may_warn(self, key: str) -> bool:
        now = time.monotonic()
        last, muted = self._quiet.get(key, (-1e18, 0))
        if now - last < QUIET_SECONDS:
            self._quiet[key] = (last, muted + 1)
            return False
        self._quiet[key] = (now, 0)
        return True

    def warn_limited(self, key: str, text: str) -> None:
        """One line; the same again within QUIET_SECONDS is counted, said with the next one."""
        muted = self._quiet.get(key, (0.0, 0))[1]
        if self.may_warn(key):
            more = f" ({muted} more since the last such line)" if muted else ""
            log.warning("%s%s", text, more)


class Commands:
    """The gate's commands from the broker (see the module docstring)."""

    def __init__(
        self,
        cfg: MqttConfig,
        topics: ha.Topics,
        *,
        engine: Engine,
        registrar: Registrar | None,
        limiter: RateLimiter,
        outbox: Outbox,
        quiet: QuietWarnings,
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.engine = engine
        self.registrar = registrar
        self.limiter = limiter
        self.outbox = outbox
        self.quiet = quiet

    def recognition(self, payload: bytes) -> None:
        """`P/G/recognition/set`: "ON" or "OFF"."""
        command = payload.strip().upper()
        if command not in (b"ON", b"OFF"):
            self.quiet.warn_limited(
                "recognition",
                f"mqtt: ignored {payload[:40]!r} on {self.topics.recognition_set}:"
                ' expected "ON" or "OFF"',
            )
            return
        on = command == b"ON"
        if on != self.engine.recognition_enabled:
            log.info("mqtt: recognition switched %s", "on" if on else "off")
        self.engine.set_recognition(on)
        self.outbox.put(ha.recognition_state(self.cfg, on))

    def decision(self, payload: bytes, retained: bool) -> None:
        """`P/G/registration/decision`: a registrar decision, when allowed."""
        topic = self.topics.registration_decision
        if not self.cfg.registration_commands:
            self.quiet.warn_limited(
                "decision",
                f"mqtt: ignored a message on {topic}: mqtt.registration_commands is off"
                " (whoever can publish there could approve a stranger; turn it on only if you"
                " trust everyone who can write to the broker)",
            )
            return
        if retained:
            self.quiet.warn_limited(
                "decision-retained", f"mqtt: ignored a retained message on {topic}: stale"
            )
            return
        registrar = self.registrar
        if registrar is None:
            self.quiet.warn_limited(
                "decision-serve",
                f"mqtt: ignored a message on {topic}: only `facegate serve` registers people",
            )
            return
        if len(payload) > MAX_COMMAND_BYTES:
            self.quiet.warn_limited(
                "decision-invalid", f"mqtt: ignored a message on {topic}: too big"
            )
            return
        try:
            data = msgspec.json.decode(payload, type=DecisionData)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            self.quiet.warn_limited(
                "decision-invalid",
                f'mqtt: ignored a message on {topic}: {exc} (expected {{"register": true,'
                ' "name": "Ada"}})',
            )
            return
        if not self.limiter.allow(CLIENT):
            self.quiet.warn_limited(
                "decision-rate", f"mqtt: ignored a message on {topic}: too many"
            )
            return
        try:
            reply = registrar.decide(data.register, data.name, CLIENT)
        except InvalidNameError as exc:
            log.warning("mqtt: decision on %s refused: %s", topic, exc)
            return
        log.info(
            "mqtt: decision on %s (register=%s): %s%s",
            topic,
            data.register,
            "" if reply.ok else "not taken: ",
            reply.message,
        )


__all__ = ["Commands", "QuietWarnings"]
