"""Committed events told to every process on the same PostgreSQL database: the feed over a real server."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from pos.stock.v1 import events_pb2, stock_pb2
from storeplane_runtime import migrations
from storeplane_runtime.broadcast import Broadcast, CommittedEventsFeed, decode, encode
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.testing import wait_until

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "stock" / "migrations"
CHANGED = events_pb2.StockLevelChanged.DESCRIPTOR.full_name
LOW = events_pb2.StockLow.DESCRIPTOR.full_name


def _changed(sku: str, on_hand: int) -> events_pb2.StockLevelChanged:
    return events_pb2.StockLevelChanged(
        change=stock_pb2.StockLevelChange(store_id="berlin-mitte", sku=sku, on_hand=on_hand)
    )


def _commit(db: Database, *events: object, roll_back: bool = False) -> None:
    with UnitOfWork(db, source="stock") as uow:
        for event in events:
            uow.publish(event, store_id="berlin-mitte")  # type: ignore[arg-type]
        if roll_back:
            uow.rollback()
        else:
            uow.commit()


@pytest.fixture
def replicas(make_postgres_url: Callable[[], str]) -> Iterator[tuple[Database, str]]:
    """One replica's database handle (broadcasting level changes) and the URL another replica listens on."""
    url = make_postgres_url()
    writer = Database(url)
    migrations.upgrade(writer.engine, MIGRATIONS)
    writer.broadcast(CHANGED)
    yield writer, url
    writer.dispose()


def _feed(url: str) -> tuple[CommittedEventsFeed, queue.Queue[tuple[str, int]], list[bool]]:
    got: queue.Queue[tuple[str, int]] = queue.Queue()
    gaps: list[bool] = []

    def on_event(broadcast: Broadcast) -> None:
        assert broadcast.store_id == "berlin-mitte"
        change = events_pb2.StockLevelChanged.FromString(broadcast.payload).change
        got.put((change.sku, change.on_hand))

    feed = CommittedEventsFeed(url, [CHANGED], on_event, on_gap=lambda: gaps.append(True), reconnect_max_seconds=0.2)
    feed.start()
    assert feed.live.is_set()
    return feed, got, gaps


def _drain(got: queue.Queue[tuple[str, int]], count: int) -> list[tuple[str, int]]:
    return [got.get(timeout=5) for _ in range(count)]


def test_another_process_sees_committed_broadcasts_in_commit_order_and_nothing_else(
    replicas: tuple[Database, str],
) -> None:
    writer, url = replicas
    feed, got, _ = _feed(url)
    try:
        _commit(writer, _changed("A", 1), _changed("B", 2))
        _commit(writer, _changed("X", 99), roll_back=True)  # rolled back: never told
        _commit(writer, events_pb2.StockLow(store_id="berlin-mitte", sku="A"))  # not a broadcast type
        _commit(writer, _changed("A", 3))
        assert _drain(got, 3) == [("A", 1), ("B", 2), ("A", 3)]
        time.sleep(0.2)
        assert got.empty()
    finally:
        feed.stop()


def test_an_event_too_large_for_a_notification_is_told_without_its_body(replicas: tuple[Database, str]) -> None:
    writer, url = replicas
    told: queue.Queue[Broadcast] = queue.Queue()
    feed = CommittedEventsFeed(url, [CHANGED], told.put)
    feed.start()
    try:
        big = _changed("BIG", 1)
        big.change.reference_id = "x" * 6000  # over pg_notify's limit once in base64
        with UnitOfWork(writer, source="stock") as uow:
            uow.publish(big, store_id="berlin-mitte", subject="BIG with spaces")
            uow.publish(_changed("SMALL", 2), store_id="berlin-mitte", subject="SMALL")
            uow.commit()
        first, second = told.get(timeout=5), told.get(timeout=5)
        assert (first.event_type, first.store_id, first.subject, first.complete) == (
            CHANGED,
            "berlin-mitte",
            "BIG with spaces",
            False,
        )
        assert (second.subject, second.complete) == ("SMALL", True)
        assert events_pb2.StockLevelChanged.FromString(second.payload).change.on_hand == 2
    finally:
        feed.stop()


