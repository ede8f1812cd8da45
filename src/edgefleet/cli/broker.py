"""``edgefleet broker-config …``: configuration for an external broker, from the database."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import typer

from edgefleet.bootstrap import Container
from edgefleet.brokers import emqx, mosquitto
from edgefleet.cli.common import load_settings, run
from edgefleet.cli.tokens import create_token
from edgefleet.domain.auth import Scope
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


# --- clustered brokers ---------------------------------------------------------------------

TokenFileOption = typer.Option(
    None,
    "--token-file",
    exists=True,
    dir_okay=False,
    readable=True,
    help="A file holding a broker-scope API token for the broker's calls to the server.",
)
TokenUserOption = typer.Option(
    None,
    "--user",
    help="Instead of --token-file: create a broker-scope token owned by this user (email), "
    "once: later runs keep the token already written there (delete it to make another).",
)
ServerUrlOption = typer.Option(
    None, "--server-url", help="The server's base URL the broker calls (default: its public URL)."
)


def _token_source(token_file: Path | None, user: str | None) -> None:
    if token_file and user:
        raise typer.BadParameter("give --token-file or --user, not both", param_hint="--user")
    if not token_file and not user:
        raise typer.BadParameter(
            "the broker needs a broker-scope token: --token-file FILE, or --user EMAIL to "
            "create one",
            param_hint="--token-file",
        )


def _read_token(token_file: Path | None) -> str:
    if token_file is None:
        return ""
    token = token_file.read_text().strip()
    if not token:
        raise typer.BadParameter(f"{token_file} is empty", param_hint="--token-file")
    return token


async def _broker_token(c: Container, token: str, user: str | None, what: str) -> str:
    """The token read from its file, or a new broker-scope token owned by ``user`` (audited)."""
    if token:
        return token
    assert user is not None
    _, secret = await create_token(c, user, f"edgefleet broker-config {what}", Scope.BROKER, None)
    return secret


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@app.command("emqx")
def emqx_config(
    x509: bool = typer.Option(
        False,
        "--x509",
        help="Required: the gateways hold certificates from the server's CA (EMQX cannot bind "
        "a TLS-PSK identity to the client id, so it is never configured for PSK).",
    ),
    discovery: emqx.Discovery = typer.Option(
        ...,
        help="How nodes find each other: static (--seeds), dns (--dns-name), etcd "
        "(--etcd-server) or k8s (--k8s-service-name).",
    ),
    node_name: str = typer.Option(
        ...,
        envvar="EMQX_NODE__NAME",
        help="This node's name, name@host (the part before @ alike on all nodes).",
    ),
    cookie_file: Path = typer.Option(
        None,
        "--cookie-file",
        exists=True,
        dir_okay=False,
        readable=True,
        help="The Erlang cookie shared by every node (default: $EMQX_NODE__COOKIE).",
    ),
    seeds: str = typer.Option(None, help="static: the nodes to join, name@host,name@host."),
    dns_name: str = typer.Option(None, help="dns: a name whose records list the nodes."),
    dns_record_type: emqx.DnsRecordType = typer.Option(
        emqx.DnsRecordType.A, help="dns: a (node name = name@IPv4) or srv."
    ),
    etcd_server: str = typer.Option(None, help="etcd: its URLs, comma-separated."),
    etcd_prefix: str = typer.Option("edgefleet", help="etcd: the key prefix."),
    k8s_apiserver: str = typer.Option(
        "https://kubernetes.default.svc:443", help="k8s: the API server (from inside the pod)."
    ),
    k8s_service_name: str = typer.Option(
        None, help="k8s: the EMQX service whose endpoints are the nodes."
    ),
    k8s_namespace: str = typer.Option("default", help="k8s: the service's namespace."),
    k8s_address_type: emqx.K8sAddressType = typer.Option(
        emqx.K8sAddressType.IP, help="k8s: how node names are made: ip, dns or hostname."
    ),
    k8s_suffix: str = typer.Option(
        "",
        help="k8s: domain suffix for dns/hostname (default pod.cluster.local/svc.cluster.local).",
    ),
    cluster_name: str = typer.Option("edgefleet", help="The cluster's name."),
    directory: Path = typer.Option(
        None, "--dir", help="Where to write (default: <data dir>/emqx)."
    ),
    server_url: str = ServerUrlOption,
    token_file: Path = TokenFileOption,
    user: str = TokenUserOption,
    gateway_host: str = typer.Option(
        None, help="The gateways' certificate listener address (default: settings)."
    ),
    gateway_port: int = typer.Option(
        None,
        min=1,
        max=65535,
        help="The gateways' certificate listener port (default: EDGEFLEET_MQTT__CERT_PORT, "
        "else 8883).",
    ),
    server_host: str = typer.Option(
        None, help="The server's listener address (default: settings)."
    ),
    server_port: int = typer.Option(
        None, min=1, max=65535, help="The server's listener port (default: settings)."
    ),
    emqx_data_dir: str = typer.Option(
        "/var/lib/emqx", help="EMQX's node.data_dir (the package's)."
    ),
    dashboard_bind: str = typer.Option("127.0.0.1:18083", help="EMQX's REST API and dashboard."),
) -> None:
    """Write emqx.conf for EMQX 5.8.x (the last Apache-2.0 line; 5.9+ is under the Business
    Source License) for a fleet of X.509 gateways (--x509; never TLS-PSK), with the CA, a
    server certificate and its key. Nothing secret is printed."""
    if not x509:
        raise typer.BadParameter(emqx.PSK_REFUSAL, param_hint="--x509")
    _token_source(token_file, user)
    cookie = (
        cookie_file.read_text().strip()
        if cookie_file
        else os.environ.get("EMQX_NODE__COOKIE", "").strip()
    )
    if not cookie:
        raise typer.BadParameter(
            "every node needs the same cookie: --cookie-file FILE or EMQX_NODE__COOKIE",
            param_hint="--cookie-file",
        )
    settings = load_settings()
    base = (server_url or settings.public_url).rstrip("/")
    mqtt = settings.mqtt.model_copy(
        update={
            k: v
            for k, v in (
                ("gateway_host", gateway_host),
                ("gateway_port", gateway_port or settings.mqtt.cert_port or None),
                ("server_host", server_host),
                ("server_port", server_port),
            )
            if v is not None
        }
    )
    cluster = emqx.Cluster(
        discovery=discovery,
        name=cluster_name,
        seeds=_split(seeds),
        dns_name=dns_name or "",
        dns_record_type=dns_record_type,
        etcd_servers=_split(etcd_server),
        etcd_prefix=etcd_prefix,
        k8s_apiserver=k8s_apiserver,
        k8s_service_name=k8s_service_name or "",
        k8s_namespace=k8s_namespace,
        k8s_address_type=k8s_address_type,
        k8s_suffix=k8s_suffix,
    )
    files = emqx.EmqxFiles(directory or settings.data_dir / "emqx")
    probe = emqx.EmqxNode(node_name, cookie, base + "/api/v1/broker", data_dir=emqx_data_dir)
    file_token = _read_token(token_file) or emqx.existing_token(files)
    try:
        emqx.check(replace(probe, token=file_token), cluster)  # before anything is written
    except emqx.EmqxOptionError as exc:
        raise typer.BadParameter(exc.message, param_hint=exc.option) from exc

    async def work(c: Container) -> None:
        token = await _broker_token(c, file_token, user, "emqx")
        node = replace(
            probe,
            token=token,
            dashboard_bind=dashboard_bind,
            dashboard_password=emqx.dashboard_password(files),
        )
        emqx.write_all(files, node, cluster, mqtt, await broker_tls(c.pki, mqtt))

    run(work)
    if user and file_token:
        typer.echo(f"kept the broker token already in {files.token}")
    typer.echo(f"wrote {files.conf} (install it as EMQX's emqx.conf, e.g. /etc/emqx/emqx.conf)")
    typer.echo(
        f"wrote {files.ca}, {files.server_cert} and {files.server_key} (EMQX reads them there)"
    )
