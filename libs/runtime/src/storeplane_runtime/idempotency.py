"""Client request ids for mutating RPCs: the same key and request returns the first answer again;
the same key with a different request is refused with IDEMPOTENCY_KEY_REUSED."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import bindparam, delete, select

from storeplane_runtime.db import Database, RequestIdTaken, UnitOfWork
from storeplane_runtime.driver import driver_execute
from storeplane_runtime.errors import FieldViolation, IdempotencyKeyReused, InvalidInput
from storeplane_runtime.outbox import idempotency_table, utcnow

R = TypeVar("R", bound=Message)

MAX_REQUEST_ID_LENGTH = 128
RETENTION = timedelta(hours=48)  # the contract promises at least 24 h

# Built once: a statement object per call costs more than its round trip on the hot path.
_t = idempotency_table
_LOOKUP = select(_t.c.request_hash, _t.c.method, _t.c.response).where(
    _t.c.caller == bindparam("k_caller"), _t.c.request_id == bindparam("k_request_id")
)
# PostgreSQL: the same, run straight on the driver (see storeplane_runtime.driver). The key is inserted at commit
# (`UnitOfWork.remember`).
_LOOKUP_PG = (
    "SELECT request_hash, method, response FROM idempotency_keys"
    " WHERE caller = %(k_caller)s AND request_id = %(k_request_id)s"
)


def fingerprint(request: Message) -> str:
    """A stable hash of the request with its request_id blanked (the key is not part of the meaning)."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def check_request_id(request_id: str) -> None:
    if not request_id:
        raise InvalidInput("request_id is required", violations=[FieldViolation("request_id", "must not be empty")])
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidInput(
            "request_id is too long",
            violations=[FieldViolation("request_id", f"at most {MAX_REQUEST_ID_LENGTH} characters")],
        )


def run_once(
    database: Database,
    *,
    source: str,
    caller: str,
    method: str,
    request: Message,
    request_id: str,
    response_type: type[R],
    work: Callable[[UnitOfWork], R],
) -> R:
    """Run `work` in a unit of work exactly once per (caller, request_id); replays return the stored answer.

    The key is inserted in the same transaction as the work, so a crash leaves neither or both.
    Two concurrent calls with one key: one commits, the other hits the primary key and replays.
    """
    check_request_id(request_id)
    digest = fingerprint(request)
    postgres = not database.is_sqlite
    for _ in range(2):
        with UnitOfWork(database, source=source) as uow:
            key = {"k_caller": caller, "k_request_id": request_id}
            if postgres:
                row = driver_execute(uow.connection, _LOOKUP_PG, key).fetchone()
            else:
                row = uow.connection.execute(_LOOKUP, key).first()
            if row is not None:
                if row.request_hash != digest or row.method != method:
                    raise IdempotencyKeyReused(
                        "request_id was already used for a different request",
                        metadata={"request_id": request_id},
                    )
                return response_type.FromString(row.response)
            response = work(uow)
            uow.remember(
                {
                    "caller": caller,
                    "request_id": request_id,
                    "method": method,
                    "request_hash": digest,
                    "response": response.SerializeToString(deterministic=True),
                    "created_at": utcnow(),
                }
            )
            try:
                uow.commit()
            except RequestIdTaken:
                continue  # a concurrent call with the same key won; our work rolls back, replay its answer
            return response
    raise IdempotencyKeyReused("request_id is being used concurrently", metadata={"request_id": request_id})


def prune(database: Database, older_than: timedelta = RETENTION) -> int:
    """Forget keys past the retention period; returns how many."""
    with database.engine.begin() as conn:
        result = conn.execute(delete(idempotency_table).where(idempotency_table.c.created_at < utcnow() - older_than))
        return result.rowcount or 0
