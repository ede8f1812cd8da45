"""Encryption of secrets the server must read back (device PSKs), keyed by the server key."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from edgefleet.errors import StorageError


class SecretBox:
    def __init__(self, key_material: bytes) -> None:
        key = base64.urlsafe_b64encode(
            hashlib.sha256(b"edgefleet-secretbox:" + key_material).digest()
        )
        self._fernet = Fernet(key)

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise StorageError("a stored secret does not open with this server key") from exc
