"""``DELETE /system/tasks/{task_id}``: cancel the background work an earlier request started.

An edgefleet extension (a ThingsPro gateway answers it 404 like any unknown resource). The
work of a request is what its handler registered with ``after_reply``: a reboot waiting for
its delay, a firmware download. Answers:

    200 {"cancelled": true, "task_id": …}   it was running and is stopped; nothing more is
                                            sent for it (no result event)
    409 {"message": "already finished"}     its work ended, or the task was answered and
                                            started none
    409 {"message": "… can no longer be cancelled"}   past its point of no return
    404 {"message": …}                      unknown task_id
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from edgefleet.agent.plugin import AgentContext, HandlerError, JobState, Reply, Request, Route

log = logging.getLogger(__name__)

FINISHED = "already finished"


class Jobs:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def routes(self) -> Iterable[Route]:
        return [Route("delete", "/system/tasks/{task_id}", self.cancel)]

    async def cancel(self, req: Request) -> Reply:
        task_id = req.params["task_id"]
        state = await self.ctx.background.cancel(task_id)
        if state is JobState.RUNNING:
            log.warning("task %s cancelled (by task %s)", task_id, req.task_id)
            return 200, {"cancelled": True, "task_id": task_id}
        if state is JobState.COMMITTED:
            raise HandlerError(409, self.ctx.background.reason(task_id))
        if state is JobState.ENDED or self.ctx.answered(task_id):
            raise HandlerError(409, FINISHED)
        raise HandlerError(404, f"no task {task_id} is known here")


def plugin(ctx: AgentContext) -> Iterable[Route]:
    return Jobs(ctx).routes()
