"""edgefleet-agent: the gateway side of the ThingsPro remote-control protocol.

It connects to the server's broker as a ThingsPro gateway does and answers the server's
requests with handlers loaded from the ``edgefleet.agent.handlers`` entry points. Plug-in
authors need only :mod:`edgefleet.agent.plugin` (re-exported here); see docs/agent.md.
"""

from edgefleet.agent.plugin import (
    ENTRY_POINT_GROUP,
    AgentContext,
    HandlerError,
    Reply,
    Request,
    Route,
)

__all__ = ["ENTRY_POINT_GROUP", "AgentContext", "HandlerError", "Reply", "Request", "Route"]
