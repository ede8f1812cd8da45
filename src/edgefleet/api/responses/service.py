"""The server's own endpoints: health, readiness, the broker hooks, the file bin."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgefleet.api.responses import Answer


class Live(Answer):
    status: Literal["ok"]
    version: str


class WorkerState(Answer):
    state: str
    failing: bool
    failures: int
    restarts: int
    lastError: str | None
    lastFailureAt: str | None


class BrokerLink(Answer):
    connected: bool


class Ready(Answer):
    """200 when every check passes, 503 (the same shape) when one fails."""

    status: Literal["ready", "not ready"]
    checks: dict[str, bool] = Field(description="database, broker (gateway side), workers")
    workers: dict[str, WorkerState] | None = Field(default=None, description="by name")
    broker: BrokerLink | None = Field(
        default=None, description="/readyz/web: the broker link, reported, not required"
    )


class Authn(Answer):
    result: Literal["allow", "deny"]
    is_superuser: bool


class Authz(Answer):
    result: Literal["allow", "deny"]


class Psk(Answer):
    identity: str
    psk: str = Field(description="hex")


class StoredFile(Answer):
    """An upload of the file bin; ``url`` downloads it without credentials for an hour."""

    fieldname: str
    physicalPath: str
    url: str


BINARY = {"schema": {"type": "string", "format": "binary"}}
TEXT = {"schema": {"type": "string"}}


class RegisteredNode(Answer):
    """A broker node registered by itself (``edgefleet broker-node --advertise``)."""

    name: str
    address: str = Field(description="host:port of its server listener")
