"""Bulk registration (the simulator's and importers' path): all or none."""

from __future__ import annotations

import pytest

from edgefleet.bootstrap import Container
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.errors import DuplicateError, ValidationError
from edgefleet.services.fleet import Registration
from edgefleet.simulator.fleet import ensure_devices, simulated_mac


async def test_many_at_once_with_tags_and_keys(container: Container) -> None:
    regs = [Registration(f"gw{i}", f"0090e8{i:06x}", tags=("a", "b")) for i in range(50)]
    made = await container.fleet.register_many(regs)
    assert len(made) == 50
    view, psk = made[7]
    assert await container.fleet.device_psk(view.device.uuid) == psk
    page = await container.fleet.list_devices(DeviceFilter(tag="b"), offset=0, limit=100)
    assert page.total == 50


async def test_a_taken_or_repeated_mac_refuses_the_whole_batch(container: Container) -> None:
    await container.fleet.register_device(Registration("old", "0090e8000003"))
    with pytest.raises(DuplicateError):
        await container.fleet.register_many(
            [Registration("x", "0090e8000001"), Registration("y", "00:90:E8:00:00:03")]
        )
    with pytest.raises(ValidationError, match="twice"):
        await container.fleet.register_many(
            [Registration("x", "0090e8000001"), Registration("y", "0090E8000001")]
        )
    page = await container.fleet.list_devices(DeviceFilter(), offset=0, limit=10)
    assert [v.device.display_name for v in page.items] == ["old"]


async def test_a_simulated_fleet_is_registered_once(container: Container) -> None:
    first = await ensure_devices(container.fleet, "line", 30)
    again = await ensure_devices(container.fleet, "line", 40)
    assert again[:30] == first and len(set(again)) == 40
    assert (await container.fleet.list_devices(DeviceFilter(), offset=0, limit=1)).total == 40
    assert simulated_mac("line", 3) != simulated_mac("other", 3)
