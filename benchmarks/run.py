"""``make bench``: every benchmark, one after another."""

from __future__ import annotations

import asyncio
import signal

from benchmarks import (
    bench_api_cpu,
    bench_broker,
    bench_devices,
    bench_events,
    bench_keys,
    bench_roundtrip,
    bench_tasks,
    bench_tier,
)


def main() -> None:
    # a SIGTERM unwinds like Ctrl-C, so servers and simulators are stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(bench_devices.main())
    asyncio.run(bench_api_cpu.main())
    asyncio.run(bench_keys.main())
    asyncio.run(bench_roundtrip.main())
    asyncio.run(bench_broker.main())
    asyncio.run(bench_tasks.main())
    asyncio.run(bench_events.main())
    asyncio.run(bench_tier.main())


if __name__ == "__main__":
    main()
