"""Certificates end to end: a gateway's CSR signed over the API, the certificate accepted by
the embedded Mosquitto's certificate listener, and refused once the device is deleted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.core import Agent
from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database
from edgefleet.domain.auth import Role, Scope
from edgefleet.protocol import topics
from edgefleet.services.fleet import Registration
from edgefleet.settings import MQTTSettings, Settings
from tests.answers import checked_client
from tests.brokers import free_port, require
from tests.conftest import Caller, Callers
from tests.gateways import eventually
from tests.unit.test_pki import make_csr

URL = "/api/v1/devices/{}/certificate"


async def _device(c: Container, mac: str = "0090e8000001") -> str:
    view, _ = await c.fleet.register_device(Registration(display_name="gw", mac=mac))
    return view.device.uuid


async def test_issue_list_revoke_over_the_api(
    client: httpx.AsyncClient, container: Container, callers: Callers, writer: Caller
) -> None:
    uuid = await _device(container)
    csr = make_csr("gateway")
    r = await client.post(URL.format(uuid), json={"csr": csr}, headers=writer.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    ca = x509.load_pem_x509_certificate(body["ca"].encode())
    cert.verify_directly_issued_by(ca)
    assert f"{cert.serial_number:x}" == body["serialNumber"]
    # the CA is public, and the same for every caller
    r = await client.get("/api/v1/pki/ca.pem")
    assert r.status_code == 200 and r.text == body["ca"]

    reader = await callers.token(writer.role, Scope.READ)
    assert (
        await client.post(URL.format(uuid), json={"csr": csr}, headers=reader.headers)
    ).status_code == 403
    r = await client.post(URL.format(uuid), json={"csr": "garbage"}, headers=writer.headers)
    assert r.status_code == 400 and "csr" in r.json()["detail"]
    r = await client.post(URL.format("nope"), json={"csr": csr}, headers=writer.headers)
    assert r.status_code == 404

    listed = (
        await client.get(f"/api/v1/devices/{uuid}/certificates", headers=writer.headers)
    ).json()
    assert [x["serialNumber"] for x in listed] == [body["serialNumber"]]
    assert listed[0]["revokedAt"] is None
    r = await client.delete(f"/api/v1/devices/{uuid}/certificates", headers=writer.headers)
    assert r.json() == {"revoked": 1}
    crl = x509.load_pem_x509_crl((await client.get("/api/v1/pki/crl.pem")).text.encode())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


async def test_deleting_a_device_revokes_its_certificates(container: Container) -> None:
    uuid = await _device(container)
    issued = await container.pki.issue_device(uuid, make_csr("x"))
    await container.fleet.delete_devices([uuid])
    crl = x509.load_pem_x509_crl((await container.pki.crl_pem()).encode())
    assert crl.get_revoked_certificate_by_serial_number(issued.cert.serial_number) is not None


@pytest.fixture
async def live_tls(settings: Settings, database: Database) -> AsyncIterator[Container]:
    settings.mqtt = MQTTSettings(
        gateway_host="127.0.0.1",
        gateway_port=free_port(),
        server_port=free_port(),
        cert_port=free_port(),
    )
    container = build(settings, db=database)
    await container.start_messaging()
    await container.messaging.link.wait_connected(10)
    yield container
    await container.stop_messaging()


async def _publish_with_cert(c: Container, d: Path, uuid: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        require("mosquitto_pub"),
        *("-h", "127.0.0.1", "-p", str(c.settings.mqtt.cert_port)),
        *("--cafile", str(d / "ca.pem"), "--cert", str(d / "gw.pem"), "--key", str(d / "gw.key")),
        *("-q", "1", "-t", topics.topic(uuid, topics.Channel.STATUS), "-m", "1"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def _certificate_files(c: Container, uuid: str, d: Path) -> None:
    """What a gateway does: make a key, send a CSR, keep the certificate and the CA."""
    key = ec.generate_private_key(ec.SECP256R1())  # made on the gateway, never sent
    writer = await Callers(c).token(Role.OPERATOR, Scope.READ_WRITE)
    async with checked_client(create_app(c)) as api:
        r = await api.post(
            URL.format(uuid), json={"csr": make_csr(uuid, key)}, headers=writer.headers
        )
        assert r.status_code == 201, r.text
    (d / "ca.pem").write_text(r.json()["ca"])
    (d / "gw.pem").write_text(r.json()["certificate"])
    (d / "gw.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_a_gateway_with_a_certificate_connects_until_deleted(
    live_tls: Container, tmp_path: Path
) -> None:
    c = live_tls
    uuid = await _device(c)
    await _certificate_files(c, uuid, tmp_path)
    code, err = await _publish_with_cert(c, tmp_path, uuid)
    assert code == 0, err

    async def online() -> bool:
        return (await c.fleet.get_device(uuid)).device.connection_status == "online"

    await eventually(online)
    await c.fleet.delete_devices([uuid])
    broker = c.messaging.broker
    assert broker is not None
    await broker.reloaded()  # the broker has logged that it re-read its files
    code, err = await _publish_with_cert(c, tmp_path, uuid)
    assert code != 0, "a revoked certificate was accepted"


async def test_the_agent_connects_with_its_certificate_and_answers(
    live_tls: Container, tmp_path: Path
) -> None:
    c = live_tls
    uuid = await _device(c)
    await _certificate_files(c, uuid, tmp_path)
    config = AgentConfig.model_validate(
        {
            "remoteHost": "127.0.0.1",
            "remotePort": c.settings.mqtt.cert_port,
            "deviceUUID": uuid,
            "tls": "cert",
            "certFile": str(tmp_path / "gw.pem"),
            "keyFile": str(tmp_path / "gw.key"),
            "caFile": str(tmp_path / "ca.pem"),  # verifies the broker's certificate
            "dataDir": str(tmp_path / "agent-data"),
            "properties": {"modelName": "UC-8220-T-LX"},
        }
    )
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        answer = await c.messaging.relay.request(uuid, "get", "/system/properties", wait=10)
        assert answer.code == 200 and answer.data["modelName"] == "UC-8220-T-LX"

        async def online_with_properties() -> bool:
            device = (await c.fleet.get_device(uuid)).device
            return device.connection_status == "online" and device.model_name == "UC-8220-T-LX"

        await eventually(online_with_properties)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
