"""The requests answered the same way by the agent and the simulator, as host routes.

system    GET /system/properties[/{key}], GET /system/status, POST /system/reboot
firmware  POST /system/firmware (accept, then download, verify, install, report, reboot)
import    PUT /system/import (download, apply, reboot as the host says)
jobs      DELETE /system/tasks/{task_id} (cancel a request's background work)

Each group is a tuple of :class:`HostRoute` over the narrow port it needs (``host.py``);
``ROUTES`` is every group, for a host implementing them all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from edgefleet.gateway.bodies import (
    FirmwareBody,
    ImportBody,
    RebootBody,
    TransferError,
    parse,
)
from edgefleet.gateway.host import (
    Fetched,
    FirmwareHost,
    GatewayHost,
    ImportHost,
    JobsHost,
    SystemHost,
)
from edgefleet.gateway.jobs import JobState
from edgefleet.gateway.routing import HandlerError, HostRoute, Reply, Request

log = logging.getLogger(__name__)

REBOOT = "/system/reboot"
FIRMWARE = "/system/firmware"
SUCCESS = "FW_UPGRADE_SUCCESS"
FAIL = "FW_UPGRADE_FAIL"
REBOOTING = "rebooting: can no longer be cancelled"
FINISHED = "already finished"


# --- system ----------------------------------------------------------------------------------


async def get_properties(host: SystemHost, req: Request) -> Reply:
    return 200, host.system_properties()


async def get_property(host: SystemHost, req: Request) -> Reply:
    props = host.system_properties()
    key = req.params["key"]
    if key not in props:
        raise HandlerError(404, "Resource not found")
    return 200, props[key]


async def get_status(host: SystemHost, req: Request) -> Reply:
    doc = await host.system_status()
    if req.query.get("fields"):
        wanted = {f.strip() for f in req.query["fields"].split(",")}
        doc = {k: v for k, v in doc.items() if k in wanted}
    return 200, doc


async def reboot_later(host: SystemHost, task_id: str, delay: float) -> None:
    """Reboot after ``delay`` s, cancellable until then. Shared by reboot, firmware, import."""
    await asyncio.sleep(delay)
    host.background.commit(task_id, REBOOTING)
    await host.reboot()


async def reboot(host: SystemHost, req: Request) -> Reply:
    body = parse(RebootBody, req.data)
    if not host.background.claim(REBOOT, req.task_id):
        raise HandlerError(409, "a reboot is already pending")
    delay = host.reboot_delay(body.delay)
    req.after_reply(functools.partial(reboot_later, host, req.task_id, delay))
    return 200, host.reboot_accepted(delay)


SYSTEM: tuple[HostRoute[SystemHost], ...] = (
    HostRoute("get", "/system/properties", get_properties),
    HostRoute("get", "/system/properties/{key}", get_property),
    HostRoute("get", "/system/status", get_status),
    HostRoute("post", REBOOT, reboot),
)


# --- firmware --------------------------------------------------------------------------------


async def upgrade(host: FirmwareHost, req: Request) -> Reply:
    """Accept at once; the upgrade runs after the answer (:func:`upgrade_job`)."""
    body = parse(FirmwareBody, req.data)
    if not host.background.claim(FIRMWARE, req.task_id):
        raise HandlerError(409, "a firmware upgrade is already running")
    req.after_reply(functools.partial(upgrade_job, host, body, req.task_id))
    return 200, {"status": "accepted", "delay": body.delay, "url": body.file.url}


async def upgrade_job(host: FirmwareHost, body: FirmwareBody, task_id: str) -> None:
    final = await run_upgrade(host, body, task_id)
    delay = host.firmware_reboot_delay()
    if final["code"] == SUCCESS and delay is not None:
        await reboot_later(host, task_id, delay)


async def run_upgrade(host: FirmwareHost, body: FirmwareBody, task_id: str = "") -> dict[str, Any]:
    """The upgrade up to its result; returns (and reports) the final event's data."""
    await asyncio.sleep(body.delay)
    try:
        got = await _download(host, body)
        extra = await host.install_firmware(got, task_id)
    except TransferError as exc:
        return await _fail(host, task_id, exc.message)
    except Exception as exc:  # the event must be sent whatever happened
        log.exception("firmware upgrade failed")
        return await _fail(host, task_id, f"{type(exc).__name__}: {exc}")
    data = {
        "code": SUCCESS,
        "version": body.version or "",
        **extra,
        "size": got.size,
        "sha256": got.sha256,
    }
    host.background.commit(task_id, FINISHED)
    host.firmware_ended(data)
    await host.report("put", FIRMWARE, data)
    return data


async def _fail(host: FirmwareHost, task_id: str, reason: str) -> dict[str, Any]:
    data = {"code": FAIL, "reason": reason}
    host.background.commit(task_id, FINISHED)
    host.firmware_ended(data)
    await host.report("put", FIRMWARE, data, 500)
    return data


async def _download(host: FirmwareHost, body: FirmwareBody) -> Fetched:
    every = host.progress_every
    band = host.progress_start

    async def progress(done: int, total: int | None) -> None:
        nonlocal band
        if total:
            pct = min(100, done * 100 // total)
            if pct // every > band:
                band = pct // every
                await _progress(host, pct, done, total)

    await _progress(host, 0, 0, body.file.size)
    got = await host.fetch_firmware(body.file, progress)
    if band < 100 // every:
        await _progress(host, 100 if got.size else None, got.size, got.size or None)
    return got


async def _progress(host: FirmwareHost, pct: int | None, done: int, total: int | None) -> None:
    await host.report("put", FIRMWARE, {"progress": pct, "downloaded": done, "total": total})


FIRMWARE_ROUTES: tuple[HostRoute[FirmwareHost], ...] = (HostRoute("post", FIRMWARE, upgrade),)


# --- import ----------------------------------------------------------------------------------


async def import_config(host: ImportHost, req: Request) -> Reply:
    body = parse(ImportBody, req.data)
    if body.scopes is None:
        raise HandlerError(400, "scopes is required")
    if not body.scopes:
        return 200, {"message": "no selected scopes."}
    out, delay = await host.import_config(body.file, body.scopes)
    if delay is not None:
        req.after_reply(functools.partial(reboot_later, host, req.task_id, delay))
    return 200, out


IMPORT: tuple[HostRoute[ImportHost], ...] = (HostRoute("put", "/system/import", import_config),)


# --- jobs ------------------------------------------------------------------------------------


async def cancel(host: JobsHost, req: Request) -> Reply:
    """``DELETE /system/tasks/{task_id}`` (docs/protocol.md, "Long-running requests")."""
    task_id = req.params["task_id"]
    state = await host.background.cancel(task_id)
    if state is JobState.RUNNING:
        log.warning("task %s cancelled (by task %s)", task_id, req.task_id)
        return 200, {"cancelled": True, "task_id": task_id}
    if state is JobState.COMMITTED:
        raise HandlerError(409, host.background.reason(task_id))
    if state is JobState.ENDED or host.answered(task_id):
        raise HandlerError(409, FINISHED)
    raise HandlerError(404, f"no task {task_id} is known here")


JOBS: tuple[HostRoute[JobsHost], ...] = (HostRoute("delete", "/system/tasks/{task_id}", cancel),)

ROUTES: tuple[HostRoute[GatewayHost], ...] = (*SYSTEM, *FIRMWARE_ROUTES, *IMPORT, *JOBS)
