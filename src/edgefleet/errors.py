"""Errors raised by edgefleet's own code.

Foreign errors (SQLAlchemy, asyncpg, …) are translated into these at the edge
with ``raise … from exc``; the HTTP layer maps each class to a status in one table
(``api/errors.py``), the CLI prints its message.

    EdgefleetError
    ├── NotFoundError ............ 404  (DeviceNotFoundError, GroupNotFoundError,
    │                                    StoredFileNotFoundError, FirmwareNotFoundError, …)
    ├── ConflictError ............ 409  (DuplicateError, GroupBusyError, DeviceOfflineError,
    │                                    SelectionChangedError, EmptyTargetError)
    ├── ValidationError .......... 400  (QuerySyntaxError)
    │   └── FileTooLargeError .... 413  an upload over the size limit
    ├── AuthError
    │   ├── AuthenticationError .. 401  bad or missing credentials
    │   ├── PermissionDeniedError  403
    │   └── LoginBannedError ..... 429  too many failed logins
    ├── BusyError ................ 503  too many password checks waiting already
    ├── StorageError ............. 503  the database or the file store did not answer
    ├── MessageError ............. a malformed MQTT message or topic (logged, never raised
    │                              through a consumer)
    └── TransportError ........... 503  the broker is unreachable
        └── GatewayTimeoutError .. 504  a gateway did not answer in time
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(EdgefleetError):
    pass


class DeviceNotFoundError(NotFoundError):
    def __init__(self, uuid: str) -> None:
        super().__init__(f"device {uuid} not found")
        self.uuid = uuid


class GroupNotFoundError(NotFoundError):
    def __init__(self, group_id: int | str) -> None:
        super().__init__(f"group {group_id} not found")
        self.group_id = group_id


class StoredFileNotFoundError(NotFoundError):
    def __init__(self, key: str) -> None:
        super().__init__(f"file {key} not found")
        self.key = key


class FirmwareNotFoundError(NotFoundError):
    def __init__(self, firmware_id: int) -> None:
        super().__init__(f"firmware {firmware_id} not found")
        self.firmware_id = firmware_id


class ConflictError(EdgefleetError):
    pass


class DuplicateError(ConflictError):
    def __init__(self, what: str, field: str, value: str) -> None:
        super().__init__(f"a {what} with {field} {value!r} already exists")
        self.what, self.field, self.value = what, field, value


class GroupBusyError(ConflictError):
    def __init__(self, group_id: int) -> None:
        super().__init__(f"group {group_id} has unfinished tasks")
        self.group_id = group_id


class DeviceOfflineError(ConflictError):
    def __init__(self, uuid: str) -> None:
        super().__init__(f"device {uuid} is offline")
        self.uuid = uuid


class SelectionChangedError(ConflictError):
    """Gateways picked from a list no longer match the fleet query the list showed."""

    def __init__(self, query: str, gone: list[str], added: int) -> None:
        parts = []
        if gone:
            shown = ", ".join(gone[:5]) + (", …" if len(gone) > 5 else "")
            parts.append(f"{len(gone)} of the selected gateways no longer match it ({shown})")
        if added:
            parts.append(f"{added} more gateways match it now")
        super().__init__(
            f"the selection no longer matches the list it was made from ({query or 'all'}): "
            + "; ".join(parts)
            + ". Reload the list and select again."
        )
        self.query, self.gone, self.added = query, gone, added


class EmptyTargetError(ConflictError):
    """A task whose target holds no gateway (an empty group, a query matching none)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} has no gateway: nothing to run the task on")
        self.what = what


class ValidationError(EdgefleetError):
    pass


class QuerySyntaxError(ValidationError):
    """A fleet query that does not parse; ``column`` is 1-based."""

    def __init__(self, message: str, query: str, column: int | None = None) -> None:
        where = f" at column {column}" if column is not None else ""
        super().__init__(f"invalid fleet query{where}: {message}")
        self.query, self.column = query, column


class FileTooLargeError(ValidationError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"file larger than the limit of {limit} bytes")
        self.limit = limit


class AuthError(EdgefleetError):
    pass


class AuthenticationError(AuthError):
    pass


class PermissionDeniedError(AuthError):
    pass


class LoginBannedError(AuthError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after} s")
        self.retry_after = retry_after


class BusyError(EdgefleetError):
    """Work refused because its bounded queue is full (password checks during a flood)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageError(EdgefleetError):
    pass


class MessageError(EdgefleetError):
    """An MQTT payload or topic that breaks the protocol; ``reason`` says how, as one word
    of a small fixed set (a metric label: ``too_large``, ``not_json``, ``nul``, …)."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class TransportError(EdgefleetError):
    """The broker could not be reached or refused a publish."""


class GatewayTimeoutError(TransportError):
    def __init__(self, uuid: str, seconds: float) -> None:
        super().__init__(f"gateway {uuid} did not answer within {seconds:g} s")
        self.uuid, self.seconds = uuid, seconds
