"""EMQX 5.8 configuration: parsed by a real HOCON parser, keys as each option asks, bad
combinations refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyhocon import ConfigFactory, ConfigTree

from edgefleet.api.routes.broker import AuthnBody, AuthzBody
from edgefleet.brokers.emqx import (
    PSK_CIPHERS,
    Cluster,
    Discovery,
    DnsRecordType,
    EmqxFiles,
    EmqxNode,
    EmqxOptionError,
    K8sAddressType,
    check,
    render_conf,
    render_psk_sync_erl,
)
from edgefleet.brokers.files import render_psk
from edgefleet.settings import MQTTSettings

TOKEN = "ef_abc-DEF_123"
MQTT = MQTTSettings(
    gateway_host="0.0.0.0", gateway_port=8883, server_host="10.1.2.3", server_port=1883
)


def node(**kw: Any) -> EmqxNode:
    args: dict[str, Any] = {
        "name": "emqx@10.0.0.1",
        "cookie": "cookie-123",
        "hooks_url": "http://fleet.internal:8080/api/v1/broker",
        "token": TOKEN,
        "dashboard_password": "dash-pw",
    }
    return EmqxNode(**(args | kw))


def parse(n: EmqxNode, c: Cluster, mqtt: MQTTSettings = MQTT) -> ConfigTree:
    return ConfigFactory.parse_string(render_conf(n, c, mqtt))


STATIC = Cluster(Discovery.STATIC, seeds=("emqx@10.0.0.1", "emqx@10.0.0.2"))


def test_listeners_take_psk_for_gateways_and_a_password_for_the_server() -> None:
    conf = parse(node(), STATIC)
    ssl = conf["listeners.ssl.default"]
    assert ssl["bind"] == "0.0.0.0:8883"
    assert ssl["enable_authn"] is False  # the PSK handshake is the gateways' authentication
    assert ssl["ssl_options.versions"] == ["tlsv1.2"]  # TLS 1.3 suppresses PSK suites
    assert ssl["ssl_options.ciphers"] == list(PSK_CIPHERS)
    assert all(c.startswith("PSK-") for c in PSK_CIPHERS)
    tcp = conf["listeners.tcp.default"]
    assert tcp["bind"] == "10.1.2.3:1883" and tcp["zone"] == "server"
    assert conf["listeners.ws.default.enable"] is False
    assert conf["listeners.wss.default.enable"] is False
    # keys reach EMQX through psk-sync.erl, never init_file (EMQX would not decode the hex)
    assert conf["psk_authentication"] == {"enable": True}
    assert conf["zones.server.mqtt.max_inflight"] == 1000


def test_hooks_call_the_server_with_the_token_and_bodies_it_reads() -> None:
    conf = parse(node(), STATIC)
    (authn,) = conf["authentication"]
    assert (authn["mechanism"], authn["backend"], authn["method"]) == (
        "password_based",
        "http",
        "post",
    )
    assert authn["url"] == "http://fleet.internal:8080/api/v1/broker/authn"
    assert authn["headers"]["mx-api-token"] == TOKEN
    assert set(authn["body"]) <= set(AuthnBody.model_fields)
    assert authn["body"]["password"] == "${password}"  # EMQX's placeholder, left for EMQX
    authz = conf["authorization"]
    assert (authz["no_match"], authz["deny_action"]) == ("deny", "ignore")
    (source,) = authz["sources"]
    assert source["type"] == "http" and source["method"] == "post"
    assert source["url"] == "http://fleet.internal:8080/api/v1/broker/authz"
    assert source["headers"]["mx-api-token"] == TOKEN
    assert dict(source["body"]) == {
        "username": "${clientid}",  # a PSK gateway sends no username: its uuid is its client id
        "clientid": "${clientid}",
        "topic": "${topic}",
        "action": "${action}",
    }
    assert set(source["body"]) <= set(AuthzBody.model_fields)


def test_node_name_cookie_and_dashboard() -> None:
    conf = parse(node(data_dir="/srv/emqx", dashboard_bind="10.0.0.1:18083"), STATIC)
    assert conf["node"] == {
        "name": "emqx@10.0.0.1",
        "cookie": "cookie-123",
        "data_dir": "/srv/emqx",
    }
    assert conf["dashboard.listeners.http.bind"] == "10.0.0.1:18083"
    assert conf["dashboard.default_password"] == "dash-pw"


def test_values_are_quoted_so_any_character_survives() -> None:
    odd = 'co"ok\\ie}${x}'
    conf = parse(node(cookie=odd), STATIC)
    assert conf["node.cookie"] == odd


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        (STATIC, {"static": {"seeds": ["emqx@10.0.0.1", "emqx@10.0.0.2"]}}),
        (
            Cluster(Discovery.DNS, dns_name="emqx.fleet.internal"),
            {"dns": {"name": "emqx.fleet.internal", "record_type": "a"}},
        ),
        (
            Cluster(
                Discovery.DNS,
                dns_name="_emqx._tcp.fleet.internal",
                dns_record_type=DnsRecordType.SRV,
            ),
            {"dns": {"name": "_emqx._tcp.fleet.internal", "record_type": "srv"}},
        ),
        (
            Cluster(Discovery.ETCD, etcd_servers=("http://etcd-1:2379", "https://etcd-2:2379")),
            {
                "etcd": {
                    "server": "http://etcd-1:2379,https://etcd-2:2379",
                    "prefix": "edgefleet",
                }
            },
        ),
        (
            Cluster(Discovery.K8S, k8s_service_name="emqx-headless", k8s_namespace="fleet"),
            {
                "k8s": {
                    "apiserver": "https://kubernetes.default.svc:443",
                    "service_name": "emqx-headless",
                    "namespace": "fleet",
                    "address_type": "ip",
                }
            },
        ),
        (
            Cluster(
                Discovery.K8S,
                k8s_service_name="emqx-headless",
                k8s_address_type=K8sAddressType.HOSTNAME,
            ),
            {
                "k8s": {
                    "apiserver": "https://kubernetes.default.svc:443",
                    "service_name": "emqx-headless",
                    "namespace": "default",
                    "address_type": "hostname",
                    "suffix": "svc.cluster.local",
                }
            },
        ),
    ],
)
def test_cluster_block_has_exactly_what_the_discovery_needs(
    cluster: Cluster, expected: dict[str, Any]
) -> None:
    n = node(name="emqx@10.0.0.1")
    check(n, cluster)
    conf = parse(n, cluster)["cluster"]
    strategy = {
        k: v for k, v in conf.items() if k not in ("name", "discovery_strategy", "autoclean")
    }
    plain = {k: _plain(v) for k, v in strategy.items()}
    if "etcd" in plain:  # a duration, which pyhocon turns into an object of its own
        assert plain["etcd"].pop("node_ttl") and "node_ttl = 1m" in render_conf(n, cluster, MQTT)
    assert plain == expected
    assert conf["discovery_strategy"] == cluster.discovery.value
    assert conf["name"] == "edgefleet"


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigTree):
        return {k: _plain(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("n", "cluster", "option", "words"),
    [
        (node(), Cluster(Discovery.STATIC), "--seeds", "needs --seeds"),
        (node(), Cluster(Discovery.DNS), "--dns-name", "needs --dns-name"),
        (node(), Cluster(Discovery.ETCD), "--etcd-server", "needs --etcd-server"),
        (node(), Cluster(Discovery.K8S), "--k8s-service-name", "needs --k8s-service-name"),
        (
            node(),
            Cluster(Discovery.DNS, dns_name="x.example", seeds=("emqx@a",)),
            "--seeds",
            "not used with --discovery dns",
        ),
        (
            node(),
            Cluster(Discovery.STATIC, seeds=("emqx@a",), k8s_service_name="emqx"),
            "--k8s-service-name",
            "not used",
        ),
        (node(), Cluster(Discovery.STATIC, seeds=("10.0.0.2",)), "--seeds", "name@host"),
        (node(name="emqx"), STATIC, "--node-name", "name@host"),
        (
            node(name="emqx@emqx-1.fleet.internal"),
            Cluster(Discovery.DNS, dns_name="x.example"),
            "--node-name",
            "IPv4",
        ),
        (
            node(),
            Cluster(Discovery.ETCD, etcd_servers=("etcd-1:2379",)),
            "--etcd-server",
            "http(s) URL",
        ),
        (
            node(),
            Cluster(Discovery.K8S, k8s_service_name="emqx", k8s_apiserver="kubernetes"),
            "--k8s-apiserver",
            "http(s) URL",
        ),
        (node(cookie=""), STATIC, "--cookie-file", "cookie"),
        (node(cookie="two words"), STATIC, "--cookie-file", "cookie"),
        (node(hooks_url="fleet:8080/api/v1/broker"), STATIC, "--server-url", "http(s) URL"),
        (node(token="a b"), STATIC, "--token-file", "one word"),
    ],
)
def test_bad_combinations_name_the_option(
    n: EmqxNode, cluster: Cluster, option: str, words: str
) -> None:
    with pytest.raises(EmqxOptionError) as err:
        check(n, cluster)
    assert err.value.option == option and words in err.value.message


def test_dns_srv_records_take_host_names() -> None:
    check(
        node(name="emqx@emqx-1.fleet.internal"),
        Cluster(
            Discovery.DNS, dns_name="_emqx._tcp.fleet.internal", dns_record_type=DnsRecordType.SRV
        ),
    )


def test_psk_file_and_sync_script() -> None:
    assert render_psk([("u1", "ab" * 32), ("u2", "cd" * 32)]) == f"u1:{'ab' * 32}\nu2:{'cd' * 32}\n"
    files = EmqxFiles(Path('/etc/edge"fleet'))
    erl = render_psk_sync_erl(files)
    assert 'file:read_file("/etc/edge\\"fleet/psk.txt")' in erl  # an Erlang string literal
    assert "binary:decode_hex(Hex)" in erl  # EMQX would take the hex text as the key
    assert "mria:dirty_write(emqx_psk" in erl and "mria:dirty_delete(emqx_psk" in erl
    assert "emqx_cm:kick_session(Id)" in erl
