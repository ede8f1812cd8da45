"""The loop-lag gauge: read from another thread (a /metrics scrape) while the loop records."""

from __future__ import annotations

import sys
import threading

from edgefleet.looplag import LoopLag


def test_the_worst_lag_of_the_window() -> None:
    lag = LoopLag(window=60)
    assert lag.worst() == 0.0
    for value in (0.002, 0.3, 0.01):
        lag.record(value)
    assert lag.worst() == 0.3


def test_a_reader_in_another_thread_never_sees_the_window_change_under_it() -> None:
    # a scrape renders the gauge in a worker thread while the loop records: it iterated the
    # window while record() appended and failed with "deque mutated during iteration"
    lag = LoopLag(window=3600)
    for _ in range(500):
        lag.record(0.001)
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                lag.worst()
            except RuntimeError as exc:
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as a busy server does
    reader.start()
    try:
        for i in range(5_000):
            lag.record(i * 1e-9)
            if errors:
                break
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert errors == []
