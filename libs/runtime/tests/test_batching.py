"""Group commit: concurrent calls share a transaction yet each keeps its own answer, error, request id and trace."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from sqlalchemy import select

from pos.stock.v1 import events_pb2, stock_pb2
from storeplane_runtime import deadlines, migrations
from storeplane_runtime.batching import Batcher
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import DeadlineExceeded, DomainError, IdempotencyKeyReused, PreconditionFailed
from storeplane_runtime.idempotency import Call
from storeplane_runtime.tables import idempotency_table, outbox_table

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "stock" / "migrations"
Response = stock_pb2.ReleaseResponse


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    migrations.upgrade(db.engine, MIGRATIONS)
    yield db
    db.dispose()


class Recorder:
    """A batch work that publishes one event per call and answers with the call's payload; it records each batch,
    fails a call whose payload starts with "short", and raises for a whole batch holding a "poison" payload."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.running: set[str] = set()
        self.overlaps: list[str] = []  # payloads that ran while a call with the same payload ran in another batch
        self.gate: Callable[[], None] = lambda: None
        self.lock = threading.Lock()

    def __call__(self, uow: UnitOfWork, calls: Sequence[Call[str]]) -> list[Response | DomainError]:
        payloads = [c.payload for c in calls]
        with self.lock:
            self.batches.append(payloads)
            self.overlaps.extend(p for p in payloads if p in self.running)
            self.running.update(payloads)
        try:
            self.gate()
            if any(p.startswith("poison") for p in payloads):
                raise RuntimeError("a bug in one call")
            answers: list[Response | DomainError] = []
            for call in calls:
                if call.payload.startswith("short"):
                    answers.append(PreconditionFailed(f"{call.payload} is short", reason="SHORT"))
                    continue
                if call.trace_headers is not None:
                    uow.trace_headers = call.trace_headers
                uow.publish(events_pb2.ItemUpdated(item=stock_pb2.Item(sku=call.payload)), subject=call.payload)
                answers.append(Response(reservation=stock_pb2.Reservation(reservation_id=call.payload)))
            return answers
        finally:
            with self.lock:
                self.running.difference_update(payloads)


def _batcher(database: Database, work: Recorder, **kwargs: float) -> Batcher[str, Response]:
    return Batcher(database, source="stock", method="Release", response_type=Response, work=work, **kwargs)


def _call(batcher: Batcher[str, Response], payload: str, request_id: str, conflict: str = "") -> Response:
    return batcher.call(
        caller="till-1",
        request=stock_pb2.ReleaseRequest(reservation_id=payload, request_id=request_id),
        request_id=request_id,
        payload=payload,
        conflict=conflict or payload,
    )


def _concurrently(calls: Sequence[Callable[[], object]]) -> list[object]:
    """Run the calls in threads; each one's answer or exception, in order."""
    outcomes: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            outcomes[i] = calls[i]()
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a call never returned"
    return outcomes


def _hold_first_batch_until_queued(batcher: Batcher[str, Response], work: Recorder, queued: int) -> None:
    """The first batch waits until `queued` calls wait behind it, so that they share the next batches."""
    first = threading.Event()

    def gate() -> None:
        if not first.is_set():
            first.set()
            deadline = time.monotonic() + 20
            while len(batcher._queue) < queued and time.monotonic() < deadline:
                time.sleep(0.005)

    work.gate = gate


def _outbox_subjects(database: Database) -> list[str]:
    with database.engine.connect() as conn:
        return sorted(conn.execute(select(outbox_table.c.subject)).scalars())


def _keys(database: Database) -> list[str]:
    with database.engine.connect() as conn:
        return sorted(conn.execute(select(idempotency_table.c.request_id)).scalars())


def test_concurrent_calls_share_transactions_and_each_gets_its_own_answer(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=1, max_batch=64)
    n = 30
    _hold_first_batch_until_queued(batcher, work, n - 1)
    outcomes = _concurrently([lambda i=i: _call(batcher, f"p-{i}", f"k-{i}") for i in range(n)])
    assert [o.reservation.reservation_id for o in outcomes] == [f"p-{i}" for i in range(n)]  # type: ignore[union-attr]
    assert len(work.batches) == 2 and sorted(len(b) for b in work.batches) == [1, n - 1]
    assert _outbox_subjects(database) == sorted(f"p-{i}" for i in range(n))
    assert _keys(database) == sorted(f"k-{i}" for i in range(n))
    # Done once: the same calls again replay their answers without running the work.
    again = _concurrently([lambda i=i: _call(batcher, f"p-{i}", f"k-{i}") for i in range(n)])
    assert again == outcomes
    assert len(work.batches) == 2


