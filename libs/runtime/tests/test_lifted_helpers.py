"""The small helpers every service shares: pure errors and violations, the clock, timestamps, event ids, SQL."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select

from storeplane_runtime.clock import as_utc, timestamp_parts, utcnow
from storeplane_runtime.errors import InvalidInput, Violations
from storeplane_runtime.event_ids import new_event_id, new_event_ids
from storeplane_runtime.sql import insert_for, is_postgres
from storeplane_runtime.timestamps import from_timestamp, to_timestamp


def test_domain_errors_load_neither_grpc_nor_protobuf() -> None:
    code = (
        "import sys, storeplane_runtime.errors, storeplane_runtime.clock;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'grpc', 'google', 'sqlalchemy'});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_violations_collect_every_bad_field_before_raising() -> None:
    v = Violations()
    v.text("sku", "", 10)
    v.text("name", "x" * 11, 10)
    v.text("code", "a b", 10)
    v.text("note", "", 10, required=False)
    v.store("store_id", "mars", {"berlin": object()})
    v.within("quantity", 0, 1, 9999)
    with pytest.raises(InvalidInput) as raised:
        v.raise_if_any()
    assert [(f.field, f.description) for f in raised.value.violations] == [
        ("sku", "must not be empty"),
        ("name", "at most 10 characters"),
        ("code", "must not contain spaces or control characters"),
        ("store_id", "unknown store 'mars'"),
        ("quantity", "must be between 1 and 9999"),
    ]


def test_no_violation_raises_nothing() -> None:
    v = Violations()
    v.text("sku", "SKU-1", 10)
    v.store("store_id", "berlin", {"berlin": object()})
    assert not v
    v.raise_if_any()


def test_naive_datetimes_are_utc_and_others_are_converted() -> None:
    naive = datetime(2026, 3, 1, 12, 0)
    assert as_utc(naive) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    zurich = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert as_utc(zurich) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert as_utc(zurich).tzinfo is UTC
    assert utcnow().tzinfo is UTC


def test_timestamps_round_trip_to_the_microsecond() -> None:
    at = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=UTC)
    stamp = to_timestamp(at)
    assert stamp is not None
    assert (stamp.seconds, stamp.nanos) == timestamp_parts(at) == (1715938215, 123456000)
    assert from_timestamp(stamp) == at
    assert to_timestamp(at.replace(tzinfo=None)) == stamp
    assert to_timestamp(None) is None


def test_event_ids_are_unique_version_7_uuids_in_the_order_made() -> None:
    ids = new_event_ids(4096) + new_event_ids(10)
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)
    assert ids[:4096] == sorted(ids[:4096])
    with pytest.raises(ValueError):
        new_event_ids(4097)


def test_single_event_ids_are_version_7_and_sort_by_time() -> None:
    first = [new_event_id() for _ in range(100)]
    time.sleep(0.002)
    later = new_event_id()
    assert len(set(first)) == 100
    assert all(uuid.UUID(i).version == 7 for i in first)
    assert first == sorted(first)
    assert later > max(first)


def test_insert_for_does_on_conflict_on_sqlite(tmp_path: object) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/t.db")
    table = Table("t", MetaData(), Column("k", Integer, primary_key=True), Column("v", String(10)))
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        assert not is_postgres(conn)
        conn.execute(insert_for(conn, table).values(k=1, v="a"))
        conn.execute(insert_for(conn, table).values(k=1, v="b").on_conflict_do_nothing())
        assert conn.execute(select(table.c.v)).scalar_one() == "a"
    engine.dispose()


@pytest.mark.postgres
def test_insert_for_does_on_conflict_on_postgres(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    table = Table("t", MetaData(), Column("k", Integer, primary_key=True), Column("v", String(10)))
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        assert is_postgres(conn)
        conn.execute(insert_for(conn, table).values(k=1, v="a"))
        stmt = insert_for(conn, table).values(k=1, v="b")
        conn.execute(stmt.on_conflict_do_update(index_elements=["k"], set_={"v": stmt.excluded.v}))
        assert conn.execute(select(table.c.v)).scalar_one() == "b"
    engine.dispose()
