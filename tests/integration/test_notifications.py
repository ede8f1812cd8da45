"""Webhook notifications end to end, on SQLite and PostgreSQL: the REST API (shapes checked
against the ThingsPro v2.5 spec), confirmation, signed deliveries to real HTTP receivers on
127.0.0.1 (allowed here by ``webhook_allow_networks``), retries, failure, a hanging
receiver, deletion, permissions; and the outbound guard: internal addresses in every form,
names resolving to them (a table of names stands in for DNS, so no test asks it), DNS
rebinding, and generic reasons in answers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database
from edgefleet.db.tables import DeliveryAttempt, WebhookDelivery
from edgefleet.domain.auth import Role, Scope
from edgefleet.domain.events import EventType, NewEvent
from edgefleet.domain.webhooks import REFUSED, UNREACHABLE, verify
from edgefleet.settings import EventSettings, Settings
from tests import spec
from tests.answers import checked_client
from tests.conftest import Caller, Callers
from tests.gateways import eventually
from tests.receivers import Names, Receiver, RecordingNetwork, receiving

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
"""The receivers' network, which webhooks may reach only when it is allowed."""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.events = EventSettings(webhook_allow_networks=LOOPBACK)
    return settings


# --- the server -----------------------------------------------------------------------------


@dataclass
class Env:
    c: Container
    api: httpx.AsyncClient
    writer: Caller

    @property
    def h(self) -> dict[str, str]:
        return self.writer.headers

    async def subscribe(
        self, receiver: Receiver, kind: str = "device_online", path: str = "/hook"
    ) -> dict[str, Any]:
        body = {"eventType": kind, "protocol": "http", "endpoint": receiver.url + path}
        r = await self.api.post("/api/v1/notifications", headers=self.h, json=body)
        assert r.status_code == 200, r.text
        [got] = r.json()
        return dict(got)

    async def emit(self, kind: EventType, n: int = 1, device: str = "dev-1") -> None:
        for i in range(n):
            self.c.events.emit(
                NewEvent(
                    type=kind,
                    at=datetime.now(UTC),
                    device_uuid=device,
                    resource="/status",
                    text=f"{kind.value} {i}",
                    data={"i": i},
                )
            )
        await asyncio.wait_for(self.c.events.drained(), 20)

    async def deliveries(self, uuid: str) -> list[dict[str, Any]]:
        r = await self.api.get(f"/api/v1/notifications/{uuid}/deliveries", headers=self.h)
        assert r.status_code == 200, r.text
        return list(r.json())

    async def count(self, table: type[WebhookDelivery] | type[DeliveryAttempt]) -> int:
        async with self.c.db.session() as s:
            return int(await s.scalar(select(func.count()).select_from(table)) or 0)


FAST = EventSettings(
    batch_delay=0,
    webhook_timeout_seconds=5,
    webhook_max_attempts=3,
    webhook_backoff_seconds=0.05,
    webhook_concurrency=8,
    webhook_allow_networks=LOOPBACK,
)
STRICT = FAST.model_copy(update={"webhook_allow_networks": []})
"""The defaults' policy: only global addresses."""


def guard(c: Container, names: Names) -> RecordingNetwork:
    """Resolve with ``names`` (never the system's DNS) and record every connection opened."""
    egress = c.notifications.egress
    egress.resolver = names
    network = RecordingNetwork(egress.network)
    egress.network = network
    return network


@asynccontextmanager
async def running(
    settings: Settings, database: Database, events: EventSettings = FAST
) -> AsyncIterator[Env]:
    """A server with its event writer and webhook dispatcher running."""
    settings.events = events
    c = build(settings, db=database)
    tasks = [
        asyncio.create_task(c.events.run(), name="test-event-writer"),
        asyncio.create_task(c.notifications.run(), name="test-webhook-dispatcher"),
    ]
    try:
        async with checked_client(create_app(c)) as api:
            writer = await Callers(c).token(Role.OPERATOR, Scope.READ_WRITE)
            yield Env(c, api, writer)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def env(settings: Settings, database: Database) -> AsyncIterator[Env]:
    async with running(settings, database) as e:
        yield e


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """An error of our own operations (``/{uuid}``, ``/{uuid}/deliveries``, ``/{uuid}/secret``)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = dict(r.json())
    assert body["status"] == status and body["detail"]
    return body


def _message(r: httpx.Response, status: int) -> str:
    """An error of the original's five operations: ``{"message": …}`` as it answered."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"message"} and body["message"], body
    return str(body["message"])


