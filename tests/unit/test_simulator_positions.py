"""Simulated gateways report plausible GPS positions: in an industrial region, the same for a
gateway on every run, spread so that nearby gateways are not one dot."""

from __future__ import annotations

import math
import uuid as uuidlib

from edgefleet.simulator.fleet import REGIONS, SPREAD, position_for, properties_for


def test_a_gateway_is_placed_near_a_region_and_always_the_same_place() -> None:
    uuids = [str(uuidlib.UUID(int=i * 7919 + 1, version=4)) for i in range(400)]
    places = [position_for(u) for u in uuids]
    assert places == [position_for(u) for u in uuids]
    for p in places:
        assert -90 <= p["lat"] <= 90 and -180 <= p["lng"] <= 180
        near = min(
            math.hypot(p["lat"] - lat, (p["lng"] - lng) * math.cos(math.radians(lat)))
            for lat, lng in REGIONS
        )
        assert near <= SPREAD + 1e-6
    assert len({(p["lat"], p["lng"]) for p in places}) == len(places)
    used = {
        min(REGIONS, key=lambda r: (p["lat"] - r[0]) ** 2 + (p["lng"] - r[1]) ** 2) for p in places
    }
    assert len(used) == len(REGIONS)  # 400 gateways reach every region


def test_the_simulators_properties_carry_the_position() -> None:
    uuid = str(uuidlib.uuid4())
    assert properties_for("sim", 3, uuid)["gps"] == position_for(uuid)