def test_a_transaction_of_many_events_is_told_in_few_notifications_in_order(replicas: tuple[Database, str]) -> None:
    writer, url = replicas
    feed, got, _ = _feed(url)
    try:
        _commit(writer, *[_changed(f"S{n}", n) for n in range(2000)])
        assert _drain(got, 2000) == [(f"S{n}", n) for n in range(2000)]
    finally:
        feed.stop()
    notifications = encode(
        (CHANGED, "berlin-mitte", _changed(f"S{n}", n).SerializeToString(), f"S{n}") for n in range(2000)
    )
    assert 10 <= len(notifications) <= 60  # tens of events in each, not one notification per event
    assert all(len(n.encode()) < 8000 for n in notifications)
    assert [b.subject for n in notifications for b in decode(n)] == [f"S{n}" for n in range(2000)]


def test_encoding_keeps_every_notification_within_the_limit_whatever_the_event() -> None:
    huge_subject = "ü" * 5000  # 10,000 bytes
    told = encode(
        [
            (CHANGED, "berlin-mitte", b"x" * 4000, "A B"),
            (CHANGED, "berlin-mitte", b"y" * 4000, "line\nbreak"),
            (CHANGED, "berlin-mitte", b"z", huge_subject),
        ]
    )
    assert all(len(n.encode()) < 8000 for n in told)
    decoded = [b for n in told for b in decode(n)]
    assert [(b.subject, b.complete) for b in decoded] == [("A B", True), ("", True), ("", False)]
    assert decoded[0].payload == b"x" * 4000
    with pytest.raises(ValueError):
        decode("pos.stock.v1.StockLevelChanged berlin-mitte QUJD")  # the old three-part format


def test_a_lost_connection_is_reported_as_a_gap_and_the_feed_listens_again(replicas: tuple[Database, str]) -> None:
    writer, url = replicas
    feed, got, gaps = _feed(url)
    try:
        with writer.engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
                )
            )
            conn.commit()
        deadline = time.monotonic() + 10
        while not (gaps and feed.live.is_set() and feed.connections_opened == 2):
            assert time.monotonic() < deadline, "the feed did not report the gap and listen again"
            time.sleep(0.02)
        _commit(writer, _changed("C", 5))
        assert _drain(got, 1) == [("C", 5)]
    finally:
        feed.stop()
    assert not feed.live.is_set()


def test_broadcast_types_change_nothing_on_sqlite(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/stock.db")
    migrations.upgrade(db.engine, MIGRATIONS)
    db.broadcast(CHANGED)
    _commit(db, _changed("A", 1))  # no NOTIFY on SQLite: the write simply succeeds
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox")).scalar_one() == 1
    db.dispose()


def _listening_sessions(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        )


def test_a_feed_that_is_only_wanted_by_watchers_listens_while_it_has_them(replicas: tuple[Database, str]) -> None:
    writer, url = replicas
    watchers = [0]
    got: queue.Queue[str] = queue.Queue()

    def on_event(broadcast: Broadcast) -> None:
        got.put(events_pb2.StockLevelChanged.FromString(broadcast.payload).change.sku)

    feed = CommittedEventsFeed(url, [CHANGED], on_event, wanted=lambda: watchers[0] > 0, linger_seconds=0.2)
    feed.start()
    try:
        time.sleep(0.3)
        assert not feed.live.is_set() and feed.listens == 0
        _commit(writer, _changed("UNSEEN", 1))  # nobody listens: nobody is told
        watchers[0] = 1
        assert feed.ensure_listening(5)
        _commit(writer, _changed("SEEN", 2))
        assert got.get(timeout=5) == "SEEN"
        assert _listening_sessions(writer) == 1
        watchers[0] = 0  # the last watcher left: the feed stops listening after its linger
        wait_until(lambda: not feed.live.is_set() and _listening_sessions(writer) == 0, 5, "the feed to stop listening")
        watchers[0] = 1  # and listens again for the next one
        assert feed.ensure_listening(5)
        assert feed.listens == 2
        _commit(writer, _changed("AGAIN", 3))
        assert got.get(timeout=5) == "AGAIN"
        assert got.empty()
    finally:
        feed.stop()
