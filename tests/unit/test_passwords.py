"""Passwords are hashed at argon2id's production cost (the other tests hash at a lower one,
see tests/conftest.py)."""

from __future__ import annotations

import pytest

from edgefleet.services.passwords import PasswordHasher


@pytest.mark.production_password_cost
async def test_passwords_are_hashed_with_argon2id_at_its_production_cost() -> None:
    hasher = PasswordHasher(workers=1)
    try:
        hashed = await hasher.hash("correct horse battery")
        assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
        assert await hasher.verify("correct horse battery", hashed)
        assert not await hasher.verify("correct horse staple", hashed)
    finally:
        hasher.close()


async def test_tests_hash_at_a_lower_cost_that_is_still_argon2id() -> None:
    hasher = PasswordHasher(workers=1)
    try:
        hashed = await hasher.hash("correct horse battery")
        assert hashed.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
        assert await hasher.verify("correct horse battery", hashed)
    finally:
        hasher.close()
