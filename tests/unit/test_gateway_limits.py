"""Per-gateway limits: the message rate and the warnings in the log (mqtt/limits.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edgefleet.mqtt.limits import GatewayLog, GatewayRate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_gateway_gets_its_burst_at_once_then_its_rate() -> None:
    clock = Clock()
    rate = GatewayRate(10, 50, clock)
    assert sum(rate.allow("a") for _ in range(200)) == 50
    clock.now += 1.0  # ten more tokens
    assert sum(rate.allow("a") for _ in range(200)) == 10
    clock.now += 0.05  # half a token: not yet
    assert not rate.allow("a")
    clock.now += 0.06
    assert rate.allow("a")
    clock.now += 3600  # refilled to the burst, never beyond
    assert sum(rate.allow("a") for _ in range(200)) == 50


def test_gateways_do_not_share_an_allowance() -> None:
    clock = Clock()
    rate = GatewayRate(1, 5, clock)
    assert sum(rate.allow("a") for _ in range(20)) == 5
    assert sum(rate.allow("b") for _ in range(20)) == 5


def test_rate_zero_means_no_limit() -> None:
    rate = GatewayRate(0, 1)
    assert all(rate.allow("a") for _ in range(10_000))
    assert len(rate) == 0


def test_gateways_whose_bucket_refilled_are_forgotten() -> None:
    clock = Clock()
    rate = GatewayRate(10, 100, clock)
    for i in range(1000):
        rate.allow(f"gw{i}")
    assert len(rate) == 1000
    clock.now += 61  # refilled (100 / 10 s), and a minute on: pruned
    rate.allow("fresh")
    assert len(rate) == 1


async def test_warnings_about_one_gateway_are_capped_then_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("edgefleet.test.limits")
    throttle = GatewayLog(log, first=3, window=0.2)
    with caplog.at_level(logging.WARNING, logger=log.name):
        for i in range(20):
            throttle.warning("noisy", "junk %d from noisy", i)
        throttle.warning("quiet", "junk from quiet")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not any("more warnings" in r.getMessage() for r in caplog.records):
            assert loop.time() < deadline, "no summary line"
            await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "junk 0 from noisy",
        "junk 1 from noisy",
        "junk 2 from noisy",
        "junk from quiet",
        "17 more warnings about gateway noisy in the last 0.2 s were not logged",
    ]
    # the window closed: the next warning is logged again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=log.name):
        throttle.warning("noisy", "junk again")
        throttle.close()
    assert [r.getMessage() for r in caplog.records] == ["junk again"]
