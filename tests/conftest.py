"""Shared fixtures: the real face data beside the repo and the default model pack."""

from __future__ import annotations

from pathlib import Path

import pytest

from postgres import pg_server, pg_url  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real face data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def deepface(shared_data: Path) -> Path:
    return shared_data / "faces" / "deepface"


@pytest.fixture(scope="session")
def faceplugin_dir() -> Path:
    """The verified default pack (fetched by `make setup`), else skip saying how to get it."""
    from facegate.settings import load_settings, models_dir
    from facegate.vision.modelpack import verify_faceplugin

    where = models_dir(load_settings(environ={}))
    status = verify_faceplugin(where)
    if not status.verified:
        pytest.skip(f"default model pack not ready in {where}: run `facegate models fetch`")
    return Path(status.path)


@pytest.fixture(scope="session")
def analyzer(faceplugin_dir: Path):  # type: ignore[no-untyped-def]
    from facegate.vision.faceplugin import FacepluginAnalyzer

    return FacepluginAnalyzer(faceplugin_dir)
