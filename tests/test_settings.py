"""Settings: defaults, TOML file, FACEGATE_* overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from facegate.settings import (
    DetectionSettings,
    GateSettings,
    ModelSettings,
    RecognitionSettings,
    Settings,
    SettingsError,
    load_settings,
)

REPO_SETTINGS = Path(__file__).resolve().parents[1] / "settings.toml"


def write(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults and overrides --------------------------------------------------------------------


def test_defaults_without_file_or_environment() -> None:
    s = load_settings(environ={})
    assert s == Settings()
    assert s.models.pack == "faceplugin"
    assert s.models.threads == 1
    assert s.recognition.threshold == 0.44
    assert s.recognition.target_far == 0.001
    assert s.quality.recognition.min_face_px == 40
    assert s.quality.enrolment.min_face_px == 80


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "[recognition]\nthreshold = 0.3\n[detection]\nmax_faces = 4\n")
    s = load_settings(path, environ={})
    assert s.recognition.threshold == 0.3
    assert s.detection.max_faces == 4
    # Keys the file does not mention keep their defaults.
    assert s.recognition.target_far == RecognitionSettings().target_far
    assert s.detection.min_score == DetectionSettings().min_score
    assert s.models == ModelSettings()


@pytest.mark.parametrize(
    "name", ["FACEGATE_RECOGNITION__THRESHOLD", "FACEGATE_RECOGNITION_THRESHOLD"]
)
def test_environment_overrides_threshold(name: str) -> None:
    s = load_settings(environ={name: "0.5"})
    assert s.recognition.threshold == 0.5
    assert s.recognition.target_far == RecognitionSettings().target_far


@pytest.mark.parametrize(
    "name",
    ["FACEGATE_QUALITY__ENROLMENT__MIN_FACE_PX", "FACEGATE_QUALITY_ENROLMENT_MIN_FACE_PX"],
)
def test_environment_overrides_nested_gate_key(name: str) -> None:
    s = load_settings(environ={name: "100"})
    assert s.quality.enrolment.min_face_px == 100
    assert s.quality.enrolment.max_abs_yaw == Settings().quality.enrolment.max_abs_yaw
    assert s.quality.recognition == Settings().quality.recognition


def test_file_overrides_one_gate_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[quality.enrolment]\nmin_face_px = 100\n")
    s = load_settings(path, environ={})
    assert s.quality.enrolment.min_face_px == 100
    assert s.quality.enrolment.min_sharpness == Settings().quality.enrolment.min_sharpness


def test_environment_overrides_a_full_gate_table(tmp_path: Path) -> None:
    # A complete gate in the file plus one key from the environment.
    path = write(
        tmp_path,
        "[quality.enrolment]\nmin_face_px = 80\nmax_abs_yaw = 50.0\nmax_abs_pitch = 40.0\n"
        "min_sharpness = 30.0\nmin_det_score = 0.8\n",
    )
    s = load_settings(path, environ={"FACEGATE_QUALITY_ENROLMENT_MIN_FACE_PX": "100"})
    assert s.quality.enrolment.min_face_px == 100
    assert s.quality.enrolment.max_abs_yaw == 50.0


def test_environment_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[recognition]\nthreshold = 0.3\ntarget_far = 0.01\n")
    s = load_settings(path, environ={"FACEGATE_RECOGNITION_THRESHOLD": "0.55"})
    assert s.recognition.threshold == 0.55
    assert s.recognition.target_far == 0.01


def test_environment_strings_and_booleans() -> None:
    s = load_settings(
        environ={"FACEGATE_MODELS_PACK": "buffalo_s", "FACEGATE_MODELS_ALLOW_DOWNLOAD": "false"}
    )
    assert s.models.pack == "buffalo_s"
    assert s.models.allow_download is False


def test_settings_file_from_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[recognition]\nthreshold = 0.61\n", name="mine.toml")
    s = load_settings(environ={"FACEGATE_SETTINGS": str(path)})
    assert s.recognition.threshold == 0.61


def test_data_dir_settings_file_is_picked_up(tmp_path: Path) -> None:
    write(tmp_path, "[detection]\nmax_faces = 7\n")
    assert load_settings(data_dir=tmp_path, environ={}).detection.max_faces == 7
    # Without a settings.toml there, the defaults.
    assert load_settings(data_dir=tmp_path / "empty", environ={}) == Settings()


def test_explicit_file_beats_environment_file_and_data_dir(tmp_path: Path) -> None:
    explicit = write(tmp_path, "[detection]\nmax_faces = 1\n", name="explicit.toml")
    named = write(tmp_path, "[detection]\nmax_faces = 2\n", name="named.toml")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write(data_dir, "[detection]\nmax_faces = 3\n")
    env = {"FACEGATE_SETTINGS": str(named)}
    assert load_settings(explicit, data_dir, environ=env).detection.max_faces == 1
    assert load_settings(None, data_dir, environ=env).detection.max_faces == 2
    assert load_settings(None, data_dir, environ={}).detection.max_faces == 3


@pytest.mark.parametrize("name", ["FACEGATE_HOME", "FACEGATE_SETTINGS", "FACEGATE_TOKEN"])
def test_reserved_variables_are_not_setting_keys(tmp_path: Path, name: str) -> None:
    # FACEGATE_SETTINGS must name a real file; the others are free text.
    value = str(write(tmp_path, "")) if name == "FACEGATE_SETTINGS" else "secret-or-path"
    assert load_settings(environ={name: value}) == Settings()


def test_variables_without_the_prefix_are_ignored() -> None:
    assert load_settings(environ={"PATH": "/usr/bin", "FACEGATEX": "1"}) == Settings()


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(AttributeError):
        s.recognition.threshold = 0.9  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.quality.enrolment.min_face_px = 10  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.models = ModelSettings()  # type: ignore[misc]


# -- the gate's id -------------------------------------------------------------------------------


def test_gate_id_defaults_to_gate_and_comes_from_the_file(tmp_path: Path) -> None:
    assert load_settings(environ={}).gate == GateSettings(id="gate")
    path = write(tmp_path, '[gate]\nid = "front-door_2"\n')
    assert load_settings(path, environ={}).gate.id == "front-door_2"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("porch", "porch"), ("2", "2"), ("true", "true"), ("1e3", "1e3"), ('"porch"', "porch")],
)
def test_gate_id_from_the_environment_is_taken_as_text(value: str, expected: str) -> None:
    # A number or a boolean is still the gate's name, not a value of another type.
    assert load_settings(environ={"FACEGATE_GATE_ID": value}).gate.id == expected
    assert load_settings(environ={"FACEGATE_GATE__ID": value}).gate.id == expected


@pytest.mark.parametrize("value", ["", "a b", "gate/1", "é", "x" * 65, "all!", "all", "ALL"])
def test_bad_gate_ids_name_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError, match=r"gate(\.|: )id"):
        load_settings(environ={"FACEGATE_GATE_ID": value})
    path = write(tmp_path, f"[gate]\nid = {value!r}\n".replace("'", '"'))
    with pytest.raises(SettingsError, match=r"gate(\.|: )id"):
        load_settings(path, environ={})


def test_mqtt_gate_id_is_gone_and_says_where_it_went(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\ngate_id = "porch"\n')
    with pytest.raises(SettingsError, match=r"mqtt\.gate_id: moved to \[gate\] id"):
        load_settings(path, environ={})
    with pytest.raises(SettingsError, match=r"FACEGATE_MQTT_GATE_ID: moved to \[gate\] id"):
        load_settings(environ={"FACEGATE_MQTT_GATE_ID": "porch"})


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[recognition]\nthreshold = 2.0\n", "recognition.threshold"),
        ("[recognition]\ntarget_far = 0.0\n", "recognition.target_far"),
        ("[models]\nthreads = 0\n", "models.threads"),
        ("[detection]\nmin_score = -0.1\n", "detection.min_score"),
        ('[liveness]\nchallenge = "sometimes"\n', "liveness.challenge"),
        ("[liveness]\ndirections = []\n", "liveness.directions"),
        ('[liveness]\ndirections = ["sideways"]\n', "liveness.directions"),
        ("[liveness]\nturn_degrees = 5.0\n", "liveness.turn_degrees"),
        ("[liveness]\nchallenge_seconds = 0.0\n", "liveness.challenge_seconds"),
    ],
)
def test_out_of_bounds_value_in_file_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")) as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("FACEGATE_RECOGNITION_THRESHOLD", "2.0", "recognition.threshold"),
        ("FACEGATE_MODELS_THREADS", "0", "models.threads"),
        ("FACEGATE_MODELS__THREADS", "65", "models.threads"),
        ("FACEGATE_LIVENESS_CHALLENGE", "maybe", "liveness.challenge"),
        ("FACEGATE_LIVENESS_IDENTITY_THRESHOLD", "1.5", "liveness.identity_threshold"),
    ],
)
def test_out_of_bounds_value_in_environment_names_the_key(name: str, value: str, key: str) -> None:
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(environ={name: value})


def test_min_face_px_zero_names_the_key(tmp_path: Path) -> None:
    gate = Settings().quality.recognition
    path = write(
        tmp_path,
        "[quality.recognition]\nmin_face_px = 0\n"
        f"max_abs_yaw = {gate.max_abs_yaw}\nmax_abs_pitch = {gate.max_abs_pitch}\n"
        f"min_sharpness = {gate.min_sharpness}\nmin_det_score = {gate.min_det_score}\n",
    )
    with pytest.raises(SettingsError, match=r"quality\.recognition\.min_face_px"):
        load_settings(path, environ={})


def test_min_face_px_zero_from_environment_names_the_key() -> None:
    with pytest.raises(SettingsError, match=r"quality\.recognition\.min_face_px"):
        load_settings(environ={"FACEGATE_QUALITY__RECOGNITION__MIN_FACE_PX": "0"})


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("[recognition]\ntreshold = 0.5\n", ["treshold", "recognition"]),
        ("[recognitoin]\nthreshold = 0.5\n", ["recognitoin"]),
        ("[models]\npack = 'faceplugin'\ncolour = 1\n", ["colour", "models"]),
    ],
)
def test_unknown_key_in_file_is_named(tmp_path: Path, toml: str, names: list[str]) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={})
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "FACEGATE_RECOGNITION_TRESHOLD",
        "FACEGATE_NOPE",
        "FACEGATE_RECOGNITION_THRESHOLD_X",
        "FACEGATE_MODELS_THREADS_MAX",
    ],
)
def test_unknown_environment_variable_is_named(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(environ={name: "1"})


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[recognition]\nthreshold = "high"\n')
    with pytest.raises(SettingsError, match=r"recognition\.threshold"):
        load_settings(path, environ={})


def test_wrong_type_from_environment_names_the_key() -> None:
    with pytest.raises(SettingsError, match=r"recognition\.threshold"):
        load_settings(environ={"FACEGATE_RECOGNITION_THRESHOLD": "high"})


def test_unknown_pack_names_the_key() -> None:
    with pytest.raises(SettingsError, match=r"models\.pack"):
        load_settings(environ={"FACEGATE_MODELS_PACK": "buffalo_xl"})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[recognition\nthreshold = \n")
    with pytest.raises(SettingsError, match="not valid TOML") as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_bytes("# caf\u00e9 (latin-1)\n[recognition]\nthreshold = 0.5\n".encode("latin-1"))
    with pytest.raises(SettingsError, match=str(path)):
        load_settings(path, environ={})


def test_settings_variable_naming_a_missing_file_fails(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(SettingsError, match="FACEGATE_SETTINGS") as info:
        load_settings(environ={"FACEGATE_SETTINGS": str(missing)})
    assert str(missing) in str(info.value)


def test_explicit_missing_file_fails(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(SettingsError, match="does not exist") as info:
        load_settings(missing, environ={})
    assert str(missing) in str(info.value)


# -- the repository's settings.toml ------------------------------------------------------------


def test_repository_settings_file_documents_the_defaults() -> None:
    if not REPO_SETTINGS.is_file():
        pytest.skip(f"{REPO_SETTINGS} does not exist yet")
    assert load_settings(REPO_SETTINGS, environ={}) == Settings()
