"""The only place ThingsPro topic strings are built and parsed.

    $ThingsPro/devices/<uuid>/server   server → gateway: requests
    $ThingsPro/devices/<uuid>/client   gateway → server: responses (with task_id) and events
    $ThingsPro/devices/<uuid>/status   gateway → server: "1" on connect, "0" as retained will

``#`` and ``+`` at the first level never match ``$`` topics, so the server subscribes to
the ``+`` forms below explicitly.
"""

from __future__ import annotations

from enum import StrEnum

from edgefleet.errors import MessageError

PREFIX = "$ThingsPro/devices"
_FORBIDDEN = frozenset("/+#\x00")
BAD_TOPIC = "bad_topic"
"""``MessageError.reason`` of a topic that is not a gateway's."""


class Channel(StrEnum):
    SERVER = "server"
    CLIENT = "client"
    STATUS = "status"


def topic(device_uuid: str, channel: Channel) -> str:
    if not device_uuid or _FORBIDDEN & set(device_uuid):
        raise MessageError(f"{device_uuid!r} cannot be part of a topic")
    return f"{PREFIX}/{device_uuid}/{channel.value}"


def parse(name: str) -> tuple[str, Channel]:
    """``(device uuid, channel)`` of a ThingsPro topic; ``MessageError`` for anything else."""
    head, sep, rest = name.rpartition("/")
    prefix, sep2, device_uuid = head.rpartition("/")
    if not sep or not sep2 or prefix != PREFIX or not device_uuid:
        raise MessageError(f"not a ThingsPro device topic: {name!r}", BAD_TOPIC)
    try:
        return device_uuid, Channel(rest)
    except ValueError:
        raise MessageError(f"unknown channel {rest!r} in {name!r}", BAD_TOPIC) from None


def all_devices(channel: Channel) -> str:
    """The subscription filter for one channel of every device."""
    return f"{PREFIX}/+/{channel.value}"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT 5 / Mosquitto shared subscription: instances in ``group`` split the stream."""
    return f"$share/{group}/{topic_filter}"


SERVER_SUBSCRIPTIONS = (all_devices(Channel.CLIENT), all_devices(Channel.STATUS))
"""What the server listens to."""


def server_subscriptions(shared_group: str = "") -> list[str]:
    """The server's subscriptions; as shared ones when its instances split the stream.

    Mosquitto 2.0.11 accepts ``$share/…/$ThingsPro/…`` but delivers nothing to it (it
    keeps ``$`` topics out of shared subscriptions; checked with mosquitto_sub): with
    Mosquitto, leave ``shared_group`` empty."""
    return [shared(shared_group, s) if shared_group else s for s in SERVER_SUBSCRIPTIONS]
