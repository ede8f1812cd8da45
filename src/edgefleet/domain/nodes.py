"""Broker nodes: independent MQTT brokers that gateways reach through a TCP load balancer,
partitioned between server instances by lease (docs/scaling.md).

Rules only: what a node's name and address look like, and how many nodes one instance may
hold so that the live instances share them evenly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

NAME = re.compile(r"^[a-z0-9-]+$")


@dataclass(frozen=True)
class BrokerNode:
    """One broker node's server listener."""

    name: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}={self.address}"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → ``(host, port)``; ``ValueError`` saying what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: an IPv6 address is written [address]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: host:port expected")
    if not host:
        raise ValueError(f"{text!r}: the host is missing")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_node(text: str) -> BrokerNode:
    """``name=host:port`` (the name ``[a-z0-9-]+``) → ``BrokerNode``."""
    name, sep, address = text.strip().partition("=")
    if not sep:
        raise ValueError(f"{text!r}: name=host:port expected")
    if not NAME.match(name):
        raise ValueError(f"{text!r}: a node's name is lower-case letters, digits and '-'")
    host, port = parse_address(address)
    return BrokerNode(name, host, port)


def dns_node_name(address: str) -> str:
    """The name of a node found by DNS: its address, made a valid node name."""
    return re.sub(r"[^a-z0-9]+", "-", address.lower()).strip("-")


def fair_share(nodes: int, instances: int) -> int:
    """How many nodes one instance may hold: ``ceil(nodes / instances)`` (all with one)."""
    return math.ceil(nodes / max(1, instances))
