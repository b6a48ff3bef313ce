"""ERP batch imports (items, stock levels): a client stream applied chunk by chunk, one transaction per chunk,
so memory stays bounded whatever the length and a bad row never aborts the good ones.

A stream message carries one row, a batch of rows, or both (the single row first). Rows are numbered across the
whole stream, whatever messages they came in, and everything else (validation, reporting, chunks, idempotency)
works on rows: how a client splits its rows into messages changes nothing but the speed.

Idempotency of a whole stream: the request_id of the first message names the import. If it was seen before, the
stream is only read (to compare its rows with the first one's) and the first summary is returned; nothing is
applied twice. Otherwise the rows are applied and the key is stored with the summary when the stream ends. A
stream broken off midway leaves its committed chunks applied and no key: sending it again is safe, because rows
are upserts ("unchanged" where they already hold).

While one chunk is written (a thread of the import's own, in the caller's context), the next is read and checked:
the database and the checking overlap. An import whose rows of different keys never affect each other (stock levels)
is split by key into `lanes` on PostgreSQL, each with its own writer thread and transactions: the rows of one key
always take the same lane, in stream order, so the last row of a key still wins and its events keep their order;
the lanes only ever lock different rows. At most two chunks per lane are held at once.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Generic, NamedTuple, TypeVar

from google.protobuf.message import Message
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from pos.stock.v1 import stock_pb2
from stock import events, storage
from stock.domain import (
    MAX_SKU_LENGTH,
    MAX_STOCK_QUANTITY,
    ChangeReason,
    Item,
    Level,
    LevelChange,
    item_violations,
    reorder_point_crossed,
)
from stock.services import StockPolicy
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import IdempotencyKeyReused
from storeplane_runtime.idempotency import check_request_id
from storeplane_runtime.outbox import PendingEvent, idempotency_table, utcnow
from storeplane_runtime.stores import MINOR_UNITS, Store

log = logging.getLogger(__name__)

MAX_LISTED_REJECTIONS = 1000
Q = TypeVar("Q", bound=Message)  # a message of the client stream
M = TypeVar("M", bound=Message)  # a row as sent
R = TypeVar("R")  # a validated row


@dataclass
class ChunkResult:
    """What one chunk did; merged into the summary only once its transaction committed."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (row number, key, reason)


@dataclass
class Tally:
    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejected_rows: list[stock_pb2.RejectedRow] = field(default_factory=list)

    def reject(self, row_number: int, key: str, reason: str) -> None:
        self.rejected += 1
        if len(self.rejected_rows) < MAX_LISTED_REJECTIONS:
            self.rejected_rows.append(stock_pb2.RejectedRow(row_number=row_number, key=key[:200], reason=reason))

    def add(self, chunk: ChunkResult) -> None:
        self.created += chunk.created
        self.updated += chunk.updated
        self.unchanged += chunk.unchanged
        for row_number, key, reason in chunk.rejected:
            self.reject(row_number, key, reason)

    def summary(self) -> stock_pb2.ImportSummary:
        ordered = sorted(self.rejected_rows, key=lambda r: r.row_number)
        return stock_pb2.ImportSummary(
            received=self.received,
            created=self.created,
            updated=self.updated,
            unchanged=self.unchanged,
            rejected=self.rejected,
            rejected_rows=ordered,
            rejected_rows_truncated=self.rejected > len(ordered),
        )


@dataclass(frozen=True)
class ImportKind(Generic[Q, M, R]):
    """How one import reads, checks and applies its rows."""

    method: str
    rows_of: Callable[[Q], Sequence[M]]  # the rows one stream message carries, in import order
    key_of: Callable[[M], str]  # the row's key as reported in rejections
    dedupe_key: Callable[[R], object]  # rows with the same key must not share a chunk
    validate: Callable[[M], R | str]  # the checked row, or why it is rejected
    apply: Callable[[UnitOfWork, Sequence[tuple[int, R]], datetime, str], ChunkResult]  # ..., reference id
    # Rows of different keys may be applied in any order, at once (items may not: a barcode moves between SKUs).
    independent_keys: bool = False


def run_import(
    database: Database,
    kind: ImportKind[Q, M, R],
    requests: Iterator[Q],
    *,
    source: str,
    caller: str,
    chunk_rows: int,
    lanes: int = 1,
) -> stock_pb2.ImportSummary:
    tally = Tally()
    first = next(requests, None)
    if first is None:
        return tally.summary()
    request_id: str = first.request_id  # type: ignore[attr-defined]
    check_request_id(request_id)
    digest = hashlib.sha256()
    stored = _stored(database, caller, request_id)
    stream = _chain(first, requests)
    if stored is not None:
        for message in stream:
            _hash_rows(digest, kind.rows_of(message))
        if stored[0] != digest.hexdigest() or stored[1] != kind.method:
            raise IdempotencyKeyReused(
                "request_id was already used for a different import", metadata={"request_id": request_id}
            )
        return stock_pb2.ImportSummary.FromString(stored[2])

    lanes = lanes if kind.independent_keys and not database.is_sqlite else 1  # SQLite has one writer anyway
    chunks: list[list[tuple[int, R]]] = [[] for _ in range(lanes)]
    keysets: list[set[object]] = [set() for _ in range(lanes)]
    validate, dedupe_key = kind.validate, kind.dedupe_key
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
                    tally.reject(number, kind.key_of(row), "request_id differs from the first message's")
                    continue
                checked = validate(row)
                if isinstance(checked, str):
                    tally.reject(number, kind.key_of(row), checked)
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
    summary = tally.summary()
    _store(database, caller, request_id, kind.method, digest.hexdigest(), summary)
    return summary


