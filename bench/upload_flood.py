"""An upload flood against `facegate serve`: is the gate still responsive, and is memory bounded?

    .venv/bin/python bench/upload_flood.py [--seconds 20] [--clients 4] [--server-src DIR]

Starts `facegate serve` as its own process (real model pack, a folder of blank frames as the
camera, a temporary data directory) and, from this process, floods it for `--seconds` with:
- enrolments of 20 decompression bombs each (a real 10 KB WebP of 16383x16383 pixels, 804 MB
  once decoded), and identifications of a real 3 MB TIFF of 10000x10000 (300 MB decoded);
- enrolments and identifications of real photos (deepface img1..img9: real decoding and
  analysis work).
Meanwhile a probe asks `GET /system_status` every 20 ms. Printed: the probe's latency
p50/p99/max, the answers by status, and the server's peak resident memory (VmHWM).

`--server-src DIR` runs the server from another checkout's `src/` (e.g. the previous commit,
`git worktree add /tmp/before HEAD~1`) to measure before and after with the same load.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import httpx2 as httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEEPFACE = REPO.parent / "shared" / "data" / "faces" / "deepface"


def real_bombs(folder: Path) -> tuple[bytes, bytes]:
    """A 10 KB lossless WebP of 16383x16383 black pixels (804 MB decoded) and a 3 MB
    TIFF of 10000x10000 (300 MB decoded): real encoded files, made once and kept."""
    webp, tiff = folder / "bomb.webp", folder / "bomb.tif"
    if not webp.is_file():
        ok, data = cv2.imencode(
            ".webp", np.zeros((16383, 16383, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101]
        )
        assert ok
        webp.write_bytes(data.tobytes())
    if not tiff.is_file():
        ok, data = cv2.imencode(".tiff", np.zeros((10000, 10000, 3), np.uint8))
        assert ok
        tiff.write_bytes(data.tobytes())
    return webp.read_bytes(), tiff.read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--server-src", type=Path, help="run the server from this src/ folder")
    args = parser.parse_args()
    if not DEEPFACE.is_dir():
        print(f"upload flood: skipped, no photos at {DEEPFACE}")
        return 0
    photos = [(p.name, p.read_bytes()) for p in sorted(DEEPFACE.glob("img[1-9].jpg"))]
    bombs_dir = Path(tempfile.gettempdir()) / "facegate-bench-bombs"
    bombs_dir.mkdir(exist_ok=True)
    webp, tiff_data = real_bombs(bombs_dir)
    tmp = Path(tempfile.mkdtemp(prefix="facegate-flood-"))
    frames = tmp / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "blank.jpg"), np.full((480, 640, 3), 128, np.uint8))
    port = free_port()
    env = dict(os.environ, FACEGATE_HOME=str(tmp / "home"))
    if args.server_src:
        env["PYTHONPATH"] = str(args.server_src.resolve())
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "facegate.cli",
            "serve",
            "--source",
            str(frames),
            "--loop",
            "--port",
            str(port),
            "--data",
            str(tmp / "data"),
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/system_status", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.2)
        idle_mb = vm_hwm_mb(server.pid)
        stop = threading.Event()
        statuses: collections.Counter[str] = collections.Counter()
        latencies: list[float] = []
        lock = threading.Lock()

        def probe() -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                while not stop.is_set():
                    t = time.perf_counter()
                    c.get("/system_status")
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.02)

        def flood(i: int) -> None:
            bombs = [("files", (f"b{k}.webp", webp, "image/webp")) for k in range(20)]
            tiff = {"file": ("scan.tif", tiff_data, "image/tiff")}
            with httpx.Client(base_url=base, timeout=120) as c:
                n = 0
                while not stop.is_set():
                    n += 1
                    kind = n % 4
                    if kind == 0:
                        r = c.post("/api/persons", data={"name": f"B{i}"}, files=bombs)
                    elif kind == 1:
                        r = c.post("/api/identify", files=tiff)
                    elif kind == 2:
                        name, data = photos[(n + i) % len(photos)]
                        r = c.post("/api/identify", files={"file": (name, data, "image/jpeg")})
                    else:
                        name, data = photos[(n * 3 + i) % len(photos)]
                        files = {"files": (name, data, "image/jpeg")}
                        r = c.post("/api/persons", data={"name": f"P{i}-{n}"}, files=files)
                    with lock:
                        statuses[
                            f"{['bombs', 'tiff', 'identify', 'enrol'][kind]} {r.status_code}"
                        ] += 1

        threads = [threading.Thread(target=probe)]
        threads += [threading.Thread(target=flood, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(180)
        peak_mb = vm_hwm_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    ordered = sorted(latencies)
    which = f"server from {args.server_src}" if args.server_src else "this checkout"
    print(f"upload flood ({which}, {args.clients} clients, {args.seconds:.0f} s):")
    print(
        f"  /system_status during the flood: {len(ordered)} probes, p50"
        f" {percentile(ordered, 50) * 1000:.1f} ms, p99 {percentile(ordered, 99) * 1000:.1f} ms,"
        f" max {ordered[-1] * 1000 if ordered else 0:.1f} ms"
    )
    print(f"  server peak RSS (VmHWM): {peak_mb:.0f} MB (after start-up {idle_mb:.0f} MB)")
    print("  answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
