"""Threading and bookkeeping shared by the nodes: a latest-item worker and running statistics.

The executor thread only drops items into a one-slot mailbox (`LatestWorker.submit`); one worker
thread takes the newest item, so a slow model never backs up a queue and the latency of what gets
processed stays bounded by one processing time (plus the rate cap).
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable


class LatestWorker:
    """One thread running `handle(item)` on the newest submitted item; older unprocessed ones drop."""

    def __init__(self, handle: Callable[[object], None], name: str, min_period_s: Callable[[], float] = lambda: 0.0):
        self._handle = handle
        self._min_period_s = min_period_s  # read every cycle so a parameter change applies at once
        self._cond = threading.Condition()
        self._item = None
        self._stopped = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        next_start = 0.0
        while True:
            with self._cond:
                # rate cap: wait out the period first, so the item taken afterwards is the newest
                while not self._stopped and (self._item is None or time.monotonic() < next_start):
                    self._cond.wait(None if self._item is None else max(0.0, next_start - time.monotonic()))
                if self._stopped:
                    return
                item, self._item = self._item, None
            started = time.monotonic()
            self._handle(item)  # handle() reports its own errors; a raise here would kill the thread
            next_start = started + self._min_period_s()


class Stats:
    """Thread-safe counters and a sliding window of processing times for /diagnostics."""

    def __init__(self, window_s: float = 5.0):
        self._lock = threading.Lock()
        self._window_s = window_s
        self._done = collections.deque()  # (monotonic end time, latency s)
        self.received = 0
        self.processed = 0
        self.errors = 0
        self.last_error = ""

    def count_received(self) -> None:
        with self._lock:
            self.received += 1

    def record_done(self, latency_s: float) -> None:
        with self._lock:
            self.processed += 1
            self._done.append((time.monotonic(), latency_s))

    def record_error(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = message

    def snapshot(self) -> dict:
        """rate (Hz) and latency (ms, mean/max) over the window, plus the counters."""
        with self._lock:
            now = time.monotonic()
            while self._done and self._done[0][0] < now - self._window_s:
                self._done.popleft()
            lat = [d[1] for d in self._done]
            return {
                "rate_hz": len(lat) / self._window_s,
                "latency_mean_ms": 1e3 * sum(lat) / len(lat) if lat else 0.0,
                "latency_max_ms": 1e3 * max(lat) if lat else 0.0,
                "received": self.received, "processed": self.processed,
                "errors": self.errors, "last_error": self.last_error,
            }
