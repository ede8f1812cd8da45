"""Domain rules that need no I/O: MAC keys, version ordering, tags, permissions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import String

from edgefleet.db.tables import Device
from edgefleet.domain.auth import (
    Permission,
    Role,
    Scope,
    normalize_email,
    permissions_for,
    scope_allowed,
)
from edgefleet.domain.devices import (
    INDEXED_LENGTHS,
    check_tag,
    indexed_properties,
    mac_key,
    new_psk,
    version_key,
)
from edgefleet.errors import ValidationError


@pytest.mark.parametrize(
    "spelling", ["0090E8112233", "00:90:e8:11:22:33", "00-90-E8-11-22-33", "0090.e811.2233"]
)
def test_mac_spellings_share_one_key(spelling: str) -> None:
    assert mac_key(spelling) == "0090e8112233"


@pytest.mark.parametrize(
    "bad", ["", "0090e811223", "0090e81122334", "zz90e8112233", "00:90:e8:11:22"]
)
def test_bad_macs_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        mac_key(bad)


def test_psk_is_32_random_bytes_hex() -> None:
    a, b = new_psk(), new_psk()
    assert len(a) == 64 and int(a, 16) >= 0 and a != b


@pytest.mark.parametrize(
    ("lower", "higher"),
    [("2.4", "2.10"), ("version 2.3.2 Build 18102617", "2.4"), ("1.9.9", "2"), ("2.3", "2.3.1")],
)
def test_version_key_orders_like_versions(lower: str, higher: str) -> None:
    assert version_key(lower) < version_key(higher)


@given(
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=5),
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=5),
)
def test_version_key_agrees_with_tuple_order(a: list[int], b: list[int]) -> None:
    def strip(v: list[int]) -> list[int]:
        while v and v[-1] == 0:
            v = v[:-1]
        return v

    ka, kb = version_key(".".join(map(str, a))), version_key(".".join(map(str, b)))
    assert (ka < kb) == (strip(a) < strip(b))
    assert (ka == kb) == (strip(a) == strip(b))


def test_tags() -> None:
    assert check_tag("line-3") == "line-3"
    for bad in ["", "-x", "a b", "x" * 65]:
        with pytest.raises(ValidationError):
            check_tag(bad)


def test_token_never_grants_more_than_its_owner() -> None:
    for role in Role:
        for scope in Scope:
            assert permissions_for(role, scope) <= permissions_for(role)
    assert permissions_for(Role.ADMIN, Scope.READ) == {Permission.FLEET_READ, Permission.ADMIN_READ}
    assert permissions_for(Role.VIEWER, Scope.READ_WRITE) == {Permission.FLEET_READ}
    assert permissions_for(Role.ADMIN, Scope.BROKER) == {Permission.BROKER}
    assert not scope_allowed(Role.OPERATOR, Scope.BROKER)
    assert not scope_allowed(Role.VIEWER, Scope.READ_WRITE)
    assert scope_allowed(Role.VIEWER, Scope.READ)


def test_emails_are_normalised() -> None:
    assert normalize_email(" Root@Example.COM ") == "root@example.com"
    with pytest.raises(ValidationError):
        normalize_email("no-at-sign")


def test_indexed_properties_fit_their_columns_whatever_a_gateway_reports() -> None:
    reported = {
        "modelName": "UC-8112-LX-CG" * 100,
        "softwareVersion": "2." + "9" * 5000,  # more digits than Python's int() takes
        "defaultRoute": "wwan0.1234567890123",
        "aliasName": "a" * 1000,
    }
    got = indexed_properties(reported)
    for column, value in got.items():
        column_type = Device.__table__.c[column].type
        assert isinstance(column_type, String)
        assert len(value) <= INDEXED_LENGTHS[column] == column_type.length
    assert got["default_route"] == "wwan0.1234567890"
    assert got["model_name"].startswith("UC-8112-LX-CG")
