"""The agent's router (edgefleet.gateway.routing) over the plug-ins loaded from entry points."""

from __future__ import annotations

import importlib.metadata
import logging
import random
from collections.abc import Iterable, Sequence

from edgefleet.agent.plugin import ENTRY_POINT_GROUP, AgentContext, Request, Route
from edgefleet.gateway.routing import NOT_FOUND, Outcome, Reply, Router
from edgefleet.protocol.messages import RequestMessage

__all__ = ["NOT_FOUND", "SIGN", "Dispatcher", "Outcome", "load_plugins"]

log = logging.getLogger(__name__)

SIGN = ("edgefleet-agent",)


def load_plugins(
    ctx: AgentContext, group: str = ENTRY_POINT_GROUP, disabled: Iterable[str] = ()
) -> list[Route]:
    """Every route of every plug-in in ``group``; a plug-in that fails is logged and skipped."""
    skip = set(disabled)
    routes: list[Route] = []
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        if ep.name in skip:
            log.info("handler plug-in %s disabled by configuration", ep.name)
            continue
        try:
            plugin = ep.load()
            loaded = list(plugin(ctx))
            bad = [r for r in loaded if not isinstance(r, Route)]
            if bad:
                raise TypeError(f"returned {type(bad[0]).__name__}, not Route")
        except Exception:
            log.exception("handler plug-in %s (%s) could not be loaded", ep.name, ep.value)
            continue
        log.debug("handler plug-in %s: %d routes", ep.name, len(loaded))
        routes.extend(loaded)
    return routes


async def _call(route: Route, request: Request) -> Reply:
    return await route.handler(request)


class Dispatcher(Router[Route]):
    """Finds the route for a request, runs it, and shapes the Sanji response."""

    def __init__(
        self,
        routes: Iterable[Route],
        sign: Sequence[str] = SIGN,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(routes)
        self.sign = list(sign)
        self._rng = rng or random.Random()  # noqa: S311 - message ids, not secrets

    async def dispatch(self, message: RequestMessage) -> Outcome:
        return await self.answer(message, _call, self.sign, self._rng)
