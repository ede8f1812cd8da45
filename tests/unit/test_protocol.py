"""The remote-control protocol: topics and Sanji wire messages (recorded and generated)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.errors import MessageError
from edgefleet.protocol import topics
from edgefleet.protocol.messages import (
    BAD_STATUS,
    ENCODING,
    INVALID,
    MAX_DEPTH,
    MAX_INT,
    MAX_MESSAGE_BYTES,
    MIN_INT,
    NOT_JSON,
    NOT_OBJECT,
    NUL,
    NUMBER,
    REASONS,
    SURROGATE,
    TOO_DEEP,
    TOO_LARGE,
    EventMessage,
    RequestMessage,
    ResponseMessage,
    decode_client,
    decode_request,
    decode_status,
    encode,
    encode_response,
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
    req = RequestMessage(method="GET", resource="/system/properties", task_id="t-1")
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
        (b"\xff\xfe", "not UTF-8"),
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


def _text(**kwargs: int) -> st.SearchStrategy[str]:
    """Text a gateway may send: any character but NUL (lone surrogates are never drawn)."""
    return st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), **kwargs)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_text(max_size=8), kids, max_size=4),
    max_leaves=10,
)
METHODS = st.sampled_from(["get", "post", "put", "delete"])
RESOURCES = _text(max_size=40).map(lambda s: "/" + s)
TASK_IDS = _text(min_size=1, max_size=64)


@given(METHODS, RESOURCES, JSON, TASK_IDS)
def test_requests_round_trip(method: str, resource: str, data: object, task_id: str) -> None:
    req = RequestMessage(method=method, resource=resource, data=data, task_id=task_id)
    assert decode_request(encode(req)) == req


@given(
    METHODS,
    RESOURCES,
    JSON,
    TASK_IDS,
    st.integers(100, 599),
    st.none() | st.integers(0, 655350),
    st.lists(_text(max_size=10), max_size=3),
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
        code=code,
        id=msg_id,
        sign=sign,
    )
    assert decode_client(encode(resp)) == resp


@given(METHODS, RESOURCES, JSON, st.none() | st.integers(100, 599))
def test_events_round_trip(method: str, resource: str, data: object, code: int | None) -> None:
    ev = EventMessage(method=method, resource=resource, data=data, code=code)
    assert decode_client(encode(ev)) == ev


@settings(max_examples=500)
@given(st.binary(max_size=300) | JSON.map(lambda d: json.dumps(d).encode()))
def test_any_payload_decodes_or_fails_with_a_reason(payload: bytes) -> None:
    for decode in (decode_client, decode_request, decode_status):
        try:
            decode(payload)
        except MessageError as exc:
            assert exc.message


EVENT = b'{"method":"put","resource":"/system/properties/aliasName","data":%s}'


def _event(data: bytes) -> bytes:
    return EVENT % data


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # NUL anywhere: PostgreSQL refuses it in JSON and text alike
        (_event(b'"a\\u0000b"'), NUL),
        (_event(b'{"modelName":"UC-8112\\u0000"}'), NUL),
        (_event(b'{"a\\u0000":1}'), NUL),
        (b'{"method":"put","resource":"/a\\u0000"}', NUL),
        (b'{"method":"get","resource":"/a","task_id":"t","code":200,"sign":["\\u0000"]}', NUL),
        # lone surrogates, escaped (JSON allows them) or as raw bytes (not UTF-8)
        (_event(b'"\\ud800"'), SURROGATE),
        (_event(b'{"\\udfff":1}'), SURROGATE),
        (_event(b'["x\\udc00y"]'), SURROGATE),
        (_event(b'"\xed\xa0\x80"'), ENCODING),
        (_event(b'"\xff"'), ENCODING),
        # nesting: a 6 KB message that Python's json cannot even parse, and one it can
        (_event(b"[" * 3000 + b"]" * 3000), TOO_DEEP),
        (_event(b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH), TOO_DEEP),
        # numbers: beyond 64 bits, beyond a double, and JSON's non-numbers Python accepts
        (_event(str(MAX_INT + 1).encode()), NUMBER),
        (_event(str(MIN_INT - 1).encode()), NUMBER),
        (_event(b"9" * 5000), NUMBER),
        (_event(b"1e400"), NUMBER),
        (_event(b"-1e400"), NUMBER),
        (_event(b"NaN"), NUMBER),
        (_event(b"[Infinity]"), NUMBER),
        (_event(b'{"x":-Infinity}'), NUMBER),
        # wrong types and ranges
        (b'{"method":5,"resource":"/a"}', INVALID),
        (b'{"method":"put","resource":["/a"]}', INVALID),
        (b'{"method":"put","resource":"/a","code":"abc"}', INVALID),
        (b'{"method":"put","resource":"/a","code":2147483648}', INVALID),
        (b'{"method":"put","resource":"/a","event_id":12}', INVALID),
        (b'{"method":"get","resource":"/a","task_id":7,"code":200}', INVALID),
        (b'{"method":"get","resource":"/a","task_id":"t","code":200,"sign":"x"}', INVALID),
        (b"null", NOT_OBJECT),
        (b'"text"', NOT_OBJECT),
        (b"{", NOT_JSON),
        (b"\x00\x01\x02", NOT_JSON),
        (_event(b'"' + b"a" * MAX_MESSAGE_BYTES + b'"'), TOO_LARGE),
    ],
)
def test_hostile_messages_are_refused_with_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as err:
        decode_client(payload)
    assert err.value.reason == reason
    assert err.value.message


@pytest.mark.parametrize(
    "data",
    [
        b'"\\ud83d\\ude00 \xe2\x82\xac"',  # a surrogate pair is one character; UTF-8 text
        str(MAX_INT).encode(),
        str(MIN_INT).encode(),
        b"1e300",
        b"-5e-324",
        b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1),
        b'{"\\\\u0000":"a backslash, then u0000"}',
    ],
)
def test_what_is_within_the_bounds_is_accepted(data: bytes) -> None:
    message = decode_client(_event(data))
    assert isinstance(message, EventMessage)
    assert message.data == json.loads(data)


def test_an_empty_message_is_not_json() -> None:
    # the router ignores empty messages (MQTT's way of clearing a retained one) before this
    with pytest.raises(MessageError) as err:
        decode_client(b"")
    assert err.value.reason == NOT_JSON
    with pytest.raises(MessageError) as err:
        decode_status(b"")
    assert err.value.reason == BAD_STATUS


def test_an_answer_too_large_for_the_protocol_becomes_a_413() -> None:
    small = ResponseMessage(method="get", resource="/a", task_id="t", code=200, data="x")
    assert decode_client(encode_response(small)) == small
    big = small.model_copy(update={"data": "x" * MAX_MESSAGE_BYTES})
    sent = decode_client(encode_response(big))
    assert isinstance(sent, ResponseMessage)
    assert (sent.task_id, sent.code) == ("t", 413)
    assert "exceeds" in sent.data["message"]


_ANY_TEXT = st.text(st.characters(exclude_categories=[]), max_size=12)  # NUL, surrogates too
_HOSTILE_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and ±Infinity too: json.dumps writes them as Python reads them
    | _ANY_TEXT,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_ANY_TEXT, kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "method": METHODS | _HOSTILE_JSON,
            "resource": RESOURCES | _HOSTILE_JSON,
            "task_id": TASK_IDS | _HOSTILE_JSON,
            "code": st.integers() | _HOSTILE_JSON,
            "event_id": _HOSTILE_JSON,
            "sign": _HOSTILE_JSON,
            "data": _HOSTILE_JSON,
        },
    ).map(lambda d: json.dumps(d).encode())
    | st.integers(1, 20_000).map(lambda n: _event(b"[" * n + b"]" * n))
    | st.binary(max_size=300)
)
def test_any_hostile_message_decodes_or_is_refused_with_a_known_reason(payload: bytes) -> None:
    for decode in (decode_client, decode_request):
        try:
            decoded = decode(payload)
        except MessageError as exc:
            assert exc.reason in REASONS and exc.message
        else:  # what passes can be stored as it is, in PostgreSQL's JSON as in SQLite's
            _assert_storable(decoded.model_dump(mode="json"), depth=0)
    try:
        decode_status(payload)
    except MessageError as exc:
        assert exc.reason == BAD_STATUS


def _assert_storable(value: object, depth: int) -> None:
    assert depth <= MAX_DEPTH
    if isinstance(value, str):
        assert "\x00" not in value
        value.encode("utf-8")  # no lone surrogate
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        assert MIN_INT <= value <= MAX_INT
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_storable(k, depth)
            _assert_storable(v, depth + 1)
    else:
        assert isinstance(value, list)
        for v in value:
            _assert_storable(v, depth + 1)
