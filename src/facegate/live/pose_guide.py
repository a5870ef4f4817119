"""What a registering person and the operator are told, and the pose arithmetic behind it.

- The instruction for each pose, and the hint that brings a reading into its target window,
  in the person's own terms (yaw < 0: turned to their own left; pitch > 0: looking up).
- The person's steady front: the median of the readings of the last front_settle_seconds,
  once they vary by at most front_steadiness_degrees (a person whose natural straight ahead
  reads yaw 13 deg is not asked for 0 deg).
- What to do next after a registration ended without storing anyone.

Pure functions; the registration machine (`registration.py`) uses them.
"""

from __future__ import annotations

import numpy as np

from facegate.settings import RegistrationSettings

INSTRUCTIONS = {
    "front": "Look straight at the camera",
    "left": "Turn your head slowly to your left",
    "right": "Turn your head slowly to your right",
    "up": "Tilt your head slowly up, keeping your face towards the camera",
    "down": "Tilt your head slowly down, keeping your face towards the camera",
}

# Pose feedback hints, in the person's own terms (yaw < 0: turned to their own left; pitch > 0:
# looking up). See `direction_hint` for the turns and tilts.
HOLD_STILL = "hold still, looking at the camera"

# What to do after a registration ends without a person stored, by reason.
NEXT_STEPS = {
    "declined": "Click Register on their face if you change your mind",
    "decision_timeout": "Click Register on their face to register them",
    "person_left": "Click Register on their face when they are back in view",
    "reset": "Click Register on a face to start a registration",
    "inconsistent_identity": (
        "Make sure only the person registering faces the camera, then click Register on their"
        " face to try again"
    ),
    "not_live": (
        "Only a live person standing in front of the camera can be registered, not a photo or a"
        " screen: ask the person to come to the camera themselves, then click Register on their"
        " face"
    ),
    "store_error": (
        "Nothing was stored: check the server's log and disk, then click Register on their"
        " face to try again"
    ),
}
RETRY = "Ask them to face the camera and click Register on their face to try again"
POSE_TIPS = {
    "front": "They must hold still, looking straight at the camera",
    "left": "They must turn their head further to their own left",
    "right": "They must turn their head further to their own right",
    "up": "They must tilt their head up, keeping their face towards the camera",
    "down": "They must tilt their head down, keeping their face towards the camera",
}

# Front readings kept for the steadiness check: more than the settle time holds at 100 fps.
RECENT_MAX = 512


def next_step(reason: str, name: str | None = None) -> str:
    """What the operator can do after a registration ended for `reason`."""
    if reason.startswith("angle_timeout_"):
        pose = reason.removeprefix("angle_timeout_")
        return f"{POSE_TIPS[pose]}. {RETRY}" if pose in POSE_TIPS else RETRY
    if reason == "already_registered":
        return f"They are already registered as {name or 'someone else'}: nothing to do"
    return NEXT_STEPS.get(reason, "Click Register on their face to try again")


def _outside(value: float, window: list[float]) -> float:
    """How far past the window: > 0 above its max, < 0 below its min, 0 inside."""
    if value > window[1]:
        return value - window[1]
    if value < window[0]:
        return value - window[0]
    return 0.0


# The way each pose moves away from the front: (axis, sign).
_AWAY = {"left": ("yaw", -1), "right": ("yaw", 1), "up": ("pitch", 1), "down": ("pitch", -1)}


def direction_hint(
    pose: str,
    yaw: float | None,
    pitch: float | None,
    yaw_window: list[float],
    pitch_window: list[float],
) -> str | None:
    """What to do to bring (yaw, pitch) into the windows, in the person's own terms: along the
    axis that is furthest out. None when inside, or without a reading.

    Along the pose's own axis: "turn further to your left" / "turn back a little to your right"
    (left, right), "tilt your head further up" / "tilt your head back down a little" (up,
    down). Across it, and for the front: "turn a little to your left|right", "tilt your head
    up|down a little"."""
    if yaw is None or pitch is None:
        return None
    yaw_out, pitch_out = _outside(yaw, yaw_window), _outside(pitch, pitch_window)
    if yaw_out == 0.0 and pitch_out == 0.0:
        return None
    axis, away = _AWAY.get(pose, ("", 0))
    if abs(yaw_out) >= abs(pitch_out):
        sign = -1 if yaw_out > 0 else 1  # the way yaw must go: -1 to the person's own left
        side = "left" if sign < 0 else "right"
        if axis != "yaw":
            return f"turn a little to your {side}"
        return (
            f"turn further to your {side}" if sign == away else f"turn back a little to your {side}"
        )
    sign = -1 if pitch_out > 0 else 1
    way = "down" if sign < 0 else "up"
    if axis != "pitch":
        return f"tilt your head {way} a little"
    return (
        f"tilt your head further {way}" if sign == away else f"tilt your head back {way} a little"
    )


def remember(
    recent: tuple[tuple[float, float, float], ...],
    t: float,
    yaw: float,
    pitch: float,
    cfg: RegistrationSettings,
) -> tuple[tuple[float, float, float], ...]:
    """The readings of the last front_settle_seconds with this one, and the latest reading
    before them (it shows that they cover the whole settle time). A stream that went back (a
    looped file) or a gap of more than front_settle_seconds without a reading starts over."""
    kept = [r for r in recent if r[0] <= t]
    if kept and t - kept[-1][0] > cfg.front_settle_seconds:
        kept = []
    kept.append((t, yaw, pitch))
    start = t - cfg.front_settle_seconds
    first = 0
    for i, (when, _, _) in enumerate(kept):
        if when <= start:
            first = i
    return tuple(kept[first:][-RECENT_MAX:])


def front_reading(
    recent: tuple[tuple[float, float, float], ...], t: float, cfg: RegistrationSettings
) -> tuple[float, float] | None:
    """The person's steady front: the median yaw and pitch of the recent readings, once they
    cover front_settle_seconds and each varies by at most front_steadiness_degrees."""
    if not recent:
        return None
    if recent[0][0] > t - cfg.front_settle_seconds and len(recent) < RECENT_MAX:
        return None  # not held long enough yet
    yaws = [yaw for _, yaw, _ in recent]
    pitches = [pitch for _, _, pitch in recent]
    limit = cfg.front_steadiness_degrees
    if max(yaws) - min(yaws) > limit or max(pitches) - min(pitches) > limit:
        return None
    return float(np.median(yaws)), float(np.median(pitches))