# --- the API --------------------------------------------------------------------------------


async def test_shapes_follow_the_spec_when_listed_created_and_deleted(env: Env) -> None:
    async with receiving() as receiver:
        body = {"eventType": "device_online", "protocol": "http", "endpoint": receiver.url + "/a"}
        schema = spec.body_schema("post", "/notifications")
        assert schema is not None
        spec.validate(body, schema)
        r = await env.api.post("/api/v1/notifications", headers=env.h, json=body)
        assert r.status_code == 200, r.text
        spec.validate(r.json(), spec.response_schema("post", "/notifications"))
        [created] = r.json()
        assert created["status"] == "Ready" and created["eventType"] == "device_online"
        assert created["endpoint"] == body["endpoint"] and created["protocol"] == "http"
        assert created["confirmation"] == {"statusCode": 200, "error": ""}
        assert created["secret"]
        other = await env.subscribe(receiver, "job_update", "/b")

        r = await env.api.get("/api/v1/notifications", headers=env.h)
        assert r.status_code == 200
        spec.validate(r.json(), spec.response_schema("get", "/notifications"))
        assert [n["uuid"] for n in r.json()] == [created["uuid"], other["uuid"]]
        assert all("secret" not in n for n in r.json())

        r = await env.api.get("/api/v1/notifications/support", headers=env.h)
        assert r.status_code == 200
        spec.validate(r.json(), spec.response_schema("get", "/notifications/support"))
        spec.validate(r.json(), {"$ref": "#/definitions/SupportList"})
        assert r.json() == {
            "event": [
                {"displayName": "Device online", "eventType": "device_online"},
                {"displayName": "Device offline", "eventType": "device_offline"},
                {"displayName": "Job update", "eventType": "job_update"},
                {"displayName": "Property update", "eventType": "property_update"},
            ],
            "protocol": [
                {"displayName": "HTTP", "id": "http"},
                {"displayName": "HTTPS", "id": "https"},
            ],
        }

        r = await env.api.get(f"/api/v1/notifications/{created['uuid']}", headers=env.h)
        assert r.status_code == 200
        spec.validate(r.json(), {"$ref": "#/definitions/Notification"})
        assert r.json()["deliveries"] == {"pending": 0, "delivered": 0, "failed": 0}
        assert r.json()["confirmedAt"] and r.json()["createdBy"] == env.writer.email

        r = await env.api.delete(f"/api/v1/notifications/{created['uuid']}", headers=env.h)
        assert r.status_code == 204
        r = await env.api.delete(f"/api/v1/notifications/{created['uuid']}", headers=env.h)
        _message(r, 404)
        uuids = [other["uuid"]]
        schema = spec.body_schema("delete", "/notifications")
        assert schema is not None
        spec.validate(uuids, schema)
        r = await env.api.request("DELETE", "/api/v1/notifications", headers=env.h, json=uuids)
        assert r.status_code == 200 and r.json() == uuids
        assert (await env.api.get("/api/v1/notifications", headers=env.h)).json() == []


async def test_subscription_waits_for_confirmation_when_endpoint_fails_and_posting_again_confirms(
    env: Env,
) -> None:
    async with receiving() as receiver:
        receiver.status = 500
        first = await env.subscribe(receiver)
        assert first["status"] == "Pending Confirmation"
        assert first["confirmation"] == {"statusCode": 500, "error": ""}
        secret = first["secret"]
        [confirm] = receiver.requests
        assert confirm.headers["x-edgefleet-event"] == "subscription_confirmation"
        assert confirm.body["type"] == "subscription_confirmation"
        assert confirm.body["id"] == confirm.delivery
        assert {k: confirm.body["notification"][k] for k in ("uuid", "eventType", "endpoint")} == {
            "uuid": first["uuid"],
            "eventType": "device_online",
            "endpoint": receiver.url + "/hook",
        }
        signature = confirm.headers["x-edgefleet-signature"]
        assert verify(secret, confirm.raw, signature, now=int(time.time()))

        await env.emit(EventType.DEVICE_ONLINE)  # not Ready: nothing queued
        assert await env.count(WebhookDelivery) == 0

        receiver.status = 204
        again = await env.subscribe(receiver)
        assert again["uuid"] == first["uuid"] and again["status"] == "Ready"
        assert "secret" not in again  # shown once, when created
        assert len(receiver.requests) == 2
        retry = receiver.requests[1]
        assert verify(
            secret, retry.raw, retry.headers["x-edgefleet-signature"], now=int(time.time())
        )
        listed = (await env.api.get("/api/v1/notifications", headers=env.h)).json()
        assert [(n["uuid"], n["status"]) for n in listed] == [(first["uuid"], "Ready")]

    # nothing listens there any more: a connection error, not a status
    gone = await env.subscribe(receiver, "device_offline")
    assert gone["status"] == "Pending Confirmation"
    assert gone["confirmation"] == {"statusCode": None, "error": UNREACHABLE}


