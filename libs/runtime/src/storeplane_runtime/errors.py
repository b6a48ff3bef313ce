"""Domain errors and how they become gRPC statuses with google.rpc details.

Domain code raises `DomainError` subclasses and knows nothing of gRPC; each service hands the server
a table from its exception classes to status codes. The same table form serves every service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (`lines[2].quantity`) and what is wrong with it."""

    field: str
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
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations)


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


class Unavailable(DomainError):
    """A peer the call needs is down; the caller may retry later."""

    reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    """The call's deadline passed before its work began; nothing was done (a retry with its request id runs it)."""

    reason = "DEADLINE_EXCEEDED"


ErrorTable = Mapping[type[BaseException], grpc.StatusCode]

BASE_ERROR_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@dataclass(frozen=True)
class ErrorMapper:
    """Turns exceptions into google.rpc.Status using a service's table (most specific class wins)."""

    domain: str
    table: ErrorTable = field(default_factory=lambda: BASE_ERROR_TABLE)

    def code_for(self, exc: BaseException) -> grpc.StatusCode | None:
        for klass in type(exc).__mro__:
            if klass in self.table:
                return self.table[klass]
        return None

    def to_status(self, exc: DomainError, code: grpc.StatusCode) -> grpc.Status:
        return build_status(
            code,
            exc.message,
            reason=exc.reason,
            domain=self.domain,
            metadata=exc.metadata,
            violations=exc.violations,
        )


def build_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    domain: str,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[FieldViolation] = (),
) -> grpc.Status:
    """A status with ErrorInfo (stable reason) and, for bad fields, BadRequest details."""
    details = []
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=dict(metadata or {}))
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    status = status_pb2.Status(code=_rpc_code(code), message=message, details=details)
    return rpc_status.to_status(status)


def _rpc_code(code: grpc.StatusCode) -> int:
    value: int = code.value[0]
    assert code_pb2.Code.Name(value)  # every grpc.StatusCode has a google.rpc.Code twin
    return value


@dataclass(frozen=True)
class ErrorDetails:
    """What a client reads back out of a failed call: code, message, reason and field violations."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[FieldViolation, ...] = ()


def details_of(error: grpc.RpcError) -> ErrorDetails:
    """Decode the google.rpc details of a failed call (for clients and tests)."""
    call: grpc.Call = error  # type: ignore[assignment]
    status = rpc_status.from_call(call)
    reason, domain, metadata, violations = "", "", {}, []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return ErrorDetails(
        code=call.code(),
        message=call.details() or "",
        reason=reason,
        domain=domain,
        metadata=metadata,
        violations=tuple(violations),
    )
