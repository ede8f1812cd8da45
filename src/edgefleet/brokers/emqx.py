"""EMQX 5.8.x: ``emqx.conf``, the gateway keys and the script that loads them, from the database.

5.8 is the last EMQX line under the Apache License 2.0; 5.9 and later are under the Business
Source License, so this module targets 5.8 only.

What the configuration says:
- gateways: the SSL listener (``listeners.ssl.default``) takes TLS-PSK only (TLS 1.2, the plain
  PSK suites: EMQX's schema says TLS 1.3 suppresses PSK suites); the handshake is their
  authentication, so the listener skips MQTT authentication (``enable_authn = false``);
- the server: the plain listener (``listeners.tcp.default``) with username and password,
  checked by the server's hook ``POST /api/v1/broker/authn``;
- authorisation of every publish and subscribe: ``POST /api/v1/broker/authz`` with the client
  id as the username (a gateway's client id is its uuid), cached per connection;
- the cluster: one of EMQX's discovery strategies (static, dns, etcd, k8s).

Gateway keys do not go into ``psk_authentication.init_file``: EMQX stores the text after the
separator as the key's bytes (``emqx_psk``: no decoding), while gateways decode edgefleet's 64
hex digits into 32 bytes, so an ``identity:hex`` file would give every gateway the wrong key
(and raw bytes cannot go into a line-based file). ``init_file`` is also read only at start and
never deletes an entry. Instead ``psk.txt`` (``identity:hex``, the server's
``GET /api/v1/broker/psk-file`` format) is decoded into EMQX's PSK table (``emqx_psk``, shared
by the cluster) by ``psk-sync.erl`` through ``emqx eval``; the script also closes the sessions
of gateways whose key disappeared or changed. ``psk-sync.sh`` fetches the list from the server
and runs it: on a timer it is how new gateways reach EMQX without a restart (the same scheme as
``deploy/aws/edgefleet.yaml``).

EMQX does not expose the PSK identity to authentication or authorisation (no
``use_identity_as_username``; ``peer_cert_as_clientid`` takes certificate fields only), so a
gateway holding a valid key can claim another gateway's uuid as its client id: see
``docs/brokers.md``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from edgefleet.brokers.files import owner, render_psk, write_private
from edgefleet.errors import EdgefleetError
from edgefleet.protocol.messages import MAX_PACKET_BYTES
from edgefleet.settings import MQTTSettings

BROKER_USER = "emqx"

PSK_CIPHERS = (
    "PSK-AES256-GCM-SHA384",
    "PSK-AES128-GCM-SHA256",
    "PSK-AES256-CBC-SHA384",
    "PSK-AES128-CBC-SHA256",
    "PSK-AES256-CBC-SHA",
    "PSK-AES128-CBC-SHA",
)
"""The plain PSK suites of EMQX's PSK documentation (the RSA-PSK ones would need a server
certificate); every gateway's OpenSSL offers them (``kPSK`` in ``protocol/psk.py``)."""

AUTHN_BODY = (
    '{username = "${username}", password = "${password}", clientid = "${clientid}", '
    'peerhost = "${peerhost}"}'
)
"""EMQX fills the placeholders (quoted, so HOCON leaves them alone); the fields are
``api/routes/broker.py``'s ``AuthnBody``."""
AUTHZ_BODY = (
    '{username = "${clientid}", clientid = "${clientid}", topic = "${topic}", action = "${action}"}'
)
"""A PSK gateway sends no username: its client id (its uuid) stands for it."""

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
    def psk(self) -> Path:
        return self.directory / "psk.txt"

    @property
    def psk_sync_erl(self) -> Path:
        return self.directory / "psk-sync.erl"

    @property
    def psk_sync_sh(self) -> Path:
        return self.directory / "psk-sync.sh"

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


def render_conf(node: EmqxNode, cluster: Cluster, mqtt: MQTTSettings) -> str:
    """The whole ``emqx.conf`` (HOCON) of one node."""
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

