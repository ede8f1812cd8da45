"""``DELETE /system/tasks/{task_id}``: cancel the background work an earlier request started.

An edgefleet extension (a ThingsPro gateway answers it 404 like any unknown resource). The
work of a request is what its handler registered with ``after_reply``: a reboot waiting for
its delay, a firmware download. Answers (the shared handler, ``edgefleet.gateway.handlers``):

    200 {"cancelled": true, "task_id": …}   it was running and is stopped; nothing more is
                                            sent for it (no result event)
    409 {"message": "already finished"}     its work ended, or the task was answered and
                                            started none
    409 {"message": "… can no longer be cancelled"}   past its point of no return
    404 {"message": …}                      unknown task_id
"""

from __future__ import annotations

from collections.abc import Iterable

from edgefleet.agent.handlers.system import Machine
from edgefleet.agent.plugin import AgentContext, Route
from edgefleet.gateway import handlers
from edgefleet.gateway.handlers import FINISHED
from edgefleet.gateway.routing import bind

__all__ = ["FINISHED", "Jobs", "plugin"]


class Jobs:
    def __init__(self, ctx: AgentContext) -> None:
        self.machine = Machine(ctx)

    def routes(self) -> Iterable[Route]:
        return bind(self.machine, handlers.JOBS)


def plugin(ctx: AgentContext) -> Iterable[Route]:
    return Jobs(ctx).routes()
