"""Settings: `settings.toml` loaded into frozen msgspec Structs, overridden by FACEGATE_* variables.

Precedence, lowest first: the defaults below, one TOML file, then environment variables.
The TOML file is the first of: `--settings FILE`, `$FACEGATE_SETTINGS`, `<data dir>/settings.toml`.
The repository's `settings.toml` lists every key with its default and is what a user copies.

Environment variables name a key by its path in upper case, sections joined by `__` or `_`:
`FACEGATE_RECOGNITION__THRESHOLD=0.5` or `FACEGATE_RECOGNITION_THRESHOLD=0.5`. Values are
parsed as TOML values where they parse (numbers, booleans, arrays), else taken as strings.
A bad value or an unknown key fails with the key's path in the message.
"""

from __future__ import annotations

import os
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

# Variables that are not setting keys: they select files or carry secrets.
RESERVED_ENV = frozenset({"FACEGATE_HOME", "FACEGATE_SETTINGS", "FACEGATE_TOKEN"})
ENV_PREFIX = "FACEGATE_"
# The gate's id was an MQTT setting; it names the gate everywhere now.
MOVED_GATE_ID = "moved to [gate] id (FACEGATE_GATE_ID)"

Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Cosine = Annotated[float, Meta(ge=-1.0, le=1.0)]
Degrees = Annotated[float, Meta(ge=0.0, le=90.0)]
Pixels = Annotated[int, Meta(ge=1, le=10_000)]

PackName = Literal["faceplugin", "buffalo_l", "buffalo_s", "antelopev2"]


GATE_ID_PATTERN = r"^[A-Za-z0-9_-]+$"
GateId = Annotated[str, Meta(min_length=1, max_length=64, pattern=GATE_ID_PATTERN)]


class GateSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # This gate's name. Every gate sharing a store needs its own: it names the gate in its
    # events (`gate_id`), in the history (`/api/events?gate=`) and in its MQTT topics, client id
    # and Home Assistant device.
    id: GateId = "gate"

    def __post_init__(self) -> None:
        if self.id.lower() == "all":  # `/api/events?gate=all` means every gate
            raise ValueError('id "all" is reserved (it means every gate); choose another')


class ModelSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pack: PackName = "faceplugin"
    # Empty means the user-level default: $XDG_CACHE_HOME/facegate/models (~/.cache/...).
    dir: str = ""
    # InsightFace packs only: let insightface download a missing pack when the machine is online.
    allow_download: bool = True
    # onnxruntime threads per model; 1 measured fastest on a loaded 2-core machine.
    threads: Annotated[int, Meta(ge=1, le=64)] = 1


class DetectionSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    min_score: Fraction = 0.65
    nms_iou: Fraction = 0.4
    max_faces: Annotated[int, Meta(ge=1, le=256)] = 32


class RecognitionSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Cosine similarity at or above which two faces are the same person (calibrated on LFW
    # pairsDevTrain + the deepface pairs by bench/calibrate.py; the reasoning is in
    # settings.toml).
    threshold: Cosine = 0.44
    # `verify-pairs` recommends the threshold that reaches this false-accept rate.
    target_far: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.001
    # `known` needs the best person ahead of the second-best person by this much cosine;
    # above the threshold but closer than this is `ambiguous`.
    margin: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.05
    # How a person's embeddings combine into one score for a probe: the best single match,
    # or the mean of the best two (steadier for persons with many views).
    aggregate: Literal["max", "mean_top2"] = "max"
    # A new enrolment whose faces match an existing person at or above this is a duplicate
    # (the same calibrated point as `threshold`).
    duplicate_threshold: Cosine = 0.44


class IndexSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Exact search below this many vectors; an IVF index (approximate) from this size up.
    approximate_above: Annotated[int, Meta(ge=1)] = 150_000
    # IVF lists probed per query (recall against speed).
    nprobe: Annotated[int, Meta(ge=1, le=65_536)] = 48
    # An index that took longer than this to build is saved beside the database and reused
    # at the next start when its generation stamp still matches.
    save_after_build_seconds: Annotated[float, Meta(ge=0.0)] = 2.0
    # FAISS threads for search and build.
    threads: Annotated[int, Meta(ge=1, le=64)] = 1


class EngineSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # An unknown face usable and still for this long is offered for registration.
    stable_seconds: Annotated[float, Meta(ge=0.0, le=60.0)] = 2.0
    # A person not seen for this long has left (person_left_area).
    left_after_seconds: Annotated[float, Meta(gt=0.0, le=600.0)] = 3.0
    # Face-centre speed, in face widths per second (smoothed), above which a face is moving.
    max_motion: Annotated[float, Meta(gt=0.0, le=100.0)] = 0.35
    # A face whose box comes closer than this fraction of the frame to an edge is not stable.
    edge_margin: Annotated[float, Meta(ge=0.0, le=0.4)] = 0.02
    # A recognised face is re-checked (embedded again) this often.
    recheck_seconds: Annotated[float, Meta(gt=0.0, le=60.0)] = 1.0
    # At most this many faces are embedded per frame (about 22 ms each on one core); others
    # wait for the next frames, so a crowd walking in does not stall the video.
    max_embeddings_per_frame: Annotated[int, Meta(ge=1, le=64)] = 1
    # Identity is settled by a weighted vote over this many recent identifications ...
    vote_window: Annotated[int, Meta(ge=1, le=100)] = 7
    # ... needing at least this many agreeing votes and this share of the vote weight.
    min_votes: Annotated[int, Meta(ge=1, le=100)] = 2
    vote_share: Annotated[float, Meta(gt=0.5, le=1.0)] = 0.6
    # Boxes overlapping at least this much (IoU) are the same face from frame to frame.
    min_iou: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.3
    # A detection whose embedding is below this similarity to a track's is not that track,
    # however much the boxes overlap (two people crossing).
    min_track_similarity: Cosine = 0.3
    # A named face whose latest check came within this of recognition.threshold is checked
    # again in every frame (not every recheck_seconds): a name near its limit is shown only
    # while the face keeps matching. (A named face that turns is checked again too.)
    confirm_margin: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.1
    # A frame whose colours differ from the previous one by more than this (Bhattacharyya
    # distance of hue x saturation histograms, 0..1) starts a new scene: no track continues
    # across it (see vision/scene.py; cuts measured at 0.40-0.53, motion at most 0.18).
    scene_cut_distance: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.3
    # Recent unknown faces kept in memory for the operator (never on disk): how many, and
    # for how long after they left.
    unknowns_kept: Annotated[int, Meta(ge=1, le=1000)] = 50
    unknowns_keep_seconds: Annotated[float, Meta(gt=0.0, le=86400.0)] = 600.0


Window = Annotated[list[float], Meta(min_length=2, max_length=2)]
POSE_ORDER = ("front", "left", "right", "up", "down")


class PoseWindow(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Target yaw and pitch ranges [min, max] in degrees (conventions of vision/face.py)."""

    yaw: Window
    pitch: Window


def _pose_windows() -> dict[str, PoseWindow]:
    # left/right are the person's own; yaw < 0 is turned to the subject's own left.
    # front: where a person's natural straight ahead may read (the captures are then taken
    # around their own steady front). up/down allow the turn people add when they tilt
    # (held-out faces read yaw up to 27 deg looking straight up).
    return {
        # The person's own steady front must lie here; the other windows are measured from it
        # and must stay reachable within the enrolment gate (|yaw| <= 50, |pitch| <= 40).
        "front": PoseWindow(yaw=[-20.0, 20.0], pitch=[-15.0, 15.0]),
        "left": PoseWindow(yaw=[-45.0, -20.0], pitch=[-15.0, 15.0]),
        "right": PoseWindow(yaw=[20.0, 45.0], pitch=[-15.0, 15.0]),
        "up": PoseWindow(yaw=[-30.0, 30.0], pitch=[15.0, 35.0]),
        "down": PoseWindow(yaw=[-30.0, 30.0], pitch=[-35.0, -15.0]),
    }


class RegistrationSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # How long the operator has to answer the registration prompt.
    decision_timeout_seconds: Annotated[float, Meta(gt=0.0, le=3600.0)] = 30.0
    # A declined face is not offered again for this long.
    decline_cooldown_seconds: Annotated[float, Meta(ge=0.0, le=86400.0)] = 60.0
    # Each pose must be reached within this long of its instruction.
    angle_timeout_seconds: Annotated[float, Meta(gt=0.0, le=600.0)] = 15.0
    # Embeddings captured per pose, from frames at least this many frames apart.
    captures_per_pose: Annotated[int, Meta(ge=1, le=20)] = 3
    min_frames_apart: Annotated[int, Meta(ge=1, le=100)] = 3
    # Every capture must match the mean of the front captures at least this much, else the
    # capture mixed two people (measured on Pointing'04: same person at +-45 deg >= 0.53,
    # another person <= 0.44).
    consistency_threshold: Cosine = 0.45
    # Pose feedback events are sent at most this often.
    feedback_interval_seconds: Annotated[float, Meta(ge=0.0, le=10.0)] = 0.2
    # up/down (pitch) and left/right (yaw) are measured from the person's own front pose, so a
    # camera above or below eye level does not make the tilts unreachable.
    relative_to_front: bool = True
    # The front is the person's own: the median of their steady readings over this (stream time).
    front_settle_seconds: Annotated[float, Meta(gt=0.0, le=5.0)] = 1.0
    # Largest spread (max - min) of yaw and of pitch over the settle time that is steady.
    front_steadiness_degrees: Annotated[float, Meta(gt=0.0, le=45.0)] = 8.0
    # Front captures come from frames within this of the steady front (yaw and pitch).
    front_tolerance_degrees: Annotated[float, Meta(gt=0.0, le=45.0)] = 6.0
    poses: dict[str, PoseWindow] = msgspec.field(default_factory=_pose_windows)

    def __post_init__(self) -> None:
        if set(self.poses) != set(POSE_ORDER):
            raise ValueError(f"poses must be exactly {', '.join(POSE_ORDER)}")
        for name, window in self.poses.items():
            if window.yaw[0] > window.yaw[1] or window.pitch[0] > window.pitch[1]:
                raise ValueError(f"poses.{name}: each window is [min, max]")


LivenessDirection = Literal["left", "right", "up", "down"]


class LivenessSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The head-turn challenge (live/challenge.py): a photo or a screen cannot make the turn."""

    # off | known (recognised people must turn their head before access is granted) | always
    # (unknown faces too: a face is offered for registration only once it has passed).
    challenge: Literal["off", "known", "always"] = "off"
    # The turn must be made and come back within this long of the greeting (stream seconds).
    challenge_seconds: Annotated[float, Meta(ge=1.0, le=120.0)] = 8.0
    # Turns asked, one chosen at random per challenge. Up/down are weaker: real heads read a
    # 25 deg tilt far less reliably than a turn, and a photo tilted away can read as one.
    directions: Annotated[list[LivenessDirection], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["left", "right"]
    )
    # How far the head must turn from the person's own front, and how close to that front it
    # must come back (degrees).
    turn_degrees: Annotated[float, Meta(ge=10.0, le=60.0)] = 25.0
    return_degrees: Annotated[float, Meta(ge=3.0, le=30.0)] = 12.0
    # Planarity score (vision.planarity) at or below which the landmarks moved as a plane.
    planarity_cutoff: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.128
    # Every view during the challenge must match the front view at least this much (one face
    # throughout; Pointing'04: the same person front vs 30-45 deg turns 0.51-0.79, different
    # persons at most 0.35).
    identity_threshold: Cosine = 0.4
    # Run the pack's passive liveness model (fr_liveness.onnx) on the challenged face and
    # report its score. Uncalibrated: it decides nothing.
    passive_score: bool = True


class EventLogSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Events (never frames or vectors) kept in the store for history queries.
    enabled: bool = True
    retention_days: Annotated[float, Meta(gt=0.0)] = 30.0
    max_rows: Annotated[int, Meta(ge=100)] = 100_000


class ServerSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Loopback by default: biometric data stays on this machine unless you decide otherwise.
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8001
    # Role tokens. `token` (or FACEGATE_TOKEN) is the admin's; one of them is required when
    # host is not a loopback address. With none set, everyone reaching the port is admin.
    token: str = ""
    operator_token: str = ""
    viewer_token: str = ""
    # Browser origins allowed to change state (and open the WebSocket) besides the panel's own.
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    # Host headers accepted (besides localhost names and the bound host).
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    # Honour X-Forwarded-* headers (only behind a proxy you trust).
    proxy_headers: bool = False
    max_upload_mb: Annotated[float, Meta(gt=0.0, le=100.0)] = 5.0
    # Uploads waiting to be decoded and analysed (one at a time, off the event loop); more
    # are answered 503.
    max_pending_uploads: Annotated[int, Meta(ge=1, le=64)] = 4
    # Each WebSocket client's outgoing queue, in messages and bytes; a client that does not
    # read (a full queue, or a send blocked) for ws_stall_seconds is disconnected.
    ws_queue: Annotated[int, Meta(ge=8, le=100_000)] = 512
    ws_queue_bytes: Annotated[int, Meta(ge=65_536, le=1_073_741_824)] = 1_048_576
    ws_stall_seconds: Annotated[float, Meta(gt=0.0, le=600.0)] = 5.0
    # A client whose buffers stay full this long is cut off outright (the hub drops it after
    # ws_stall_seconds with a close frame, which a peer that never reads would never take).
    ws_close_grace_seconds: Annotated[float, Meta(gt=0.0, le=600.0)] = 10.0
    # WebSocket clients at once; one more is closed with 1013 (try again later).
    ws_max_clients: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    # The faces of the latest frame (`tracks` message) are sent at most this often.
    tracks_per_second: Annotated[float, Meta(gt=0.0, le=60.0)] = 10.0
    # A connection must send its request headers within this long; an idle keep-alive
    # connection is closed after keep_alive_seconds.
    header_timeout_seconds: Annotated[float, Meta(gt=0.0, le=120.0)] = 5.0
    keep_alive_seconds: Annotated[float, Meta(gt=0.0, le=300.0)] = 5.0
    # Concurrent connections and requests; past this HTTP requests are answered 503.
    max_connections: Annotated[int, Meta(ge=16, le=100_000)] = 2048
    # Failed authentications per client address per minute before it is answered 429.
    auth_failures_per_minute: Annotated[int, Meta(ge=1, le=10_000)] = 10
    # Commands (reset, registration decisions) per client address: a rate and a burst.
    commands_per_second: Annotated[float, Meta(gt=0.0, le=1000.0)] = 2.0
    command_burst: Annotated[int, Meta(ge=1, le=1000)] = 5


class StoreSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # "" = SQLite in the data directory; "postgresql://user@host/db" = a PostgreSQL database
    # that several gates share (FACEGATE_STORE_URL overrides it; the password is never logged).
    url: Annotated[str, Meta(pattern=r"^$|^postgres(ql)?://")] = ""
    # Keep a small JPEG of each person's best aligned face for the panel.
    thumbnails: bool = True
    # The audit log (enrolments, erasures, failed logins; never vectors, images or names)
    # is pruned to these limits.
    audit_retention_days: Annotated[float, Meta(gt=0.0)] = 365.0
    audit_max_rows: Annotated[int, Meta(ge=100)] = 100_000


class QualityGate(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    min_face_px: Pixels
    max_abs_yaw: Degrees
    max_abs_pitch: Degrees
    # Variance of the Laplacian of the aligned 112x112 grey crop.
    min_sharpness: Annotated[float, Meta(ge=0.0)]
    min_det_score: Fraction
    min_brightness: Annotated[float, Meta(ge=0.0, le=255.0)] = 40.0
    max_brightness: Annotated[float, Meta(ge=0.0, le=255.0)] = 225.0


def _recognition_gate() -> QualityGate:
    # Lenient: small, soft video faces (a 70 px face upscaled to 112 measures 10-40) and dim
    # rooms still get a recognition attempt; the vote over frames does the rest.
    return QualityGate(
        min_face_px=40,
        max_abs_yaw=60.0,
        max_abs_pitch=45.0,
        min_sharpness=8.0,
        min_det_score=0.7,
        min_brightness=25.0,
        max_brightness=235.0,
    )


def _enrolment_gate() -> QualityGate:
    # Wide enough in yaw/pitch for the guided poses (|yaw| up to 45, |pitch| up to 35).
    return QualityGate(
        min_face_px=80, max_abs_yaw=50.0, max_abs_pitch=40.0, min_sharpness=20.0, min_det_score=0.8
    )


class QualitySettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    recognition: QualityGate = msgspec.field(default_factory=_recognition_gate)
    enrolment: QualityGate = msgspec.field(default_factory=_enrolment_gate)


class MqttSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # The broker, e.g. "mqtt://user:pass@host:1883" or "mqtts://host:8883"; "" = MQTT off.
    # (FACEGATE_MQTT_URL overrides it; the password is never logged.)
    url: str = ""
    # Topics: <topic_prefix>/<gate.id>/..., <topic_prefix>/people/<person>.
    topic_prefix: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = (
        "facegate"
    )
    # Home Assistant's MQTT discovery prefix ("" = no discovery).
    discovery_prefix: Annotated[str, Meta(max_length=64, pattern=r"^[A-Za-z0-9_/-]*$")] = (
        "homeassistant"
    )
    # Names of recognised people in topics and payloads (off: person ids only).
    publish_names: bool = True
    qos: Annotated[int, Meta(ge=0, le=2)] = 1
    # A CA certificate file for mqtts:// brokers with a private CA ("" = the system's CAs).
    tls_ca: str = ""
    # Accept `<prefix>/<gate>/registration/decision`: whoever can publish there can approve a
    # stranger, so it is off unless you trust everyone who can write to the broker.
    registration_commands: bool = False
    # Messages waiting while the broker is away (the oldest non-critical ones go first).
    queue: Annotated[int, Meta(ge=10, le=100_000)] = 1000
    # A JPEG of the face with person_recognized / unknown_person_detected.
    snapshots: bool = True
    # Also publish Frigate-shaped `tracked_object_update` messages (for existing automations).
    frigate: bool = False
    # Seconds between reconnection attempts: doubling from 1 up to this.
    reconnect_max_seconds: Annotated[float, Meta(ge=1.0, le=600.0)] = 30.0


class Settings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    gate: GateSettings = msgspec.field(default_factory=GateSettings)
    models: ModelSettings = msgspec.field(default_factory=ModelSettings)
    detection: DetectionSettings = msgspec.field(default_factory=DetectionSettings)
    recognition: RecognitionSettings = msgspec.field(default_factory=RecognitionSettings)
    quality: QualitySettings = msgspec.field(default_factory=QualitySettings)
    index: IndexSettings = msgspec.field(default_factory=IndexSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    events: EventLogSettings = msgspec.field(default_factory=EventLogSettings)
    registration: RegistrationSettings = msgspec.field(default_factory=RegistrationSettings)
    liveness: LivenessSettings = msgspec.field(default_factory=LivenessSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)


class SettingsError(ValueError):
    """A settings file or variable that cannot be used; the message names the key."""


def default_data_dir() -> Path:
    if home := os.environ.get("FACEGATE_HOME"):
        return Path(home).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facegate"


def models_dir(settings: Settings) -> Path:
    if settings.models.dir:
        return Path(settings.models.dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facegate" / "models"


def load_settings(
    settings_file: Path | None = None,
    data_dir: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Defaults <- TOML file <- environment; raises SettingsError naming the bad key."""
    env = dict(os.environ) if environ is None else environ
    raw: dict[str, Any] = {}
    path = _settings_path(settings_file, data_dir, env)
    if path is not None:
        raw = _read_toml(path)
        mqtt = raw.get("mqtt")
        if isinstance(mqtt, dict) and "gate_id" in mqtt:
            raise SettingsError(f"setting mqtt.gate_id: {MOVED_GATE_ID} ({path})")
    origin = str(path) if path is not None else "defaults"
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name not in RESERVED_ENV:
            if name in ("FACEGATE_MQTT_GATE_ID", "FACEGATE_MQTT__GATE_ID"):
                raise SettingsError(f"environment variable {name}: {MOVED_GATE_ID}")
            keys = _env_key_path(name)
            _set_path(raw, keys, _parse_env_value(value, _is_text(keys)))
            origin = f"{origin} + environment"
    return _convert(raw, origin)


def _settings_path(
    settings_file: Path | None, data_dir: Path | None, env: dict[str, str]
) -> Path | None:
    if settings_file is not None:
        if not settings_file.is_file():
            raise SettingsError(f"settings file {settings_file} does not exist")
        return settings_file
    if named := env.get("FACEGATE_SETTINGS"):
        path = Path(named).expanduser()
        if not path.is_file():
            raise SettingsError(f"FACEGATE_SETTINGS names {path}, which does not exist")
        return path
    if data_dir is not None and (data_dir / "settings.toml").is_file():
        return data_dir / "settings.toml"
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from exc


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, table by table, so one key can change inside a section."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _convert(raw: dict[str, Any], origin: str) -> Settings:
    defaults: dict[str, Any] = msgspec.to_builtins(Settings())
    try:
        return msgspec.convert(_merge(defaults, raw), Settings)
    except msgspec.ValidationError as exc:
        # msgspec says e.g. "Expected `float` <= 1.0 - at `$.recognition.threshold`".
        message = str(exc)
        if " - at `$." in message:
            detail, _, where = message.partition(" - at `$.")
            key = where.rstrip("`")
            raise SettingsError(f"setting {key}: {detail} ({origin})") from exc
        raise SettingsError(f"settings: {message} ({origin})") from exc


def _field_names(struct_type: type[Struct]) -> dict[str, Any]:
    hints = msgspec.structs.fields(struct_type)
    return {f.name: f.type for f in hints}


def _env_key_path(name: str) -> list[str]:
    """Resolve FACEGATE_A__B_C or FACEGATE_A_B_C against the schema into ["a", "b_c"]."""
    rest = name[len(ENV_PREFIX) :].lower()
    node: Any = Settings
    keys: list[str] = []
    while True:
        if not (isinstance(node, type) and issubclass(node, Struct)):
            raise SettingsError(f"environment variable {name}: {'.'.join(keys)} has no sub-keys")
        fields = _field_names(node)
        match = _match_field(rest, fields)
        if match is None:
            where = ".".join(keys) or "the top level"
            raise SettingsError(
                f"environment variable {name}: no setting matches it under {where} "
                f"(known: {', '.join(sorted(fields))})"
            )
        keys.append(match)
        rest = rest[len(match) :]
        if not rest:
            return keys
        rest = rest.lstrip("_")
        node = fields[match]


def _match_field(rest: str, fields: dict[str, Any]) -> str | None:
    # Longest field name that is the whole rest or is followed by a separator.
    for field in sorted(fields, key=len, reverse=True):
        if rest == field or rest.startswith(field + "_"):
            return field
    return None


def _is_text(keys: list[str]) -> bool:
    """Whether the setting at `keys` is a string: its variable is then taken as it is
    (FACEGATE_GATE_ID=2 is the gate "2", not the number 2)."""
    node: Any = Settings
    for key in keys:
        node = _field_names(node)[key]
    if typing.get_origin(node) is Annotated:
        node = typing.get_args(node)[0]
    return node is str


def _parse_env_value(value: str, text: bool = False) -> Any:
    """The TOML value the variable spells, else its text; for a string setting (`text`) the
    text itself unless it is a quoted TOML string."""
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
    return value if text and not isinstance(parsed, str) else parsed


def _set_path(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SettingsError(f"setting {'.'.join(keys)}: {key} is not a table")
        node = child
    node[keys[-1]] = value
