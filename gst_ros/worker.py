"""Threading and bookkeeping shared by the nodes: a latest-item worker, running statistics and a
per-kind log throttle.

The executor thread only drops items into a one-slot mailbox (`LatestWorker.submit`); one worker
thread takes the newest item, so a slow model never backs up a queue and the latency of what gets
processed stays bounded by one processing time (plus the rate cap).
"""
from __future__ import annotations

import collections
import re
import threading
import time
from typing import Callable


class LatestWorker:
    """One thread running `handle(item)` on the newest submitted item; older unprocessed ones drop.

    An exception from `handle` goes to `on_error` and the thread goes on with the next item.
    """

    def __init__(self, handle: Callable[[object], None], name: str, min_period_s: Callable[[], float] = lambda: 0.0,
                 on_error: Callable[[Exception], None] = lambda exc: None):
        self._handle = handle
        self._on_error = on_error
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
            try:
                self._handle(item)
            except Exception as exc:  # the thread must outlive any one item
                self._on_error(exc)
            next_start = started + self._min_period_s()


class Stats:
    """Thread-safe counters and a sliding window of processing times for /diagnostics."""

    def __init__(self, window_s: float = 5.0):
        self._lock = threading.Lock()
        self._window_s = window_s
        self._done = collections.deque()  # (monotonic end time, latency s, {stage: s})
        self.received = 0
        self.processed = 0
        self.errors = 0
        self.last_error = ""

    def count_received(self) -> None:
        with self._lock:
            self.received += 1

    def record_done(self, latency_s: float, **stages_s: float) -> None:
        """One item done in `latency_s`; `stages_s` say where the time went (reported as <stage>_ms means)."""
        with self._lock:
            self.processed += 1
            self._done.append((time.monotonic(), latency_s, stages_s))

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
            stages = {}
            for _, _, parts in self._done:
                for name, s in parts.items():
                    stages.setdefault(name, []).append(s)
            return {
                "rate_hz": len(lat) / self._window_s,
                "latency_mean_ms": 1e3 * sum(lat) / len(lat) if lat else 0.0,
                "latency_max_ms": 1e3 * max(lat) if lat else 0.0,
                **{f"{name}_ms": 1e3 * sum(v) / len(v) for name, v in stages.items()},
                "received": self.received, "processed": self.processed,
                "errors": self.errors, "last_error": self.last_error,
            }


class ErrorThrottle:
    """Which error messages reach the log: the first of each kind at once, then at most one per kind every
    `period_s`, saying how many like it were not logged in between.

    The kind is the message with its numbers and quoted values masked, so 'image too large: 8000x6000'
    and 'image too large: 9000x9000' are one kind and 'empty image' is another: one flood of bad frames
    cannot hide a different error.
    """

    _VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self._period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[str, list] = {}  # kind -> [time logged, suppressed since]

    def kind(self, message: str) -> str:
        return self._VARIABLE.sub("#", message)

    def __call__(self, message: str) -> str | None:
        """The text to log for `message` now, or None to leave it out of the log."""
        kind, now = self.kind(message), self._clock()
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is not None and now - entry[0] < self._period_s:
                entry[1] += 1
                return None
            suppressed = entry[1] if entry is not None else 0
            self._kinds[kind] = [now, 0]
        if suppressed:
            return f"{message} ({suppressed} more like this since the last one logged)"
        return message