async def test_deliveries_are_signed_with_the_secret_given_at_creation(env: Env) -> None:
    async with receiving() as receiver:
        sub = await env.subscribe(receiver)
        secret = sub["secret"]
        await env.emit(EventType.DEVICE_ONLINE, 3)
        await env.emit(EventType.DEVICE_OFFLINE)  # another type: not for this subscription
        await eventually(lambda: _at_least(receiver, 3))
        got = receiver.events()
        assert len(got) == 3
        now = int(time.time())
        for req in got:
            assert verify(secret, req.raw, req.headers["x-edgefleet-signature"], now=now)
            assert not verify("whsec_wrong", req.raw, req.headers["x-edgefleet-signature"], now=now)
            assert req.headers["content-type"] == "application/json"
            assert req.headers["x-edgefleet-event"] == "device_online"
            assert req.path == "hook"
            body = req.body
            assert body["id"] == req.delivery and body["notification"] == sub["uuid"]
            assert body["eventType"] == "device_online" and body["deviceUUID"] == "dev-1"
            assert body["resource"] == "/status" and body["time"].endswith("Z")
        assert sorted(r.body["data"]["i"] for r in got) == [0, 1, 2]
        assert len({r.body["eventId"] for r in got}) == 3

        async def recorded() -> bool:
            views = await env.deliveries(sub["uuid"])
            return len(views) == 3 and all(v["state"] == "delivered" for v in views)

        await eventually(recorded)
        views = await env.deliveries(sub["uuid"])
        assert {v["uuid"] for v in views} == {r.delivery for r in got}
        for v in views:
            assert v["attempts"] == 1 and v["lastCode"] == 200 and v["lastError"] == ""
            assert v["deliveredAt"] and v["nextAt"] is None
            [attempt] = v["history"]
            assert attempt["statusCode"] == 200 and attempt["durationMs"] >= 0
        seqs = [v["seq"] for v in views]
        assert seqs == sorted(seqs, reverse=True)
        r = await env.api.get(
            f"/api/v1/notifications/{sub['uuid']}/deliveries",
            headers=env.h,
            params={"limit": 1, "before": seqs[0]},
        )
        assert [v["seq"] for v in r.json()] == [seqs[1]]

        r = await env.api.post(f"/api/v1/notifications/{sub['uuid']}/secret", headers=env.h)
        assert r.status_code == 200
        rotated = r.json()["secret"]
        assert rotated != secret and r.json()["uuid"] == sub["uuid"]
        await env.emit(EventType.DEVICE_ONLINE)
        await eventually(lambda: _at_least(receiver, 4))
        last = receiver.events()[-1]
        signature = last.headers["x-edgefleet-signature"]
        assert verify(rotated, last.raw, signature, now=int(time.time()))
        assert not verify(secret, last.raw, signature, now=int(time.time()))


async def _at_least(receiver: Receiver, n: int) -> bool:
    return len(receiver.events()) >= n


async def test_failing_receiver_is_retried_until_it_recovers(
    settings: Settings, database: Database
) -> None:
    events = FAST.model_copy(update={"webhook_max_attempts": 50})
    async with running(settings, database, events) as env, receiving() as receiver:
        sub = await env.subscribe(receiver)
        receiver.status = 503
        await env.emit(EventType.DEVICE_ONLINE)
        await eventually(lambda: _at_least(receiver, 2))
        receiver.status = 200

        async def delivered() -> bool:
            views = await env.deliveries(sub["uuid"])
            return bool(views) and views[0]["state"] == "delivered"

        await eventually(delivered)
        [view] = await env.deliveries(sub["uuid"])
        sent = receiver.events()
        assert len({r.delivery for r in sent}) == 1  # one delivery, sent again and again
        assert len({r.raw for r in sent}) == 1  # the same body each time
        assert view["attempts"] == len(view["history"]) == len(sent) >= 3
        assert [a["statusCode"] for a in view["history"]] == [503] * (len(sent) - 1) + [200]
        assert view["lastCode"] == 200


