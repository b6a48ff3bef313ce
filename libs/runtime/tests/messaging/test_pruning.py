"""Idempotency keys and inbox rows are forgotten past their retention, in short batches, by a worker of every service
process with a database; what is younger stays (a retried call still gets its first answer)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from messaging_kit import FAST, ServiceDb, metric, sale, unique_name
from sqlalchemy import event, func, insert, select, text, update

from pos.stock.v1 import stock_pb2
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.idempotency import RETENTION, run_once
from storeplane_runtime.messaging import InProcessBus, Pruner, messaging_workers
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.pruning import delete_before
from storeplane_runtime.messaging.wiring import load_messaging_settings
from storeplane_runtime.settings import ServiceSettings, SettingsError
from storeplane_runtime.tables import idempotency_table, inbox_table
from storeplane_runtime.testing import wait_until

INBOX_RETENTION = timedelta(hours=FAST.inbox_retention_hours)


def _keys(db: ServiceDb, prefix: str, count: int, *, age: timedelta) -> None:
    created = utcnow() - age
    rows = [
        {
            "caller": "till-1",
            "request_id": f"{prefix}-{n}",
            "method": "/pos.stock.v1.StockService/Release",
            "request_hash": "h",
            "response": b"",
            "created_at": created,
        }
        for n in range(count)
    ]
    with db.database.engine.begin() as conn:
        conn.execute(insert(idempotency_table), rows)


def _inbox(db: ServiceDb, prefix: str, count: int, *, age: timedelta) -> None:
    processed = utcnow() - age
    rows = [
        {"consumer": "stock", "event_id": f"{prefix}-{n}", "event_type": "pos.x.v1.Y", "processed_at": processed}
        for n in range(count)
    ]
    with db.database.engine.begin() as conn:
        conn.execute(insert(inbox_table), rows)


def _left(db: ServiceDb) -> dict[str, dict[str, int]]:
    """Rows left per table, counted by the prefix of their key."""
    found: dict[str, dict[str, int]] = {}
    with db.database.engine.connect() as conn:
        for table, key in ((idempotency_table, "request_id"), (inbox_table, "event_id")):
            counts = found.setdefault(table.name, {})
            for value in conn.execute(select(table.c[key])).scalars():
                prefix = value.rsplit("-", 1)[0]
                counts[prefix] = counts.get(prefix, 0) + 1
    return found


@contextmanager
def _deletes(database: Database) -> Iterator[list[tuple[int, int]]]:
    """(rows deleted, transaction number) of every DELETE run on the database meanwhile."""
    seen: list[tuple[int, int]] = []
    transactions = [0]

    def on_begin(_conn: Any) -> None:
        transactions[0] += 1

    def after(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            seen.append((cursor.rowcount, transactions[0]))

    event.listen(database.engine, "begin", on_begin)
    event.listen(database.engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(database.engine, "after_cursor_execute", after)
        event.remove(database.engine, "begin", on_begin)


def test_keys_past_48_hours_and_inbox_rows_past_their_retention_go_younger_ones_stay(
    database_url: str, make_db: Callable[[str], ServiceDb]
) -> None:
    db = make_db(database_url)
    assert timedelta(hours=48) == RETENTION
    _keys(db, "old", 30, age=RETENTION + timedelta(minutes=5))
    _keys(db, "young", 20, age=RETENTION - timedelta(minutes=5))
    _inbox(db, "old", 40, age=INBOX_RETENTION + timedelta(minutes=5))
    _inbox(db, "young", 10, age=INBOX_RETENTION - timedelta(minutes=5))
    service = f"svc-{unique_name()}"
    pruner = Pruner(db.database, service=service, settings=FAST)

    assert pruner.prune() == {"idempotency_keys": 30, "inbox": 40}
    assert _left(db) == {"idempotency_keys": {"young": 20}, "inbox": {"young": 10}}
    assert pruner.prune() == {"idempotency_keys": 0, "inbox": 0}
    assert metric("storeplane_rows_pruned_total", service=service, table="idempotency_keys") == 30
    assert metric("storeplane_rows_pruned_total", service=service, table="inbox") == 40


def test_more_rows_than_a_batch_go_in_several_batches_each_in_a_transaction_of_its_own(
    database_url: str, make_db: Callable[[str], ServiceDb]
) -> None:
    db = make_db(database_url)
    _keys(db, "old", 1_050, age=RETENTION + timedelta(hours=1))
    _inbox(db, "old", 250, age=INBOX_RETENTION + timedelta(hours=1))
    _inbox(db, "young", 5, age=timedelta(0))
    pruner = Pruner(db.database, service="stock", settings=FAST.model_copy(update={"prune_batch_size": 100}))

    with _deletes(db.database) as deletes:
        assert pruner.prune() == {"idempotency_keys": 1_050, "inbox": 250}

    assert [rows for rows, _ in deletes] == [100] * 10 + [50] + [100, 100, 50]
    assert len({transaction for _, transaction in deletes}) == len(deletes)
    assert _left(db) == {"idempotency_keys": {}, "inbox": {"young": 5}}


@pytest.mark.postgres
def test_on_postgresql_pruning_skips_a_row_another_transaction_holds_instead_of_waiting_for_it(
    postgres_url: str, make_db: Callable[[str], ServiceDb]
) -> None:
    db = make_db(postgres_url)
    _keys(db, "old", 300, age=RETENTION + timedelta(hours=1))
    pruner = Pruner(db.database, service="stock", settings=FAST.model_copy(update={"prune_batch_size": 100}))
    with db.database.engine.connect() as holder, holder.begin():
        holder.execute(text("SET LOCAL lock_timeout = '10s'"))
        holder.execute(
            select(idempotency_table.c.request_id).where(idempotency_table.c.request_id == "old-7").with_for_update()
        )
        done: list[dict[str, int]] = []
        worker = threading.Thread(target=lambda: done.append(pruner.prune()))
        worker.start()
        worker.join(5)
        assert done, "pruning waited for a lock held by a call"
    assert done[0]["idempotency_keys"] == 299
    assert _left(db)["idempotency_keys"] == {"old": 1}
    assert pruner.prune()["idempotency_keys"] == 1  # released: the next pass takes it


def test_a_retried_call_gets_its_first_answer_within_the_retention_and_is_done_afresh_after_it(
    database_url: str, make_db: Callable[[str], ServiceDb]
) -> None:
    db = make_db(database_url)
    effects: list[str] = []

    def release(request_id: str) -> stock_pb2.ReleaseResponse:
        def work(_uow: UnitOfWork) -> stock_pb2.ReleaseResponse:
            effects.append(request_id)
            return stock_pb2.ReleaseResponse()

        return run_once(
            db.database,
            source="stock",
            caller="till-1",
            method="/pos.stock.v1.StockService/Release",
            request=stock_pb2.ReleaseRequest(reservation_id="basket-1", request_id=request_id),
            request_id=request_id,
            response_type=stock_pb2.ReleaseResponse,
            work=work,
        )

    def made(request_id: str, ago: timedelta) -> None:
        with db.database.engine.begin() as conn:
            conn.execute(
                update(idempotency_table)
                .where(idempotency_table.c.request_id == request_id)
                .values(created_at=utcnow() - ago)
            )

    release("kept")
    release("forgotten")
    made("kept", RETENTION - timedelta(minutes=5))
    made("forgotten", RETENTION + timedelta(minutes=5))
    Pruner(db.database, service="stock", settings=FAST).prune()

    release("kept")
    release("forgotten")
    assert effects == ["kept", "forgotten", "forgotten"]  # the kept key replayed its answer; the other ran again


def test_a_running_service_prunes_on_its_schedule(database_url: str, make_db: Callable[[str], ServiceDb]) -> None:
    db = make_db(database_url)
    settings = FAST.model_copy(update={"prune_interval_seconds": 0.2})
    workers = messaging_workers(
        "stock", ServiceSettings(service_name="stock", amqp_url=""), db.database, messaging=settings, bus=InProcessBus()
    )
    [pruner] = [w for w in workers if isinstance(w, Pruner)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: pruner.passes >= 1, 10, "the pass at start")
        # Written after a pass: only a later pass of the schedule can delete them.
        _keys(db, "old", 30, age=RETENTION + timedelta(hours=1))
        _inbox(db, "old", 30, age=INBOX_RETENTION + timedelta(hours=1))
        _keys(db, "young", 3, age=timedelta(0))
        _inbox(db, "young", 4, age=timedelta(0))
        passes = pruner.passes
        wait_until(
            lambda: _left(db) == {"idempotency_keys": {"young": 3}, "inbox": {"young": 4}}, 10, "old rows pruned"
        )
        assert pruner.passes > passes
    finally:
        for worker in reversed(workers):
            worker.stop()


def test_the_relay_prunes_sent_outbox_rows_in_batches_of_the_same_size(
    database_url: str, make_db: Callable[[str], ServiceDb]
) -> None:
    from storeplane_runtime.messaging import InProcessPublisher, OutboxRelay
    from storeplane_runtime.tables import outbox_table

    db = make_db(database_url)
    with UnitOfWork(db.database, source="checkout") as uow:
        for n in range(250):
            uow.publish(sale(f"S{n}"))
        uow.commit()
    with db.database.engine.begin() as conn:
        conn.execute(update(outbox_table).values(sent_at=utcnow() - timedelta(days=4)))
    settings = FAST.model_copy(update={"prune_batch_size": 100})
    relay = OutboxRelay(db.database, InProcessPublisher(InProcessBus()), service="checkout", settings=settings)
    with _deletes(db.database) as deletes:
        assert relay.prune() == 250
    assert [rows for rows, _ in deletes] == [100, 100, 50]
    with db.database.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox_table)).scalar_one() == 0


def test_delete_before_keeps_rows_without_a_time_and_stops_when_asked(
    database_url: str, make_db: Callable[[str], ServiceDb]
) -> None:
    db = make_db(database_url)
    _keys(db, "old", 300, age=timedelta(days=3))
    cutoff = utcnow() - timedelta(days=1)
    calls = [0]

    def stopping() -> bool:
        calls[0] += 1
        return calls[0] > 2  # two batches, then asked to stop

    assert delete_before(db.database, idempotency_table.c.created_at, cutoff, batch_size=100, stopping=stopping) == 200
    assert _left(db)["idempotency_keys"] == {"old": 100}


# Settings --------------------------------------------------------------------------------------------------


def test_the_default_inbox_retention_is_a_week_far_beyond_the_longest_retry_path() -> None:
    settings = MessagingSettings()
    assert settings.inbox_retention_hours == 168
    assert settings.longest_retry_path_seconds == (1 + 10 + 60) + 10 * 30
    assert settings.prune_batch_size == 1000


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"INBOX_RETENTION_HOURS": "0.1"}, "INBOX_RETENTION_HOURS"),  # 6 minutes < 371 s of retries
        ({"EVENTS_RETRY_DELAYS": "3600,604800"}, "INBOX_RETENTION_HOURS"),  # a week of retries beats a week
        ({"INBOX_RETENTION_HOURS": "-1"}, "INBOX_RETENTION_HOURS"),
        ({"PRUNE_BATCH_SIZE": "0"}, "PRUNE_BATCH_SIZE"),
        ({"PRUNE_INTERVAL_SECONDS": "soon"}, "PRUNE_INTERVAL_SECONDS"),
    ],
)
def test_a_wrong_pruning_setting_stops_the_process_with_one_line(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], named: str
) -> None:
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_messaging_settings("stock")
    message = str(caught.value.code)
    assert "\n" not in message
    assert message.startswith(f"stock: bad setting: {named}=")


def test_an_inbox_retention_longer_than_the_retry_path_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_RETRY_DELAYS", "3600,604800")
    monkeypatch.setenv("INBOX_RETENTION_HOURS", "336")
    assert load_messaging_settings("stock").inbox_retention_hours == 336


def test_a_service_started_with_too_short_an_inbox_retention_exits_with_one_line(tmp_path: object) -> None:
    env = {**os.environ, "INBOX_RETENTION_HOURS": "0.01", "GRPC_PORT": "0", "METRICS_PORT": "0"}
    env.pop("DATABASE_URL", None)
    env.pop("AMQP_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "customer"], env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path)
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("customer: bad setting: INBOX_RETENTION_HOURS=")
