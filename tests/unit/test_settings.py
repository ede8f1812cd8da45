"""Settings: defaults, environment, config file, production refusals, masking."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefleet.domain.nodes import BrokerNode
from edgefleet.settings import MASK, MQTTSettings, Settings, is_secret_name


def test_embedded_defaults_use_sqlite_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'edgefleet.db'}"
    assert s.http.port == 8080


def test_environment_and_nested_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", "postgresql+asyncpg://u:pw@db/edgefleet")
    monkeypatch.setenv("EDGEFLEET_LOGIN__MAX_RETRY", "3")
    s = Settings()
    assert not s.is_sqlite and s.login.max_retry == 3


def test_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "edgefleet.toml"
    cfg.write_text('admin_email = "ops@example.com"\n[http]\nport = 9090\n')
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(cfg))
    monkeypatch.setenv("EDGEFLEET_HTTP__PORT", "9191")  # environment wins over the file
    s = Settings()
    assert s.admin_email == "ops@example.com" and s.http.port == 9191


def test_unknown_setting_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("databse_url = 'typo'\n")
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(cfg))
    with pytest.raises(ValueError, match="databse_url"):
        Settings()


@pytest.mark.parametrize(
    "name", ["EDGEFLEET_DATABASE__URL", "EDGEFLEET_HTTP__PORTT", "edgefleet_mqtt__server_hostname"]
)
def test_an_unknown_nested_variable_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """As a config file's unknown key is: the environment source ignored it, and with
    EDGEFLEET_DATABASE__URL the server ran on SQLite without a word."""
    monkeypatch.setenv(name, "postgresql+asyncpg://u@db/x")
    with pytest.raises(ValueError, match=name):
        Settings()


def test_other_edgefleet_variables_are_not_settings_to_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGEFLEET_TEST_PG", "postgresql://x")  # a tool's, one underscore
    monkeypatch.setenv("EDGEFLEET_MQTT__GATEWAY_PORT", "8883")
    assert Settings().mqtt.gateway_port == 8883


def test_production_refuses_unsafe_values() -> None:
    with pytest.raises(ValueError, match="database_url must name a PostgreSQL server"):
        Settings(environment="production")
    ok = Settings(
        environment="production",
        database_url="postgresql+asyncpg://u:pw@db/x",
        secret_key="k" * 40,
        http={"cookie_secure": True},
    )
    assert ok.environment == "production"


def test_masked_hides_secrets() -> None:
    s = Settings(database_url="postgresql+asyncpg://user:hunter2@db/x", secret_key="topsecret")
    text = str(s.masked())
    assert "hunter2" not in text and "topsecret" not in text and "user:********@db" in text


def test_masked_hides_secret_query_parameters_and_keeps_the_rest() -> None:
    url = (
        "postgresql+asyncpg://user:hunter2@db/x?sslmode=verify-full&sslpassword=s3cr%26t"
        "&sslkey=/etc/edgefleet/client.key&sslrootcert=/etc/ca.pem&password=other&Token=t0k"
    )
    s = Settings(
        database_url=url,
        storage={"s3_endpoint_url": "https://minio:9000/?X-Amz-Signature=abc&api_key=zz"},
    )
    shown = s.masked()
    assert shown["database_url"] == (
        "postgresql+asyncpg://user:********@db/x?sslmode=verify-full&sslpassword=********"
        "&sslkey=/etc/edgefleet/client.key&sslrootcert=/etc/ca.pem&password=********"
        "&Token=********"
    )
    assert shown["storage"]["s3_endpoint_url"] == (
        "https://minio:9000/?X-Amz-Signature=********&api_key=********"
    )
    for secret in ("hunter2", "s3cr", "other", "t0k", "abc", "zz"):
        assert secret not in str(shown), secret


def test_masked_shows_a_url_without_secrets_as_it_is(tmp_path: Path) -> None:
    """``config show`` printed the default SQLite URL ``sqlite+aiosqlite:////abs/path`` as
    ``sqlite+aiosqlite://abs/path`` (a host "abs"): urlunsplit drops the empty authority."""
    for url in (
        f"sqlite+aiosqlite:///{tmp_path / 'edgefleet.db'}",
        "sqlite+aiosqlite:///relative.db",
        "file:///var/lib/edgefleet/files",
        "postgresql+asyncpg://edgefleet@db/edgefleet?sslmode=require",
    ):
        assert Settings(database_url=url).masked()["database_url"] == url
    shown = Settings(data_dir=tmp_path).masked()["database_url"]
    assert shown == f"sqlite+aiosqlite:///{tmp_path / 'edgefleet.db'}"
    # a masked one keeps its empty authority too
    masked = Settings(database_url="sqlite+aiosqlite:////data/e.db?password=pw").masked()
    assert masked["database_url"] == "sqlite+aiosqlite:////data/e.db?password=********"