# gateways: TLS-PSK (identity = device uuid); the handshake is their authentication. The keys
# are in EMQX's PSK table, loaded by psk-sync.erl (not by init_file: EMQX takes a key's text
# as its bytes, edgefleet's keys are hex).
listeners.ssl.default {{
  bind = {_q(f"{mqtt.gateway_host}:{mqtt.gateway_port}")}
  enable_authn = false
  ssl_options {{
    versions = ["tlsv1.2"]
    ciphers = {_q_list(PSK_CIPHERS)}
  }}
}}
listeners.ws.default.enable = false
listeners.wss.default.enable = false
psk_authentication {{
  enable = true
}}

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
  # a gateway's rights change only when it is deleted, and then psk-sync.erl closes its
  # session (and the cache with it): connected gateways keep working through a short
  # server outage
  cache {{ enable = true, max_size = 32, ttl = 1h }}
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


def _erl_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_psk_sync_erl(files: EmqxFiles) -> str:
    """An Erlang script for ``emqx eval``: make EMQX's PSK table equal ``psk.txt``."""
    return f"""%% Generated by `edgefleet broker-config emqx`. Run on any node of the cluster
%% (the table is shared) with:  emqx eval '{{ok, R}} = file:script("{files.psk_sync_erl}"), R'
%% EMQX uses a key's text as its bytes; edgefleet's keys are hex: decode them. Gateways whose
%% key was removed or changed are disconnected.
{{ok, Bin}} = file:read_file({_erl_string(str(files.psk))}),
Wanted = maps:from_list(
    [{{Id, binary:decode_hex(Hex)}}
     || Line <- binary:split(Bin, <<"\\n">>, [global, trim_all]),
        [Id, Hex] <- [binary:split(string:trim(Line), <<":">>)]]),
Have = maps:from_list([{{Id, Key}} || {{psk_entry, Id, Key, _}} <- ets:tab2list(emqx_psk)]),
Put = [E || {{Id, Key}} = E <- maps:to_list(Wanted), maps:get(Id, Have, none) =/= Key],
Del = [Id || Id <- maps:keys(Have), not maps:is_key(Id, Wanted)],
[ok = mria:dirty_write(emqx_psk, {{psk_entry, Id, Key, undefined}}) || {{Id, Key}} <- Put],
[ok = mria:dirty_delete(emqx_psk, Id) || Id <- Del],
Kick = Del ++ [Id || {{Id, _}} <- Put, maps:is_key(Id, Have)],
[catch emqx_cm:kick_session(Id) || Id <- Kick],
{{written, length(Put), deleted, length(Del), kicked, length(Kick), total, maps:size(Wanted)}}.
"""


def render_psk_sync_sh(files: EmqxFiles, hooks_url: str) -> str:
    """Fetch the keys from the server and load them (run it on a timer, as user emqx)."""
    d = shlex.quote(str(files.directory))
    url = shlex.quote(hooks_url.rstrip("/") + "/psk-file")
    erl = f'{{ok, R}} = file:script("{files.psk_sync_erl}"), R'
    return f"""#!/bin/sh
# Generated by `edgefleet broker-config emqx`: copies the server's gateway keys into EMQX's
# PSK table. Run it every few seconds (a systemd timer, see docs/brokers.md) as the user EMQX
# runs as; a gateway registered since the last run can connect after the next one.
set -eu
dir={d}
umask 077
# the token reaches curl on its standard input, never on a command line
printf 'header = "mx-api-token: %s"\\n' "$(cat "$dir/broker.token")" |
  curl -fsS --max-time 30 -K - -o "$dir/psk.txt.new" {url}
mv "$dir/psk.txt.new" "$dir/psk.txt"
exec "${{EMQX_BIN:-emqx}}" eval {shlex.quote(erl)}
"""


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    write_private(path, text, mode=mode, user=BROKER_USER)


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
    psk_entries: Sequence[tuple[str, str]],
) -> None:
    """Write the configuration, the keys and the sync scripts (all private to the broker)."""
    if not node.token:
        _fail("--token-file", "the broker token is empty")
    check(node, cluster)
    if not files.directory.exists():  # an existing directory keeps its mode and owner
        files.directory.mkdir(mode=0o700, parents=True)
        ids = owner(BROKER_USER)
        if ids:
            os.chown(files.directory, *ids)
    _write(files.conf, render_conf(node, cluster, mqtt))
    _write(files.token, node.token + "\n")
    if node.dashboard_password:
        _write(files.dashboard_password, node.dashboard_password + "\n")
    _write(files.psk, render_psk(psk_entries))
    _write(files.psk_sync_erl, render_psk_sync_erl(files))
    _write(files.psk_sync_sh, render_psk_sync_sh(files, node.hooks_url), mode=0o700)
