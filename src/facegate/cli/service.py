"""`facegate service unit`: a systemd unit that runs `facegate serve`; and `sd_notify`, which
`serve` uses to tell systemd it is ready, reloading or stopping (`Type=notify`).

The system unit (the default) runs the gate as a user systemd allocates at each start
(`DynamicUser=yes`: it owns nothing outside the state directory and cannot keep files
anywhere else), in the `video` group when the source is a camera. Its data directory is the
state directory, /var/lib/facegate (FACEGATE_HOME=%S/facegate: the store, `settings.toml`),
and the model pack lives in it too (FACEGATE_MODELS__DIR=%S/facegate/models), since the
home directories are hidden from the service (`ProtectHome=yes`) and the rest of the file
system is read-only to it (`ProtectSystem=strict`). Fetch the pack into it once, as root,
before the first start; systemd hands the directory to the service's user at each start:

    FACEGATE_HOME=/var/lib/facegate FACEGATE_MODELS__DIR=/var/lib/facegate/models \\
        /path/to/facegate models fetch

A fixed account instead of a dynamic one: replace `DynamicUser=yes` with `User=facegate`
(`useradd --system --groups video facegate`). Secrets (FACEGATE_TOKEN, FACEGATE_STORE_URL,
FACEGATE_MQTT_URL, and a camera URL with a password, given to the unit as CAMERA_URL) belong
in /etc/facegate/facegate.env, readable by root only: the unit file is world-readable.

`--user` writes a user unit instead (`systemctl --user`): it runs as you, with your data,
settings and models where `facegate` keeps them for you (~/.local/share/facegate,
~/.cache/facegate/models), and only the hardening that works without privileges.

`ExecStart=` is the absolute path of this `facegate` (the command being run, else the one on
PATH, else this Python with `-m facegate.cli`), or `--exec PATH`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from facegate import __version__
from facegate.cli.common import EXIT_OK, Context

log = logging.getLogger(__name__)

AddCommand = Callable[..., argparse.ArgumentParser]
ENV_FILE = "/etc/facegate/facegate.env"
CAMERA_VARIABLE = "CAMERA_URL"  # not FACEGATE_*: those are settings keys
# ProtectHome= hides these; a program or file the service needs there needs "read-only".
HOME_DIRS = ("/home", "/root", "/run/user")


# -- systemd's notification socket --------------------------------------------------------------
def sd_notify(message: str) -> bool:
    """Send `message` ("READY=1", "STOPPING=1", ...) to systemd when it asked for it
    ($NOTIFY_SOCKET, set for `Type=notify` services); False when not asked or not delivered.
    A datagram on a Unix socket: no dependency."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", message.split("\n", 1)[0], exc)
        return False
    return True


# -- the unit -----------------------------------------------------------------------------------
def entry_point(given: str | None) -> list[str]:
    """The command that starts `facegate`, absolute: `given`, else the running `facegate`, else
    the one on PATH, else this Python with `-m facegate.cli`. ValueError for an unusable
    `given`."""
    if given:
        path = Path(given).expanduser().absolute()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ValueError(f"--exec {given}: not an executable file")
        return [str(path)]
    running = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if running is not None and running.name == "facegate" and running.is_file():
        return [str(running.resolve())]
    found = shutil.which("facegate")
    if found:
        return [str(Path(found).resolve())]
    # Not resolved: a virtual environment's python is a link that must stay one.
    return [str(Path(sys.executable).absolute()), "-m", "facegate.cli"]


