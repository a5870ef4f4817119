"""`facegate serve`: uvicorn on the Starlette app, loopback by default.

SIGHUP reads the settings again, as at start, and applies the keys that can change at run time
(server/reload.py; a SIGHUP while it is still starting is ignored). Under systemd
(`Type=notify`, `facegate service unit`) it says READY=1 once it serves, RELOADING=1 and
READY=1 around a reload, and STOPPING=1 when it begins to stop.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import socket
import sys
from pathlib import Path

import msgspec

from facegate.cli.common import EXIT_OK, Context
from facegate.cli.service import sd_notify
from facegate.settings import load_settings
from facegate.vision.face import FaceAnalyzer


def cmd_serve(ctx: Context) -> int:
    from facegate.live.sources import SourceError, open_source
    from facegate.server.app import GracefulServer, create_app, is_loopback
    from facegate.server.http import listen, raise_open_file_limit, uvicorn_config
    from facegate.server.reload import Reloader, install
    from facegate.server.runtime import Runtime
    from facegate.vision.analyzers import liveness_pack

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reload is installed below
    args = ctx.args
    # What a reload reads again: the same file and the same environment as now.
    settings_file = Path(args.settings) if getattr(args, "settings", None) else None
    load = functools.partial(load_settings, settings_file, ctx.data_dir, dict(os.environ))
    as_read = ctx.settings
    server = ctx.settings.server
    host = args.host or server.host
    port = args.port or server.port
    token = os.environ.get("FACEGATE_TOKEN") or server.token
    if not is_loopback(host) and not (token or server.operator_token or server.viewer_token):
        return ctx.out.fail(
            f"refusing to listen on {host} without a token: set server.token or FACEGATE_TOKEN"
            " (clients then send `Authorization: Bearer <token>`), or keep the default"
            " 127.0.0.1"
        )
    settings = msgspec.structs.replace(
        ctx.settings, server=msgspec.structs.replace(server, host=host, port=port, token=token)
    )
    try:
        source = open_source(args.source)
    except SourceError as exc:
        return ctx.out.fail(str(exc))
    try:
        sock = listen(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return ctx.out.fail(
                f"port {port} on {host} is already in use (another facegate serve?): stop that"
                " one, or choose another port with --port N (or server.port in settings.toml)"
            )
        return ctx.out.fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    ctx.settings = settings
    # Load the models now (a missing pack fails here, with the fixing command); the engine
    # takes this analyzer, the upload handlers get their own when first needed.
    loaded = [ctx.analyzer()]
    liveness_pack(settings)  # the liveness challenge's models, when it is on

    def analyzer_factory() -> FaceAnalyzer:
        return loaded.pop() if loaded else ctx.analyzer()

    runtime = Runtime(settings, ctx.data_dir, source, analyzer_factory, loop_source=args.loop)
    install(Reloader(runtime, load, as_read, notify=sd_notify), runtime)
    app = create_app(runtime)
    print(f"facegate: panel at http://{host}:{port}/  (source: {source.name})", file=sys.stderr)
    raise_open_file_limit()
    config = uvicorn_config(app, settings.server)
    # uvicorn re-raises SIGTERM after its clean shutdown; end with status 0 instead of -15.
    signal.signal(signal.SIGTERM, _exit_ok)

    class NotifyingServer(GracefulServer):
        """Tells systemd when it serves and when it stops (nothing without $NOTIFY_SOCKET)."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                sd_notify(f"READY=1\nSTATUS=serving on http://{host}:{port}/")

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            sd_notify("STOPPING=1")
            await super().shutdown(sockets)

    NotifyingServer(config, runtime).run(sockets=[sock])
    return EXIT_OK


def _exit_ok(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_OK)
