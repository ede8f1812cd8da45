"""Two task-engine instances on one database and one broker never dispatch an execution twice."""

from __future__ import annotations

import asyncio

from edgefleet.bootstrap import Container, build
from edgefleet.domain.tasks import TaskKind
from edgefleet.services.tasks import TaskSpec
from tests.gateways import count, eventually, register, start


async def test_two_instances_share_the_work_and_never_double_dispatch(live: Container) -> None:
    settings = live.settings.model_copy(deep=True)
    settings.mqtt.embedded = False  # the second instance uses the first one's broker
    settings.mqtt.client_id = "edgefleet-second"
    second = build(settings, db=live.db)
    await second.start_messaging()
    await second.messaging.link.wait_connected(10)
    try:
        for c in (live, second):
            c.tasks.engine.batch = 5  # small claims, so that both instances take turns
        creds = await register(live, 60, prefix="two")
        gws, tasks = start(live, creds)

        async def online() -> bool:
            return await count(live, "online") == 60

        await eventually(online, 40)
        view = await live.tasks.create(
            TaskSpec(
                kind=TaskKind.ROLLOUT,
                method="get",
                resource="/system/status",
                devices=[u for u, _ in creds],
            )
        )
        second.tasks.engine.wake()

        async def finished() -> bool:
            v = await second.tasks.get(view.task.uuid)
            return v.task.state == "SUCCESS"

        await eventually(finished, 40)
        assert [g.executed[("get", "/system/status")] for g in gws] == [1] * 60
        one, two = live.tasks.engine.dispatched, second.tasks.engine.dispatched
        assert one + two == 60 and one > 0 and two > 0, (one, two)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await second.stop_messaging()