async def test_delivery_fails_after_the_last_attempt(env: Env) -> None:
    async with receiving() as receiver:
        sub = await env.subscribe(receiver)
        receiver.status = 500
        async with receiving() as vanishing:
            gone = await env.subscribe(vanishing, "device_offline")
        await env.emit(EventType.DEVICE_ONLINE)
        await env.emit(EventType.DEVICE_OFFLINE)

        async def failed(uuid: str) -> bool:
            views = await env.deliveries(uuid)
            return bool(views) and views[0]["state"] == "failed"

        await eventually(lambda: failed(sub["uuid"]))
        await eventually(lambda: failed(gone["uuid"]))
        [view] = await env.deliveries(sub["uuid"])
        assert view["attempts"] == 3 and len(receiver.events()) == 3
        assert [a["statusCode"] for a in view["history"]] == [500, 500, 500]
        assert view["nextAt"] is None and view["deliveredAt"] is None
        [view] = await env.deliveries(gone["uuid"])
        assert view["attempts"] == 3 and view["lastCode"] is None
        assert view["lastError"] == UNREACHABLE
        assert all(a["statusCode"] is None and a["error"] == UNREACHABLE for a in view["history"])
        r = await env.api.get(f"/api/v1/notifications/{gone['uuid']}", headers=env.h)
        assert r.json()["deliveries"] == {"pending": 0, "delivered": 0, "failed": 1}


async def test_hanging_receiver_does_not_delay_a_healthy_one(
    settings: Settings, database: Database
) -> None:
    # four in flight, one per receiver; a hanging request is given up only after 60 s
    events = FAST.model_copy(update={"webhook_concurrency": 4, "webhook_timeout_seconds": 60})
    async with (
        running(settings, database, events) as env,
        receiving() as slow,
        receiving() as healthy,
    ):
        await env.subscribe(slow, "device_offline")
        sub = await env.subscribe(healthy, "device_online")
        slow.hang = True
        await env.emit(EventType.DEVICE_OFFLINE, 10, device="dev-slow")  # first in line
        await env.emit(EventType.DEVICE_ONLINE, 10, device="dev-ok")

        async def healthy_done() -> bool:
            views = await env.deliveries(sub["uuid"])
            return len(views) == 10 and all(v["state"] == "delivered" for v in views)

        await eventually(healthy_done)
        assert len(healthy.events()) == 10
        assert slow.open == 1 and len(slow.events()) == 1  # its share, still hanging
        assert env.c.notifications.in_flight == 1


async def test_nothing_is_queued_when_no_one_subscribed_to_the_type(env: Env) -> None:
    await env.emit(EventType.DEVICE_ONLINE, 5)  # no subscriptions at all
    assert await env.count(WebhookDelivery) == 0
    async with receiving() as receiver:
        await env.subscribe(receiver, "device_online")
        await env.emit(EventType.PROPERTY_UPDATE, 5)
        await env.emit(EventType.JOB_UPDATE, 5)
        await env.emit(EventType.GATEWAY_EVENT, 5)
        assert await env.count(WebhookDelivery) == 0
        await env.emit(EventType.DEVICE_ONLINE, 2)
        assert await env.count(WebhookDelivery) == 2


async def test_deleting_a_subscription_stops_its_deliveries(env: Env) -> None:
    async with receiving() as receiver:
        sub = await env.subscribe(receiver)
        receiver.status = 500
        await env.emit(EventType.DEVICE_ONLINE)
        await eventually(lambda: _at_least(receiver, 1))
        r = await env.api.delete(f"/api/v1/notifications/{sub['uuid']}", headers=env.h)
        assert r.status_code == 204
        # its queue and its attempts are gone with it: nothing is left to send
        assert await env.count(WebhookDelivery) == 0
        assert await env.count(DeliveryAttempt) == 0
        receiver.status = 200
        await env.emit(EventType.DEVICE_ONLINE, 3)
        assert await env.count(WebhookDelivery) == 0
        r = await env.api.get(f"/api/v1/notifications/{sub['uuid']}/deliveries", headers=env.h)
        _problem(r, 404)


