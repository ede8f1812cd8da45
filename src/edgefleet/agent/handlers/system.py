"""``/system/properties``, ``/system/status`` and ``/system/reboot``, read from the machine.

Properties come from Linux itself (/proc, /sys, /etc/os-release, the socket layer,
``uuid.getnode``); the configuration's ``properties`` override or add keys (a gateway's
modelName or serialNumber is often not readable from /sys).

The requests are answered by the shared handlers (``edgefleet.gateway.handlers``, as on the
simulator) with this machine as their host. A reboot answers first and runs ``rebootCommand``
after its delay; until then it may be cancelled (``DELETE /system/tasks/{task_id}``). Firmware
and import reboot the same way.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import platform
import shutil
import socket
import struct
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgefleet import __version__
from edgefleet.agent.plugin import AgentContext, Background, Route
from edgefleet.agent.util import run_command
from edgefleet.gateway import handlers
from edgefleet.gateway.routing import bind

log = logging.getLogger(__name__)

PROC = Path("/proc")
SIOCGIFADDR = 0x8915


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (_read(path) or _read("/usr/lib/os-release") or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            out[key.strip()] = value.strip().strip("\"'")
    return out


def default_route(proc: Path = PROC) -> str | None:
    """The interface of the IPv4 default route (/proc/net/route)."""
    for line in (_read(proc / "net/route") or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            return fields[0]
    return None


def interface_ipv4(iface: str) -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = struct.pack("256s", iface.encode()[:15])
            return socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFADDR, packed)[20:24])
    except OSError:
        return None


def mac_address(iface: str | None) -> str:
    if iface:
        mac = _read(f"/sys/class/net/{iface}/address")
        if mac and mac != "00:00:00:00:00:00":
            return mac
    node = uuid.getnode()
    return ":".join(f"{(node >> s) & 0xFF:02x}" for s in range(40, -1, -8))


def uptime(proc: Path = PROC) -> int:
    text = _read(proc / "uptime")
    return int(float(text.split()[0])) if text else int(time.monotonic())


def model_name() -> str:
    for p in ("/sys/firmware/devicetree/base/model", "/sys/class/dmi/id/product_name"):
        value = _read(p)
        if value:
            return value
    return f"Linux {platform.machine()}"


def serial_number() -> str:
    for p in ("/sys/firmware/devicetree/base/serial-number", "/sys/class/dmi/id/product_serial"):
        value = _read(p)
        if value:
            return value
    return ""


def properties(overrides: dict[str, Any]) -> dict[str, Any]:
    release = os_release()
    route = default_route()
    host = socket.gethostname()
    props: dict[str, Any] = {
        "modelName": model_name(),
        "serialNumber": serial_number(),
        "hostName": host,
        "aliasName": host,
        "softwareVersion": release.get("VERSION_ID") or platform.release(),
        "osName": release.get("PRETTY_NAME") or platform.system(),
        "kernelVersion": platform.release(),
        "architecture": platform.machine(),
        "agentVersion": __version__,
        "macAddress": mac_address(route),
        "defaultRoute": route or "",
        "ipAddress": (interface_ipv4(route) if route else None) or "",
        "uptime": uptime(),
    }
    props.update(overrides)
    return props


# --- status ----------------------------------------------------------------------------------


def cpu_times(proc: Path = PROC) -> tuple[int, int]:
    """(busy, total) jiffies from the ``cpu`` line of /proc/stat."""
    for line in (_read(proc / "stat") or "").splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return sum(values) - idle, sum(values)
    return 0, 0


def meminfo(proc: Path = PROC) -> dict[str, int]:
    out = {}
    for line in (_read(proc / "meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


def loadavg(proc: Path = PROC) -> list[float]:
    text = _read(proc / "loadavg")
    return [float(v) for v in text.split()[:3]] if text else []


def disk(mount: str) -> dict[str, Any]:
    usage = shutil.disk_usage(mount)
    return {
        "name": "system" if mount == "/" else mount,
        "mount": mount,
        "usage": {
            "total": usage.total,
            "used": usage.used,
            "free": usage.free,
            "percent": round(100 * usage.used / usage.total, 1) if usage.total else 0.0,
        },
    }


async def status(version: str, sample: float = 0.2) -> dict[str, Any]:
    busy0, total0 = cpu_times()
    await asyncio.sleep(sample)
    busy1, total1 = cpu_times()
    mem = meminfo()
    total = mem.get("MemTotal", 0)
    available = mem.get("MemAvailable", mem.get("MemFree", 0))
    return {
        "hostname": socket.gethostname(),
        "version": version,
        "uptimeSec": uptime(),
        "cpuUsage": round(100 * (busy1 - busy0) / (total1 - total0), 1) if total1 > total0 else 0.0,
        "memoryUsage": round(100 * (total - available) / total, 1) if total else 0.0,
        "memory": total,
        "disk": disk("/"),
        "disks": [disk("/")],
        "loadavg": loadavg(),
    }


# --- the machine as the shared handlers' host ------------------------------------------------


class Machine:
    """The machine the agent runs on, as the shared system and jobs handlers see it
    (:class:`edgefleet.gateway.host.SystemHost`); the firmware and configuration plug-ins
    extend it."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    @property
    def background(self) -> Background:
        return self.ctx.background

    def answered(self, task_id: str) -> bool:
        return self.ctx.answered(task_id)

    async def report(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        await self.ctx.emit(method, resource, data, code)

    def system_properties(self) -> dict[str, Any]:
        return properties(self.ctx.config.properties)

    async def system_status(self) -> dict[str, Any]:
        return await status(str(self.system_properties().get("softwareVersion", "")))

    def reboot_delay(self, asked: float | None) -> float:
        return self.ctx.config.rebootDelay if asked is None else asked

    def reboot_accepted(self, delay: float) -> dict[str, Any]:
        return {"delay": delay}

    async def reboot(self) -> None:
        """Announce ``REBOOTING`` and run ``rebootCommand`` (``REBOOT_FAIL`` if it fails)."""
        argv = self.ctx.config.rebootCommand
        log.warning("rebooting: %s", " ".join(argv))
        await self.ctx.emit("put", "/system/reboot", {"code": "REBOOTING"})
        result = await run_command(argv, self.ctx.config.commandTimeout)
        if not result.ok:
            log.error("reboot command %s", result.explain())
            await self.ctx.emit(
                "put",
                "/system/reboot",
                {"code": "REBOOT_FAIL", "reason": f"reboot command {result.explain()}"},
                500,
            )


class System:
    def __init__(self, ctx: AgentContext) -> None:
        self.machine = Machine(ctx)

    def routes(self) -> Iterable[Route]:
        return bind(self.machine, handlers.SYSTEM)


def plugin(ctx: AgentContext) -> Iterable[Route]:
    return System(ctx).routes()
