"""SIGHUP: `facegate serve` reads its settings again and applies what can change at run time.

`Reloader.reload` (on the server's loop; `install` makes SIGHUP call it there) loads the
settings exactly as at start (the same file: `--settings FILE`, $FACEGATE_SETTINGS or the data
directory's settings.toml, and the environment `serve` started with). A file that does not load
(not TOML, a bad value, an unknown key) is logged and changes nothing: the gate goes on with
the settings it has.

Every changed key (a leaf: `recognition.threshold`, `quality.recognition.min_face_px`,
`registration.poses.left.yaw`) is either applied now or reported as needing a restart:

- applied at run time (`HOT`): what the engine, the gallery, the registration, the liveness
  challenge and the event history read afresh for every frame, face or event, and nothing
  else. The engine takes them at its next frame, with what it derives from them (the tracker,
  the quality gates, the scene cuts, the recent unknowns, the challenge's limits); the gallery
  and the history at once; the registration when none is under way (one under way finishes
  under the rules it started with); a liveness challenge under way goes on under the new
  limits;
- a restart for everything else, e.g. `models.*` and `detection.*` (the loaded models),
  `index.*` (the built index), `store.*` and `gate.id` (the open store and the gate's
  identity), `server.*` (the bound socket, tokens, limits and hub), `mqtt.*` (the connected
  bridge), `events.enabled` (whether the history is subscribed) and `liveness.challenge` /
  `liveness.passive_score` (the challenge's models are loaded at start only when it is on).
  They are logged at each reload until the gate is restarted, and the gate keeps running on
  their old values.

The running settings are never the new file as a whole: they are the running ones with the
applied keys replaced, so what `serve` set from its command line (`--host`, `--port`,
FACEGATE_TOKEN) stays, and no component sees a key it cannot take at run time. Values of keys
that may hold secrets (tokens, URLs with passwords) are never logged, only their names.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

import msgspec

from facegate.settings import Settings, SettingsError

log = logging.getLogger(__name__)

# Keys (a key, or a table with everything in it) applied at run time; see the docstring.
HOT: tuple[str, ...] = (
    "recognition.threshold",
    "recognition.margin",
    "recognition.aggregate",
    "recognition.duplicate_threshold",
    "recognition.target_far",
    "quality",
    "engine",
    "registration",
    "liveness.challenge_seconds",
    "liveness.directions",
    "liveness.turn_degrees",
    "liveness.return_degrees",
    "liveness.planarity_cutoff",
    "liveness.identity_threshold",
    "events.retention_days",
    "events.max_rows",
)
# Keys whose values are never logged (only their names).
SECRET: tuple[str, ...] = (
    "server.token",
    "server.operator_token",
    "server.viewer_token",
    "store.url",
    "mqtt.url",
)
_MISSING = object()


class Target(Protocol):
    """What takes the new settings (server/runtime.py's `Runtime`)."""

    settings: Settings

    def apply_settings(self, settings: Settings) -> None: ...


class Plan(msgspec.Struct, frozen=True):
    """The keys that changed in the file: applied now, or needing a restart."""

    applied: list[str]
    restart: list[str]


class Outcome(msgspec.Struct, frozen=True):
    """One reload: what was applied and what needs a restart, or why nothing was read."""

    applied: dict[str, tuple[Any, Any]] = msgspec.field(default_factory=dict)  # key: old, new
    restart: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


# -- the keys ---------------------------------------------------------------------------------
def _within(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_hot(key: str) -> bool:
    """Whether a changed key is applied at run time (else it needs a restart)."""
    return _within(key, HOT)


def leaves(settings: Settings) -> dict[str, Any]:
    """Every leaf key of the settings (tables flattened, lists kept whole) and its value."""
    out: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        else:
            out[path] = node

    walk(msgspec.to_builtins(settings), "")
    return out


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The leaf keys whose values differ, sorted."""
    a, b = leaves(old), leaves(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


def classify(old: Settings, new: Settings) -> Plan:
    """The keys that changed from `old` to `new`: those applied at run time, the others."""
    keys = changed_keys(old, new)
    return Plan(applied=[k for k in keys if is_hot(k)], restart=[k for k in keys if not is_hot(k)])


def overlay(base: Settings, source: Settings, keys: list[str]) -> Settings:
    """`base` with the values of `keys` taken from `source` (and nothing else)."""
    if not keys:
        return base
    raw: dict[str, Any] = msgspec.to_builtins(base)
    src: dict[str, Any] = msgspec.to_builtins(source)
    for key in keys:
        path = key.split(".")
        node, value = raw, src
        for part in path[:-1]:
            node, value = node[part], value[part]
        node[path[-1]] = value[path[-1]]
    return msgspec.convert(raw, Settings)


def shown(key: str, value: Any) -> str:
    return "(not shown)" if _within(key, SECRET) else repr(value)


# -- the reload -------------------------------------------------------------------------------
class Reloader:
    """Reads the settings again and applies what may change (on the server's loop).

    `load` reads them as at start; `loaded` is what it returned at start (before `serve`
    applied its command line); `notify` gets systemd's notifications (cli/service.py's
    `sd_notify`; none by default)."""

    def __init__(
        self,
        target: Target,
        load: Callable[[], Settings],
        loaded: Settings,
        *,
        notify: Callable[[str], object] | None = None,
    ) -> None:
        self.target = target
        self.load = load
        # The file as the running gate follows it: as at start, with the applied keys since.
        self.loaded = loaded
        self.notify = notify or (lambda message: None)
        self.reloads = 0

    def reload(self) -> Outcome:
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            outcome = self._reload()
        finally:
            self.notify("READY=1")
        self.reloads += 1
        return outcome

    def _reload(self) -> Outcome:
        try:
            new = self.load()
        except SettingsError as exc:
            log.error("settings not reloaded: %s; still running on the previous settings", exc)
            return Outcome(error=str(exc))
        plan = classify(self.loaded, new)
        before = leaves(self.target.settings)
        try:
            running = overlay(self.target.settings, new, plan.applied)
            loaded = overlay(self.loaded, new, plan.applied)
        except (msgspec.ValidationError, ValueError) as exc:  # a mix the settings refuse
            log.error("settings not reloaded: %s; still running on the previous settings", exc)
            return Outcome(error=str(exc))
        if plan.applied:
            self.target.apply_settings(running)
            self.loaded = loaded
        after = leaves(self.target.settings)
        applied = {k: (before[k], after[k]) for k in plan.applied}
        if applied:
            log.info(
                "settings reloaded: applied %s",
                ", ".join(f"{k} {shown(k, a)} -> {shown(k, b)}" for k, (a, b) in applied.items()),
            )
        if plan.restart:
            log.warning(
                "settings reloaded: %s changed but need%s a restart to take effect (still"
                " running with the value%s it started with)",
                ", ".join(plan.restart),
                "s" if len(plan.restart) == 1 else "",
                "" if len(plan.restart) == 1 else "s",
            )
        if not applied and not plan.restart:
            log.info("settings reloaded: nothing changed")
        return Outcome(applied=applied, restart=plan.restart)


class LoopHolder(Protocol):
    """Where the server's loop is, once it runs (server/runtime.py's `Runtime`)."""

    @property
    def loop(self) -> Any: ...


def install(reloader: Reloader, holder: LoopHolder) -> Callable[[], None]:
    """SIGHUP calls `reloader.reload` on the holder's loop (from the main thread only). A
    SIGHUP before the loop runs is ignored (the settings were just read). Returns what puts the
    previous handler back."""

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        loop = holder.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(reloader.reload)

    previous = signal.signal(signal.SIGHUP, on_sighup)

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore
