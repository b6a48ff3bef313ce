"""Client request ids for mutating RPCs: the same key and request returns the first answer again;
the same key with a different request is refused with IDEMPOTENCY_KEY_REUSED.

The key comes in the request's `request_id` field or in the `idempotency-key` metadata entry (the HTTP
`Idempotency-Key` header, which Envoy's grpc_json_transcoder passes on as metadata): `IdempotencyKeyHeader`, in
every service's server chain, writes the header's key into an empty request_id before the servicer sees the
request, so everything downstream reads request_id alone."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from sqlalchemy import bindparam, select

from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, RequestIdTaken, UnitOfWork
from storeplane_runtime.driver import driver_execute
from storeplane_runtime.errors import DomainError, FieldViolation, IdempotencyKeyReused, InvalidInput
from storeplane_runtime.identity import caller_of
from storeplane_runtime.interceptors import HandlerWrapper, rewrapped
from storeplane_runtime.tables import idempotency_table

__all__ = [
    "IDEMPOTENCY_KEY_METADATA",
    "MAX_REQUEST_ID_LENGTH",
    "RETENTION",
    "Call",
    "IdempotencyKeyHeader",
    "IdempotentCalls",
    "StoredAnswer",
    "check_request_id",
    "fingerprint",
    "key_from_metadata",
    "run_batch",
    "run_once",
    "store_answer",
    "stored_answer",
]

R = TypeVar("R", bound=Message)
P = TypeVar("P")

MAX_REQUEST_ID_LENGTH = 128
# The metadata entry that may carry the key instead of request_id (gRPC metadata keys are lower case; over HTTP it is
# the `Idempotency-Key` header).
IDEMPOTENCY_KEY_METADATA = "idempotency-key"
# Keys older than this are forgotten by every service process's `messaging.pruning.Pruner`; the contract promises
# at least 24 h.
RETENTION = timedelta(hours=48)

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
_LOOKUP_MANY_PG = (
    "SELECT caller, request_id, request_hash, method, response FROM idempotency_keys"
    " WHERE (caller, request_id) IN"
    " (SELECT * FROM unnest(CAST(%(k_caller)b AS text[]), CAST(%(k_request_id)b AS text[])))"
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


def key_from_metadata(context: grpc.ServicerContext) -> str:
    """The call's `idempotency-key` metadata; empty when it has none (or an empty one). Given more than once with
    different values, INVALID_ARGUMENT."""
    keys = {str(value) for key, value in context.invocation_metadata() or () if key == IDEMPOTENCY_KEY_METADATA}
    keys.discard("")
    if len(keys) > 1:
        raise InvalidInput(
            "the idempotency-key header is given more than once with different values",
            violations=[FieldViolation("request_id", "one idempotency-key header only")],
        )
    return keys.pop() if keys else ""


def _take_key(request: Message, key: str) -> None:
    """The header's key into the request: into an empty request_id; equal to a given one, else INVALID_ARGUMENT."""
    given: str = request.request_id  # type: ignore[attr-defined]
    if not given:
        request.request_id = key  # type: ignore[attr-defined]
    elif given != key:
        raise InvalidInput(
            "request_id and the idempotency-key header differ",
            violations=[
                FieldViolation("request_id", "differs from the idempotency-key header: send one, or both equal")
            ],
        )


def _takes_request_id(method: str) -> bool:
    """Whether the RPC (`/pkg.Service/Method`) is known to the default descriptor pool with a request message that
    has a `string request_id` (every mutating RPC does)."""
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
    except KeyError:
        return False
    field = descriptor.input_type.fields_by_name.get("request_id")
    return field is not None and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated


