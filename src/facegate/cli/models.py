"""`facegate models fetch` and `models list`."""

from __future__ import annotations

import sys

import msgspec

from facegate.cli.common import EXIT_OK, Context
from facegate.settings import models_dir
from facegate.vision.modelpack import fetch_faceplugin, list_packs, require_pack


def cmd_models_fetch(ctx: Context) -> int:
    pack = ctx.args.pack or ctx.settings.models.pack
    where = models_dir(ctx.settings)
    progress = _to_stderr
    if pack == "faceplugin":
        path = fetch_faceplugin(where, log=progress).path
    else:
        path = str(require_pack(where, pack, allow_download=True, log=progress))
    ctx.out.emit({"name": pack, "path": path, "verified": True}, f"{pack}: ready in {path}")
    return EXIT_OK


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_models_list(ctx: Context) -> int:
    for status in list_packs(models_dir(ctx.settings)):
        obj = msgspec.to_builtins(status)
        obj["selected"] = status.name == ctx.settings.models.pack
        mark = "*" if obj["selected"] else " "
        state = "verified" if status.verified else "not ready: " + "; ".join(status.problems)
        ctx.out.emit(obj, f"{mark} {status.name:<11} {status.path}  {state}")
    return EXIT_OK
