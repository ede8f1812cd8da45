"""The topic rules a broker hook applies to gateways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.domain.broker_access import Action, device_topic_allowed
from edgefleet.protocol.topics import PREFIX

U = "58c15905-d3b0-48b4-aa63-b94be0c15b5f"  # fixed: test ids must be equal in every worker
OTHER = "e7a67db5-5f93-4a59-84b7-4085b491ecb6"
OWN = f"$ThingsPro/devices/{U}"

level = st.text(
    alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize(
    ("topic", "action", "allowed"),
    [
        (f"{OWN}/client", Action.PUBLISH, True),
        (f"{OWN}/status", Action.PUBLISH, True),
        (f"{OWN}/server", Action.SUBSCRIBE, True),
        (f"{OWN}/#", Action.SUBSCRIBE, True),
        (f"{OWN}/+", Action.SUBSCRIBE, True),
        (f"{OWN}/#", Action.PUBLISH, False),
        (f"{OWN}/", Action.PUBLISH, False),
        (OWN, Action.SUBSCRIBE, False),
        (f"{OWN}/a#", Action.SUBSCRIBE, False),
        (f"{OWN}/#/x", Action.SUBSCRIBE, False),
        (f"$ThingsPro/devices/{OTHER}/server", Action.SUBSCRIBE, False),
        (f"$ThingsPro/devices/{OTHER}/client", Action.PUBLISH, False),
        ("$ThingsPro/devices/+/server", Action.SUBSCRIBE, False),
        ("$ThingsPro/devices/#", Action.SUBSCRIBE, False),
        ("#", Action.SUBSCRIBE, False),
        (f"{OWN}x/client", Action.PUBLISH, False),
    ],
)
def test_rules(topic: str, action: Action, allowed: bool) -> None:
    assert device_topic_allowed(U, topic, action, prefix=PREFIX) is allowed


def test_an_identity_with_wildcards_owns_nothing() -> None:
    assert not device_topic_allowed(
        "+", "$ThingsPro/devices/+/client", Action.PUBLISH, prefix=PREFIX
    )
    assert not device_topic_allowed("#", "$ThingsPro/devices/#/x", Action.SUBSCRIBE, prefix=PREFIX)


@given(st.lists(level, min_size=1, max_size=4), st.sampled_from(list(Action)))
def test_anything_under_its_own_subtree_is_allowed(levels: list[str], action: Action) -> None:
    assert device_topic_allowed(U, "/".join([OWN, *levels]), action, prefix=PREFIX)


@given(st.text(max_size=80), st.sampled_from(list(Action)))
def test_nothing_outside_its_own_subtree_is_allowed(topic: str, action: Action) -> None:
    if not topic.startswith(OWN + "/"):
        assert not device_topic_allowed(U, topic, action, prefix=PREFIX)