async def test_old_finished_deliveries_are_purged_when_past_retention(env: Env) -> None:
    async with receiving() as receiver:
        sub = await env.subscribe(receiver)
        await env.emit(EventType.DEVICE_ONLINE, 3)

        async def delivered() -> bool:
            views = await env.deliveries(sub["uuid"])
            return len(views) == 3 and all(v["state"] == "delivered" for v in views)

        await eventually(delivered)
    async with env.c.db.session() as s:  # one still to be sent, as far as the purge knows
        first = await s.scalar(select(func.min(WebhookDelivery.id)))
        await s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == first)
            .values(state="pending", next_at=datetime.now(UTC) + timedelta(days=365))
        )
    assert await env.c.notifications.purge() == 0  # nothing is old yet
    env.c.notifications.clock = lambda: datetime.now(UTC) + timedelta(days=31)
    assert await env.c.notifications.purge(batch=1) == 2
    assert await env.count(WebhookDelivery) == 1
    assert await env.count(DeliveryAttempt) == 1  # the kept one's; the others' went with them


async def test_two_dispatchers_never_send_one_delivery_twice(
    settings: Settings, database: Database
) -> None:
    async with running(settings, database) as env, receiving() as receiver:
        # a second server instance on the same database, with its own writer and dispatcher
        other = build(settings, db=database)
        tasks = [
            asyncio.create_task(other.events.run(), name="test-second-writer"),
            asyncio.create_task(other.notifications.run(), name="test-second-dispatcher"),
        ]
        try:
            await env.subscribe(receiver)
            receiver.delay = 0.02  # sends overlap, so both claim while the other is sending
            for _ in range(6):
                for c in (env.c, other):
                    for i in range(5):
                        c.events.emit(NewEvent(EventType.DEVICE_ONLINE, datetime.now(UTC), f"d{i}"))
            await asyncio.gather(env.c.events.drained(), other.events.drained())

            async def all_delivered() -> bool:
                async with env.c.db.session() as s:
                    n = await s.scalar(
                        select(func.count())
                        .select_from(WebhookDelivery)
                        .where(WebhookDelivery.state == "delivered")
                    )
                return n == 60

            await eventually(all_delivered)
            assert other.notifications.sent > 0 and env.c.notifications.sent > 0
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        sent = [r.delivery for r in receiver.events()]
        assert len(sent) == len(set(sent)) == 60
        assert await env.count(DeliveryAttempt) == 60


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "JSON"),
        (b'["device_online"]', "object"),
        (b"{}", "eventType is required"),
        (b'{"eventType": "device_online", "protocol": "http"}', "endpoint is required"),
        (
            b'{"eventType": "device_online", "protocol": "smtp", "endpoint": "smtp://x/"}',
            "protocol",
        ),
        (
            b'{"eventType": "device_online", "protocol": "http", "endpoint": "https://x/"}',
            "does not match",
        ),
        (
            b'{"eventType": "gateway_event", "protocol": "http", "endpoint": "http://x/"}',
            "eventType must be one of",
        ),
        (b'{"eventType": "device_online", "protocol": "http", "endpoint": "/hook"}', "absolute"),
    ],
    ids=["not-json", "array", "empty", "no-endpoint", "smtp", "scheme", "type", "relative"],
)
async def test_bad_subscriptions_are_refused_with_a_message(
    env: Env, body: bytes, says: str
) -> None:
    r = await env.api.post(
        "/api/v1/notifications",
        headers={**env.h, "content-type": "application/json"},
        content=body,
    )
    assert says in _message(r, 400)
    assert await env.count(WebhookDelivery) == 0
    assert (await env.api.get("/api/v1/notifications", headers=env.h)).json() == []


