"""A few threads that run the blocking work of many SQLite connections.

Each connection is a queue of jobs that runs on whichever worker thread is free, one job of a
connection at a time and in order (so a connection is never used by two threads at once, even
when the task that queued a job was cancelled meanwhile). A thread per connection (aiosqlite's
design) made every cold tenant start a thread and every idle pooled tenant keep one; here an
open connection costs no thread, and a job queued behind another of the same connection runs
without a round trip through the event loop.

The pool keeps `core` threads and starts more, up to `limit`, only while every thread is busy
(a slow statement of one tenant must not hold up the others); an extra thread that found no job
for `linger` seconds ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


class Workers:
    """The threads; `Serial.run` hands them work."""

    def __init__(self, *, core: int = 2, limit: int = 8, linger: float = 10.0) -> None:
        self._ready: queue.SimpleQueue[Serial] = queue.SimpleQueue()
        self._core = core
        self._limit = limit
        self._linger = linger
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def limit(self) -> int:
        return self._limit

    def _schedule(self, serial: Serial) -> None:
        self._ready.put(serial)
        with self._lock:
            if self._ready.qsize() > self._idle and self._threads < self._limit:
                self._threads += 1
                threading.Thread(target=self._work, name="tenant_mcp-sqlite", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
                extra = self._threads > self._core
            try:
                serial = self._ready.get(timeout=self._linger if extra else None)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._threads > self._core:
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
            serial._drain()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Serial:
    """One resource (a connection) whose jobs run on the workers one at a time, in order."""

    def __init__(self, workers: Workers) -> None:
        self._workers = workers
        self._jobs: deque[tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]]] = deque()
        self._mutex = threading.Lock()
        self._scheduled = False

    def run(self, job: Callable[[], R]) -> asyncio.Future[R]:
        """Queue `job`; the future settles with what it returns (or raises) in a worker thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._mutex:
            self._jobs.append((job, loop, future))
            if self._scheduled:
                return future
            self._scheduled = True
        self._workers._schedule(self)
        return future

    def _drain(self) -> None:
        while True:
            with self._mutex:
                if not self._jobs:
                    self._scheduled = False
                    return
                job, loop, future = self._jobs.popleft()
            result: Any = None
            error: BaseException | None = None
            try:
                result = job()
            except BaseException as exc:  # the waiting task gets it; the thread goes on
                error = exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, result, error)
