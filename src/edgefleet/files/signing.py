"""Signed, expiring download links for files the server serves itself.

The query is ``expires=<unix seconds>&sig=<hex HMAC-SHA256 of "key\\nexpires">``, keyed by a
key derived from the server's secret key: anyone holding the link may GET that one file
until it expires, with no other credential (as a presigned S3 URL allows).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from edgefleet.clock import Clock, utcnow
from edgefleet.errors import PermissionDeniedError


class UrlSigner:
    def __init__(self, secret: bytes, clock: Clock = utcnow) -> None:
        self._key = hmac.new(secret, b"edgefleet-file-url", hashlib.sha256).digest()
        self.clock = clock

    def _sign(self, key: str, expires: int) -> str:
        return hmac.new(self._key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def query(self, key: str, ttl_seconds: int) -> str:
        """``expires=…&sig=…`` for ``key``, valid ``ttl_seconds`` from now."""
        expires = int(self.clock().timestamp()) + ttl_seconds
        return urlencode({"expires": expires, "sig": self._sign(key, expires)})

    def check(self, key: str, expires: int, sig: str) -> None:
        """Raise ``PermissionDeniedError`` unless ``sig`` signs ``key`` and has not expired."""
        if not hmac.compare_digest(self._sign(key, expires).encode(), sig.encode()):
            raise PermissionDeniedError("invalid download signature")
        if expires < self.clock().timestamp():
            raise PermissionDeniedError("download link expired")
