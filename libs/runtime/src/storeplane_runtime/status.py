"""How domain errors (`storeplane_runtime.errors`) become gRPC statuses with google.rpc details, and back.

Each service hands the server a table from its exception classes to status codes (most specific class wins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from storeplane_runtime.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    FieldViolation,
    InvalidInput,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    PreconditionViolation,
    Unavailable,
)

__all__ = ["BASE_ERROR_TABLE", "ErrorDetails", "ErrorMapper", "ErrorTable", "build_status", "details_of"]


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
            preconditions=exc.preconditions,
        )


def build_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    domain: str,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[FieldViolation] = (),
    preconditions: Sequence[PreconditionViolation] = (),
    retry_delay_seconds: float | None = None,
) -> grpc.Status:
    """A status with ErrorInfo (stable reason), for bad fields BadRequest details, for unmet preconditions (stock or
    points short) PreconditionFailure details and, when the caller may try again after a while (a rate limit),
    RetryInfo saying when."""
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
    if preconditions:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=p.type, subject=p.subject, description=p.description
                )
                for p in preconditions
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(failure)
        details.append(packed)
    if retry_delay_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(retry_delay_seconds * 1e9)))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    status = status_pb2.Status(code=_rpc_code(code), message=message, details=details)
    return rpc_status.to_status(status)


def _rpc_code(code: grpc.StatusCode) -> int:
    value: int = code.value[0]
    assert code_pb2.Code.Name(value)  # every grpc.StatusCode has a google.rpc.Code twin
    return value


@dataclass(frozen=True)
class ErrorDetails:
    """What a client reads back out of a failed call: code, message, reason, field violations, unmet preconditions
    and when to retry."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[FieldViolation, ...] = ()
    preconditions: tuple[PreconditionViolation, ...] = ()  # from PreconditionFailure
    retry_delay_seconds: float | None = None  # from RetryInfo; None: the status gave none


def details_of(error: grpc.RpcError) -> ErrorDetails:
    """Decode the google.rpc details of a failed call (for clients and tests)."""
    call: grpc.Call = error  # type: ignore[assignment]
    status = rpc_status.from_call(call)
    reason, domain, metadata, violations = "", "", {}, []
    preconditions: list[PreconditionViolation] = []
    retry_delay: float | None = None
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
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                preconditions = [PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
    return ErrorDetails(
        code=call.code(),
        message=call.details() or "",
        reason=reason,
        domain=domain,
        metadata=metadata,
        violations=tuple(violations),
        preconditions=tuple(preconditions),
        retry_delay_seconds=retry_delay,
    )
