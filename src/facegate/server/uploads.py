"""Uploaded photos are decoded and analysed off the event loop, one job at a time.

One worker thread owns the upload analyzer (analyzers are not shared between threads) and at
most `max_pending` jobs may wait for it; one more is refused at once (`UploadsBusyError`, the
API's 503) instead of queueing without bound. The event loop only parses the multipart body
(bounded by the upload limit) and waits, so `/system_status` and the WebSocket stay
responsive however heavy the images are.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class UploadsBusyError(Exception):
    """Too many uploads are waiting; try again shortly."""


class UploadWorker:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending = 0
        self.refused = 0
        self.done = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uploads")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on the worker thread; UploadsBusyError when the queue is full."""
        if self.pending >= self.max_pending:
            self.refused += 1
            raise UploadsBusyError(
                f"{self.pending} uploads are being processed; try again in a moment"
            )
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        finally:
            self.pending -= 1
            self.done += 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
