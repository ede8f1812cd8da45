"""Liveness, readiness and Prometheus metrics (no authentication: keep them off the internet
or behind the proxy's access rules)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from edgefleet import __version__
from edgefleet.api.deps import ContainerDep
from edgefleet.api.responses import reply
from edgefleet.api.responses.service import Live, Ready
from edgefleet.bootstrap import Container

router = APIRouter(tags=["health"])


@router.get("/healthz", name="health.live", response_model=Live)
async def healthz() -> Response:
    return reply({"status": "ok", "version": __version__})


async def _readiness(c: Container, *, broker_required: bool) -> Response:
    checks = {"database": await c.db.ping()}
    broker = c.messaging.connected() if c.messaging.running else None
    if broker is not None and broker_required:
        checks["broker"] = broker
    workers = c.workers.report() if len(c.workers) else None
    if workers is not None:
        checks["workers"] = c.workers.ready
    ok = all(checks.values())
    body: dict[str, Any] = {"status": "ready" if ok else "not ready", "checks": checks}
    if broker is not None and not broker_required:
        body["broker"] = {"connected": broker}
    if workers is not None:
        body["workers"] = workers
    return reply(body, 200 if ok else 503)


READY: dict[int | str, dict[str, Any]] = {
    503: {"model": Ready, "description": "not ready (the same shape)"}
}


@router.get("/readyz", name="health.ready", response_model=Ready, responses=READY)
async def readyz(c: ContainerDep) -> Response:
    """Ready when the database answers, if this process runs the gateway side its broker
    connection is up (requests to gateways would fail without it), and no background
    worker is failing (failed 3 times in a row, no run lasting 60 s between: see
    edgefleet/workers.py). ``workers`` reports each one: state, failures, last error."""
    return await _readiness(c, broker_required=True)


@router.get("/readyz/web", name="health.ready_web", response_model=Ready, responses=READY)
async def readyz_web(c: ContainerDep) -> Response:
    """Ready to serve the console and the API: ``/readyz`` less the broker, which is reported
    (``broker.connected``) but does not fail it. For load balancers and Kubernetes, so that a
    broker outage does not take the console and the API away with it (nor make an auto-scaling
    group replace every server): requests to gateways answer their own error meanwhile."""
    return await _readiness(c, broker_required=False)
