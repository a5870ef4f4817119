"""What every subcommand shares: output as text or JSON lines, settings and data directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from facegate.identity.names import printable
from facegate.settings import Settings, default_data_dir, load_settings
from facegate.vision.face import FaceAnalyzer

if TYPE_CHECKING:
    from facegate.identity.gallery import Gallery
    from facegate.identity.store import Store

EXIT_OK, EXIT_SOME_FAILED, EXIT_CANNOT_RUN = 0, 1, 2
_encoder = msgspec.json.Encoder()


def rounded(value: float | None, places: int = 2) -> float | None:
    return None if value is None else round(float(value), places)


class Output:
    """Writes results as JSON lines (--json) or as text for a person at a terminal."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, obj: dict[str, Any], text: str) -> None:
        if self.as_json:
            sys.stdout.buffer.write(_encoder.encode(obj) + b"\n")
            sys.stdout.buffer.flush()
        else:
            print(printable(text), flush=True)

    def fail(self, message: str) -> int:
        if self.as_json:
            self.emit({"error": message}, message)
        print(f"facegate: {printable(message)}", file=sys.stderr)
        return EXIT_CANNOT_RUN


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Output(bool(getattr(args, "json", False)))
        data = getattr(args, "data", None)
        self.data_dir = Path(data).expanduser() if data else default_data_dir()
        settings_file = getattr(args, "settings", None)
        self.settings: Settings = load_settings(
            Path(settings_file) if settings_file else None, self.data_dir
        )

    def analyzer(self) -> FaceAnalyzer:
        from facegate.vision.analyzers import open_analyzer

        return open_analyzer(self.settings)

    def store(self, *, readonly: bool) -> Store:
        from facegate.identity.store import Store

        return Store.open(
            self.data_dir,
            readonly=readonly,
            url=self.settings.store.url,
            gate=self.settings.gate.id,
        )

    def gallery(self, store: Store) -> Gallery:
        from facegate.identity.gallery import Gallery

        return Gallery.open(store, self.settings)