def test_masked_hides_every_setting_whose_name_looks_secret() -> None:
    s = Settings(secret_key="topsecret", mqtt={"server_password": "brokerpw"})
    shown = s.masked()
    assert shown["secret_key"] == "********" and shown["mqtt"]["server_password"] == "********"
    assert Settings().masked()["secret_key"] == "(key file)"
    assert shown["mqtt"]["psk_hint"] == "edgefleet"  # a hint, not a key


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("sslpassword", True),
        ("secret_key", True),
        ("X-Amz-Credential", True),
        ("X-Amz-Security-Token", True),
        ("key", True),
        ("sig", True),
        ("sslkey", False),
        ("sslcert", False),
        ("sslmode", False),
        ("psk_hint", False),
        ("passfile", False),
    ],
)
def test_secret_names_are_recognised(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_secret_key_file_is_made_once_and_private(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    key = s.resolved_secret_key()
    assert key == Settings(data_dir=tmp_path).resolved_secret_key()
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0


def test_access_logs_drop_query_strings() -> None:
    """A signed download link is a credential while it lives: never logged."""
    import logging

    from edgefleet.logs import DropQuery

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/filebin/download/k/f.img?expires=1&sig=abc", "1.1", 200),
        None,
    )
    assert DropQuery().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /filebin/download/k/f.img HTTP/1.1" 200'


def test_webhook_allow_networks_come_as_a_json_list_of_cidrs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().events.webhook_allow_networks == []  # only global addresses by default
    monkeypatch.setenv("EDGEFLEET_EVENTS__WEBHOOK_ALLOW_NETWORKS", '["10.1.2.0/24", "fd00::/8"]')
    assert [str(n) for n in Settings().events.webhook_allow_networks] == [
        "10.1.2.0/24",
        "fd00::/8",
    ]
    monkeypatch.setenv("EDGEFLEET_EVENTS__WEBHOOK_ALLOW_NETWORKS", '["10.1.2.3/24"]')
    with pytest.raises(ValueError, match="webhook_allow_networks"):
        Settings()


def test_uploads_live_an_hour_by_default() -> None:
    assert Settings().storage.file_ttl_seconds == 3600
    assert Settings(storage={"file_ttl_seconds": 0}).storage.file_ttl_seconds == 0


def test_trusted_proxies_are_empty_by_default_and_listed_with_commas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().http.trusted_proxies == []
    monkeypatch.setenv("EDGEFLEET_HTTP__TRUSTED_PROXIES", "10.0.0.5, 172.30.250.0/24,fd00::/8")
    assert Settings().http.trusted_proxies == ["10.0.0.5", "172.30.250.0/24", "fd00::/8"]
    monkeypatch.setenv("EDGEFLEET_HTTP__TRUSTED_PROXIES", '["10.0.0.5", "fd00::/8"]')
    assert Settings().http.trusted_proxies == ["10.0.0.5", "fd00::/8"]
    monkeypatch.setenv("EDGEFLEET_HTTP__TRUSTED_PROXIES", "*")
    with pytest.raises(ValueError, match="not an IP address or network"):
        Settings()


def test_broker_token_is_off_by_default_and_shown_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().broker_token.get_secret_value() == ""
    token = secrets.token_hex(20)
    monkeypatch.setenv("EDGEFLEET_BROKER_TOKEN", f"{token}\n")
    s = Settings()
    assert s.broker_token.get_secret_value() == token
    assert s.masked()["broker_token"] == MASK
    assert token not in str(s.masked())


def test_a_short_broker_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_BROKER_TOKEN", "x" * 31)
    with pytest.raises(ValidationError, match=r"broker_token .* at least 32 characters"):
        Settings()


def test_broker_nodes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_MQTT__EMBEDDED", "false")
    monkeypatch.setenv("EDGEFLEET_MQTT__NODES", "m1=10.0.0.11:18830, m-2=[fd00::2]:1883")
    mqtt = Settings().mqtt
    assert mqtt.partitioned
    assert mqtt.broker_nodes == [
        BrokerNode("m1", "10.0.0.11", 18830),
        BrokerNode("m-2", "fd00::2", 1883),
    ]
    monkeypatch.setenv("EDGEFLEET_MQTT__NODES", '["m1=a.example:1"]')
    assert Settings().mqtt.broker_nodes == [BrokerNode("m1", "a.example", 1)]


def test_no_broker_nodes_is_the_single_broker_link() -> None:
    mqtt = Settings().mqtt
    assert mqtt.nodes == [] and mqtt.nodes_dns == "" and not mqtt.partitioned


@pytest.mark.parametrize(
    ("nodes", "says"),
    [
        (["M1=h:1"], "lower-case"),
        (["m1=h"], "host:port"),
        (["m1=h:0"], "port"),
        (["h:1"], "name=host:port"),
        (["m1=h:1", "m1=g:2"], "unique"),
    ],
)
def test_bad_broker_nodes_are_refused(nodes: list[str], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        MQTTSettings(embedded=False, nodes=nodes)


def test_broker_nodes_are_refused_beside_the_embedded_broker() -> None:
    with pytest.raises(ValidationError, match="embedded"):
        MQTTSettings(nodes=["m1=h:1"])
    with pytest.raises(ValidationError, match="embedded"):
        MQTTSettings(nodes_dns="brokers.internal:18830")
    with pytest.raises(ValidationError, match="port"):
        MQTTSettings(embedded=False, nodes_dns="brokers.internal")
