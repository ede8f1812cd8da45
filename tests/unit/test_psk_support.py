"""TLS-PSK support on the gateway side: sslpsk3 is the ``agent`` extra, not a dependency of the
server, so without it (on Python < 3.13) the gateway commands stop at once saying how to get
it, instead of failing every connection."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet import __version__
from edgefleet.agent.main import app as agent_app
from edgefleet.cli.main import app
from edgefleet.errors import EdgefleetError
from edgefleet.protocol.psk import psk_client_context, require_psk

runner = CliRunner()


@pytest.fixture
def no_psk_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python without PSK in ssl (as 3.11 and 3.12) and without sslpsk3 installed."""
    if hasattr(ssl.SSLContext, "set_psk_client_callback"):
        monkeypatch.delattr(ssl.SSLContext, "set_psk_client_callback")
    monkeypatch.setitem(sys.modules, "sslpsk3", None)  # import raises ImportError


def test_psk_context_without_sslpsk3_says_which_extra(no_psk_library: None) -> None:
    with pytest.raises(EdgefleetError, match=r"pip install 'edgefleet\[agent\]'"):
        require_psk()
    with pytest.raises(EdgefleetError, match="sslpsk3"):
        psk_client_context("gateway", "00ff")


def test_simulate_without_psk_stops_before_it_starts(no_psk_library: None) -> None:
    r = runner.invoke(app, ["simulate", "--devices", "1"])
    assert r.exit_code == 2
    assert "edgefleet[agent]" in r.output


def test_agent_run_without_psk_stops_with_one_line(no_psk_library: None, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    done = runner.invoke(
        agent_app,
        [
            "configure",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            "8883",
            "--uuid",
            "3f2b8a4e-8c1d-4a5e-9b7f-0a1b2c3d4e5f",
            "--psk",
            "00ff" * 8,
            "--data-dir",
            str(tmp_path / "data"),
        ],
    )
    assert done.exit_code == 0, done.output
    r = runner.invoke(agent_app, ["run", "--config", str(config)])
    assert r.exit_code == 2
    assert "edgefleet-agent: error: TLS-PSK on Python < 3.13 needs sslpsk3" in r.output


def test_psk_context_with_a_psk_library() -> None:
    """This venv has one (the test extra brings edgefleet[agent]; 3.13 needs none)."""
    ctx = psk_client_context("gateway", "00ff")
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_version_option() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == __version__
