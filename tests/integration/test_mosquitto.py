"""Gateways on a real Mosquitto configured by edgefleet: PSK identities and the ACL."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgefleet.bootstrap import Container
from edgefleet.brokers import mosquitto
from edgefleet.protocol.psk import psk_client_context
from edgefleet.protocol.topics import Channel, topic
from edgefleet.services.fleet import Registration
from edgefleet.settings import MQTTSettings
from tests.brokers import RunningMosquitto, free_port, require, start_mosquitto


@pytest.fixture
async def devices(container: Container) -> dict[str, tuple[str, str]]:
    """Two registered gateways: name → (uuid, psk)."""
    out = {}
    for name, mac in (("a", "0090e8000001"), ("b", "0090e8000002")):
        view, psk = await container.fleet.register_device(Registration(display_name=name, mac=mac))
        out[name] = (view.device.uuid, psk)
    return out


@pytest.fixture
async def broker(
    container: Container, devices: dict[str, tuple[str, str]], tmp_path: Path
) -> AsyncIterator[RunningMosquitto]:
    mqtt = MQTTSettings(gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port())
    # not under tmp_path: its parents are private to root, and a broker started as root
    # drops to the mosquitto user, who must reach the directory
    directory = Path(tempfile.mkdtemp(prefix="edgefleet-mq-"))
    files = mosquitto.MosquittoFiles(directory)
    password = "server-password-for-tests"
    mosquitto.write_all(files, mqtt, password, await container.fleet.all_psks())
    running = start_mosquitto(files, mqtt, password)
    yield running
    running.stop()
    shutil.rmtree(directory, ignore_errors=True)


def gw_args(b: RunningMosquitto, uuid: str, psk: str) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(b.mqtt.gateway_port), "--psk", psk, "--psk-identity", uuid]


def server_args(b: RunningMosquitto) -> list[str]:
    return [
        "-h",
        "127.0.0.1",
        "-p",
        str(b.mqtt.server_port),
        "-u",
        b.mqtt.server_username,
        "-P",
        b.password,
    ]


def subscribe(args: list[str], topic_name: str, wait: float = 3) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            require("mosquitto_sub"),
            *args,
            "-q",
            "1",
            "-t",
            topic_name,
            "-C",
            "1",
            "-W",
            str(int(wait)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # let the subscription reach the broker
    return proc


def publish(args: list[str], topic_name: str, message: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("mosquitto_pub"), *args, "-q", "1", "-t", topic_name, "-m", message],
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_a_gateway_receives_server_requests_over_psk(
    broker: RunningMosquitto, devices: dict[str, tuple[str, str]]
) -> None:
    uuid, psk = devices["a"]
    sub = subscribe(gw_args(broker, uuid, psk), topic(uuid, Channel.SERVER))
    assert (
        publish(server_args(broker), topic(uuid, Channel.SERVER), '{"method":"get"}').returncode
        == 0
    )
    out, err = sub.communicate(timeout=10)
    assert out.strip() == '{"method":"get"}', err
    # and the server hears the gateway
    sub = subscribe(server_args(broker), "$ThingsPro/devices/+/client")
    assert publish(gw_args(broker, uuid, psk), topic(uuid, Channel.CLIENT), "hello").returncode == 0
    assert sub.communicate(timeout=10)[0].strip() == "hello"


def test_a_gateway_cannot_use_another_gateways_topics(
    broker: RunningMosquitto, devices: dict[str, tuple[str, str]]
) -> None:
    (ua, _), (ub, kb) = devices["a"], devices["b"]
    spy = subscribe(gw_args(broker, ub, kb), topic(ua, Channel.SERVER), wait=2)
    publish(server_args(broker), topic(ua, Channel.SERVER), "secret command")
    out, _ = spy.communicate(timeout=10)
    assert out == ""  # B never sees A's commands
    server = subscribe(server_args(broker), "$ThingsPro/devices/+/client", wait=2)
    publish(gw_args(broker, ub, kb), topic(ua, Channel.CLIENT), "forged response")  # dropped
    assert server.communicate(timeout=10)[0] == ""


def test_wrong_key_unknown_identity_and_bad_server_password_are_refused(
    broker: RunningMosquitto, devices: dict[str, tuple[str, str]]
) -> None:
    ua, _ = devices["a"]
    assert publish(gw_args(broker, ua, "00" * 32), topic(ua, Channel.STATUS), "1").returncode != 0
    assert publish(gw_args(broker, "not-a-device", "11" * 32), "x", "1").returncode != 0
    bad = [*server_args(broker)[:-1], "wrong"]
    assert publish(bad, topic(ua, Channel.SERVER), "x").returncode != 0


async def test_a_deleted_gateway_can_no_longer_connect(
    broker: RunningMosquitto, devices: dict[str, tuple[str, str]], container: Container
) -> None:
    ua, ka = devices["a"]
    assert publish(gw_args(broker, ua, ka), topic(ua, Channel.STATUS), "1").returncode == 0
    await container.fleet.delete_devices([ua])
    mosquitto.write_psk(broker.files, await container.fleet.all_psks())
    assert mosquitto.reload(broker.files)
    await asyncio.sleep(0.5)
    assert publish(gw_args(broker, ua, ka), topic(ua, Channel.STATUS), "1").returncode != 0
    ub, kb = devices["b"]
    assert publish(gw_args(broker, ub, kb), topic(ub, Channel.STATUS), "1").returncode == 0


def test_generated_files_are_private(broker: RunningMosquitto) -> None:
    for path in (broker.files.psk, broker.files.passwd, broker.files.acl, broker.files.conf):
        assert path.stat().st_mode & 0o077 == 0
    assert broker.password not in broker.files.passwd.read_text()  # hashed by mosquitto_passwd


@pytest.mark.parametrize("offered", ["PSK", "DHE-PSK-AES256-GCM-SHA384:PSK"])
def test_the_broker_picks_ecdhe_psk_whatever_the_gateway_prefers(
    broker: RunningMosquitto, devices: dict[str, tuple[str, str]], offered: str
) -> None:
    """OpenSSL's default PSK order starts with DHE-PSK (~33 ms a handshake here); the
    generated listener prefers ECDHE-PSK and the broker's preference wins."""
    uuid, psk = devices["a"]
    ctx = psk_client_context(uuid, psk)
    ctx.set_ciphers(offered)  # what a gateway with a stock OpenSSL offers
    with (
        socket.create_connection(("127.0.0.1", broker.mqtt.gateway_port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        cipher = tls.cipher()
    assert cipher is not None
    if cipher[1] == "TLSv1.2":
        assert cipher[0].startswith("ECDHE-PSK-"), cipher


def _python_313() -> str | None:
    """A Python ≥ 3.13 (native TLS-PSK in ``ssl``): EDGEFLEET_TEST_PY313, PATH, or pyenv."""
    candidates = [os.environ.get("EDGEFLEET_TEST_PY313", ""), shutil.which("python3.13") or ""]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1[3-9]*/bin/python3"))
    for candidate in filter(None, candidates):
        try:
            subprocess.run(
                [candidate, "-c", "import ssl; ssl.SSLContext.set_psk_client_callback"],
                check=True,
                capture_output=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        return candidate
    return None


NATIVE_PSK_CLIENT = """
import json, socket, ssl, sys
sys.path.insert(0, sys.argv[1])
from edgefleet.protocol.psk import psk_client_context
port, uuid, psk, version = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = psk_client_context(uuid, psk)
ctx.maximum_version = ctx.minimum_version = getattr(ssl.TLSVersion, version)
with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
    with ctx.wrap_socket(raw) as tls:
        print(json.dumps([tls.version(), tls.cipher()[0]]))
"""


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_python_313_native_psk_connects_over_tls_1_3_and_1_2(
    broker: RunningMosquitto, devices: dict[str, tuple[str, str]], version: str
) -> None:
    """The agent's PSK context on Python 3.13, which does PSK natively (no sslpsk3)."""
    python = _python_313()
    if python is None:
        message = "Python 3.13 not found (set EDGEFLEET_TEST_PY313): native TLS-PSK untested"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    uuid, psk = devices["a"]
    src = str(Path(__file__).resolve().parents[2] / "src")
    port = str(broker.mqtt.gateway_port)
    run = subprocess.run(
        [python, "-c", NATIVE_PSK_CLIENT, src, port, uuid, psk, version],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    negotiated, cipher = json.loads(run.stdout)
    assert negotiated == version.replace("_", ".")
    if version == "TLSv1_2":
        assert cipher.startswith("ECDHE-PSK-")
    # a wrong key is refused on the native path too
    wrong = subprocess.run(
        [python, "-c", NATIVE_PSK_CLIENT, src, port, uuid, "00" * 32, version],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode != 0
