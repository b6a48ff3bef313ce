"""Domain errors and field-violation collection: plain Python, no gRPC or protobuf, so domain modules can raise them.

How each becomes a gRPC status with google.rpc details is `storeplane_runtime.status`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_STORE_ID_LENGTH",
    "AlreadyExists",
    "DeadlineExceeded",
    "DomainError",
    "FieldViolation",
    "IdempotencyKeyReused",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "PreconditionFailed",
    "PreconditionViolation",
    "StoreNotAllowed",
    "Unavailable",
    "Violations",
    "identifier_problem",
]

MAX_STORE_ID_LENGTH = 64


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (`lines[2].quantity`) and what is wrong with it."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition of a FAILED_PRECONDITION (google.rpc.PreconditionFailure): its `type` (a stable
    UPPER_SNAKE kind, e.g. `STOCK`, `POINTS`, `TENDER`), the `subject` it concerns (`berlin-mitte/SKU-1`, a
    customer id) and what is short, in words a cashier's screen can show."""

    type: str
    subject: str
    description: str


class DomainError(Exception):
    """Base of every error a service's rules raise; `reason` is stable and machine-readable (UPPER_SNAKE)."""

    reason: str = "DOMAIN_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        preconditions: Sequence[PreconditionViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations)
        self.preconditions = list(preconditions)


class InvalidInput(DomainError):
    """The request breaks a rule of shape or size; `violations` names every bad field."""

    reason = "INVALID_ARGUMENT"


class IdempotencyKeyReused(InvalidInput):
    """The same request_id came back with a different request."""

    reason = "IDEMPOTENCY_KEY_REUSED"


class NotFound(DomainError):
    """A named id does not exist."""

    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    """Something with that key exists already."""

    reason = "ALREADY_EXISTS"


class PreconditionFailed(DomainError):
    """The state does not allow it: not enough stock or points, wrong basket state."""

    reason = "FAILED_PRECONDITION"


class PermissionDenied(DomainError):
    """The caller may not act on this (another store's data, a missing scope)."""

    reason = "PERMISSION_DENIED"


class StoreNotAllowed(PermissionDenied):
    """The caller's token does not allow the store a call concerns (or it names a resource of no store the caller may
    see: another store's and one that does not exist get the same answer, so ids cannot be probed)."""

    reason = "STORE_NOT_ALLOWED"


class Unavailable(DomainError):
    """A peer the call needs is down; the caller may retry later."""

    reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    """The call's deadline passed before its work began; nothing was done (a retry with its request id runs it)."""

    reason = "DEADLINE_EXCEEDED"


def identifier_problem(value: str, max_length: int) -> str | None:
    """What is wrong with an identifier (SKU, id, code): empty, longer than `max_length`, or with spaces or control
    characters; None when nothing is."""
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"at most {max_length} characters"
    if not value.isprintable() or " " in value:  # isprintable() refuses all whitespace but the space
        return "must not contain spaces or control characters"
    return None


class Violations:
    """Collects every bad field of one request, so the caller learns about all of them at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def extend(self, violations: Sequence[FieldViolation]) -> None:
        self.items.extend(violations)

    def text(self, field_path: str, value: str, max_length: int, *, required: bool = True) -> None:
        """An identifier (see `identifier_problem`); an optional one may be empty."""
        if value or required:
            problem = identifier_problem(value, max_length)
            if problem:
                self.add(field_path, problem)

    def store(self, field_path: str, store_id: str, known: Mapping[str, object]) -> None:
        """A store id that names a configured store."""
        if not store_id:
            self.add(field_path, "must not be empty")
        elif store_id not in known:
            self.add(field_path, f"unknown store {store_id[:MAX_STORE_ID_LENGTH]!r}")

    def within(self, field_path: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            self.add(field_path, f"must be between {low} and {high}")

    def raise_if_any(self, message: str = "the request is invalid") -> None:
        if self.items:
            raise InvalidInput(message, violations=self.items)

    def __bool__(self) -> bool:
        return bool(self.items)
