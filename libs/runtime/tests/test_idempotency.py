"""request_id: a retry returns the first answer, a reused key with another request is refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pos.stock.v1 import stock_pb2
from storeplane_runtime import migrations
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import IdempotencyKeyReused, InvalidInput
from storeplane_runtime.idempotency import run_once
from storeplane_runtime.outbox import idempotency_table

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