def quote(arg: str) -> str:
    """One ExecStart= argument: `%` and `$` kept literal, quoted when it has spaces or quotes."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and all(c.isalnum() or c in "_@%+=:,./-$" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_camera(source: str) -> bool:
    """A webcam index or a device node (the unit then lets the service open video devices)."""
    return source.isdigit() or source.startswith("/dev/")


def has_password(source: str) -> bool:
    try:
        return bool(urlsplit(source).password)
    except ValueError:
        return False


def _under_home(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in HOME_DIRS)


def unit(
    command: list[str],
    *,
    source: str = "0",
    user: bool = False,
    host: str | None = None,
    port: int | None = None,
    settings_file: str | None = None,
) -> str:
    """The text of the unit (see the module docstring)."""
    from facegate.server.security import is_loopback

    args = [*command, "serve"]
    secret_source = has_password(source)
    args += ["--source", f"${{{CAMERA_VARIABLE}}}" if secret_source else source]
    if host:
        args += ["--host", host]
    if port:
        args += ["--port", str(port)]
    if settings_file:
        args += ["--settings", settings_file]
    exec_start = " ".join(
        f"${{{CAMERA_VARIABLE}}}" if a == f"${{{CAMERA_VARIABLE}}}" else quote(a) for a in args
    )
    camera = is_camera(source)
    name = "facegate"
    # Where a probe on this machine reaches it (a wildcard bind answers on loopback too).
    probe = host if host and host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{f'[{probe}]' if ':' in probe else probe}:{port or 8001}"
    manager = "systemctl --user" if user else "systemctl"
    env_file = "%E/facegate/facegate.env" if user else ENV_FILE
    lines = [
        f"# {name}.service: the face-recognition gate (`facegate service unit`, facegate"
        f" {__version__}).",
        "#",
    ]
    if user:
        lines += [
            "# Install:",
            f"#   facegate service unit --user > ~/.config/systemd/user/{name}.service",
            f"#   {manager} daemon-reload && {manager} enable --now {name}",
            "#   loginctl enable-linger $USER   # to run while you are not logged in",
            "# It runs as you, with your data, settings.toml and model pack (facegate models"
            " fetch);",
            "# a camera needs you in the `video` group.",
        ]
    else:
        models = shlex.join([*command, "models", "fetch"])
        lines += [
            "# Install, as root:",
            f"#   facegate service unit > /etc/systemd/system/{name}.service",
            "#   FACEGATE_HOME=/var/lib/facegate FACEGATE_MODELS__DIR=/var/lib/facegate/models \\",
            f"#       {models}",
            f"#   {manager} daemon-reload && {manager} enable --now {name}",
            "# Data and settings: /var/lib/facegate (settings.toml there), models in its models/.",
        ]
    lines += [
        "# Secrets (FACEGATE_TOKEN=..., FACEGATE_STORE_URL=..., FACEGATE_MQTT_URL=...) go in",
        f"# {env_file}, readable by its owner only (this file is not secret).",
    ]
    if secret_source:
        lines.append(f"# The camera's URL has a password: put {CAMERA_VARIABLE}=<url> there too.")
    if host and not is_loopback(host):
        lines.append(f"# `serve` listens on {host} only with a token: FACEGATE_TOKEN=... there.")
    lines += [
        f"# `{manager} reload {name}` (SIGHUP) applies the settings that can change at run time"
        " and logs",
        f"# those that need `{manager} restart {name}`. Logs: journalctl"
        f" {'--user-unit' if user else '-u'} {name}",
        f"# Health: {url}/healthz (alive),",
        f"#   {url}/readyz (ready: models, store, engine, camera).",
        "",
        "[Unit]",
        "Description=facegate face-recognition gate",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        # READY=1 once it serves, RELOADING=1/READY=1 around a reload, STOPPING=1 (cli/serve.py).
        "Type=notify",
        f"ExecStart={exec_start}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=5",
        "# Exit status 2: it cannot run as configured (bad settings, no model pack, port taken):",
        f"# fix that and `{manager} restart {name}` rather than retrying every 5 s.",
        "RestartPreventExitStatus=2",
        "TimeoutStopSec=20",
        f"EnvironmentFile=-{env_file}",
    ]
    if not user:
        lines += [
            "# A user allocated at each start; a fixed account instead: User=facegate (in the"
            " video group)",
            "# in place of DynamicUser=yes.",
            "DynamicUser=yes",
        ]
        if camera:
            lines.append("SupplementaryGroups=video")
        lines += [
            "StateDirectory=facegate",
            "StateDirectoryMode=0700",
            "Environment=FACEGATE_HOME=%S/facegate",
            "Environment=FACEGATE_MODELS__DIR=%S/facegate/models",
            "UMask=0077",
            "# Hardening: nothing but its state directory is writable, no privileges, no devices",
            "# but the cameras, no address families but IP and Unix sockets.",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "ProtectSystem=strict",
        ]
        needed = [command[0]] + ([source] if source.startswith("/") else [])
        needed += [settings_file] if settings_file else []
        if any(_under_home(p) for p in needed):
            lines += [
                "# read-only, not hidden: the program, the source or the settings file is under"
                " a home",
                "# directory (and must be readable by the service's user).",
                "ProtectHome=read-only",
            ]
        else:
            lines.append("ProtectHome=yes")
        lines.append("PrivateTmp=yes")
        if camera:
            lines += ["DevicePolicy=closed", "DeviceAllow=char-video4linux rw"]
        else:
            lines.append("PrivateDevices=yes")
        lines += [
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "ProtectProc=invisible",
            "RestrictNamespaces=yes",
            "RestrictSUIDSGID=yes",
            "# Not set: MemoryDenyWriteExecute= (Python's ctypes callbacks may need writable"
            " code),",
            "# PrivateUsers= (it would hide the video group), SystemCallFilter= (not tried against",
            "# ONNX Runtime's thread pools).",
        ]
    else:
        lines += ["# Hardening that works in a user's service manager.", "NoNewPrivileges=yes"]
    lines += [
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
    ]
    return "\n".join(lines) + "\n"


def cmd_service_unit(ctx: Context) -> int:
    args = ctx.args
    try:
        command = entry_point(args.exec)
    except ValueError as exc:
        return ctx.out.fail(str(exc))
    settings_file = getattr(args, "settings", None)
    if settings_file:
        settings_file = str(Path(settings_file).expanduser().absolute())
    source = args.source
    if "://" not in source and not source.isdigit():  # a file or folder: the service's cwd is /
        source = str(Path(source).expanduser().absolute())
    text = unit(
        command,
        source=source,
        user=args.user,
        host=args.host,
        port=args.port,
        settings_file=settings_file,
    )
    if not args.user and _under_home(command[0]):
        print(
            f"facegate: note: {command[0]} is under a home directory: the service's user must be"
            " able to read it (a system-wide install, e.g. python3 -m venv /opt/facegate, avoids"
            " that)",
            file=sys.stderr,
        )
    if source.startswith(("/tmp/", "/var/tmp/")):
        print(
            f"facegate: note: the service has a /tmp of its own (PrivateTmp=yes): it cannot see"
            f" {source}; move it elsewhere",
            file=sys.stderr,
        )
    obj: dict[str, Any] = {"unit": text, "user": args.user, "exec": command}
    ctx.out.emit(obj, text.rstrip("\n"))
    return EXIT_OK


def add_commands(
    sub: Any, add: AddCommand, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    group = sub.add_parser("service", help="run the gate as a systemd service")
    common(group)
    ssub = group.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    p = add(
        "unit",
        cmd_service_unit,
        "print a systemd unit that runs `facegate serve` (hardened; Type=notify; reload = SIGHUP)",
        ssub,
    )
    p.add_argument(
        "--user",
        action="store_true",
        help="a user unit (systemctl --user): runs as you, with your data and models",
    )
    p.add_argument(
        "--exec",
        metavar="PATH",
        help="the facegate program to run (default: this one, else the one on PATH)",
    )
    p.add_argument(
        "--source",
        default="0",
        help="serve's --source: webcam index, video file, image folder or rtsp/http URL"
        " (default: 0)",
    )
    p.add_argument("--host", help="serve's --host (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="serve's --port (default: server.port, 8001)")
