"""The remote-control protocol: topics and Sanji wire messages (recorded and generated)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.errors import MessageError
from edgefleet.mqtt import topics
from edgefleet.mqtt.messages import (
    MAX_MESSAGE_BYTES,
    EventMessage,
    RequestMessage,
    ResponseMessage,
    decode_client,
    decode_request,
    decode_status,
    encode,
)

UUID = "2ad0fbb8-6f53-46ea-a10a-00b7b75145d3"

# Shapes recorded from the original (research notes §2.4, §3.3).
RECORDED_RESPONSE = (
    b'{"code":200,"data":{"enable":false,"id":1,"name":"ssh","status":"true"},"id":137108,'
    b'"method":"put","resource":"/system/services/ssh","sign":["service"],'
    b'"task_id":"a6a465df-86eb-41c0-a24e-4c85668985c8"}'
)
RECORDED_EVENT = (
    b'{"data":"wwan0","code":200,"resource":"/system/properties/defaultRoute","method":"put"}'
)


def test_topics_round_trip() -> None:
    for channel in topics.Channel:
        name = topics.topic(UUID, channel)
        assert name == f"$ThingsPro/devices/{UUID}/{channel.value}"
        assert topics.parse(name) == (UUID, channel)
    assert topics.SERVER_SUBSCRIPTIONS == (
        "$ThingsPro/devices/+/client",
        "$ThingsPro/devices/+/status",
    )
    assert (
        topics.shared("ef", "$ThingsPro/devices/+/client")
        == "$share/ef/$ThingsPro/devices/+/client"
    )
    assert topics.server_subscriptions("") == list(topics.SERVER_SUBSCRIPTIONS)
    assert topics.server_subscriptions("ef") == [
        "$share/ef/$ThingsPro/devices/+/client",
        "$share/ef/$ThingsPro/devices/+/status",
    ]


def test_an_event_carries_its_event_id_only_when_it_has_one() -> None:
    with_id = EventMessage(method="put", resource="/a", data=1, code=200, event_id="e1")
    assert json.loads(encode(with_id))["event_id"] == "e1"
    assert "event_id" not in json.loads(encode(EventMessage(method="put", resource="/a")))
    decoded = decode_client(encode(with_id))
    assert isinstance(decoded, EventMessage) and decoded.event_id == "e1"
    with pytest.raises(MessageError):
        decode_client(b'{"method":"put","resource":"/a","event_id":""}')


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "$ThingsPro/devices/x",
        "ThingsPro/devices/x/client",
        "$ThingsPro/devices//client",
        "$ThingsPro/devices/x/other",
        "$ThingsPro/other/x/client",
    ],
)
def test_foreign_topics_are_refused(bad: str) -> None:
    with pytest.raises(MessageError):
        topics.parse(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "x#"])
def test_uuids_cannot_inject_topic_levels(bad: str) -> None:
    with pytest.raises(MessageError):
        topics.topic(bad, topics.Channel.SERVER)


def test_recorded_response_and_event_decode() -> None:
    r = decode_client(RECORDED_RESPONSE)
    assert isinstance(r, ResponseMessage)
    assert (r.code, r.method, r.id, r.sign) == (200, "put", 137108, ["service"])
    assert json.loads(encode(r)) == json.loads(RECORDED_RESPONSE)  # passed through intact
    e = decode_client(RECORDED_EVENT)
    assert isinstance(e, EventMessage) and e.data == "wwan0" and e.code == 200


def test_request_encoding_matches_the_original() -> None:
    req = RequestMessage(method="GET", resource="/system/properties", task_id="t-1")  # type: ignore[arg-type]
    assert json.loads(encode(req)) == {
        "method": "get",
        "resource": "/system/properties",
        "task_id": "t-1",
    }
    assert decode_request(encode(req)) == req


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"method":"get"}', "resource"),
        (b'{"method":"fetch","resource":"/x"}', "method"),
        (b'{"method":"get","resource":"x"}', "start with '/'"),
        (b'{"task_id":"t","method":"get","resource":"/x"}', "code"),
        (b"\xff\xfe", "not JSON"),
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "exceeds"),
    ],
)
def test_bad_client_messages_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        decode_client(payload)


def test_status_payloads() -> None:
    assert decode_status(b"1") is True and decode_status(b"0") is False
    with pytest.raises(MessageError):
        decode_status(b"online")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=10,
)
METHODS = st.sampled_from(["get", "post", "put", "delete"])
RESOURCES = st.text(max_size=40).map(lambda s: "/" + s)
TASK_IDS = st.text(min_size=1, max_size=64)


@given(METHODS, RESOURCES, JSON, TASK_IDS)
def test_requests_round_trip(method: str, resource: str, data: object, task_id: str) -> None:
    req = RequestMessage(method=method, resource=resource, data=data, task_id=task_id)  # type: ignore[arg-type]
    assert decode_request(encode(req)) == req


@given(
    METHODS,
    RESOURCES,
    JSON,
    TASK_IDS,
    st.integers(100, 599),
    st.none() | st.integers(0, 655350),
    st.lists(st.text(max_size=10), max_size=3),
)
def test_responses_round_trip(
    method: str,
    resource: str,
    data: object,
    task_id: str,
    code: int,
    msg_id: int | None,
    sign: list[str],
) -> None:
    resp = ResponseMessage(
        method=method,
        resource=resource,
        data=data,
        task_id=task_id,
        code=code,  # type: ignore[arg-type]
        id=msg_id,
        sign=sign,
    )
    assert decode_client(encode(resp)) == resp


@given(METHODS, RESOURCES, JSON, st.none() | st.integers(100, 599))
def test_events_round_trip(method: str, resource: str, data: object, code: int | None) -> None:
    ev = EventMessage(method=method, resource=resource, data=data, code=code)  # type: ignore[arg-type]
    assert decode_client(encode(ev)) == ev


@settings(max_examples=500)
@given(st.binary(max_size=300) | JSON.map(lambda d: json.dumps(d).encode()))
def test_any_payload_decodes_or_fails_with_a_reason(payload: bytes) -> None:
    for decode in (decode_client, decode_request, decode_status):
        try:
            decode(payload)
        except MessageError as exc:
            assert exc.message