class _ChunkWriter(Generic[Q, M, R]):
    """Applies an import's chunks on threads of its own, one per lane, each lane's chunks one at a time and in order,
    while the caller builds the next: `write` waits for the lane's chunk before (so at most two per lane are held)
    and hands the new one over. A failed chunk fails the next `write` or `finish`; leaving the block waits for the
    chunks being written."""

    def __init__(
        self, database: Database, kind: ImportKind[Q, M, R], source: str, reference: str, tally: Tally, lanes: int = 1
    ) -> None:
        self.database, self.kind, self.source, self.reference, self.tally = database, kind, source, reference, tally
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"import-chunks-{lane}") for lane in range(lanes)
        ]
        self._writing: list[Future[ChunkResult] | None] = [None] * lanes
        self._context = contextvars.copy_context()  # the call's trace and log context, for the events it causes

    def __enter__(self) -> _ChunkWriter[Q, M, R]:
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


def _chain(first: Q, rest: Iterator[Q]) -> Iterator[Q]:
    yield first
    yield from rest


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
    database: Database, kind: ImportKind[Q, M, R], chunk: Sequence[tuple[int, R]], source: str, reference: str
) -> ChunkResult:
    # A concurrent writer may create the same level or barcode between our read and our insert (or PostgreSQL may
    # pick us as a deadlock victim): the chunk is then simply applied again on fresh state.
    for attempt in range(3):
        try:
            with UnitOfWork(database, source=source) as uow:
                result = kind.apply(uow, chunk, utcnow(), reference)
                uow.commit()
                return result
        except (IntegrityError, DBAPIError):
            if attempt == 2:
                raise
            log.warning("import chunk conflicted, applying it again", exc_info=True)
    raise AssertionError("unreachable")


def _stored(database: Database, caller: str, request_id: str) -> tuple[str, str, bytes] | None:
    t = idempotency_table
    with database.engine.connect() as conn:
        row = conn.execute(
            select(t.c.request_hash, t.c.method, t.c.response).where(t.c.caller == caller, t.c.request_id == request_id)
        ).first()
    return None if row is None else (row.request_hash, row.method, row.response)


def _store(
    database: Database, caller: str, request_id: str, method: str, digest: str, summary: stock_pb2.ImportSummary
) -> None:
    try:
        with database.engine.begin() as conn:
            conn.execute(
                insert(idempotency_table).values(
                    caller=caller,
                    request_id=request_id,
                    method=method,
                    request_hash=digest,
                    response=summary.SerializeToString(deterministic=True),
                    created_at=utcnow(),
                )
            )
    except IntegrityError:
        log.info("import key stored concurrently by another stream", extra={"request_id": request_id})


# --- stock levels -------------------------------------------------------------------------------------------


class LevelRow(NamedTuple):
    """A checked stock level row (a tuple: imports hold thousands of them)."""

    store_id: str
    sku: str
    on_hand: int


def _level_rows(message: stock_pb2.ImportStockLevelsRequest) -> Sequence[stock_pb2.StockLevelRow]:
    if message.HasField("row"):
        return [message.row, *message.rows]
    return message.rows


