"""``edgefleet broker-config …``: configuration for an external broker, from the database."""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.bootstrap import Container
from edgefleet.cli.common import run
from edgefleet.mqtt.brokerconfig import mosquitto
from edgefleet.services.pki import broker_tls

app = typer.Typer(help="Generate broker configuration.", no_args_is_help=True)


@app.command("mosquitto")
def mosquitto_config(
    directory: Path = typer.Option(None, "--dir", help="Where to write (default: data dir)."),
    reload: bool = typer.Option(True, help="SIGHUP a broker already running from this config."),
) -> None:
    """Write mosquitto.conf, the PSK store, the ACL and the server's password file (and, with
    EDGEFLEET_MQTT__CERT_PORT set, the CA, a server certificate and the CRL)."""

    async def work(c: Container) -> mosquitto.MosquittoFiles:
        files = mosquitto.MosquittoFiles(directory or c.settings.broker_dir)
        mqtt = c.settings.mqtt
        tls = await broker_tls(c.pki, mqtt) if mqtt.cert_port else None
        mosquitto.write_all(
            files, mqtt, c.settings.mqtt_server_password(), await c.fleet.all_psks(), tls
        )
        return files

    files = run(work)
    typer.echo(f"wrote {files.conf}")
    if reload and mosquitto.reload(files):
        typer.echo("running broker reloaded")
    else:
        typer.echo(f"start it with: mosquitto -c {files.conf}")
