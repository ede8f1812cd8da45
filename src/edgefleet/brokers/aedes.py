"""The clustered aedes broker (``deploy/aedes``): its environment file, ``aedes.env``.

The broker (Node.js, aedes 1.x, nodes sharing Redis) is configured by environment variables
only; this writes them in the ``KEY=value`` form both systemd's ``EnvironmentFile=`` and
``docker run --env-file`` read (one variable a line, no quotes: docker would keep them), so a
value with white space, quotes, ``$``, ``\\`` or ``#`` is refused rather than written in a form
one of the two reads differently. The file holds the broker token: mode 600.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgefleet.brokers.files import write_private
from edgefleet.errors import EdgefleetError
from edgefleet.protocol.messages import MAX_PACKET_BYTES

ENV_NAMES = (
    "EDGEFLEET_URL",
    "EDGEFLEET_BROKER_TOKEN",
    "BROKER_ID",
    "REDIS_URL",
    "GATEWAY_HOST",
    "GATEWAY_PORT",
    "SERVER_HOST",
    "SERVER_PORT",
    "PSK_HINT",
    "HEALTH_PORT",
    "PSK_REFRESH_SECONDS",
    "PSK_FULL_SECONDS",
    "HEARTBEAT_SECONDS",
    "MAX_PACKET_BYTES",
)
"""The variables ``deploy/aedes/broker.mjs`` reads, in the order they are written."""

SAFE_VALUE = re.compile(r"^[^\s\"'`$\\#]+$")


class AedesOptionError(EdgefleetError):
    """A bad option value; ``option`` names the one to change."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class AedesNode:
    server_url: str
    token: str = field(repr=False)
    """Empty while the options are checked, before a token is read or made."""
    broker_id: str
    redis_url: str
    gateway_host: str
    gateway_port: int
    server_host: str
    server_port: int
    psk_hint: str
    health_port: int = 0
    psk_refresh_seconds: float = 5
    psk_full_seconds: float = 600
    """How often the node fetches the whole key list anyway (between, only the changes)."""
    heartbeat_seconds: float = 2


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def check(node: AedesNode) -> None:
    """Refuse values the broker would refuse, naming the option."""
    url = urlsplit(node.server_url)
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise AedesOptionError("--server-url", f"{node.server_url!r} is not an http(s) base URL")
    redis = urlsplit(node.redis_url)
    if redis.scheme not in ("redis", "rediss") or not redis.hostname:
        raise AedesOptionError("--redis-url", "expected redis://host:port/db")
    try:
        redis.port  # noqa: B018 - parses the port
    except ValueError as exc:
        raise AedesOptionError("--redis-url", "expected redis://host:port/db") from exc
    db = redis.path.lstrip("/")
    if db and not db.isdigit():
        raise AedesOptionError("--redis-url", f"the database must be a number, not {db!r}")
    for option, port, low in (
        ("--gateway-port", node.gateway_port, 1),
        ("--server-port", node.server_port, 1),
        ("--health-port", node.health_port, 0),
    ):
        if not low <= port <= 65535:
            raise AedesOptionError(option, f"{port} is not a port")
    if node.gateway_port == node.server_port and node.gateway_host == node.server_host:
        raise AedesOptionError("--server-port", "the gateway and server listeners collide")
    if node.health_port and node.health_port in (node.gateway_port, node.server_port):
        raise AedesOptionError("--health-port", "the health port collides with a listener")
    for option, seconds in (
        ("--psk-refresh-seconds", node.psk_refresh_seconds),
        ("--psk-full-seconds", node.psk_full_seconds),
        ("--heartbeat-seconds", node.heartbeat_seconds),
    ):
        if not seconds > 0:
            raise AedesOptionError(option, "must be a positive number of seconds")
    for option, value in (
        ("--server-url", node.server_url),
        ("--token-file", node.token or "-"),
        ("--broker-id", node.broker_id),
        ("--redis-url", node.redis_url),
        ("--gateway-host", node.gateway_host),
        ("--server-host", node.server_host),
        ("--psk-hint", node.psk_hint),
    ):
        if not SAFE_VALUE.match(value):
            raise AedesOptionError(
                option, "must be one word without quotes, $, \\ or # (an env file carries it)"
            )


def environment(node: AedesNode) -> dict[str, str]:
    """The environment one node of ``deploy/aedes/broker.mjs`` runs with."""
    return {
        "EDGEFLEET_URL": node.server_url.rstrip("/"),
        "EDGEFLEET_BROKER_TOKEN": node.token,
        "BROKER_ID": node.broker_id,
        "REDIS_URL": node.redis_url,
        "GATEWAY_HOST": node.gateway_host,
        "GATEWAY_PORT": str(node.gateway_port),
        "SERVER_HOST": node.server_host,
        "SERVER_PORT": str(node.server_port),
        "PSK_HINT": node.psk_hint,
        "HEALTH_PORT": str(node.health_port),
        "PSK_REFRESH_SECONDS": _number(node.psk_refresh_seconds),
        "PSK_FULL_SECONDS": _number(node.psk_full_seconds),
        "HEARTBEAT_SECONDS": _number(node.heartbeat_seconds),
        # the protocol's limit, not an option: a larger packet closes the connection
        "MAX_PACKET_BYTES": str(MAX_PACKET_BYTES),
    }


def render_env(node: AedesNode) -> str:
    body = "".join(f"{k}={v}\n" for k, v in environment(node).items())
    return (
        "# Generated by `edgefleet broker-config aedes` for deploy/aedes (one node); edits are\n"
        "# overwritten. Holds the broker token: keep it private.\n" + body
    )


def existing_token(path: Path) -> str:
    """The broker token in an ``aedes.env`` an earlier run wrote, or ""."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return ""
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name == "EDGEFLEET_BROKER_TOKEN":
            return value.strip()
    return ""


def write_env(path: Path, node: AedesNode) -> None:
    """Write ``aedes.env`` (mode 600) through a temporary name, so no reader sees half a file."""
    if not node.token:
        raise AedesOptionError("--token-file", "the broker token is empty")
    check(node)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    write_private(path, render_env(node))