class IdempotencyKeyHeader(HandlerWrapper):
    """Server interceptor: the `idempotency-key` metadata of a call to an RPC with a `request_id` stands for an empty
    request_id (written into the request before the servicer runs); given both, they must be equal, else
    INVALID_ARGUMENT with a field violation on request_id. For a client stream the key stands for the first message's
    request_id, the one that names the stream (later messages are left as sent). Calls without the metadata, and
    RPCs without a request_id, pass untouched. Domain errors it raises are turned into statuses by the
    ServiceInterceptor outside it."""

    def __init__(self) -> None:
        super().__init__()
        self._takes: dict[str, bool] = {}

    def passes(self, method: str) -> bool:
        takes = self._takes.get(method)
        if takes is None:
            takes = _takes_request_id(method)
            if len(self._takes) < 10_000:
                self._takes[method] = takes
        return not takes

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        fill = _fill_stream if handler.request_streaming else _fill_message

        def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def handle(request: Any, context: grpc.ServicerContext) -> Any:
                return behaviour(fill(request, context), context)

            return handle

        def streaming(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                yield from behaviour(fill(request, context), context)

            return handle

        return rewrapped(handler, unary, streaming)


def _fill_message(request: Message, context: grpc.ServicerContext) -> Message:
    key = key_from_metadata(context)
    if key:
        _take_key(request, key)
    return request


def _fill_stream(requests: Iterator[Message], context: grpc.ServicerContext) -> Iterator[Message]:
    key = key_from_metadata(context)
    if not key:
        return requests
    first = next(requests, None)
    if first is None:
        return iter(())
    _take_key(first, key)
    return itertools.chain((first,), requests)


@dataclass(frozen=True)
class Call(Generic[P]):
    """One mutating call to be done once per (caller, request_id): who, which method, the request's fingerprint,
    what the work needs (`payload`), and the caller's trace context for the events it causes (None: the current)."""

    caller: str
    method: str
    request_id: str
    digest: str
    payload: P
    trace_headers: dict[str, str] | None = None


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
    call = Call(caller, method, request_id, fingerprint(request), None)
    (answer,) = run_batch(
        database, source=source, calls=[call], response_type=response_type, work=lambda uow, _: [work(uow)]
    )
    if isinstance(answer, DomainError):
        raise answer
    return answer


class IdempotentCalls:
    """The mutating RPCs of one gRPC service, each done once per (caller, request_id) in one line:
    `return self.calls.once(context, request, XResponse, lambda uow: ...)`.

    The method is found from the response type (every RPC has its own `XResponse`), the caller from the call."""

    def __init__(self, database: Database, service: ServiceDescriptor, *, source: str) -> None:
        self.database = database
        self.source = source
        self._methods = {m.output_type.full_name: f"/{service.full_name}/{m.name}" for m in service.methods}

    def method_of(self, response_type: type[Message]) -> str:
        """The full method name (`/pos.stock.v1.StockService/Release`) of the RPC answering `response_type`."""
        return self._methods[response_type.DESCRIPTOR.full_name]

    def once(
        self, context: grpc.ServicerContext, request: Message, response_type: type[R], work: Callable[[UnitOfWork], R]
    ) -> R:
        """Run `work` in one unit of work once per (caller, `request.request_id`); a repeat gets the first answer,
        the same key with another request IDEMPOTENCY_KEY_REUSED."""
        return run_once(
            self.database,
            source=self.source,
            caller=caller_of(context),
            method=self.method_of(response_type),
            request=request,
            request_id=request.request_id,  # type: ignore[attr-defined]
            response_type=response_type,
            work=work,
        )


def run_batch(
    database: Database,
    *,
    source: str,
    calls: Sequence[Call[P]],
    response_type: type[R],
    work: Callable[[UnitOfWork, Sequence[Call[P]]], Sequence[R | DomainError]],
) -> list[R | DomainError]:
    """`run_once` for several calls (distinct keys) in one transaction: `work` gets those not answered before and
    returns, per call in order, its answer or the domain error it ends with (and then must have changed nothing for
    it). An exception out of `work` fails them all and commits nothing. Answers come back in the order of `calls`.
    """
    answers: dict[int, R | DomainError] = {}
    postgres = not database.is_sqlite
    for _ in range(3):
        with UnitOfWork(database, source=source) as uow:
            open_ = [i for i in range(len(calls)) if i not in answers]
            found = _lookup(uow, [calls[i] for i in open_], postgres)
            todo = []
            for i in open_:
                row = found.get((calls[i].caller, calls[i].request_id))
                if row is None:
                    todo.append(i)
                elif row.request_hash != calls[i].digest or row.method != calls[i].method:
                    answers[i] = IdempotencyKeyReused(
                        "request_id was already used for a different request",
                        metadata={"request_id": calls[i].request_id},
                    )
                else:
                    answers[i] = response_type.FromString(row.response)
            if not todo:
                return [answers[i] for i in range(len(calls))]
            done = work(uow, [calls[i] for i in todo])
            now = utcnow()
            for i, answer in zip(todo, done, strict=True):
                if not isinstance(answer, DomainError):
                    uow.remember(
                        {
                            "caller": calls[i].caller,
                            "request_id": calls[i].request_id,
                            "method": calls[i].method,
                            "request_hash": calls[i].digest,
                            "response": answer.SerializeToString(deterministic=True),
                            "created_at": now,
                        }
                    )
            try:
                uow.commit()
            except RequestIdTaken:
                continue  # a concurrent call with one of the keys won; all rolls back, and its answer is replayed
            answers.update(zip(todo, done, strict=True))
            return [answers[i] for i in range(len(calls))]
    raise IdempotencyKeyReused("request_id is being used concurrently", metadata={"request_id": calls[0].request_id})


def _lookup(uow: UnitOfWork, calls: Sequence[Call[Any]], postgres: bool) -> dict[tuple[str, str], Any]:
    """The stored answers of these calls' keys, by (caller, request_id)."""
    if postgres and len(calls) > 1:
        params = {"k_caller": [c.caller for c in calls], "k_request_id": [c.request_id for c in calls]}
        return {(row.caller, row.request_id): row for row in driver_execute(uow.connection, _LOOKUP_MANY_PG, params)}
    found = {}
    for call in calls:
        key = {"k_caller": call.caller, "k_request_id": call.request_id}
        if postgres:
            row = driver_execute(uow.connection, _LOOKUP_PG, key).fetchone()
        else:
            row = uow.connection.execute(_LOOKUP, key).first()
        if row is not None:
            found[(call.caller, call.request_id)] = row
    return found


@dataclass(frozen=True)
class StoredAnswer:
    """The answer kept under a (caller, request_id), with the method and request fingerprint it answered."""

    request_id: str
    method: str
    request_hash: str
    response: bytes

    def replay(self, method: str, request_hash: str, response_type: type[R]) -> R:
        """The stored answer, when it answered this same request; IDEMPOTENCY_KEY_REUSED when it did not."""
        if request_hash != self.request_hash or method != self.method:
            raise IdempotencyKeyReused(
                "request_id was already used for a different request", metadata={"request_id": self.request_id}
            )
        return response_type.FromString(self.response)


def stored_answer(database: Database, caller: str, request_id: str) -> StoredAnswer | None:
    """The answer stored under this key, if any: for calls that cannot run in one unit of work (a client stream
    applied in many transactions), which look their key up first and `store_answer` when done."""
    with database.read_engine.connect() as conn:
        row = conn.execute(_LOOKUP, {"k_caller": caller, "k_request_id": request_id}).first()
    return None if row is None else StoredAnswer(request_id, row.method, row.request_hash, row.response)


def store_answer(
    database: Database, *, caller: str, request_id: str, method: str, request_hash: str, answer: Message
) -> bool:
    """Keep `answer` under (caller, request_id) in a transaction of its own; False when a concurrent call stored
    one first (that answer stays)."""
    key = {
        "caller": caller,
        "request_id": request_id,
        "method": method,
        "request_hash": request_hash,
        "response": answer.SerializeToString(deterministic=True),
        "created_at": utcnow(),
    }
    with UnitOfWork(database, source=method) as uow:  # it publishes nothing: the source is never read
        uow.remember(key)
        try:
            uow.commit()
        except RequestIdTaken:
            return False
    return True
