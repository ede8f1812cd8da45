"""Settings: defaults, environment, config file, production refusals, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.settings import Settings


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
