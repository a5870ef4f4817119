"""`/healthz` and `/readyz` through Starlette's TestClient: a running gate whose analyzer finds
nobody (`fakes.NoFaces`: health needs no face), its camera there, gone, or at the end of a file,
and its shared PostgreSQL store away and back."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import pytest
from starlette.testclient import TestClient

from facegate.live.sources import FrameSource, ImageFolderSource, open_source
from facegate.server.app import create_app
from facegate.server.health import StoreProbe, readiness
from facegate.server.runtime import Runtime
from facegate.settings import Settings
from fakes import NoFaces
from postgres import PostgresServer

TOKENS = {"token": "admin-secret", "operator_token": "op-secret", "viewer_token": "view-secret"}
READY = {"serving": True, "models": True, "store": True, "engine": True, "source": "connected"}
Serve = Callable[..., contextlib.AbstractContextManager[tuple[TestClient, Runtime]]]


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((240, 320, 3), 128, np.uint8))
    return folder


def configured(**sections: dict[str, Any]) -> Settings:
    settings = Settings()
    for name, values in sections.items():
        settings = msgspec.structs.replace(
            settings, **{name: msgspec.structs.replace(getattr(settings, name), **values)}
        )
    return settings


@pytest.fixture
def serve(tmp_path: Path, frames: Path) -> Serve:
    """`with serve(source, loop=True, server={...}, store={...}) as (client, runtime):`."""

    @contextlib.contextmanager
    def _serve(
        source: FrameSource | None = None, *, loop: bool = True, **sections: dict[str, Any]
    ) -> Iterator[tuple[TestClient, Runtime]]:
        runtime = Runtime(
            configured(**sections),
            tmp_path / "data",
            source if source is not None else ImageFolderSource(frames, fps=10),
            NoFaces,  # type: ignore[arg-type]
            loop_source=loop,
        )
        with TestClient(create_app(runtime)) as client:
            yield client, runtime

    return _serve


def until(client: TestClient, status: int, timeout: float = 10.0) -> dict[str, Any]:
    """GET /readyz until it answers `status`: its body."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/readyz")
        if r.status_code == status:
            body: dict[str, Any] = r.json()
            return body
        assert time.monotonic() < deadline, f"/readyz still {r.status_code}: {r.text}"
        time.sleep(0.05)


# -- /healthz ----------------------------------------------------------------------------------
def test_healthz_answers_ok_to_anyone(serve: Serve) -> None:
    with serve(server=TOKENS) as (client, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = client.get("/healthz", headers=headers)
            assert r.status_code == 200 and r.json() == {"status": "ok"}
            assert r.headers["cache-control"] == "no-store"
        assert client.head("/healthz").status_code == 200
        assert client.post("/healthz").status_code == 405
        assert client.get("/api/stats").status_code == 401  # the rest still needs a token


# -- /readyz -----------------------------------------------------------------------------------
def test_readyz_is_200_once_the_camera_delivers(serve: Serve, frames: Path) -> None:
    with serve(server=TOKENS) as (client, _):
        body = until(client, 200)
        assert body == {"ready": True, "checks": READY}
        r = client.get("/readyz")
        assert r.headers["cache-control"] == "no-store"
        assert str(frames) not in r.text and "sqlite" not in r.text  # states only


def test_readyz_is_503_while_the_camera_is_unavailable(serve: Serve) -> None:
    with serve(open_source("7")) as (client, runtime):
        body = until(client, 503)
        deadline = time.monotonic() + 10
        while body["checks"]["source"] != "unavailable":
            assert time.monotonic() < deadline, body
            body = until(client, 503)
        assert body == {"ready": False, "checks": {**READY, "source": "unavailable"}}
        # Alive all the same: nothing should restart a gate that waits for its camera.
        assert client.get("/healthz").status_code == 200
        assert runtime.source_state == "unavailable"


def test_readyz_is_503_once_a_file_has_ended(serve: Serve) -> None:
    with serve(loop=False) as (client, runtime):
        deadline = time.monotonic() + 10
        while runtime.source_state != "ended" or runtime.pipeline.running:
            assert time.monotonic() < deadline, runtime.source_state
            time.sleep(0.05)
        body = until(client, 503)
        assert body == {"ready": False, "checks": {**READY, "engine": False, "source": "ended"}}


def test_readyz_is_503_while_the_gate_shuts_down(serve: Serve) -> None:
    with serve() as (client, runtime):
        until(client, 200)
        runtime.closing.set()  # what GracefulServer does first on shutdown
        assert until(client, 503)["checks"] == {**READY, "serving": False}


def test_readyz_is_503_while_the_shared_store_is_away(
    serve: Serve, pg_server: PostgresServer, pg_url: str
) -> None:
    with serve(store={"url": pg_url}) as (client, _):
        assert until(client, 200, timeout=20)["checks"] == READY
        pg_server.stop()
        try:
            body = until(client, 503, timeout=20)
            assert body == {"ready": False, "checks": {**READY, "store": False}}
            assert pg_url not in client.get("/readyz").text
            assert client.get("/healthz").status_code == 200
        finally:
            pg_server.start()
        assert until(client, 200, timeout=30)["checks"] == READY  # back without a restart


# -- the checks themselves ---------------------------------------------------------------------
def test_nothing_is_ready_before_the_runtime_starts(frames: Path, tmp_path: Path) -> None:
    runtime = Runtime(Settings(), tmp_path / "data", ImageFolderSource(frames), NoFaces)  # type: ignore[arg-type]
    checks = asyncio.run(readiness(runtime, StoreProbe(runtime)))
    assert checks == {
        "serving": True,
        "models": False,
        "store": False,
        "engine": False,
        "source": "starting",
    }


class SlowStore:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0
        self.released = threading.Event()

    def generation(self) -> int:
        self.calls += 1
        self.released.wait(self.seconds)
        return 1


def test_a_store_that_hangs_is_not_ready_and_holds_one_thread_only() -> None:
    store = SlowStore(seconds=10.0)

    class Holder:
        pass

    holder: Any = Holder()
    holder.store = store
    probe = StoreProbe(holder, seconds=0.1)

    async def probes() -> list[bool]:
        results = [await probe(), await probe(), await probe()]
        assert store.calls == 1  # one query, waited for again by each probe
        store.released.set()  # the store answers again
        await asyncio.sleep(0.05)
        results.append(await probe())  # a new query, answered at once
        return results

    assert asyncio.run(probes()) == [False, False, False, True]
    assert store.calls == 2


def test_a_store_that_fails_is_not_ready() -> None:
    from facegate.identity.store import StoreUnavailableError

    class Away:
        def generation(self) -> int:
            raise StoreUnavailableError("the shared store is unreachable")

    holder: Any = type("Holder", (), {"store": Away()})()
    assert asyncio.run(StoreProbe(holder)()) is False
