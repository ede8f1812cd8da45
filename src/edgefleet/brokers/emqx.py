"""EMQX 5.8.x for fleets whose gateways hold X.509 certificates: ``emqx.conf`` and the TLS files.

5.8 is the last EMQX line under the Apache License 2.0; 5.9 and later are under the Business
Source License, so this module targets 5.8 only.

**Never for TLS-PSK** (:data:`PSK_REFUSAL`): EMQX does not expose a PSK identity to
authentication or authorisation (no ``use_identity_as_username``; ``peer_cert_as_clientid``
takes certificate fields only), so a gateway holding one valid key could claim another
gateway's uuid as its client id. PSK fleets use the Mosquitto nodes of ``edgefleet
broker-node`` (docs/brokers.md, docs/scaling.md).

What the configuration says:
- gateways: the SSL listener (``listeners.ssl.default``, zone ``gateways``) takes only client
  certificates signed by the server's CA (``verify_peer``, ``fail_if_no_peer_cert``); the
  handshake is their authentication (``enable_authn = false``) and the certificate's CN, the
  device uuid, is the client id (``peer_cert_as_clientid = cn``): a gateway cannot choose
  another's;
- the server: the plain listener (``listeners.tcp.default``) with username and password,
  checked by the server's hook ``POST /api/v1/broker/authn``;
- authorisation of every publish and subscribe: ``POST /api/v1/broker/authz`` with the client
  id as the username, cached a minute per connection; a deleted device is refused every topic
  (EMQX is given no CRL file: its CRL check fetches the certificates' distribution points);
- the cluster: one of EMQX's discovery strategies (static, dns, etcd, k8s).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from edgefleet.brokers.files import owner, write_private
from edgefleet.errors import EdgefleetError
from edgefleet.pki import TlsMaterial
from edgefleet.protocol.messages import MAX_PACKET_BYTES
from edgefleet.settings import MQTTSettings

BROKER_USER = "emqx"

PSK_REFUSAL = (
    "EMQX cannot bind a TLS-PSK identity to the client id (one gateway's key would let its "
    "holder pose as any gateway), so edgefleet configures it only for X.509 fleets: give "
    "--x509 for gateways with certificates from the server's CA; for TLS-PSK gateways run "
    "Mosquitto nodes (edgefleet broker-node, docs/brokers.md)"
)
"""Why ``broker-config emqx`` writes no PSK listener (issue 20)."""

TLS_VERSIONS = ("tlsv1.3", "tlsv1.2")

AUTHN_BODY = (
    '{username = "${username}", password = "${password}", clientid = "${clientid}", '
    'peerhost = "${peerhost}"}'
)
"""EMQX fills the placeholders (quoted, so HOCON leaves them alone); the fields are
``api/routes/broker.py``'s ``AuthnBody``."""
AUTHZ_BODY = (
    '{username = "${clientid}", clientid = "${clientid}", topic = "${topic}", action = "${action}"}'
)
"""A gateway's client id is its certificate's CN (its uuid): it stands for the gateway, whatever
username the gateway sends."""

MAX_PACKET_SIZE = f"{MAX_PACKET_BYTES // 1024}KB"
"""``mqtt.max_packet_size`` in EMQX's byte-size notation (its KB are 1024 bytes; the limit is a
whole number of them)."""

NODE_NAME = re.compile(r"^[A-Za-z0-9_.-]+@[A-Za-z0-9_.:-]+$")


class Discovery(StrEnum):
    """EMQX's cluster discovery strategies (``cluster.discovery_strategy``) offered here."""

    STATIC = "static"
    DNS = "dns"
    ETCD = "etcd"
    K8S = "k8s"


class DnsRecordType(StrEnum):
    A = "a"
    SRV = "srv"


class K8sAddressType(StrEnum):
    IP = "ip"
    DNS = "dns"
    HOSTNAME = "hostname"


K8S_SUFFIX = {K8sAddressType.DNS: "pod.cluster.local", K8sAddressType.HOSTNAME: "svc.cluster.local"}
"""``cluster.k8s.suffix`` by address type (EMQX operator's table); unused with ``ip``."""


class EmqxOptionError(EdgefleetError):
    """A bad option or combination of options; ``option`` names the one to change."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Cluster:
    """How the nodes find each other: the discovery strategy and what it needs."""

    discovery: Discovery
    name: str = "edgefleet"
    seeds: tuple[str, ...] = ()
    dns_name: str = ""
    dns_record_type: DnsRecordType = DnsRecordType.A
    etcd_servers: tuple[str, ...] = ()
    etcd_prefix: str = "edgefleet"
    k8s_apiserver: str = "https://kubernetes.default.svc:443"
    k8s_service_name: str = ""
    k8s_namespace: str = "default"
    k8s_address_type: K8sAddressType = K8sAddressType.IP
    k8s_suffix: str = ""


@dataclass(frozen=True)
class EmqxNode:
    """This node's identity and the secrets its configuration carries."""

    name: str
    cookie: str = field(repr=False)
    hooks_url: str
    """The server's broker hooks, ``<server URL>/api/v1/broker``."""
    token: str = field(default="", repr=False)
    """Empty while the options are checked, before a token is read or made."""
    data_dir: str = "/var/lib/emqx"
    dashboard_bind: str = "127.0.0.1:18083"
    dashboard_password: str = field(default="", repr=False)


