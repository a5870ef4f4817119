"""`facegate service unit`: the systemd unit, checked by systemd's own `systemd-analyze verify`
(skipped where it is absent), and `sd_notify`'s datagrams."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from facegate.cli import main
from facegate.cli.service import entry_point, quote, sd_notify, unit

# The venv's own entry point: a real executable for ExecStart= (verify checks it exists).
FACEGATE = Path(sys.executable).parent / "facegate"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
needs_entry_point = pytest.mark.skipif(
    not FACEGATE.is_file(), reason=f"no facegate entry point at {FACEGATE} (pip install -e .)"
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("FACEGATE_") or name == "NOTIFY_SOCKET":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FACEGATE_HOME", str(tmp_path / "data"))
    return tmp_path


def generate(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["service", "unit", *argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def directives(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit, by key (a key may repeat), comments left out."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def verify(path: Path, *, user: bool = False) -> list[str]:
    """`systemd-analyze verify` on the unit: asserts it exits 0 and returns the lines of its
    output that name the unit (systemd in a container may warn about other things)."""
    assert ANALYZE is not None
    env = dict(os.environ)
    cmd = [ANALYZE, "verify", str(path)]
    if user:
        # A user manager needs a runtime directory; a private one stands in for /run/user/UID.
        runtime = path.parent / "xdg-runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        cmd.insert(1, "--user")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if path.name in line or str(path) in line
    ]


@pytest.fixture
def unit_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "units"
    folder.mkdir()
    yield folder


# -- the system unit ---------------------------------------------------------------------------
@needs_analyze
@needs_entry_point
def test_the_system_unit_verifies_without_a_warning(
    capsys: pytest.CaptureFixture[str], env: Path, unit_dir: Path
) -> None:
    path = unit_dir / "facegate.service"
    path.write_text(generate(capsys, "--exec", str(FACEGATE)))
    assert verify(path) == []


def test_the_system_unit_has_the_service_and_hardening_directives(
    capsys: pytest.CaptureFixture[str], env: Path
) -> None:
    text = generate(capsys, "--exec", sys.executable)
    keys = directives(text)
    assert keys["ExecStart"] == [f"{sys.executable} serve --source 0"]
    assert keys["Type"] == ["notify"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["Restart"] == ["on-failure"] and keys["RestartSec"] == ["5"]
    assert keys["RestartPreventExitStatus"] == ["2"]
    assert keys["DynamicUser"] == ["yes"] and "User" not in keys
    assert keys["SupplementaryGroups"] == ["video"]
    assert keys["StateDirectory"] == ["facegate"]
    assert "FACEGATE_HOME=%S/facegate" in keys["Environment"]
    assert "FACEGATE_MODELS__DIR=%S/facegate/models" in keys["Environment"]
    assert keys["EnvironmentFile"] == ["-/etc/facegate/facegate.env"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "DevicePolicy": "closed",
        "DeviceAllow": "char-video4linux rw",
    }.items():
        assert keys[key] == [value], key
    assert keys["WantedBy"] == ["multi-user.target"]
    # How to put the model pack where the service looks for it.
    assert "FACEGATE_HOME=/var/lib/facegate FACEGATE_MODELS__DIR=/var/lib/facegate/models" in text
    assert f"{sys.executable} models fetch" in text


@needs_analyze
@needs_entry_point
def test_a_stream_with_a_password_stays_out_of_the_unit(
    capsys: pytest.CaptureFixture[str], env: Path, unit_dir: Path
) -> None:
    url = "rtsp://admin:s3cret@10.0.0.7:554/stream1"
    text = generate(
        capsys, "--exec", str(FACEGATE), "--source", url, "--host", "0.0.0.0", "--port", "8010"
    )
    assert "s3cret" not in text
    keys = directives(text)
    assert keys["ExecStart"] == [
        f"{FACEGATE} serve --source ${{CAMERA_URL}} --host 0.0.0.0 --port 8010"
    ]
    assert "CAMERA_URL=<url>" in text and "FACEGATE_TOKEN" in text
    # Not a camera: no video group, no devices at all.
    assert "SupplementaryGroups" not in keys and "DeviceAllow" not in keys
    assert keys["PrivateDevices"] == ["yes"]
    path = unit_dir / "facegate.service"
    path.write_text(text)
    assert verify(path) == []


def test_a_program_under_a_home_directory_is_read_only_not_hidden() -> None:
    keys = directives(unit(["/home/ana/venv/bin/facegate"]))
    assert keys["ProtectHome"] == ["read-only"]
    keys = directives(unit(["/opt/facegate/bin/facegate"], source="/root/clip.mp4"))
    assert keys["ProtectHome"] == ["read-only"]
    assert directives(unit(["/opt/facegate/bin/facegate"]))["ProtectHome"] == ["yes"]


@needs_analyze
@needs_entry_point
def test_the_settings_file_is_passed_to_serve(
    capsys: pytest.CaptureFixture[str], env: Path, unit_dir: Path
) -> None:
    settings = env / "my settings.toml"  # a space: ExecStart= quotes it
    settings.write_text("[recognition]\nthreshold = 0.5\n")
    text = generate(capsys, "--exec", str(FACEGATE), "--settings", str(settings))
    assert directives(text)["ExecStart"] == [f'{FACEGATE} serve --source 0 --settings "{settings}"']
    path = unit_dir / "facegate.service"
    path.write_text(text)
    assert verify(path) == []


# -- the user unit -----------------------------------------------------------------------------
@needs_analyze
@needs_entry_point
def test_the_user_unit_verifies_and_runs_as_the_user(
    capsys: pytest.CaptureFixture[str], env: Path, unit_dir: Path
) -> None:
    text = generate(capsys, "--user", "--exec", str(FACEGATE))
    keys = directives(text)
    assert keys["WantedBy"] == ["default.target"]
    for absent in ("User", "DynamicUser", "SupplementaryGroups", "StateDirectory", "Environment"):
        assert absent not in keys, absent  # your own data, settings and models
    assert keys["Type"] == ["notify"] and keys["NoNewPrivileges"] == ["yes"]
    assert keys["EnvironmentFile"] == ["-%E/facegate/facegate.env"]
    path = unit_dir / "facegate.service"
    path.write_text(text)
    assert verify(path, user=True) == []


# -- ExecStart= --------------------------------------------------------------------------------
@needs_entry_point
def test_exec_start_is_the_running_facegate(env: Path) -> None:
    """Run as the installed `facegate`, the unit starts that very program."""
    done = subprocess.run(
        [str(FACEGATE), "service", "unit", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "FACEGATE_HOME": str(env / "data")},
        timeout=60,
        check=True,
    )
    (line,) = done.stdout.splitlines()
    obj = json.loads(line)
    assert obj["exec"] == [str(FACEGATE.resolve())]
    assert directives(obj["unit"])["ExecStart"] == [f"{FACEGATE.resolve()} serve --source 0"]


def test_exec_falls_back_to_this_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/somewhere/pytest"])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert entry_point(None) == [str(Path(sys.executable).absolute()), "-m", "facegate.cli"]


def test_exec_must_be_an_executable_file(
    capsys: pytest.CaptureFixture[str], env: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "not-a-program"
    plain.write_text("")
    for given in (str(plain), str(tmp_path / "missing")):
        assert main(["service", "unit", "--exec", given]) == 2
        assert "not an executable file" in capsys.readouterr().err


def test_quote_keeps_percent_dollar_and_spaces_literal() -> None:
    assert quote("/opt/facegate/bin/facegate") == "/opt/facegate/bin/facegate"
    assert quote("rtsp://cam/a%20b") == "rtsp://cam/a%%20b"
    assert quote("/srv/$clips") == "/srv/$$clips"
    assert quote("/srv/my clips/a.mp4") == '"/srv/my clips/a.mp4"'
    assert quote('say "hi"') == '"say \\"hi\\""'


# -- sd_notify ---------------------------------------------------------------------------------
def test_sd_notify_sends_a_datagram_to_notify_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(address))
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        assert sd_notify("READY=1\nSTATUS=serving")
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving"
    abstract = f"facegate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + abstract)
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + abstract)
        assert sd_notify("STOPPING=1")
        assert listener.recv(4096) == b"STOPPING=1"


def test_sd_notify_without_systemd_does_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not sd_notify("READY=1")  # logged, never raised


@needs_analyze
@needs_entry_point
def test_verify_would_report_a_mistake_in_the_unit(
    capsys: pytest.CaptureFixture[str], env: Path, unit_dir: Path
) -> None:
    """The check above is not vacuous: a key systemd does not know is named with the unit."""
    path = unit_dir / "facegate.service"
    path.write_text(
        generate(capsys, "--exec", str(FACEGATE)).replace("[Install]", "Bogus=1\n\n[Install]")
    )
    (warning,) = verify(path)
    assert "Bogus" in warning
