"""EMQX 5.8 configuration: parsed by a real HOCON parser, keys as each option asks, bad
combinations refused; X.509 gateways only, never TLS-PSK."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyhocon import ConfigFactory, ConfigTree

from edgefleet.api.routes.broker import AuthnBody, AuthzBody
from edgefleet.brokers.emqx import (
    Cluster,
    Discovery,
    DnsRecordType,
    EmqxFiles,
    EmqxNode,
    EmqxOptionError,
    K8sAddressType,
    check,
    render_conf,
)
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


FILES = EmqxFiles(Path("/etc/edgefleet-emqx"))


def parse(n: EmqxNode, c: Cluster, mqtt: MQTTSettings = MQTT) -> ConfigTree:
    return ConfigFactory.parse_string(render_conf(n, c, mqtt, FILES))


STATIC = Cluster(Discovery.STATIC, seeds=("emqx@10.0.0.1", "emqx@10.0.0.2"))


def test_listeners_take_certificates_for_gateways_and_a_password_for_the_server() -> None:
    conf = parse(node(), STATIC)
    ssl = conf["listeners.ssl.default"]
    assert ssl["bind"] == "0.0.0.0:8883" and ssl["zone"] == "gateways"
    assert ssl["enable_authn"] is False  # the certificate handshake is the authentication
    assert dict(ssl["ssl_options"]) == {
        "versions": ["tlsv1.3", "tlsv1.2"],
        "cacertfile": "/etc/edgefleet-emqx/ca.pem",
        "certfile": "/etc/edgefleet-emqx/server.pem",
        "keyfile": "/etc/edgefleet-emqx/server.key",
        "verify": "verify_peer",  # only certificates of the server's CA
        "fail_if_no_peer_cert": True,
    }
    # the certificate's CN (the device uuid) is the client id: a gateway cannot pick another's
    assert conf["zones.gateways.mqtt.peer_cert_as_clientid"] == "cn"
    tcp = conf["listeners.tcp.default"]
    assert tcp["bind"] == "10.1.2.3:1883" and tcp["zone"] == "server"
    assert conf["listeners.ws.default.enable"] is False
    assert conf["listeners.wss.default.enable"] is False
    assert conf["zones.server.mqtt.max_inflight"] == 1000


def test_no_psk_is_ever_configured() -> None:
    text = render_conf(node(), STATIC, MQTT, FILES)
    conf = ConfigFactory.parse_string(text)
    assert "psk_authentication" not in conf
    assert "ciphers" not in conf["listeners.ssl.default.ssl_options"]
    assert "PSK-" not in text


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
        "username": "${clientid}",  # the certificate's CN: the gateway cannot choose it
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
        assert plain["etcd"].pop("node_ttl")
        assert "node_ttl = 1m" in render_conf(n, cluster, MQTT, FILES)
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
