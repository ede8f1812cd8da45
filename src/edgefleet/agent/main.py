"""``edgefleet-agent``: configure and run the gateway agent.

    edgefleet-agent configure --host H --port 8883 --uuid U --psk K [--config PATH]
    edgefleet-agent run [--config PATH]
    edgefleet-agent show [--config PATH]

The config path defaults to ``$EDGEFLEET_AGENT_CONFIG`` or /etc/edgefleet-agent/config.json.
Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from edgefleet import __version__
from edgefleet.agent import config as cfg
from edgefleet.agent.core import Agent
from edgefleet.errors import EdgefleetError
from edgefleet.protocol.psk import require_psk

app = typer.Typer(
    help="edgefleet-agent: the gateway side of edgefleet (ThingsPro remote control).",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    help="Config file (.json or .toml); default $EDGEFLEET_AGENT_CONFIG or "
    f"{cfg.DEFAULT_CONFIG_PATH}.",
)


def fail(message: str) -> NoReturn:
    typer.echo(f"edgefleet-agent: error: {message}", err=True)
    raise typer.Exit(2)


def _path(config: Path | None) -> Path:
    return config if config is not None else cfg.default_config_path()


def _command(value: str | None, what: str) -> list[str] | None:
    if value is None:
        return None
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        fail(f"{what}: {exc}")
    if not argv:
        fail(f"{what} must not be empty")
    return argv


@app.command()
def configure(
    host: str = typer.Option(..., "--host", help="The edgefleet broker's host (remoteHost)."),
    port: int = typer.Option(8883, "--port", help="Its TLS port (remotePort)."),
    uuid: str = typer.Option(..., "--uuid", help="The device uuid from registration."),
    psk: str | None = typer.Option(
        None, "--psk", envvar="EDGEFLEET_AGENT_PSK", help="The hex PSK from registration."
    ),
    config: Path | None = ConfigOption,
    tls: str = typer.Option("psk", "--tls", help="psk (default) or cert."),
    cert: Path | None = typer.Option(None, "--cert", help="Client certificate (--tls cert)."),
    key: Path | None = typer.Option(None, "--key", help="Client key (--tls cert)."),
    ca: Path | None = typer.Option(None, "--ca", help="CA of the broker (--tls cert)."),
    keepalive: int | None = typer.Option(None, "--keepalive", help="MQTT keepalive, seconds."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Agent state directory."),
    reboot_command: str | None = typer.Option(None, "--reboot-command"),
    firmware_install_command: str | None = typer.Option(None, "--firmware-install-command"),
    disable: bool = typer.Option(False, "--disable", help="Write enable = false."),
) -> None:
    """Write the remote-control settings (mode 0600); other settings of an existing file stay."""
    path = _path(config)
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            doc = cfg.read_document(path)
        except cfg.ConfigError as exc:
            fail(f"{exc.message} (remove it or fix it first)")
    doc.update(enable=not disable, remoteHost=host, remotePort=port, deviceUUID=uuid, tls=tls)
    updates: dict[str, Any] = {
        "psk": psk,
        "certFile": cert,
        "keyFile": key,
        "caFile": ca,
        "keepalive": keepalive,
        "dataDir": data_dir,
        "rebootCommand": _command(reboot_command, "--reboot-command"),
        "firmwareInstallCommand": _command(firmware_install_command, "--firmware-install-command"),
    }
    doc.update(
        {k: str(v) if isinstance(v, Path) else v for k, v in updates.items() if v is not None}
    )
    try:
        agent_config = cfg.validate(doc)
        cfg.save(agent_config, path)
    except cfg.ConfigError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    typer.echo(f"wrote {path}")


def load_or_exit(path: Path) -> cfg.AgentConfig:
    try:
        config = cfg.load(path)
    except cfg.ConfigError as exc:
        fail(exc.message)
    if not cfg.is_private(path):
        logging.getLogger(__name__).warning(
            "%s can be read by other users; it holds the PSK: chmod 600 it", path
        )
    return config


@app.command()
def show(config: Path | None = ConfigOption) -> None:
    """Print the configuration as JSON, the PSK masked."""
    typer.echo(json.dumps(load_or_exit(_path(config)).masked(), indent=2))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


async def serve(agent: Agent) -> None:
    """Run ``agent`` until SIGTERM or SIGINT, which stop it cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@app.command()
def run(config: Path | None = ConfigOption) -> None:
    """Connect to the server and answer its requests until SIGTERM."""
    path = _path(config)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    agent_config = load_or_exit(path)
    try:
        require_psk()
    except EdgefleetError as exc:
        fail(exc.message)
    logging.getLogger().setLevel(agent_config.logLevel)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # URLs may carry tokens
    try:
        asyncio.run(serve(Agent(agent_config)))
    except OSError as exc:
        fail(f"{agent_config.dataDir}: {exc.strerror or exc}")
    logging.getLogger(__name__).info("stopped")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
