"""How late the event loop runs what is due: ``edgefleet_loop_lag_seconds``.

One small background loop sleeps ``interval`` (50 ms) again and again and measures how much
later than asked it wakes. Anything that holds the loop (a long computation, a blocking call)
shows up as lag, whatever it was. Exported as

- ``edgefleet_loop_lag_seconds`` (gauge): the worst lag of the last ``window`` (10 s), read at
  scrape time, so a scrape every few seconds sees every stall;
- ``edgefleet_loop_wakeup_delay_seconds`` (histogram): every measurement, for rates and
  quantiles over any period.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

from prometheus_client import Gauge, Histogram

LAG = Gauge(
    "edgefleet_loop_lag_seconds",
    "Worst event-loop lag (how late a due timer ran) over the last 10 s",
)
DELAY = Histogram(
    "edgefleet_loop_wakeup_delay_seconds",
    "How late the event loop ran a timer, every 50 ms",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class LoopLag:
    def __init__(self, interval: float = 0.05, window: float = 10.0) -> None:
        self.interval = interval
        self.window = window
        self._recent: deque[tuple[float, float]] = deque()
        # the gauge is read by whichever thread renders /metrics (a scrape in a worker thread,
        # a test's reader): it must not iterate while the loop appends
        self._lock = threading.Lock()
        LAG.set_function(self.worst)

    def worst(self) -> float:
        """The worst lag measured in the last ``window`` seconds (0 when none)."""
        cutoff = time.monotonic() - self.window
        with self._lock:
            return max((lag for at, lag in self._recent if at >= cutoff), default=0.0)

    def record(self, lag: float) -> None:
        now = time.monotonic()
        recent = self._recent
        with self._lock:
            recent.append((now, lag))
            while recent and recent[0][0] < now - self.window:
                recent.popleft()
        DELAY.observe(lag)

    async def run(self) -> None:
        """Measure until cancelled (a background loop of the server)."""
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.interval)
            self.record(max(0.0, time.monotonic() - asked - self.interval))
