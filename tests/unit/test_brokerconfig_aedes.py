"""The aedes broker's environment file: the exact names deploy/aedes reads, and refusals."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from edgefleet.brokers.aedes import (
    ENV_NAMES,
    AedesNode,
    AedesOptionError,
    check,
    render_env,
)
from edgefleet.protocol.messages import MAX_PACKET_BYTES

ROOT = Path(__file__).resolve().parents[2]

NODE = AedesNode(
    server_url="http://fleet.internal:8080/",
    token="ef_abc-DEF_123",
    broker_id="broker-1",
    redis_url="redis://10.0.0.5:6379/2",
    gateway_host="0.0.0.0",
    gateway_port=8883,
    server_host="10.0.0.7",
    server_port=18830,
    psk_hint="edgefleet",
    health_port=9100,
    psk_refresh_seconds=5,
    heartbeat_seconds=1.5,
)


def _env(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def test_every_variable_once_in_order_with_its_value() -> None:
    text = render_env(NODE)
    names = [line.split("=", 1)[0] for line in text.splitlines() if not line.startswith("#")]
    assert tuple(names) == ENV_NAMES
    assert _env(text) == {
        "EDGEFLEET_URL": "http://fleet.internal:8080",
        "EDGEFLEET_BROKER_TOKEN": "ef_abc-DEF_123",
        "BROKER_ID": "broker-1",
        "REDIS_URL": "redis://10.0.0.5:6379/2",
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_PORT": "8883",
        "SERVER_HOST": "10.0.0.7",
        "SERVER_PORT": "18830",
        "PSK_HINT": "edgefleet",
        "HEALTH_PORT": "9100",
        "PSK_REFRESH_SECONDS": "5",
        "PSK_FULL_SECONDS": "600",
        "HEARTBEAT_SECONDS": "1.5",
        "MAX_PACKET_BYTES": str(MAX_PACKET_BYTES),
    }


def test_the_names_are_the_ones_the_broker_reads() -> None:
    broker = ROOT / "deploy/aedes/broker.mjs"
    read = set(re.findall(r"\b(?:setting|port)\('([A-Z_]+)'", broker.read_text()))
    assert read == set(ENV_NAMES)


@pytest.mark.parametrize(
    ("change", "option"),
    [
        ({"server_url": "fleet.internal:8080"}, "--server-url"),
        ({"server_url": "http://fleet/?x=1"}, "--server-url"),
        ({"redis_url": "http://10.0.0.5:6379"}, "--redis-url"),
        ({"redis_url": "redis://10.0.0.5:port/0"}, "--redis-url"),
        ({"redis_url": "redis://10.0.0.5:6379/zero"}, "--redis-url"),
        ({"gateway_port": 0}, "--gateway-port"),
        ({"server_port": 70000}, "--server-port"),
        ({"health_port": -1}, "--health-port"),
        ({"health_port": 8883}, "--health-port"),
        ({"server_host": "0.0.0.0", "server_port": 8883}, "--server-port"),
        ({"psk_refresh_seconds": 0}, "--psk-refresh-seconds"),
        ({"psk_full_seconds": -1}, "--psk-full-seconds"),
        ({"heartbeat_seconds": -2}, "--heartbeat-seconds"),
        ({"broker_id": "two words"}, "--broker-id"),
        ({"psk_hint": "$HOME"}, "--psk-hint"),
        ({"token": 'ef_"x'}, "--token-file"),
        ({"gateway_host": "0.0.0.0\nEVIL=1"}, "--gateway-host"),
    ],
)
def test_bad_values_name_the_option(change: dict[str, object], option: str) -> None:
    with pytest.raises(AedesOptionError) as err:
        check(replace(NODE, **change))  # type: ignore[arg-type]
    assert err.value.option == option


def test_defaults_pass_and_the_token_may_be_missing_while_options_are_checked() -> None:
    check(replace(NODE, token="", health_port=0, redis_url="redis://redis"))
