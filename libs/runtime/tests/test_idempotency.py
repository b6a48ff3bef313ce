"""request_id: a retry returns the first answer, a reused key with another request is refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pos.stock.v1 import events_pb2, stock_pb2
from storeplane_runtime import migrations
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import IdempotencyKeyReused, InvalidInput
from storeplane_runtime.idempotency import run_once
from storeplane_runtime.tables import idempotency_table, outbox_table

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "stock" / "migrations"


@pytest.fixture
def database(database_url: str) -> Database:
    db = Database(database_url)
    migrations.upgrade(db.engine, MIGRATIONS)
    yield db
    db.dispose()


def _release(database: Database, request: stock_pb2.ReleaseRequest, effects: list[str], caller: str = "till-1"):
    def work(uow: UnitOfWork) -> stock_pb2.ReleaseResponse:
        effects.append(request.reservation_id)
        return stock_pb2.ReleaseResponse()

    return run_once(
        database,
        source="stock",
        caller=caller,
        method="Release",
        request=request,
        request_id=request.request_id,
        response_type=stock_pb2.ReleaseResponse,
        work=work,
    )


def test_same_key_and_request_returns_the_first_answer_without_a_second_effect(database: Database) -> None:
    effects: list[str] = []
    request = stock_pb2.ReleaseRequest(reservation_id="basket-1", request_id="k-1")
    first = _release(database, request, effects)
    again = _release(database, request, effects)
    assert first == again
    assert effects == ["basket-1"]


def test_same_key_with_a_different_request_is_refused(database: Database) -> None:
    effects: list[str] = []
    _release(database, stock_pb2.ReleaseRequest(reservation_id="basket-1", request_id="k-1"), effects)
    with pytest.raises(IdempotencyKeyReused) as caught:
        _release(database, stock_pb2.ReleaseRequest(reservation_id="basket-2", request_id="k-1"), effects)
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert effects == ["basket-1"]


def test_keys_are_scoped_to_the_caller(database: Database) -> None:
    effects: list[str] = []
    request = stock_pb2.ReleaseRequest(reservation_id="basket-1", request_id="k-1")
    _release(database, request, effects, caller="till-1")
    _release(database, request, effects, caller="till-2")
    assert effects == ["basket-1", "basket-1"]


def test_missing_request_id_is_invalid_input(database: Database) -> None:
    with pytest.raises(InvalidInput) as caught:
        _release(database, stock_pb2.ReleaseRequest(reservation_id="b"), [])
    assert caught.value.violations[0].field == "request_id"


def test_concurrent_calls_with_one_key_store_one_answer(database: Database) -> None:
    request = stock_pb2.ReleaseRequest(reservation_id="basket-9", request_id="k-concurrent")
    results: list[object] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(_release(database, request, []))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 8
    with database.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(idempotency_table)).scalar_one() == 1


@pytest.mark.parametrize("with_events", [True, False], ids=["key-with-outbox-rows", "key-alone"])
def test_calls_racing_past_the_lookup_with_one_key_commit_one_effect_and_replay_its_answer(
    postgres_url: str, with_events: bool
) -> None:
    # Every call finds no key and does its work; the key is inserted at commit (with the outbox rows, where the work
    # wrote events). One commits; the others wait for it, roll back everything they did, and replay its answer.
    database = Database(postgres_url)
    migrations.upgrade(database.engine, MIGRATIONS)
    callers = 6
    all_looked = threading.Barrier(callers, timeout=20)
    effects: list[str] = []
    results: list[stock_pb2.ReleaseResponse] = []
    errors: list[BaseException] = []

    def call(n: int) -> None:
        def work(uow: UnitOfWork) -> stock_pb2.ReleaseResponse:
            all_looked.wait()  # work runs once per call: a replay finds the key and never gets here
            effects.append(f"call-{n}")
            if with_events:
                uow.publish(events_pb2.ItemUpdated(item=stock_pb2.Item(sku=f"SKU-{n}")), subject=f"SKU-{n}")
            return stock_pb2.ReleaseResponse(reservation=stock_pb2.Reservation(reservation_id=f"answer-{n}"))

        try:
            results.append(
                run_once(
                    database,
                    source="stock",
                    caller="till-1",
                    method="Release",
                    request=stock_pb2.ReleaseRequest(reservation_id="basket-7", request_id="k-raced"),
                    request_id="k-raced",
                    response_type=stock_pb2.ReleaseResponse,
                    work=work,
                )
            )
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=call, args=(n,)) for n in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(effects) == callers  # every call did its work once: none found the key before all had looked
        assert len({r.reservation.reservation_id for r in results}) == 1  # and all answer with the winner's
        with database.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(idempotency_table)).scalar_one() == 1
            outbox_rows = conn.execute(select(outbox_table.c.subject)).scalars().all()
        winner = results[0].reservation.reservation_id.removeprefix("answer-")
        assert outbox_rows == ([f"SKU-{winner}"] if with_events else [])
    finally:
        database.dispose()
