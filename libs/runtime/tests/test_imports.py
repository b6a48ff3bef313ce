"""The streamed-import engine alone: a toy import of key/value rows into tables of the test's own."""

from __future__ import annotations

import contextvars
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import wait
from datetime import datetime
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update

from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import IdempotencyKeyReused, InvalidInput
from storeplane_runtime.idempotency import stored_answer
from storeplane_runtime.imports import ChunkResult, ImportKind, Tally, _ChunkWriter, run_import
from storeplane_runtime.tables import messaging_metadata

CALLER = "erp-1"
METHOD = "/toy.v1.ToyService/ImportToys"
DEADLINE_SECONDS = 20.0


def _toy_messages() -> tuple[Any, Any, Any]:
    """ToyRow (key, value), ImportToysRequest (request_id, rows) and ToySummary, as protobuf classes: the engine
    reads client streams of any service's messages."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="toy/v1/toy.proto", package="toy.v1", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str]) -> None:
        m = file.message_type.add(name=name)
        for number, (field_name, kind, label, type_name) in enumerate(fields, 1):
            added = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name

    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    message("ToyRow", ("key", f.TYPE_STRING, one, ""), ("value", f.TYPE_INT64, one, ""))
    message(
        "ImportToysRequest", ("request_id", f.TYPE_STRING, one, ""), ("rows", f.TYPE_MESSAGE, many, ".toy.v1.ToyRow")
    )
    message(
        "ToyRejection",
        ("row_number", f.TYPE_INT64, one, ""),
        ("key", f.TYPE_STRING, one, ""),
        ("reason", f.TYPE_STRING, one, ""),
    )
    message(
        "ToySummary",
        ("received", f.TYPE_INT64, one, ""),
        ("created", f.TYPE_INT64, one, ""),
        ("updated", f.TYPE_INT64, one, ""),
        ("unchanged", f.TYPE_INT64, one, ""),
        ("rejected", f.TYPE_INT64, one, ""),
        ("rejected_rows", f.TYPE_MESSAGE, many, ".toy.v1.ToyRejection"),
        ("rejected_rows_truncated", f.TYPE_BOOL, one, ""),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    row, request, summary = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"toy.v1.{name}"))
        for name in ("ToyRow", "ImportToysRequest", "ToySummary")
    )
    return row, request, summary


ToyRow, ImportToysRequest, ToySummary = _toy_messages()

toy_metadata = MetaData()
toys = Table(
    "toys", toy_metadata, Column("key", String(50), primary_key=True), Column("value", Integer, nullable=False)
)
# Every row that changed a toy, in the order the writes happened.
toy_writes = Table(
    "toy_writes",
    toy_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(50), nullable=False),
    Column("value", Integer, nullable=False),
    Column("row_number", Integer, nullable=False),
)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    messaging_metadata.create_all(db.engine)
    toy_metadata.create_all(db.engine)
    yield db
    db.dispose()


Rows = Sequence[tuple[int, tuple[str, int]]]


def _summary(tally: Tally) -> Any:
    return ToySummary(
        received=tally.received,
        created=tally.created,
        updated=tally.updated,
        unchanged=tally.unchanged,
        rejected=tally.rejected,
        rejected_rows=[{"row_number": r.row_number, "key": r.key, "reason": r.reason} for r in tally.rejected_rows],
        rejected_rows_truncated=tally.rejected_rows_truncated,
    )


def _validate(row: Any) -> tuple[str, int] | str:
    if not row.key:
        return "key must not be empty"
    if row.value < 0:
        return "value must not be negative"
    return (row.key, row.value)


def toy_import(
    observe: Callable[[UnitOfWork, Rows], None] = lambda _uow, _rows: None,
    *,
    method: str = METHOD,
    independent_keys: bool = False,
) -> ImportKind[Any, Any, tuple[str, int], Any]:
    """Upserts toys; a key starting with "ghost" is rejected while applying (as an unknown SKU is). `observe` sees
    each chunk as its transaction begins."""

    def apply(uow: UnitOfWork, rows: Rows, _now: datetime, _reference: str) -> ChunkResult:
        observe(uow, rows)
        result = ChunkResult()
        conn = uow.connection
        found = dict(
            conn.execute(select(toys.c.key, toys.c.value).where(toys.c.key.in_([k for _, (k, _) in rows]))).all()
        )
        for number, (key, value) in rows:
            if key.startswith("ghost"):
                result.rejected.append((number, key, f"unknown toy {key}"))
                continue
            before = found.get(key)
            if before == value:
                result.unchanged += 1
                continue
            if before is None:
                conn.execute(insert(toys).values(key=key, value=value))
                result.created += 1
            else:
                conn.execute(update(toys).where(toys.c.key == key).values(value=value))
                result.updated += 1
            conn.execute(insert(toy_writes).values(key=key, value=value, row_number=number))
        return result

    return ImportKind(
        method=method,
        rows_of=lambda message: message.rows,
        key_of=lambda row: row.key,
        dedupe_key=lambda row: row[0],
        validate=_validate,
        apply=apply,
        summarise=_summary,
        summary_type=ToySummary,
        independent_keys=independent_keys,
    )


def _stream(request_id: str, rows: Sequence[tuple[str, int]], sizes: Sequence[int] = (1,)) -> Iterator[Any]:
    """The rows in messages of `sizes` rows (cycled); a size of 0 is a message without rows. Only the first message
    carries the request_id, as a client may."""
    rest = list(rows)
    for size in itertools.cycle(sizes):
        if not rest and size:
            return
        batch, rest = rest[:size], rest[size:]
        yield ImportToysRequest(
            request_id=request_id if len(batch) + len(rest) == len(rows) else "",
            rows=[ToyRow(key=k, value=v) for k, v in batch],
        )


def _import(
    database: Database,
    requests: Iterator[Any],
    kind: ImportKind[Any, Any, tuple[str, int], Any] | None = None,
    *,
    chunk_rows: int = 4,
    lanes: int = 1,
) -> Any:
    return run_import(
        database, kind or toy_import(), requests, source="toys", caller=CALLER, chunk_rows=chunk_rows, lanes=lanes
    )


def _toys(database: Database) -> dict[str, int]:
    with database.engine.connect() as conn:
        return dict(conn.execute(select(toys.c.key, toys.c.value)).all())


def _writes(database: Database) -> list[tuple[str, int, int]]:
    with database.engine.connect() as conn:
        rows = conn.execute(
            select(toy_writes.c.key, toy_writes.c.value, toy_writes.c.row_number).order_by(toy_writes.c.id)
        )
        return [tuple(r) for r in rows]


def _clear(database: Database) -> None:
    with database.engine.begin() as conn:
        conn.execute(toys.delete())
        conn.execute(toy_writes.delete())


ROWS = [
    *[(f"k{i}", i) for i in range(4)],  # 1-4
    ("", 1),  # 5: empty key
    ("k0", 10),  # 6: k0 again, the later row wins
    ("ghost-1", 1),  # 7: rejected while applying
    ("k1", 1),  # 8: unchanged
    ("k4", -1),  # 9: negative
    *[(f"k{i}", 2 * i) for i in range(5, 12)],  # 10-16
    ("k0", 11),  # 17
    ("ghost-2", 3),  # 18
]


def test_rows_split_over_messages_of_any_size_give_the_same_result(database: Database) -> None:
    results = []
    for n, sizes in enumerate([(len(ROWS),), (1,), (3, 0, 7, 1), (5, 11)]):
        _clear(database)
        summary = _import(database, _stream(f"split-{n}", ROWS, sizes))
        results.append((summary, _toys(database), _writes(database)))
    first, toys_after, writes = results[0]
    assert (first.received, first.created, first.updated, first.unchanged, first.rejected) == (18, 11, 2, 1, 4)
    assert [(r.row_number, r.key, r.reason) for r in first.rejected_rows] == [
        (5, "", "key must not be empty"),
        (7, "ghost-1", "unknown toy ghost-1"),
        (9, "k4", "value must not be negative"),
        (18, "ghost-2", "unknown toy ghost-2"),
    ]
    assert not first.rejected_rows_truncated
    assert toys_after["k0"] == 11
    assert [w for w in writes if w[0] == "k0"] == [("k0", 0, 1), ("k0", 10, 6), ("k0", 11, 17)]
    for other in results[1:]:
        assert other == results[0]


def test_rejected_rows_are_listed_by_stream_number_up_to_the_limit(database: Database) -> None:
    # Even rows fail validation as they are read, odd ones only when their chunk is applied, later: the listed ones
    # are still the first thousand of the stream.
    rows = [("", n) if n % 2 == 0 else (f"ghost-{n}", n) for n in range(1, 1501)]
    summary = _import(database, _stream("many-bad", rows, (7, 50, 1, 300)), chunk_rows=50)
    assert (summary.received, summary.rejected, summary.created) == (1500, 1500, 0)
    assert [r.row_number for r in summary.rejected_rows] == list(range(1, 1001))
    assert summary.rejected_rows_truncated
    assert (summary.rejected_rows[0].key, summary.rejected_rows[0].reason) == ("ghost-1", "unknown toy ghost-1")
    assert (summary.rejected_rows[1].key, summary.rejected_rows[1].reason) == ("", "key must not be empty")

    long_key = "x" * 500
    small = _import(database, _stream("few-bad", [(long_key, -1), ("k", 1)]))
    assert (small.rejected, len(small.rejected_rows), small.rejected_rows_truncated) == (1, 1, False)
    assert small.rejected_rows[0].key == long_key[:200]


def test_a_repeated_stream_returns_the_first_summary_and_applies_nothing(database: Database) -> None:
    first = _import(database, _stream("once", ROWS, (5,)))
    _import(database, _stream("later", [("k0", 99), ("k5", 98)]))
    seen: list[Rows] = []
    kind = toy_import(lambda _uow, rows: seen.append(rows))
    before = _writes(database)
    again = _import(database, _stream("once", ROWS, (2, 9)), kind)
    assert again == first
    assert seen == []
    assert _writes(database) == before
    assert _toys(database)["k0"] == 99


def test_a_different_stream_under_the_same_key_is_refused(database: Database) -> None:
    _import(database, _stream("key-1", ROWS))
    before = _writes(database)
    changed = [*ROWS[:-1], ("k0", 12)]
    with pytest.raises(IdempotencyKeyReused) as caught:
        _import(database, _stream("key-1", changed))
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    with pytest.raises(IdempotencyKeyReused):
        _import(database, _stream("key-1", ROWS), toy_import(method="/toy.v1.ToyService/ImportOtherToys"))
    with pytest.raises(IdempotencyKeyReused):
        _import(database, _stream("key-1", ROWS[:-1]))  # a prefix of the rows is another stream too
    assert _writes(database) == before
    with pytest.raises(InvalidInput):
        _import(database, _stream("", ROWS))
    assert _writes(database) == before


def test_rows_of_a_later_message_with_another_request_id_are_rejected(database: Database) -> None:
    stream = [
        ImportToysRequest(request_id="mine", rows=[ToyRow(key="a", value=1), ToyRow(key="b", value=2)]),
        ImportToysRequest(request_id="theirs", rows=[ToyRow(key="c", value=3), ToyRow(key="a", value=4)]),
        ImportToysRequest(request_id="mine", rows=[ToyRow(key="d", value=5)]),
        ImportToysRequest(rows=[ToyRow(key="e", value=6)]),
    ]
    summary = _import(database, iter(stream))
    assert (summary.received, summary.created, summary.rejected) == (6, 4, 2)
    assert [(r.row_number, r.key, r.reason) for r in summary.rejected_rows] == [
        (3, "c", "request_id differs from the first message's"),
        (4, "a", "request_id differs from the first message's"),
    ]
    assert _toys(database) == {"a": 1, "b": 2, "d": 5, "e": 6}


def test_a_failing_chunk_stops_the_import_and_leaves_the_chunks_committed_before_it(database: Database) -> None:
    seen: list[list[int]] = []

    def observe(_uow: UnitOfWork, rows: Rows) -> None:
        seen.append([n for n, _ in rows])
        if any(value == 666 for _, (_, value) in rows):
            raise RuntimeError("disk on fire")

    rows = [(f"k{i}", 666 if i == 5 else i) for i in range(1, 13)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        _import(database, _stream("fails", rows, (3,)), toy_import(observe), chunk_rows=2)
    assert seen == [[1, 2], [3, 4], [5, 6]]  # the chunk after the failed one was never applied
    assert _toys(database) == {"k1": 1, "k2": 2, "k3": 3, "k4": 4}
    assert stored_answer(database, CALLER, "fails") is None  # so the stream may be sent again
    fixed = [(k, 5 if v == 666 else v) for k, v in rows]
    summary = _import(database, _stream("fails", fixed, (3,)), chunk_rows=2)
    assert (summary.received, summary.created, summary.unchanged) == (12, 8, 4)


def test_a_chunk_that_conflicted_is_applied_again_and_counted_once(database: Database) -> None:
    attempts: list[list[int]] = []

    def observe(uow: UnitOfWork, rows: Rows) -> None:
        attempts.append([n for n, _ in rows])
        if len(attempts) == 2:  # the first attempt at the second chunk meets a real unique violation
            uow.connection.execute(insert(toys).values(key="k1", value=0))

    summary = _import(database, _stream("conflict", [(f"k{i}", i) for i in range(1, 7)]), toy_import(observe))
    assert attempts == [[1, 2, 3, 4], [5, 6], [5, 6]]
    assert (summary.received, summary.created, summary.rejected) == (6, 6, 0)
    assert [n for _, _, n in _writes(database)] == [1, 2, 3, 4, 5, 6]


def test_chunks_are_written_off_the_callers_thread_in_its_context(database: Database) -> None:
    request_of_call: contextvars.ContextVar[str] = contextvars.ContextVar("request_of_call")
    seen: list[tuple[str, str]] = []

    def observe(_uow: UnitOfWork, _rows: Rows) -> None:
        seen.append((request_of_call.get("none"), threading.current_thread().name))

    request_of_call.set("call-7")
    _import(database, _stream("context", [(f"k{i}", i) for i in range(10)], (3,)), toy_import(observe))
    assert len(seen) == 3
    assert {context for context, _ in seen} == {"call-7"}
    assert all(thread.startswith("import-chunks-") for _, thread in seen)


def test_lanes_keep_the_order_of_the_rows_of_each_key(database: Database) -> None:
    keys = [f"k{i}" for i in range(12)]
    rows = [(key, (r * 5 + i) % 4) for r in range(6) for i, key in enumerate(keys)]  # 72 rows, some repeat a value
    threads: set[str] = set()
    kind = toy_import(lambda _uow, _rows: threads.add(threading.current_thread().name), independent_keys=True)
    summary = _import(database, _stream("lanes", rows, (9,)), kind, chunk_rows=2, lanes=3)

    expected: dict[str, list[tuple[int, int]]] = {}
    last: dict[str, int] = {}
    for number, (key, value) in enumerate(rows, 1):
        if last.get(key) != value:
            expected.setdefault(key, []).append((value, number))
        last[key] = value
    assert summary.received == 72
    assert summary.created + summary.updated == sum(len(v) for v in expected.values())
    written: dict[str, list[tuple[int, int]]] = {}
    for key, value, number in _writes(database):
        written.setdefault(key, []).append((value, number))
    assert written == expected
    assert _toys(database) == last
    if not database.is_sqlite:  # SQLite has one writer: the engine uses one lane there
        assert len(threads) > 1


@pytest.mark.parametrize("lanes", [1, 3])
def test_the_engine_holds_at_most_two_chunks_per_lane(database: Database, lanes: int) -> None:
    """The apply callback sees how far the stream was read: a lane's rows read but not yet applied never pass two
    chunks (the one being written and the one being built) and the row in hand."""
    chunk_rows, total = 5, 120
    rows = [(f"k{i:03d}", i) for i in range(total)]  # distinct keys: every chunk is full
    log: list[tuple[str, object]] = []  # ("read", row number) and ("done", (thread, row numbers)), as they happen
    progress = threading.Condition()
    read = 0

    def stream() -> Iterator[Any]:
        nonlocal read
        for message in _stream("bounded", rows, (1,)):
            with progress:
                read += 1
                log.append(("read", read))
                progress.notify_all()
            yield message

    def observe(_uow: UnitOfWork, chunk: Rows) -> None:
        numbers = [n for n, _ in chunk]
        if lanes == 1:
            # Hold this chunk until the reader got as far as it may meanwhile (the next chunk and one row): a reader
            # that waited for nothing would run ahead now; one that does not read while writing never gets there.
            target = min(numbers[-1] + chunk_rows + 1, total)
            with progress:
                assert progress.wait_for(lambda: read >= target, DEADLINE_SECONDS), "reading stopped while writing"
        with progress:
            log.append(("done", (threading.current_thread().name, numbers)))

    summary = _import(
        database, stream(), toy_import(observe, independent_keys=True), chunk_rows=chunk_rows, lanes=lanes
    )
    assert (summary.received, summary.created) == (total, total)

    lane_of: dict[object, str] = {}  # row number -> the writer thread (lane) that applied it
    for kind, entry in log:
        if kind == "done":
            thread, numbers = entry
            lane_of.update(dict.fromkeys(numbers, thread))
    held: dict[str, int] = {}  # per lane, rows read and not yet applied
    most = 0
    for kind, entry in log:
        if kind == "read":
            lane = lane_of[entry]
            held[lane] = held.get(lane, 0) + 1
            most = max(most, held[lane])
        else:
            thread, numbers = entry
            held[thread] -= len(numbers)
    assert most <= 2 * chunk_rows + 1
    if lanes == 1:
        assert most == 2 * chunk_rows + 1  # the reader did read ahead while a chunk was written


def test_a_writer_whose_chunk_failed_stops_the_import_at_the_next_chunk_of_any_writer(sqlite_url: str) -> None:
    def apply(_uow: object, rows: object, _now: object, _reference: str) -> ChunkResult:
        numbers = [n for n, _ in rows]
        if 13 in numbers:
            raise RuntimeError("disk on fire")
        return ChunkResult(updated=len(numbers))

    kind: ImportKind = ImportKind("m", list, str, str, str, apply, _summary, ToySummary, independent_keys=True)
    database, tally = Database(sqlite_url), Tally()
    try:
        writer = _ChunkWriter(database, kind, "test", "ref", tally, lanes=2)
        with pytest.raises(RuntimeError, match="disk on fire"), writer:
            writer.write(0, [(1, "a"), (2, "b")])
            writer.write(1, [(13, "x")])
            failing = writer._writing[1]
            assert failing is not None
            wait([failing])
            writer.write(0, [(3, "c")])  # lane 1 failed meanwhile: this chunk is not written
        assert tally.updated == 2  # the chunk written before the failure counts; the one after it was never applied
    finally:
        database.dispose()


def test_an_empty_stream_answers_an_empty_summary(database: Database) -> None:
    assert _import(database, iter([])) == ToySummary()
    assert _writes(database) == []
