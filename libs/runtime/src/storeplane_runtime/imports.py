"""The engine of client-streamed batch imports (ERP items and stock levels, offline sales): a stream of any length
applied chunk by chunk in bounded memory, a summary with the rejected rows, and idempotency per stream."""

from __future__ import annotations

import contextvars
import hashlib
import heapq
import itertools
import logging
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, NamedTuple, TypeVar

from google.protobuf.message import Message
from sqlalchemy.exc import DBAPIError

from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.idempotency import check_request_id, store_answer, stored_answer

__all__ = [
    "MAX_LISTED_REJECTIONS",
    "ChunkResult",
    "ImportKind",
    "RejectedRow",
    "Tally",
    "run_import",
]

log = logging.getLogger(__name__)

MAX_LISTED_REJECTIONS = 1000
MAX_KEY_LENGTH = 200  # a rejected row's key is echoed back: a client's megabyte of key is not
CHUNK_ATTEMPTS = 3
FOREIGN_REQUEST_ID = "request_id differs from the first message's"

Q = TypeVar("Q", bound=Message)  # a message of the client stream
M = TypeVar("M", bound=Message)  # a row as sent
R = TypeVar("R")  # a checked row (never a str: a str from `validate` is the reason of a rejection)
S = TypeVar("S", bound=Message)  # the RPC's answer, built from the tally


class RejectedRow(NamedTuple):
    """A row that was not applied: its number in the stream (from 1), its key as sent, and why."""

    row_number: int
    key: str
    reason: str


