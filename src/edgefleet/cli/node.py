"""``edgefleet broker-node``: run on a Mosquitto node of the broker tier (no database needed)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from pathlib import Path

import typer

from edgefleet import logs
from edgefleet.brokers import node
from edgefleet.errors import EdgefleetError
from edgefleet.settings import LogFormat, MQTTSettings

_DEFAULTS = MQTTSettings()


NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def _secret(path: Path, option: str) -> str:
    value = path.read_text().strip()
    if not value:
        raise typer.BadParameter(f"{path} is empty", param_hint=option)
    return value


def broker_node(
    server_url: str = typer.Option(
        ..., "--server-url", help="The server's base URL (its load balancer), e.g. https://fleet."
    ),
    token_file: Path = typer.Option(
        ...,
        "--token-file",
        exists=True,
        dir_okay=False,
        readable=True,
        help="A file holding a broker-scope API token (`edgefleet tokens create --scope broker`).",
    ),
    server_password_file: Path = typer.Option(
        None,
        "--server-password-file",
        exists=True,
        dir_okay=False,
        readable=True,
        help="A file holding the server's MQTT password (EDGEFLEET_MQTT__SERVER_PASSWORD); "
        "written to the node's password file hashed by mosquitto_passwd.",
    ),
    server_passwd_file: Path = typer.Option(
        None,
        "--server-passwd-file",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Instead of --server-password-file: a Mosquitto password file with the server "
        "user's hash (`mosquitto_passwd -c FILE edgefleet-server`, made elsewhere): the node "
        "never holds the password.",
    ),
    directory: Path = typer.Option(
        Path("/var/lib/edgefleet-broker-node"),
        "--dir",
        help="Where the node's files go (mosquitto.conf, psk.txt, acl.txt, passwd, log).",
    ),
    gateway_host: str = typer.Option(_DEFAULTS.gateway_host, help="TLS-PSK listener address."),
    gateway_port: int = typer.Option(
        _DEFAULTS.gateway_port, min=1, max=65535, help="TLS-PSK listener port."
    ),
    server_host: str = typer.Option(
        "0.0.0.0",  # noqa: S104 - the server instances connect from other hosts
        help="The servers' listener address (username/password: keep it on a private network).",
    ),
    server_port: int = typer.Option(
        _DEFAULTS.server_port, min=1, max=65535, help="The servers' listener port."
    ),
    server_username: str = typer.Option(
        _DEFAULTS.server_username, help="The server's MQTT user (EDGEFLEET_MQTT__SERVER_USERNAME)."
    ),
    psk_hint: str = typer.Option(_DEFAULTS.psk_hint, help="The PSK identity hint."),
    sync_seconds: float = typer.Option(
        5, min=0.1, help="How often to ask the server for the keys changed since the last answer."
    ),
    full_seconds: float = typer.Option(
        600, min=1, help="How often to check the whole key file anyway (304 while unchanged)."
    ),
    run_broker: bool = typer.Option(
        False,
        "--run",
        help="Also start Mosquitto, restart it when it exits, stop it on SIGTERM. Without it, "
        "run `mosquitto -c <dir>/mosquitto.conf` yourself: the node signals it by its pid file.",
    ),
    name: str = typer.Option(
        None,
        help="The node's name in the tier (lower-case letters, digits, '-'; default: the host "
        "name). With --advertise.",
    ),
    advertise: str = typer.Option(
        None,
        help="HOST:PORT where the servers reach this node's server listener: the node then "
        "registers itself with the server at every sync and withdraws on SIGTERM "
        "(servers with EDGEFLEET_MQTT__NODE_REGISTRATION=true use the registered nodes).",
    ),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR."),
    log_format: LogFormat = typer.Option(LogFormat.CONSOLE, help="console or json."),
) -> None:
    """Run a Mosquitto node of the broker tier: write its configuration (the embedded broker's:
    TLS-PSK with identity = username = client id, each gateway confined to its own topics),
    then keep its PSK store equal to the server's (GET /api/v1/broker/psk-file every few
    seconds, only the changes; reload only when something changed). No secret is logged."""
    logs.configure(log_level.upper(), log_format)
    for logger in ("httpx", "httpcore"):  # a line per request every few seconds: the node says
        logging.getLogger(logger).setLevel(logging.WARNING)  # what changed instead
    mqtt = MQTTSettings(
        gateway_host=gateway_host,
        gateway_port=gateway_port,
        server_host=server_host,
        server_port=server_port,
        server_username=server_username,
        psk_hint=psk_hint,
        embedded=False,
    )
    if (server_password_file is None) == (server_passwd_file is None):
        raise typer.BadParameter(
            "give the server's MQTT credential once: --server-password-file FILE (the "
            "password) or --server-passwd-file FILE (its mosquitto_passwd hash)",
            param_hint="--server-password-file",
        )
    if server_username == node.KICKER:
        raise typer.BadParameter(
            f"{node.KICKER} is the node's own user; the server needs another",
            param_hint="--server-username",
        )
    password, password_hash = "", ""
    if server_password_file is not None:
        password = _secret(server_password_file, "--server-password-file")
    else:
        try:
            password_hash = node.server_hash(
                _secret(server_passwd_file, "--server-passwd-file"), server_username
            )
        except EdgefleetError as exc:
            raise typer.BadParameter(exc.message, param_hint="--server-passwd-file") from exc
    name = name or socket.gethostname().split(".")[0].lower()
    if advertise is not None:
        if not NODE_NAME.fullmatch(name):
            raise typer.BadParameter(
                f"{name!r}: a node's name is 1-63 lower-case letters, digits and '-'",
                param_hint="--name",
            )
        host, sep, port = advertise.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise typer.BadParameter(f"{advertise!r} is not HOST:PORT", param_hint="--advertise")
    config = node.NodeConfig(
        server_url=server_url.rstrip("/"),
        token=_secret(token_file, "--token-file"),
        directory=directory,
        mqtt=mqtt,
        server_password=password,
        server_password_hash=password_hash,
        sync_seconds=sync_seconds,
        full_seconds=full_seconds,
        name=name,
        advertise=advertise or "",
    )
    try:
        asyncio.run(node.BrokerNode(config, run_broker=run_broker).run())
    except EdgefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    finally:
        logs.shutdown()
