"""A real Mosquitto for tests, configured by edgefleet, on ports of its own."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.brokers.mosquitto import MosquittoFiles
from edgefleet.settings import MQTTSettings

INSTALL_HINT = (
    "Mosquitto is needed for broker tests: install Debian's mosquitto and mosquitto-clients "
    "(`make test` does)"
)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = range(10000, max(_ephemeral_low(), 15000))


def free_port() -> int:
    """A loopback port nothing listens on, chosen below the kernel's range for outgoing
    connections: a port the kernel picks (bind to 0) can be taken, before the test's server
    binds it, as the local port of some outgoing connection (simulated gateways make
    thousands); one from here cannot."""
    for _ in range(1000):
        port = random.choice(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


def require(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.fail(f"{tool} not found. {INSTALL_HINT}", pytrace=False)
    return path


@dataclass
class RunningMosquitto:
    files: MosquittoFiles
    mqtt: MQTTSettings
    password: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_mosquitto(files: MosquittoFiles, mqtt: MQTTSettings, password: str) -> RunningMosquitto:
    proc = subprocess.Popen([require("mosquitto"), "-c", str(files.conf)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", mqtt.server_port), timeout=0.5):
                return RunningMosquitto(files, mqtt, password, proc)
        except OSError:
            if proc.poll() is not None:
                log = files.log.read_text() if files.log.exists() else ""
                pytest.fail(f"mosquitto exited at start: {log}", pytrace=False)
            time.sleep(0.05)
    proc.kill()
    pytest.fail("mosquitto did not listen within 10 s", pytrace=False)