def stock_level_import(
    stores: Mapping[str, Store], policy: StockPolicy
) -> ImportKind[stock_pb2.ImportStockLevelsRequest, stock_pb2.StockLevelRow, LevelRow]:
    def validate(row: stock_pb2.StockLevelRow) -> LevelRow | str:
        store_id, sku, on_hand = row.store_id, row.sku, row.on_hand
        if store_id not in stores:
            return f"unknown store {store_id[:64]!r}" if store_id else "store_id is empty"
        if not sku:
            return "sku is empty"
        # str.isprintable() refuses every whitespace character but the plain space.
        if len(sku) > MAX_SKU_LENGTH or not sku.isprintable() or " " in sku:
            return f"sku must be 1 to {MAX_SKU_LENGTH} printable characters without spaces"
        if not 0 <= on_hand <= MAX_STOCK_QUANTITY:
            return f"on_hand must be between 0 and {MAX_STOCK_QUANTITY}"
        return LevelRow(store_id, sku, on_hand)

    def apply(uow: UnitOfWork, rows: Sequence[tuple[int, LevelRow]], now: datetime, reference: str) -> ChunkResult:
        # Thousands of rows per chunk: one statement reads, locks and sets the existing levels (storage.import_on_hand),
        # no Level or LevelChange per row, and the events come from one template (events.LevelChangeEvents). The rules
        # are those of every other change of a level.
        result = ChunkResult()
        conn = uow.connection
        found = storage.import_on_hand(conn, [r for _, r in rows], now)
        created: list[LevelRow] = []
        pending: list[PendingEvent] = []
        changes = events.LevelChangeEvents(
            source=uow.source, headers=uow.trace_headers, reason=ChangeReason.IMPORT, reference_id=reference, at=now
        )
        default_point = policy.default_reorder_point
        for number, r in rows:
            store_id, sku, on_hand = r
            entry = found.get((store_id, sku))
            if entry is None:
                result.rejected.append((number, f"{store_id}/{sku}", f"unknown SKU {sku}"))
                continue
            point, on_hand_before, reserved = entry
            if on_hand_before is None or reserved is None:
                on_hand_before = reserved = 0
                created.append(r)
                if not on_hand:
                    continue  # a new level of 0: created, but nothing changed
            elif on_hand_before == on_hand:
                result.unchanged += 1
                continue
            else:
                result.updated += 1
            pending.append(
                changes.changed(
                    store_id, sku, on_hand=on_hand, reserved=reserved, on_hand_delta=on_hand - on_hand_before
                )
            )
            if point is None:
                point = default_point
            if reorder_point_crossed(on_hand_before - reserved, on_hand - reserved, point):
                before = Level(store_id, sku, on_hand_before, reserved)
                change = LevelChange(
                    before, Level(store_id, sku, on_hand, reserved, now), ChangeReason.IMPORT, reference
                )
                pending.append(changes.low(change, point))
        result.created = len(created)
        storage.insert_imported_levels(conn, created, now)
        uow.publish_prepared(pending)
        return result

    return ImportKind(
        method="/pos.stock.v1.StockService/ImportStockLevels",
        rows_of=_level_rows,
        key_of=lambda r: f"{r.store_id}/{r.sku}",
        dedupe_key=itemgetter(0, 1),  # (store_id, sku)
        validate=validate,
        apply=apply,
        independent_keys=True,
    )


# --- items --------------------------------------------------------------------------------------------------


def _items(message: stock_pb2.ImportItemsRequest) -> Sequence[stock_pb2.Item]:
    if message.HasField("item"):
        return [message.item, *message.items]
    return message.items


def item_import() -> ImportKind[stock_pb2.ImportItemsRequest, stock_pb2.Item, Item]:
    currencies = set(MINOR_UNITS)

    def validate(item: stock_pb2.Item) -> Item | str:
        prices = [(p.currency_code, p.amount_minor) for p in item.prices]
        reorder_point = item.reorder_point if item.HasField("reorder_point") else None
        violations = item_violations(
            item.sku, item.name, item.tax_class, list(item.barcodes), prices, reorder_point, currencies
        )
        if violations:
            return "; ".join(f"{v.field}: {v.description}" for v in violations)
        return Item(
            sku=item.sku,
            name=item.name,
            tax_class=item.tax_class,
            barcodes=tuple(item.barcodes),
            prices=dict(prices),
            reorder_point=reorder_point,
        )

    def apply(uow: UnitOfWork, rows: Sequence[tuple[int, Item]], now: datetime, reference: str) -> ChunkResult:
        result = ChunkResult()
        session = uow.connection
        existing = storage.find_items(session, {i.sku for _, i in rows})
        owners = storage.barcode_owners(session, {b for _, i in rows for b in i.barcodes})
        created: list[Item] = []
        updated: list[Item] = []
        for number, item in rows:
            taken = [(b, owners[b]) for b in item.barcodes if owners.get(b, item.sku) != item.sku]
            if taken:
                b, other = taken[0]
                result.rejected.append((number, item.sku, f"barcode {b} already used by SKU {other}"))
                continue
            before = existing.get(item.sku)
            if before is not None and before.same_content(item):
                result.unchanged += 1
                continue
            if before is not None:
                for b in before.barcodes:
                    if owners.get(b) == item.sku:
                        del owners[b]  # released: a later row of this chunk may take it
            saved = Item(
                sku=item.sku,
                name=item.name,
                tax_class=item.tax_class,
                barcodes=item.barcodes,
                prices=item.prices,
                reorder_point=item.reorder_point,
                revision=(before.revision if before else 0) + 1,
                updated_at=now,
            )
            owners.update({b: item.sku for b in item.barcodes})
            (updated if before is not None else created).append(saved)
            uow.publish(events.item_updated(saved, created=before is None, correlation_id=reference), subject=item.sku)
        result.created, result.updated = len(created), len(updated)
        storage.save_items(session, created, updated)
        return result

    return ImportKind(
        method="/pos.stock.v1.StockService/ImportItems",
        rows_of=_items,
        key_of=lambda i: i.sku,
        dedupe_key=lambda i: i.sku,
        validate=validate,
        apply=apply,
    )
