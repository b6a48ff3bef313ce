"""The unit of work writes events to the outbox in the same transaction as the state change."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from pos.common.v1 import common_pb2
from pos.stock.v1 import events_pb2, stock_pb2
from storeplane_runtime import migrations
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.settings import BACKGROUND_CONNECTIONS, ServiceSettings
from storeplane_runtime.tables import outbox_table

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "stock" / "migrations"


@pytest.fixture
def database(database_url: str) -> Database:
    db = Database(database_url)
    migrations.upgrade(db.engine, MIGRATIONS)
    yield db
    db.dispose()


def _event(sku: str = "SKU-1") -> events_pb2.ItemUpdated:
    return events_pb2.ItemUpdated(item=stock_pb2.Item(sku=sku, name="Shoe"))


def _outbox_rows(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(outbox_table)).scalar_one())


def test_event_of_a_rolled_back_unit_of_work_leaves_no_outbox_row(database: Database) -> None:
    with pytest.raises(RuntimeError), UnitOfWork(database, source="stock") as uow:
        uow.publish(_event())
        raise RuntimeError("the state change failed")
    with UnitOfWork(database, source="stock") as uow:
        uow.publish(_event())
        uow.rollback()
    with UnitOfWork(database, source="stock") as uow:
        uow.publish(_event())  # never committed
    assert _outbox_rows(database) == 0


def test_event_of_a_committed_unit_of_work_leaves_exactly_one_row(database: Database) -> None:
    woken: list[bool] = []
    database.on_events_committed(lambda: woken.append(True))
    with UnitOfWork(database, source="stock") as uow:
        event = _event()
        event_id = uow.publish(event, subject="SKU-1")
        uow.commit()
    assert _outbox_rows(database) == 1
    assert woken == [True]
    with database.engine.connect() as conn:
        row = conn.execute(select(outbox_table)).one()
    assert row.event_id == event_id
    assert row.event_type == "pos.stock.v1.ItemUpdated"
    assert row.sent_at is None
    stored = events_pb2.ItemUpdated.FromString(row.payload)
    assert stored.meta.event_id == event_id
    assert stored.meta.event_type == "pos.stock.v1.ItemUpdated"
    assert stored.meta.source == "/storeplane/stock"
    assert stored.meta.occurred_at.seconds > 0


def test_event_id_given_by_the_caller_is_kept(database: Database) -> None:
    event = _event()
    event.meta.CopyFrom(common_pb2.EventMeta(event_id="6b0f6c44-3d1e-4a52-9b0e-0c3a1c1f6a11"))
    with UnitOfWork(database, source="stock") as uow:
        assert uow.publish(event) == "6b0f6c44-3d1e-4a52-9b0e-0c3a1c1f6a11"
        uow.commit()
    assert _outbox_rows(database) == 1


def test_commit_without_events_does_not_wake_the_relay(database: Database) -> None:
    woken: list[bool] = []
    database.on_events_committed(lambda: woken.append(True))
    with UnitOfWork(database, source="stock") as uow:
        uow.commit()
    assert woken == []


def test_events_of_one_unit_of_work_are_written_in_publish_order_with_one_trace_context(database: Database) -> None:
    with UnitOfWork(database, source="stock") as uow:
        ids = [uow.publish(_event(f"SKU-{i}"), subject=f"SKU-{i}") for i in range(5)]
        uow.commit()
    with database.engine.connect() as conn:
        rows = conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all()
    assert [r.event_id for r in rows] == ids
    assert [r.subject for r in rows] == [f"SKU-{i}" for i in range(5)]
    assert len({str(r.headers) for r in rows}) == 1


def test_a_pooled_connection_that_died_while_idle_is_replaced_on_checkout(postgres_url: str) -> None:
    from sqlalchemy import text

    db = Database(postgres_url, pool_size=1, max_overflow=0, ping_after_idle=0)
    try:
        with db.engine.connect() as conn:
            pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
        killer = Database(postgres_url)
        with killer.engine.begin() as conn:
            conn.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
        killer.dispose()
        with db.engine.connect() as conn:  # the idle connection is pinged, found dead and replaced
            assert conn.execute(text("select pg_backend_pid()")).scalar_one() != pid
    finally:
        db.dispose()


def test_driver_statements_raise_sqlalchemy_errors_and_a_broken_connection_is_not_reused(postgres_url: str) -> None:
    from sqlalchemy import exc, text

    from storeplane_runtime.driver import driver_execute

    db = Database(postgres_url, pool_size=1, max_overflow=0)  # one connection: a reused broken one would show
    migrations.upgrade(db.engine, MIGRATIONS)
    insert = "INSERT INTO applied_documents (kind, document_id, applied_at) VALUES ('sale', %(id)s, now())"
    try:
        with UnitOfWork(db, source="stock") as uow:
            driver_execute(uow.connection, insert, {"id": "S-1"})
            assert driver_execute(uow.connection, "SELECT count(*) AS n FROM applied_documents").fetchone().n == 1
            uow.commit()
        with pytest.raises(exc.IntegrityError), UnitOfWork(db, source="stock") as uow:
            driver_execute(uow.connection, insert, {"id": "S-1"})
        with UnitOfWork(db, source="stock") as uow:  # the failed transaction was rolled back: the connection works
            pid = driver_execute(uow.connection, "SELECT pg_backend_pid() AS pid").fetchone().pid
            killer = Database(postgres_url)
            with killer.engine.begin() as conn:
                conn.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
            killer.dispose()
            with pytest.raises(exc.OperationalError) as raised:
                driver_execute(uow.connection, "SELECT 1")
            assert raised.value.connection_invalidated
        with UnitOfWork(db, source="stock") as uow:
            assert driver_execute(uow.connection, "SELECT pg_backend_pid() AS pid").fetchone().pid != pid
    finally:
        db.dispose()


def test_the_pool_keeps_a_connection_for_every_grpc_worker_at_once(postgres_url: str) -> None:
    # A pool smaller than the calls in flight closes each connection beyond it when the call ends, and opens a new
    # server process for the next call: under load that churn cost more CPU than the calls themselves.
    settings = ServiceSettings(database_url=postgres_url, grpc_workers=20)
    db = Database(settings.resolved_database_url(), pool_size=settings.resolved_pool_size())
    try:
        held = [db.engine.connect() for _ in range(settings.grpc_workers)]
        pids = {c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in held}
        for c in held:
            c.close()
        again = [db.engine.connect() for _ in range(settings.grpc_workers)]
        assert {c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in again} == pids
        for c in again:
            c.close()
    finally:
        db.dispose()


def test_the_pool_size_can_be_set() -> None:
    assert ServiceSettings(grpc_workers=4, database_pool_size=50).resolved_pool_size() == 50
    assert ServiceSettings(grpc_workers=4).resolved_pool_size() == 4 + BACKGROUND_CONNECTIONS
