"""``edgefleet-agent``: reserved for the gateway agent, which is not built yet."""

from __future__ import annotations

import sys


def main() -> None:
    sys.stderr.write(
        "edgefleet-agent: the gateway agent is not part of this release yet; "
        "gateways running ThingsPro Gateway connect with their own remote-control client.\n"
    )
    raise SystemExit(2)
