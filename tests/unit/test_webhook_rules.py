"""Webhook rules (domain/webhooks.py): signatures, the retry schedule, endpoint checks."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from edgefleet.domain.events import StoredEvent
from edgefleet.domain.webhooks import (
    MAX_BACKOFF,
    DeliveryState,
    after_attempt,
    backoff_delay,
    delivery_body,
    encode,
    headers,
    origin,
    parse_subscription,
    parse_uuids,
    signature,
    support,
    verify,
)
from edgefleet.errors import ValidationError

SECRET = "whsec_test"
RAW = b'{"type":"event","id":"d-1"}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body_when_signed() -> None:
    header = signature(SECRET, RAW, 1_700_000_000)
    t, v1 = header.split(",")
    assert t == "t=1700000000"
    expected = hmac.new(SECRET.encode(), b"1700000000." + RAW, hashlib.sha256).hexdigest()
    assert v1 == f"v1={expected}"


def test_signature_verifies_when_body_secret_and_time_match() -> None:
    header = signature(SECRET, RAW, 1000)
    assert verify(SECRET, RAW, header, now=1000)
    assert verify(SECRET, RAW, header, now=1299)
    assert verify(SECRET, RAW, f"{header},v1=00ff", now=1000)  # any v1 may match


@pytest.mark.parametrize(
    ("secret", "raw", "now"),
    [
        ("whsec_other", RAW, 1000),  # another secret
        (SECRET, RAW + b" ", 1000),  # the body was changed
        (SECRET, RAW, 1301),  # too old: a replay
        (SECRET, RAW, 699),  # from the future
    ],
)
def test_signature_is_refused_when_anything_differs(secret: str, raw: bytes, now: int) -> None:
    assert not verify(secret, raw, signature(SECRET, RAW, 1000), now=now)


@pytest.mark.parametrize("header", ["", "t=1000", "v1=abc", "t=x,v1=abc", "garbage"])
def test_malformed_signature_headers_do_not_verify(header: str) -> None:
    assert not verify(SECRET, RAW, header, now=1000)


def test_request_headers_name_the_event_the_delivery_and_the_signature() -> None:
    got = headers("device_online", "d-1", SECRET, RAW, 1000)
    assert got["Content-Type"] == "application/json"
    assert got["X-Edgefleet-Event"] == "device_online"
    assert got["X-Edgefleet-Delivery"] == "d-1"
    assert verify(SECRET, RAW, got["X-Edgefleet-Signature"], now=1000)


def test_delivery_body_carries_the_event_when_queued() -> None:
    event = StoredEvent(
        id=42,
        type="device_offline",
        at=datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC),
        device_uuid="dev-1",
        resource="/status",
        text="offline",
        data={"online": False},
        severity="warning",
    )
    body = delivery_body("d-1", "n-1", event)
    assert body == {
        "type": "event",
        "id": "d-1",
        "notification": "n-1",
        "eventType": "device_offline",
        "eventId": 42,
        "time": "2024-05-01T12:00:00.000005Z",
        "deviceUUID": "dev-1",
        "resource": "/status",
        "text": "offline",
        "severity": "warning",
        "data": {"online": False},
    }
    assert encode({"a": "é", "b": 1}) == '{"a":"é","b":1}'.encode()


def test_backoff_doubles_from_the_base_when_attempts_fail() -> None:
    assert [backoff_delay(n, 5) for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert backoff_delay(0, 5) == 0


def test_backoff_is_capped_at_an_hour_when_attempts_pile_up() -> None:
    assert backoff_delay(11, 5) == MAX_BACKOFF == 3600
    assert backoff_delay(1000, 5) == 3600


@pytest.mark.parametrize(
    ("code", "attempts", "state"),
    [
        (200, 1, DeliveryState.DELIVERED),
        (204, 10, DeliveryState.DELIVERED),
        (500, 1, DeliveryState.PENDING),
        (None, 2, DeliveryState.PENDING),
        (301, 2, DeliveryState.PENDING),  # redirects are not followed
        (404, 3, DeliveryState.FAILED),
        (None, 3, DeliveryState.FAILED),
    ],
)
def test_an_attempt_delivers_retries_or_fails_when_answered(
    code: int | None, attempts: int, state: DeliveryState
) -> None:
    assert after_attempt(code, attempts, max_attempts=3) is state


@pytest.mark.parametrize(
    ("protocol", "endpoint"),
    [
        ("http", "http://127.0.0.1:8080/hook"),
        ("https", "https://hooks.example.com/a/b?x=1"),
        ("HTTPS", "HTTPS://Hooks.Example.com"),
        ("http", "http://[::1]:9000/"),
    ],
)
def test_absolute_urls_of_the_protocol_are_accepted(protocol: str, endpoint: str) -> None:
    kind, proto, url = parse_subscription("device_online", protocol, f" {endpoint} ")
    assert (kind.value, proto, url) == ("device_online", protocol.lower(), endpoint)


@pytest.mark.parametrize(
    ("event_type", "protocol", "endpoint"),
    [
        ("device_online", "http", "https://example.com/hook"),  # scheme ≠ protocol
        ("device_online", "ftp", "ftp://example.com/hook"),
        ("device_online", "http", "/relative/hook"),
        ("device_online", "http", "example.com/hook"),
        ("device_online", "http", "http:///no-host"),
        ("device_online", "http", "http://user:pw@example.com/hook"),
        ("device_online", "http", "http://example.com:99999/hook"),
        ("device_online", "http", "http://example.com:0/hook"),
        ("device_online", "http", "http://example.com/a b"),
        ("device_online", "http", "http://example.com/#frag"),
        ("device_online", "http", "http://example.com/" + "x" * 2048),
        ("gateway_event", "http", "http://example.com/hook"),  # not notifiable
        ("nope", "http", "http://example.com/hook"),
        (None, "http", "http://example.com/hook"),
        ("device_online", "", "http://example.com/hook"),
        ("device_online", "http", 42),
    ],
)
def test_bad_subscriptions_are_refused(
    event_type: object, protocol: object, endpoint: object
) -> None:
    with pytest.raises(ValidationError):
        parse_subscription(event_type, protocol, endpoint)


def test_receivers_are_told_apart_by_scheme_host_and_port() -> None:
    assert origin("https://A.example.com/x") == origin("https://a.example.com:443/y")
    assert origin("http://h/x") == "http://h:80"
    assert origin("http://h:81/x") != origin("http://h/x")


@pytest.mark.parametrize("body", [None, {}, [], "x", [1], ["x" * 65], ["a"] * 1001])
def test_bad_uuid_lists_are_refused(body: object) -> None:
    with pytest.raises(ValidationError):
        parse_uuids(body)


def test_uuid_lists_lose_their_duplicates() -> None:
    assert parse_uuids(["a", "b", "a"]) == ["a", "b"]


def test_support_lists_the_four_events_and_two_protocols() -> None:
    got = support()
    assert [e["eventType"] for e in got["event"]] == [
        "device_online",
        "device_offline",
        "job_update",
        "property_update",
    ]
    assert got["protocol"] == [
        {"id": "http", "displayName": "HTTP"},
        {"id": "https", "displayName": "HTTPS"},
    ]