def test_a_call_that_fails_changes_nothing_and_leaves_the_others_of_its_batch_alone(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=1)
    payloads = ["p-0", "p-1", "short-2", "p-3", "short-4", "p-5"]
    _hold_first_batch_until_queued(batcher, work, len(payloads) - 1)
    outcomes = _concurrently([lambda p=p: _call(batcher, p, f"k-{p}") for p in payloads])
    for payload, outcome in zip(payloads, outcomes, strict=True):
        if payload.startswith("short"):
            assert isinstance(outcome, PreconditionFailed) and outcome.reason == "SHORT"
        else:
            assert isinstance(outcome, Response) and outcome.reservation.reservation_id == payload
    assert max(len(b) for b in work.batches) == len(payloads) - 1  # the failures shared a batch with successes
    assert _outbox_subjects(database) == ["p-0", "p-1", "p-3", "p-5"]
    assert _keys(database) == ["k-p-0", "k-p-1", "k-p-3", "k-p-5"]  # an error is not an answer to replay
    work.batches.clear()
    with pytest.raises(PreconditionFailed):
        _call(batcher, "short-2", "k-short-2")
    assert work.batches == [["short-2"]]  # a retry of a failed call runs again


def test_a_batch_that_fails_as_a_whole_is_run_again_call_by_call(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=1)
    payloads = ["p-0", "p-1", "poison-2", "p-3"]
    _hold_first_batch_until_queued(batcher, work, len(payloads) - 1)
    outcomes = _concurrently([lambda p=p: _call(batcher, p, f"k-{p}") for p in payloads])
    assert isinstance(outcomes[2], RuntimeError)
    assert [o.reservation.reservation_id for o in outcomes if isinstance(o, Response)] == ["p-0", "p-1", "p-3"]
    assert _outbox_subjects(database) == ["p-0", "p-1", "p-3"]
    assert _keys(database) == ["k-p-0", "k-p-1", "k-p-3"]


def test_conflicting_calls_never_share_a_batch_nor_run_at_once(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=3, max_batch=8)
    conflicts = [f"basket-{i % 4}" for i in range(40)]  # ten calls for each of four baskets
    _hold_first_batch_until_queued(batcher, work, 30)
    outcomes = _concurrently(
        [lambda i=i, c=c: _call(batcher, f"p-{i}", f"k-{i}", conflict=c) for i, c in enumerate(conflicts)]
    )
    assert all(isinstance(o, Response) for o in outcomes)
    for batch in work.batches:
        baskets = [conflicts[int(p.removeprefix("p-"))] for p in batch]
        assert len(baskets) == len(set(baskets)), batch
    assert not work.overlaps
    assert max(len(b) for b in work.batches) > 1  # calls of different baskets did share batches
    # No two batches of one basket at once: every call of a basket ran, one batch after the other.
    assert sorted(p for b in work.batches for p in b) == sorted(f"p-{i}" for i in range(40))
    assert len(_keys(database)) == 40


def test_one_request_id_sent_twice_at_once_is_done_once_and_both_get_its_answer(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=2)
    outcomes = _concurrently([lambda i=i: _call(batcher, "p-same", "k-same", conflict=f"c-{i}") for i in range(8)])
    assert all(o == outcomes[0] for o in outcomes) and isinstance(outcomes[0], Response)
    assert sum(b.count("p-same") for b in work.batches) == 1
    assert _outbox_subjects(database) == ["p-same"]


def test_a_key_used_before_for_another_request_is_refused_inside_a_batch(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=1)
    _call(batcher, "p-first", "k-taken")
    _hold_first_batch_until_queued(batcher, work, 2)
    outcomes = _concurrently([lambda: _call(batcher, "p-other", "k-taken"), lambda: _call(batcher, "p-new", "k-new")])
    assert isinstance(outcomes[0], IdempotencyKeyReused)
    assert isinstance(outcomes[1], Response)
    assert _outbox_subjects(database) == ["p-first", "p-new"]