@dataclass(frozen=True)
class EmqxFiles:
    directory: Path

    @property
    def conf(self) -> Path:
        return self.directory / "emqx.conf"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def token(self) -> Path:
        return self.directory / "broker.token"

    @property
    def dashboard_password(self) -> Path:
        return self.directory / "dashboard.password"


def _fail(option: str, message: str) -> None:
    raise EmqxOptionError(option, message)


def check(node: EmqxNode, cluster: Cluster) -> None:
    """Refuse what EMQX would refuse or what cannot form a cluster, naming the option."""
    if not NODE_NAME.match(node.name):
        _fail("--node-name", f"{node.name!r} is not an EMQX node name (name@host)")
    host = node.name.split("@", 1)[1]
    if not node.cookie or any(c.isspace() for c in node.cookie):
        _fail("--cookie-file", "the cookie must be one word, shared by every node")
    url = urlsplit(node.hooks_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        _fail("--server-url", f"{node.hooks_url!r} is not an http(s) URL")
    if any(c.isspace() or c == '"' for c in node.token):
        _fail("--token-file", "the broker token must be one word")
    given = {
        "--seeds": bool(cluster.seeds),
        "--dns-name": bool(cluster.dns_name),
        "--etcd-server": bool(cluster.etcd_servers),
        "--k8s-service-name": bool(cluster.k8s_service_name),
    }
    needed = {
        Discovery.STATIC: "--seeds",
        Discovery.DNS: "--dns-name",
        Discovery.ETCD: "--etcd-server",
        Discovery.K8S: "--k8s-service-name",
    }[cluster.discovery]
    for option, present in given.items():
        if present and option != needed:
            _fail(option, f"{option} is not used with --discovery {cluster.discovery}")
    if not given[needed]:
        _fail(needed, f"--discovery {cluster.discovery} needs {needed}")
    if cluster.discovery is Discovery.STATIC:
        for seed in cluster.seeds:
            if not NODE_NAME.match(seed):
                _fail("--seeds", f"{seed!r} is not an EMQX node name (name@host)")
    elif cluster.discovery is Discovery.DNS and cluster.dns_record_type is DnsRecordType.A:
        # EMQX names the nodes it finds <name>@<address of each A record>
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            _fail(
                "--node-name",
                "with DNS A records the node name must be <name>@<this node's IPv4 address>",
            )
    elif cluster.discovery is Discovery.ETCD:
        for server in cluster.etcd_servers:
            u = urlsplit(server)
            if u.scheme not in ("http", "https") or not u.hostname:
                _fail("--etcd-server", f"{server!r} is not an http(s) URL")
    elif cluster.discovery is Discovery.K8S:
        u = urlsplit(cluster.k8s_apiserver)
        if u.scheme not in ("http", "https") or not u.hostname:
            _fail("--k8s-apiserver", f"{cluster.k8s_apiserver!r} is not an http(s) URL")


def _q(value: str) -> str:
    """A HOCON quoted string (HOCON's quoted strings are JSON strings)."""
    return json.dumps(value)


def _q_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def render_cluster(cluster: Cluster) -> str:
    c = cluster
    lines = [
        "cluster {",
        f"  name = {_q(c.name)}",
        f"  discovery_strategy = {c.discovery}",
        # a node gone for 5 minutes leaves the member list (as in deploy/aws)
        "  autoclean = 5m",
    ]
    if c.discovery is Discovery.STATIC:
        lines.append(f"  static.seeds = {_q_list(c.seeds)}")
    elif c.discovery is Discovery.DNS:
        lines.append(f"  dns {{ name = {_q(c.dns_name)}, record_type = {c.dns_record_type} }}")
    elif c.discovery is Discovery.ETCD:
        lines.append(
            f"  etcd {{ server = {_q(','.join(c.etcd_servers))}, prefix = {_q(c.etcd_prefix)},"
            " node_ttl = 1m }"
        )
    else:
        suffix = c.k8s_suffix or K8S_SUFFIX.get(c.k8s_address_type, "")
        lines += [
            "  k8s {",
            f"    apiserver = {_q(c.k8s_apiserver)}",
            f"    service_name = {_q(c.k8s_service_name)}",
            f"    namespace = {_q(c.k8s_namespace)}",
            f"    address_type = {c.k8s_address_type}",
        ]
        if suffix:
            lines.append(f"    suffix = {_q(suffix)}")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_conf(node: EmqxNode, cluster: Cluster, mqtt: MQTTSettings, files: EmqxFiles) -> str:
    """The whole ``emqx.conf`` (HOCON) of one node; the gateways' listener on
    ``mqtt.gateway_port`` takes certificates only, reading the TLS files from ``files``."""
    hooks = node.hooks_url.rstrip("/")
    headers = f'{{"content-type" = "application/json", "mx-api-token" = {_q(node.token)}}}'
    dashboard_password = (
        f"\n  default_password = {_q(node.dashboard_password)}" if node.dashboard_password else ""
    )
    return f"""# Generated by `edgefleet broker-config emqx` for EMQX 5.8.x (Apache-2.0;
# 5.9 and later are under the Business Source License). Edits are overwritten. Holds the
# cluster cookie and the server's broker token: keep it private.
node {{
  name = {_q(node.name)}
  cookie = {_q(node.cookie)}
  data_dir = {_q(node.data_dir)}
}}

{render_cluster(cluster)}
# the REST API (health: GET /api/v5/status) and the dashboard
dashboard {{
  listeners.http.bind = {_q(node.dashboard_bind)}{dashboard_password}
}}

# the edgefleet server: username/password, checked by the server's authn hook
listeners.tcp.default {{
  bind = {_q(f"{mqtt.server_host}:{mqtt.server_port}")}
  zone = server
}}

# gateways: X.509 client certificates from the edgefleet CA (no TLS-PSK: EMQX cannot bind a
# PSK identity to the client id); the handshake is their authentication, the certificate's CN
# (the device uuid) their client id
listeners.ssl.default {{
  bind = {_q(f"{mqtt.gateway_host}:{mqtt.gateway_port}")}
  zone = gateways
  enable_authn = false
  ssl_options {{
    versions = {_q_list(TLS_VERSIONS)}
    cacertfile = {_q(str(files.ca.absolute()))}
    certfile = {_q(str(files.server_cert.absolute()))}
    keyfile = {_q(str(files.server_key.absolute()))}
    verify = verify_peer
    fail_if_no_peer_cert = true
  }}
}}
listeners.ws.default.enable = false
listeners.wss.default.enable = false
zones.gateways.mqtt.peer_cert_as_clientid = cn

# the protocol's limit (docs/protocol.md): a larger packet closes the connection
mqtt.max_packet_size = {_q(MAX_PACKET_SIZE)}

# the server's persistent session holds what it has not acknowledged
zones.server.mqtt {{
  max_mqueue_len = 200000
  max_inflight = 1000
  session_expiry_interval = 24h
}}

authentication = [{{
  mechanism = password_based
  backend = http
  method = post
  url = {_q(hooks + "/authn")}
  headers {headers}
  body {AUTHN_BODY}
  request_timeout = 5s
}}]

authorization {{
  no_match = deny
  deny_action = ignore
  # a gateway's rights change only when it is deleted: a minute later it may use no topic
  cache {{ enable = true, max_size = 32, ttl = 1m }}
  sources = [{{
    type = http
    method = post
    url = {_q(hooks + "/authz")}
    headers {headers}
    body {AUTHZ_BODY}
    request_timeout = 5s
  }}]
}}
"""


def _write(path: Path, text: str) -> None:
    write_private(path, text, user=BROKER_USER)


def existing_token(files: EmqxFiles) -> str:
    """The broker token an earlier run wrote, or ""."""
    try:
        return files.token.read_text().strip()
    except FileNotFoundError:
        return ""


def dashboard_password(files: EmqxFiles) -> str:
    """The dashboard's first admin password: the one an earlier run kept in the directory, or
    a new one (``write_all`` keeps it). EMQX uses it only when it creates the admin user, at
    its first start."""
    try:
        return files.dashboard_password.read_text().strip()
    except FileNotFoundError:
        return secrets.token_urlsafe(18)


def write_all(
    files: EmqxFiles,
    node: EmqxNode,
    cluster: Cluster,
    mqtt: MQTTSettings,
    tls: TlsMaterial,
) -> None:
    """Write the configuration and the TLS files (all private to the broker)."""
    if not node.token:
        _fail("--token-file", "the broker token is empty")
    check(node, cluster)
    if not files.directory.exists():  # an existing directory keeps its mode and owner
        files.directory.mkdir(mode=0o700, parents=True)
        ids = owner(BROKER_USER)
        if ids:
            os.chown(files.directory, *ids)
    _write(files.conf, render_conf(node, cluster, mqtt, files))
    _write(files.token, node.token + "\n")
    if node.dashboard_password:
        _write(files.dashboard_password, node.dashboard_password + "\n")
    _write(files.ca, tls.ca)
    _write(files.server_cert, tls.cert)
    _write(files.server_key, tls.key)
