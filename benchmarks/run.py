"""``make bench``: every benchmark, one after another."""

from __future__ import annotations

import asyncio

from benchmarks import bench_devices


def main() -> None:
    asyncio.run(bench_devices.main())


if __name__ == "__main__":
    main()