async def test_bad_deletes_are_refused_and_delete_nothing(env: Env) -> None:
    async with receiving() as receiver:
        sub = await env.subscribe(receiver)
    for body in ({"uuid": sub["uuid"]}, [], [1]):
        r = await env.api.request("DELETE", "/api/v1/notifications", headers=env.h, json=body)
        _message(r, 400)
    r = await env.api.request(
        "DELETE", "/api/v1/notifications", headers=env.h, json=[sub["uuid"], "no-such"]
    )
    assert "no-such" in _message(r, 404)
    assert len((await env.api.get("/api/v1/notifications", headers=env.h)).json()) == 1
    for path in ("/no-such", "/no-such/deliveries"):
        _problem(await env.api.get(f"/api/v1/notifications{path}", headers=env.h), 404)
    _problem(await env.api.post("/api/v1/notifications/no-such/secret", headers=env.h), 404)


async def test_read_only_token_can_read_but_not_change(env: Env) -> None:
    reader = await Callers(env.c).token(Role.OPERATOR, Scope.READ)
    async with receiving() as receiver:
        sub = await env.subscribe(receiver)
        body = {"eventType": "device_offline", "protocol": "http", "endpoint": receiver.url}
        r = await env.api.post("/api/v1/notifications", headers=reader.headers, json=body)
        _message(r, 403)
        assert len(receiver.requests) == 1  # the writer's confirmation only
    uuid = sub["uuid"]
    _message(await env.api.delete(f"/api/v1/notifications/{uuid}", headers=reader.headers), 403)
    r = await env.api.post(f"/api/v1/notifications/{uuid}/secret", headers=reader.headers)
    _problem(r, 403)
    r = await env.api.request(
        "DELETE", "/api/v1/notifications", headers=reader.headers, json=[uuid]
    )
    _message(r, 403)
    for path in ("", "/support", f"/{uuid}", f"/{uuid}/deliveries"):
        r = await env.api.get(f"/api/v1/notifications{path}", headers=reader.headers)
        assert r.status_code == 200, (path, r.text)
    _message(await env.api.get("/api/v1/notifications"), 401)
    _problem(await env.api.get(f"/api/v1/notifications/{uuid}"), 401)