@dataclass
class ChunkResult:
    """What one chunk did; counted only once its transaction committed."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (row number, key, reason)


@dataclass
class Tally:
    """The counts of one import and its first rejected rows, which the import kind turns into its answer."""

    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    listed_limit: int = MAX_LISTED_REJECTIONS
    # The lowest-numbered rejections, as a max-heap on the row number (negated): rows are rejected out of order
    # (while reading, and while a chunk is applied later), yet the listed ones must be the stream's first.
    _listed: list[tuple[int, str, str]] = field(default_factory=list, init=False, repr=False)

    def reject(self, row_number: int, key: str, reason: str) -> None:
        self.rejected += 1
        entry = (-row_number, key[:MAX_KEY_LENGTH], reason)
        if len(self._listed) < self.listed_limit:
            heapq.heappush(self._listed, entry)
        elif self._listed and row_number < -self._listed[0][0]:
            heapq.heapreplace(self._listed, entry)

    def add(self, chunk: ChunkResult) -> None:
        self.created += chunk.created
        self.updated += chunk.updated
        self.unchanged += chunk.unchanged
        for row_number, key, reason in chunk.rejected:
            self.reject(row_number, key, reason)

    @property
    def rejected_rows(self) -> list[RejectedRow]:
        """The rejected rows with the lowest numbers, at most `listed_limit`, in stream order."""
        return sorted(RejectedRow(-number, key, reason) for number, key, reason in self._listed)

    @property
    def rejected_rows_truncated(self) -> bool:
        """More rows were rejected than `rejected_rows` lists."""
        return self.rejected > len(self._listed)


@dataclass(frozen=True)
class ImportKind(Generic[Q, M, R, S]):
    """One client-streamed import RPC: how it reads, checks and applies its rows, and what it answers."""

    method: str  # the full gRPC method name: a stream's request_id is kept for this method only
    rows_of: Callable[[Q], Sequence[M]]  # the rows one stream message carries, in import order
    key_of: Callable[[M], str]  # the row's key as reported in rejections
    dedupe_key: Callable[[R], Hashable]  # rows with the same key never share a chunk (and always take one lane)
    validate: Callable[[M], R | str]  # the checked row, or why it is rejected
    apply: Callable[[UnitOfWork, Sequence[tuple[int, R]], datetime, str], ChunkResult]  # ..., rows, now, request_id
    summarise: Callable[[Tally], S]  # the RPC's answer, also kept for repeats of the stream
    summary_type: type[S]
    # Rows of different keys may be applied in any order, at once (items may not: a barcode moves between SKUs).
    independent_keys: bool = False


def run_import(
    database: Database,
    kind: ImportKind[Q, M, R, S],
    requests: Iterator[Q],
    *,
    source: str,
    caller: str,
    chunk_rows: int,
    lanes: int = 1,
) -> S:
    """Apply one client stream of `kind` and return its answer.

    A message carries any number of rows; rows are numbered across the whole stream, whatever messages they came
    in, and everything else (validation, reporting, chunks, idempotency) works on rows: how a client splits its rows
    into messages changes nothing but the speed. Up to `chunk_rows` checked rows are applied in one transaction; a
    row `validate` or `apply` rejects is counted and listed, and the others go on. A chunk whose transaction failed
    on a conflict (a concurrent writer, a deadlock victim) is applied again on fresh state; any other failure ends
    the import with that error, leaving the chunks committed before it.

    The first message's request_id names the import (a later message with another one has its rows rejected). If it
    was seen before, the stream is only read, to compare its rows with the first one's, and the first answer is
    returned: nothing is applied twice. Otherwise the key is stored with the answer when the stream ends. A stream
    broken off midway leaves no key: sending it again applies it again, so rows must be upserts.

    While one chunk is written (on a thread of the import's own, in the caller's trace and log context), the next is
    read and checked. With `independent_keys`, the rows are split by key into `lanes` on PostgreSQL, each with its
    own writer thread and transactions: the rows of one key always take the same lane, in stream order, so the last
    row of a key still wins and its events keep their order. At most two chunks per lane are held at once.
    """
    tally = Tally()
    first = next(requests, None)
    if first is None:
        return kind.summarise(tally)
    request_id: str = first.request_id  # type: ignore[attr-defined]
    check_request_id(request_id)
    digest = hashlib.sha256()
    stream = itertools.chain((first,), requests)
    stored = stored_answer(database, caller, request_id)
    if stored is not None:
        for message in stream:
            _hash_rows(digest, kind.rows_of(message))
        return stored.replay(kind.method, digest.hexdigest(), kind.summary_type)

    lanes = lanes if kind.independent_keys and not database.is_sqlite else 1  # SQLite has one writer anyway
    chunks: list[list[tuple[int, R]]] = [[] for _ in range(lanes)]
    keysets: list[set[Hashable]] = [set() for _ in range(lanes)]
    validate, dedupe_key, key_of = kind.validate, kind.dedupe_key, kind.key_of
    number = 0  # rows so far, across messages
    with _ChunkWriter(database, kind, source, request_id, tally, lanes) as writer:
        for message in stream:
            other_id: str = message.request_id  # type: ignore[attr-defined]
            foreign = bool(other_id) and other_id != request_id
            rows = kind.rows_of(message)
            _hash_rows(digest, rows)
            for row in rows:
                number += 1
                if foreign:
                    tally.reject(number, key_of(row), FOREIGN_REQUEST_ID)
                    continue
                checked = validate(row)
                if isinstance(checked, str):
                    tally.reject(number, key_of(row), checked)
                    continue
                key = dedupe_key(checked)
                lane = hash(key) % lanes if lanes > 1 else 0
                chunk, keys = chunks[lane], keysets[lane]
                if key in keys or len(chunk) >= chunk_rows:
                    writer.write(lane, chunk)
                    chunks[lane], keysets[lane] = chunk, keys = [], set()
                chunk.append((number, checked))
                keys.add(key)
        for lane, chunk in enumerate(chunks):
            if chunk:
                writer.write(lane, chunk)
        writer.finish()
    tally.received = number
    summary = kind.summarise(tally)
    stored_now = store_answer(
        database,
        caller=caller,
        request_id=request_id,
        method=kind.method,
        request_hash=digest.hexdigest(),
        answer=summary,
    )
    if not stored_now:
        log.info("import key stored concurrently by another stream", extra={"request_id": request_id})
    return summary


class _ChunkWriter(Generic[Q, M, R, S]):
    """Applies an import's chunks on threads of its own, one per lane, each lane's chunks one at a time and in order,
    while the caller builds the next: `write` waits for the lane's chunk before (so at most two per lane are held)
    and hands the new one over. A failed chunk fails the next `write` or `finish`; leaving the block waits for the
    chunks being written."""

    def __init__(
        self,
        database: Database,
        kind: ImportKind[Q, M, R, S],
        source: str,
        reference: str,
        tally: Tally,
        lanes: int = 1,
    ) -> None:
        self.database, self.kind, self.source, self.reference, self.tally = database, kind, source, reference, tally
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"import-chunks-{lane}") for lane in range(lanes)
        ]
        self._writing: list[Future[ChunkResult] | None] = [None] * lanes
        self._context = contextvars.copy_context()  # the call's trace and log context, for the events it causes

    def __enter__(self) -> _ChunkWriter[Q, M, R, S]:
        return self

    def write(self, lane: int, chunk: Sequence[tuple[int, R]]) -> None:
        for other, writing in enumerate(self._writing):  # a lane that failed stops the import at once
            if writing is not None and (other == lane or writing.done()):
                self._collect(other)
        self._writing[lane] = self._executors[lane].submit(
            self._context.copy().run, _apply_chunk, self.database, self.kind, chunk, self.source, self.reference
        )

    def finish(self) -> None:
        failure: BaseException | None = None
        for lane in range(len(self._writing)):
            try:
                self._collect(lane)
            except Exception as exc:  # every lane is waited for before the first failure is raised
                failure = failure or exc
        if failure is not None:
            raise failure

    def _collect(self, lane: int) -> None:
        writing, self._writing[lane] = self._writing[lane], None
        if writing is not None:
            self.tally.add(writing.result())

    def __exit__(self, *exc_info: object) -> None:
        for executor in self._executors:  # chunks being written when the stream failed still end first
            executor.shutdown(wait=True)


def _hash_rows(digest: hashlib._Hash, rows: Sequence[Message]) -> None:
    # Row by row (length, then the row), so the digest depends on the rows and their order only, not on how they
    # were split into messages.
    parts = []
    for row in rows:
        data = row.SerializeToString(deterministic=True)
        parts.append(len(data).to_bytes(4, "big"))
        parts.append(data)
    digest.update(b"".join(parts))


def _apply_chunk(
    database: Database, kind: ImportKind[Q, M, R, S], chunk: Sequence[tuple[int, R]], source: str, reference: str
) -> ChunkResult:
    # A concurrent writer may create the same row between our read and our insert (or PostgreSQL may pick us as a
    # deadlock victim): the chunk is then simply applied again on fresh state.
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        try:
            with UnitOfWork(database, source=source) as uow:
                result = kind.apply(uow, chunk, utcnow(), reference)
                uow.commit()
                return result
        except DBAPIError:  # IntegrityError, deadlocks and serialisation failures alike
            if attempt == CHUNK_ATTEMPTS:
                raise
            log.warning("import chunk conflicted, applying it again", exc_info=True)
    raise AssertionError("unreachable")
