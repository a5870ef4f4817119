"""The `facegate` command line.

Every subcommand takes `--json` (one JSON object per line on stdout), `--data DIR` (the data
directory; default $FACEGATE_HOME or ~/.local/share/facegate) and `--settings FILE`.
Exit status: 0 all good; 1 some inputs failed (each reported, the others still processed);
2 the command could not run at all (bad settings, missing model pack, unreadable pairs file,
unknown person id, data directory in use).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from facegate import __version__
from facegate.cli import analysis, live, models, persons, serve, service, store
from facegate.cli.common import Context, Output
from facegate.identity.archive import ArchiveError
from facegate.identity.store import StoreError
from facegate.settings import SettingsError
from facegate.vision.modelpack import ModelPackError


# -- parser ----------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: the option may be given before or after the subcommand without one erasing
    # the other.
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="one JSON object per line on stdout",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="data directory (default: $FACEGATE_HOME or ~/.local/share/facegate)",
    )
    parser.add_argument(
        "--settings",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="settings file (default: $FACEGATE_SETTINGS or DIR/settings.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegate", description="A face-recognition gate.")
    parser.add_argument("--version", action="version", version=f"facegate {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[Context], int], help_: str, into: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = into.add_parser(name, help=help_, description=help_)
        _common(p)
        p.set_defaults(func=func)
        return p

    p = add(
        "analyze", analysis.cmd_analyze, "detect faces; print boxes, pose and quality per image"
    )
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--embeddings", action="store_true", help="add each face's embedding")
    p = add("compare", analysis.cmd_compare, "cosine similarity of the main faces of two images")
    p.add_argument("image_a", metavar="IMG_A")
    p.add_argument("image_b", metavar="IMG_B")
    p = add(
        "verify-pairs",
        analysis.cmd_verify_pairs,
        "accuracy, AUC, TAR@FAR and a threshold from labelled pairs",
    )
    p.add_argument("pairs", metavar="PAIRS.csv", help="CSV with columns file_x,file_y,decision")
    p.add_argument("--root", required=True, metavar="DIR", help="folder the file names are in")

    models_parser = sub.add_parser("models", help="fetch, verify and list model packs")
    _common(models_parser)
    msub = models_parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = add(
        "fetch",
        models.cmd_models_fetch,
        "fetch and verify a model pack (default: the configured one)",
        msub,
    )
    p.add_argument("--pack", choices=["faceplugin", "buffalo_l", "buffalo_s", "antelopev2"])
    add(
        "list",
        models.cmd_models_list,
        "list model packs, where they live and whether they verify",
        msub,
    )
    persons.add_commands(sub, add, _common)
    store.add_commands(sub, add, _common)
    p = add("run", live.cmd_run, "run the live engine on a source; print events as lines")
    p.add_argument(
        "--source",
        default="0",
        help="webcam index, video file, image folder or rtsp/http URL (default: 0)",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="play files at their own fps, as a camera would (default: as fast as possible)",
    )
    p.add_argument("--loop", action="store_true", help="start a file source again at its end")
    p.add_argument(
        "--tracks",
        action="store_true",
        help="also print the faces of every processed frame (a `tracks` line: boxes, states,"
        " names, similarities), e.g. to draw them or to audit what the gate showed",
    )
    p.add_argument(
        "--mqtt",
        metavar="URL",
        help="also publish to this MQTT broker (mqtt://[user:pass@]host[:port] or mqtts://...;"
        " the other [mqtt] settings apply; beside a running `serve` give this one its own"
        " gate.id, e.g. FACEGATE_GATE_ID=bench)",
    )
    add("schema", live.cmd_schema, "print the JSON Schema of the events")
    p = add("serve", serve.cmd_serve, "serve the panel, REST and WebSocket API on the live source")
    p.add_argument(
        "--source",
        default="0",
        help="webcam index, video file, image folder or rtsp/http URL (default: 0)",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8001)")
    p.add_argument("--loop", action="store_true", help="start a file source again at its end")
    service.add_commands(sub, add, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="facegate: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    out = Output(bool(getattr(args, "json", False)))
    try:
        ctx = Context(args)
        code: int = args.func(ctx)
    except (SettingsError, ModelPackError, StoreError, ArchiveError) as exc:
        return out.fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