def test_each_call_s_events_carry_its_own_caller_s_trace(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=1)
    n = 6
    _hold_first_batch_until_queued(batcher, work, n - 1)

    def traced(i: int) -> Response:
        span = trace.NonRecordingSpan(
            trace.SpanContext(trace_id=0xABC000 + i, span_id=0x100 + i, is_remote=True, trace_flags=trace.TraceFlags(1))
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return _call(batcher, f"p-{i}", f"k-{i}")
        finally:
            otel_context.detach(token)

    _concurrently([lambda i=i: traced(i) for i in range(n)])
    assert max(len(b) for b in work.batches) == n - 1
    with database.engine.connect() as conn:
        rows = conn.execute(select(outbox_table.c.subject, outbox_table.c.headers)).all()
    for subject, headers in rows:
        i = int(subject.removeprefix("p-"))
        assert headers["traceparent"].split("-")[1] == f"{0xABC000 + i:032x}", subject


def _two_call_batch(batcher: Batcher[str, Response], work: Recorder) -> None:
    """Leave the batcher with a last batch of two calls: calls were arriving together."""
    _hold_first_batch_until_queued(batcher, work, 2)
    _concurrently([lambda i=i: _call(batcher, f"warm-{i}", f"k-warm-{i}") for i in range(3)])
    work.gate = lambda: None
    assert [len(b) for b in work.batches[-2:]] == [1, 2]


def test_while_calls_arrive_together_a_batch_waits_for_more_to_join(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=1, linger=1.0)
    _two_call_batch(batcher, work)

    def later() -> Response:
        time.sleep(0.1)
        return _call(batcher, "p-later", "k-later")

    outcomes = _concurrently([lambda: _call(batcher, "p-first", "k-first"), later])
    assert all(isinstance(o, Response) for o in outcomes)
    assert sorted(work.batches[-1]) == ["p-first", "p-later"]  # the first waited for the second


def test_a_lone_call_never_waits_and_a_full_queue_ends_the_wait(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=1, linger=5.0, max_batch=3)
    started = time.monotonic()
    _call(batcher, "p-alone", "k-alone")  # nothing before it: no reason to wait
    _call(batcher, "p-alone-again", "k-alone-again")  # the last batch had one call: no reason either
    assert time.monotonic() - started < 2.5
    _two_call_batch(batcher, work)
    started = time.monotonic()

    def staggered(i: int) -> Response:
        time.sleep(0.05 * i)
        return _call(batcher, f"p-{i}", f"k-{i}")

    _concurrently([lambda i=i: staggered(i) for i in range(3)])
    assert time.monotonic() - started < 2.5  # three queued = max_batch: the batch went without the 5 s
    assert sorted(work.batches[-1]) == ["p-0", "p-1", "p-2"]


def test_a_call_whose_deadline_passed_while_it_waited_is_not_done(database: Database) -> None:
    work = Recorder()
    batcher = _batcher(database, work, lanes=1)
    _hold_first_batch_until_queued(batcher, work, 2)  # the first batch runs until both others wait behind it

    def with_deadline(payload: str, seconds: float) -> Response:
        token = deadlines.set_deadline(seconds)
        try:
            if payload == "p-hurried":
                time.sleep(0.05)  # queued after the first call took the lead
            return _call(batcher, payload, f"k-{payload}")
        finally:
            deadlines.reset_deadline(token)

    def first() -> Response:
        return _call(batcher, "p-first", "k-p-first")

    slow_gate = work.gate

    def gate() -> None:
        slow_gate()
        time.sleep(0.3)  # longer than the hurried call's deadline

    work.gate = gate
    outcomes = _concurrently([first, lambda: with_deadline("p-hurried", 0.1), lambda: with_deadline("p-patient", 30.0)])
    assert isinstance(outcomes[0], Response) and isinstance(outcomes[2], Response)
    assert isinstance(outcomes[1], DeadlineExceeded)
    assert "p-hurried" not in [p for b in work.batches for p in b]
    assert _keys(database) == ["k-p-first", "k-p-patient"]
    # Nothing was done for it: the retry (a new deadline) does it.
    work.gate = lambda: None
    assert _call(batcher, "p-hurried", "k-p-hurried").reservation.reservation_id == "p-hurried"
