"""Keeps a gate's gallery current with what other gates change in a shared store.

`GalleryFollower` runs `Store.follow` on a thread of its own and hands every change to
`Gallery.apply`: with PostgreSQL, the changes arrive by `LISTEN/NOTIFY` as the other gates
commit them, and after every (re)connection the gallery compares generations and reloads if it
missed anything; a read-only SQLite gallery (`run` beside `serve`) polls the generation. A
writing SQLite gallery has no one to follow: the thread ends at once.
"""

from __future__ import annotations

import logging
import threading
import time

from facegate.identity.gallery import Gallery
from facegate.identity.store import StoreError

log = logging.getLogger(__name__)


class GalleryFollower:
    """Owns its thread and its stop event: `start`, then `stop`."""

    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False  # listening now (PostgreSQL)
        self.reconnections = 0  # connections after the first
        self.last_change_at: float | None = None  # unix time of the latest change followed

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gallery-follower", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                for change in self.gallery.store.follow(self._stop):
                    if change is None:
                        self.connected = True
                        if not first:
                            self.reconnections += 1
                        first = False
                    if self.gallery.apply(change):
                        self.last_change_at = time.time()
                return  # the store has nothing (more) to follow
            except StoreError as exc:  # a read between notifications failed: resync after
                self.connected = False
                log.warning("gallery not followed for a moment: %s", exc)
                self._stop.wait(1.0)
            except Exception:  # a bug must not end the following for good: say it, go on
                self.connected = False
                log.exception("gallery follower failed; reconnecting and reloading")
                self._stop.wait(1.0)