async def test_messaging_runs_the_dispatcher_when_live(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    """The composition root wires it: hook and listener on the event writer, the dispatcher
    started with messaging."""
    async with receiving() as receiver:
        body = {"eventType": "property_update", "protocol": "http", "endpoint": receiver.url}
        r = await live_api.post("/api/v1/notifications", headers=live_writer.headers, json=body)
        assert r.status_code == 200 and r.json()[0]["status"] == "Ready"
        live.events.emit(
            NewEvent(EventType.PROPERTY_UPDATE, datetime.now(UTC), "dev-1", "/system/properties")
        )
        await eventually(lambda: _at_least(receiver, 1))
        [got] = receiver.events()
        assert got.body["eventType"] == "property_update"
        assert verify(
            r.json()[0]["secret"],
            got.raw,
            got.headers["x-edgefleet-signature"],
            now=int(time.time()),
        )


# --- the outbound guard ---------------------------------------------------------------------

NAMES = {
    "loopback.test": ["127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "private.test": ["10.1.2.3"],
    "mixed.test": ["93.184.215.14", "127.0.0.1"],  # one refused address refuses the name
}
INTERNAL = [
    "http://127.0.0.1:{port}/hook",
    "http://loopback.test:{port}/hook",
    "http://[::1]:{port}/hook",
    "http://2130706433:{port}/hook",
    "http://0x7f.1:{port}/hook",
    "http://127.1:{port}/hook",
    "http://[::ffff:127.0.0.1]:{port}/hook",
    "http://0.0.0.0:{port}/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.test/latest/meta-data/",
    "https://[fe80::1]/hook",
    "http://10.0.0.1/hook",
    "http://private.test/hook",
    "http://100.64.0.1/hook",
    "http://[fd00::1]/hook",
    "http://224.0.0.1/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "http://[64:ff9b::a9fe:a9fe]/hook",
    "http://mixed.test:{port}/hook",
]


async def test_internal_endpoints_are_refused_before_any_connection_when_not_allowed(
    settings: Settings, database: Database
) -> None:
    async with running(settings, database, STRICT) as env, receiving() as receiver:
        names = Names(dict(NAMES))
        network = guard(env.c, names)
        port = httpx.URL(receiver.url).port
        for template in INTERNAL:
            endpoint = template.format(port=port)
            proto = httpx.URL(endpoint).scheme
            body = {"eventType": "device_online", "protocol": proto, "endpoint": endpoint}
            r = await env.api.post("/api/v1/notifications", headers=env.h, json=body)
            assert _message(r, 400) == REFUSED, endpoint
        # the names were looked up (in the table), the numeric forms were not; nothing was
        # connected to, although the receiver on 127.0.0.1 would have answered
        assert sorted(set(names.asked)) == sorted(NAMES)
        assert network.connects == []
        assert receiver.requests == []
        assert (await env.api.get("/api/v1/notifications", headers=env.h)).json() == []


async def test_loopback_receiver_is_reached_only_once_its_network_is_allowed(
    settings: Settings, database: Database
) -> None:
    async with receiving() as receiver:
        async with running(settings, database, STRICT) as env:
            network = guard(env.c, Names())
            body = {"eventType": "device_online", "protocol": "http", "endpoint": receiver.url}
            r = await env.api.post("/api/v1/notifications", headers=env.h, json=body)
            assert _message(r, 400) == REFUSED
            assert network.connects == [] and receiver.requests == []
        async with running(settings, database, FAST) as env:
            network = guard(env.c, Names())
            [sub] = (await env.api.post("/api/v1/notifications", headers=env.h, json=body)).json()
            assert sub["status"] == "Ready"
            assert network.connects == [("127.0.0.1", httpx.URL(receiver.url).port)]
            assert len(receiver.requests) == 1


async def test_a_name_rebound_to_a_refused_address_is_refused_when_connecting(
    settings: Settings, database: Database
) -> None:
    """The address is checked when the connection is made, not only when subscribing: a
    name that answers an allowed address first and a refused one next is never reached."""
    only_receiver = FAST.model_copy(
        update={"webhook_allow_networks": [ipaddress.ip_network("127.0.0.1/32")]}
    )
    async with running(settings, database, only_receiver) as env, receiving() as receiver:
        port = httpx.URL(receiver.url).port
        names = Names({"rebind.test": ["127.0.0.1"]}, later={"rebind.test": ["127.0.0.2"]})
        network = guard(env.c, names)
        body = {
            "eventType": "device_online",
            "protocol": "http",
            "endpoint": f"http://rebind.test:{port}/hook",
        }
        r = await env.api.post("/api/v1/notifications", headers=env.h, json=body)
        assert r.status_code == 200, r.text
        [sub] = r.json()
        assert names.asked == ["rebind.test", "rebind.test"]  # when subscribing, when sending
        assert sub["status"] == "Pending Confirmation"
        assert sub["confirmation"] == {"statusCode": None, "error": REFUSED}
        assert network.connects == [] and receiver.requests == []

        # Ready while the name points at the receiver; a delivery after it moved is refused
        names.later = {}
        names.table["rebind.test"] = ["127.0.0.1"]
        r = await env.api.post("/api/v1/notifications", headers=env.h, json=body)
        assert r.json()[0]["status"] == "Ready"
        names.table["rebind.test"] = ["127.0.0.2"]
        await env.emit(EventType.DEVICE_ONLINE)

        async def refused() -> bool:
            views = await env.deliveries(sub["uuid"])
            return bool(views) and views[0]["lastError"] == REFUSED

        await eventually(refused)
        assert receiver.events() == []
        assert network.connects == [("127.0.0.1", port)]  # the second confirmation only


async def test_unanswered_requests_get_one_generic_reason_and_the_log_the_detail(
    settings: Settings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A closed port and a receiver that never answers look the same through the API, so
    confirmation answers cannot map which ports are open; the server log tells them apart."""
    events = FAST.model_copy(update={"webhook_timeout_seconds": 0.5})
    caplog.set_level(logging.WARNING, logger="edgefleet.services.notifications")
    async with running(settings, database, events) as env, receiving() as hanging:
        async with receiving() as gone:
            closed = gone.url
        hanging.hang = True
        answers = []
        for endpoint in (closed, hanging.url):
            body = {"eventType": "device_online", "protocol": "http", "endpoint": endpoint}
            r = await env.api.post("/api/v1/notifications", headers=env.h, json=body)
            assert r.status_code == 200, r.text
            answers.append(r.json()[0]["confirmation"])
        assert answers == [{"statusCode": None, "error": UNREACHABLE}] * 2
    logged = [r.getMessage() for r in caplog.records if "confirmation to" in r.getMessage()]
    assert len(logged) == 2
    assert "ConnectError" in logged[0] and "no answer within 0.5 s" in logged[1]
