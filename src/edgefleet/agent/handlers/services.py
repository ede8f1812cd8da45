"""``GET /system/services[/{name}]`` and ``PUT /system/services/{name} {enable}``.

Only the services listed in ``services`` are shown and switched (others are 404). The state
comes from ``serviceStatusCommand`` (exit 0 = running; its output, e.g. ``active``, is the
``status``); ``enable`` runs ``serviceStartCommand`` or ``serviceStopCommand``. ``{name}`` in
an argument is replaced by the service name. Answer shape of the gateway API:
``{"id": 1, "name": "ssh", "enable": true, "status": "active"}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgefleet.agent.plugin import AgentContext, HandlerError, Reply, Request, Route
from edgefleet.agent.util import expand, parse, run_command

log = logging.getLogger(__name__)


class ServiceBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # id, name, status may be echoed back

    enable: bool


class Services:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def routes(self) -> Iterable[Route]:
        return [
            Route("get", "/system/services", self.list),
            Route("get", "/system/services/{name}", self.get),
            Route("put", "/system/services/{name}", self.put),
        ]

    def _id(self, name: str) -> int:
        try:
            return self.ctx.config.services.index(name) + 1
        except ValueError:
            raise HandlerError(404, "Resource not found") from None

    async def state(self, name: str) -> dict[str, Any]:
        ident = self._id(name)
        argv = expand(self.ctx.config.serviceStatusCommand, name=name)
        result = await run_command(argv, self.ctx.config.commandTimeout)
        if result.returncode == 127:
            raise HandlerError(500, f"status command {result.explain()}")
        running = result.ok
        text = result.stdout.decode(errors="replace").strip().splitlines()
        status = text[-1] if text else ("active" if running else "inactive")
        return {"id": ident, "name": name, "enable": running, "status": status}

    async def list(self, req: Request) -> Reply:
        return 200, list(await asyncio.gather(*(self.state(n) for n in self.ctx.config.services)))

    async def get(self, req: Request) -> Reply:
        return 200, await self.state(req.params["name"])

    async def put(self, req: Request) -> Reply:
        name = req.params["name"]
        self._id(name)
        body = parse(ServiceBody, req.data)
        config = self.ctx.config
        command = config.serviceStartCommand if body.enable else config.serviceStopCommand
        result = await run_command(expand(command, name=name), config.commandTimeout)
        if not result.ok:
            verb = "start" if body.enable else "stop"
            log.error("%s %s: command %s", verb, name, result.explain())
            raise HandlerError(500, f"{verb} {name}: command {result.explain()}")
        log.info("service %s %s", name, "started" if body.enable else "stopped")
        return 200, await self.state(name)


def plugin(ctx: AgentContext) -> Iterable[Route]:
    return Services(ctx).routes()
