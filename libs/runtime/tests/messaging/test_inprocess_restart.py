"""The embedded bus loses nothing across a restart: what a consumer holds (waiting retries, parked events) is in its
own database, taken up again by the next process, and operators list, replay and purge it with `storeplane events`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from messaging_kit import FAST, Recorder, ServiceDb, metric, recorder, sale, unique_name, unsent_rows
from sqlalchemy import select

from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging import InboxApplier, InProcessBus, InProcessConsumer, InProcessPublisher, OutboxRelay
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.tables import held_events_table
from storeplane_runtime.testing import wait_until

SALE = checkout_events.SaleCompleted.DESCRIPTOR.full_name
# A first retry late enough that the process is stopped before it is due.
LATE_RETRY = FAST.model_copy(update={"events_retry_delays": (3.0, 0.6)})


def _consumer(db: ServiceDb, rec: Recorder, bus: InProcessBus, settings=FAST) -> InProcessConsumer:  # type: ignore[no-untyped-def]
    return InProcessConsumer(InboxApplier(db.database, rec.consumers), bus=bus, settings=settings)


def _publish(db: ServiceDb, *sale_ids: str) -> list[str]:
    with UnitOfWork(db.database, source="checkout") as uow:
        ids = [uow.publish(sale(s)) for s in sale_ids]
        uow.commit()
    return ids


def _holds(db: ServiceDb) -> list[tuple[str, str, int]]:
    """(event id, state, attempt) of every held event."""
    t = held_events_table
    with db.database.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(t.c.event_id, t.c.state, t.c.attempt).order_by(t.c.event_id))]  # type: ignore[misc]


def _envelope(sale_id: str) -> Envelope:
    return Envelope(f"e-{sale_id}", SALE, "checkout", sale(sale_id).SerializeToString(), datetime.now(UTC))


def test_an_event_waiting_for_its_retry_when_the_process_stops_is_applied_once_after_the_restart(
    database_url: str, make_db: Callable[[str], ServiceDb], tmp_path: Path
) -> None:
    checkout, stock = make_db(f"sqlite:///{tmp_path}/checkout.db"), make_db(database_url)
    name = unique_name()
    bus = InProcessBus()
    rec = recorder(name)
    rec.flaky["F"] = 1
    consumer = _consumer(stock, rec, bus, LATE_RETRY)
    relay = OutboxRelay(checkout.database, InProcessPublisher(bus), service="checkout", settings=LATE_RETRY)
    consumer.start()
    relay.start()
    try:
        [flaky_id, *_] = _publish(checkout, "F", *[f"G{n}" for n in range(10)])
        wait_until(lambda: stock.effects() == (10, 10), 10, "the good events applied")
        wait_until(lambda: unsent_rows(checkout) == 0, 10, "every row marked sent, the flaky one too")
    finally:
        relay.stop()
        consumer.stop()
    assert rec.seen.count("F") == 1  # stopped before its retry was due
    assert _holds(stock) == [(flaky_id, "waiting", 2)]
    del bus, consumer, relay  # as a process exit would: nothing of them is left but the databases
    stock.database.dispose()

    restarted, rec_after = make_db(database_url), recorder(name)
    consumer = _consumer(restarted, rec_after, InProcessBus(), LATE_RETRY)
    consumer.start()
    try:
        wait_until(lambda: restarted.effects() == (11, 11), 10, "the held retry applied by the next process")
        time.sleep(0.5)
    finally:
        consumer.stop()
    assert restarted.effects() == (11, 11)
    assert rec_after.seen == ["F"]
    assert _holds(restarted) == []


def test_a_parked_event_survives_a_restart_is_listed_and_replay_applies_it_once(
    database_url: str, make_db: Callable[[str], ServiceDb], tmp_path: Path
) -> None:
    checkout, stock = make_db(f"sqlite:///{tmp_path}/checkout.db"), make_db(database_url)
    name = unique_name()
    bus = InProcessBus()
    rec = recorder(name)
    rec.poison.add("P")
    consumer = _consumer(stock, rec, bus)
    relay = OutboxRelay(checkout.database, InProcessPublisher(bus), service="checkout", settings=FAST)
    consumer.start()
    relay.start()
    try:
        poison_id, _good = _publish(checkout, "P", "G")
        wait_until(lambda: len(consumer.held.parked()) == 1, 10, "the poison parked")
        wait_until(lambda: unsent_rows(checkout) == 0, 10, "both rows marked sent")
    finally:
        relay.stop()
        consumer.stop()
    del bus, consumer, relay
    stock.database.dispose()

    restarted, rec_after = make_db(database_url), recorder(name)
    consumer = _consumer(restarted, rec_after, InProcessBus())
    [parked] = consumer.held.parked()
    assert parked.envelope.event_id == poison_id
    assert parked.envelope.attempt == FAST.max_attempts
    assert parked.reason == "ValueError: cannot apply sale P"
    assert checkout_events.SaleCompleted.FromString(parked.envelope.payload).sale_id == "P"
    consumer.start()
    try:
        time.sleep(1.0)
        assert rec_after.seen == []  # parked: it waits for an operator
        assert [p.envelope.event_id for p in consumer.held.parked()] == [poison_id]
        assert consumer.replay_parked() == 1
        wait_until(lambda: restarted.effects() == (2, 2), 10, "the replayed event applied")
        assert consumer.replay_parked() == 0
    finally:
        consumer.stop()
    assert rec_after.seen == ["P"]
    assert _holds(restarted) == []


def test_a_copy_of_a_held_event_delivered_again_takes_no_second_hold(
    database_url: str, make_db: Callable[[str], ServiceDb]
) -> None:
    stock = make_db(database_url)
    bus = InProcessBus()
    rec = recorder(unique_name())
    rec.flaky["F"] = 2  # the first delivery and its copy fail, the retry works
    rec.poison.add("P")
    consumer = _consumer(stock, rec, bus, LATE_RETRY.model_copy(update={"events_retry_delays": (1.5, 0.3)}))
    flaky, poison = _envelope("F"), _envelope("P")
    consumer.start()
    try:
        assert bus.deliver([flaky], timeout=5) == ["ok"]
        assert _holds(stock) == [(flaky.event_id, "waiting", 2)]
        assert bus.deliver([flaky], timeout=5) == ["ok"]  # the copy fails too, and is settled by the hold there is
        assert _holds(stock) == [(flaky.event_id, "waiting", 2)]
        wait_until(lambda: stock.effects() == (1, 1), 10, "the retry applied")
        assert _holds(stock) == []

        assert bus.deliver([poison], timeout=5) == ["ok"]
        wait_until(lambda: _holds(stock) == [(poison.event_id, "parked", 3)], 10, "the poison parked")
        assert bus.deliver([poison, flaky], timeout=5) == ["ok", "ok"]
        assert _holds(stock) == [(poison.event_id, "parked", 3)]
    finally:
        consumer.stop()
    assert stock.effects() == (1, 1)
    assert rec.seen == ["F", "F", "F", "P", "P", "P", "P"]
    # Counted: F's first failure and P's first two (retries), P's last (parked); not the failures of the copies.
    assert metric("storeplane_events_retried_total", consumer=rec.consumers.name, event_type=SALE) == 3
    assert metric("storeplane_events_parked_total", consumer=rec.consumers.name, event_type=SALE) == 1


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"AMQP_URL", "DATA_DIR"}}
    return subprocess.run(
        [sys.executable, "-m", "storeplane_cli.main", "events", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _ok(*argv: str) -> str:
    done = _cli(*argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _parked_ids(out: str) -> list[str]:
    lines = out.strip().splitlines()
    assert lines[0].split() == ["type", "event", "id", "attempts", "reason"]
    assert lines[-1] == f"{len(lines) - 2} parked message(s) shown"
    return sorted(line.split()[1] for line in lines[1:-1])


def test_the_events_commands_list_replay_and_purge_an_embedded_stacks_parked_events(
    make_db: Callable[[str], ServiceDb], tmp_path: Path
) -> None:
    data = str(tmp_path)
    stock = make_db(f"sqlite:///{tmp_path}/stock.db")  # where `storeplane run --data-dir` keeps stock's
    rec = recorder("stock")
    rec.poison.update({"P1", "P2"})
    bus = InProcessBus()
    consumer = _consumer(stock, rec, bus)
    p1, p2 = _envelope("P1"), _envelope("P2")
    consumer.start()
    try:
        assert bus.deliver([p1, p2], timeout=5) == ["ok", "ok"]
        wait_until(lambda: len(consumer.held.parked()) == 2, 10, "both parked")
    finally:
        consumer.stop()

    listed = _ok("--data-dir", data, "parked", "stock")
    assert _parked_ids(listed) == sorted([p1.event_id, p2.event_id])
    assert f"{SALE:<36} {p1.event_id:<36} {FAST.max_attempts:>8}  ValueError: cannot apply sale P1" in listed
    assert _ok("--data-dir", data, "parked", "stock") == listed  # listing leaves them parked
    depths = [line.split() for line in _ok("--data-dir", data, "depths").strip().splitlines()]
    assert depths == [
        ["queue", "messages", "consumers"],
        ["stock.events.retry", "0", "-"],
        ["stock.events.parked", "2", "-"],
    ]

    rec_after = recorder("stock")  # the cause is fixed, the stack runs again
    consumer = _consumer(stock, rec_after, InProcessBus())
    consumer.start()
    try:
        out = _ok("--data-dir", data, "replay", "stock", "--id", p1.event_id)
        assert out.startswith("1 message(s) replayed to stock.events\n")
        wait_until(lambda: stock.effects() == (1, 1), 10, "the running consumer to apply the replayed event")
        assert _parked_ids(_ok("--data-dir", data, "parked", "stock")) == [p2.event_id]
        assert "not purged" in _cli("--data-dir", data, "purge", "stock.events.parked").stdout  # nobody said yes
        assert _ok("--data-dir", data, "purge", "stock.events.parked", "--yes").strip() == (
            "1 message(s) purged from stock.events.parked"
        )
        assert _parked_ids(_ok("--data-dir", data, "parked", "stock")) == []
    finally:
        consumer.stop()
    assert rec_after.seen == ["P1"]
    assert stock.effects() == (1, 1)


def test_the_events_commands_without_a_broker_or_a_stacks_data_say_so_in_one_line(
    make_db: Callable[[str], ServiceDb], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    done = _cli("--data-dir", str(empty), "parked", "stock")
    assert done.returncode == 2
    assert "no broker: set AMQP_URL or pass --amqp-url" in done.stderr
    assert not empty.exists()  # looking never creates a database

    make_db(f"sqlite:///{tmp_path}/stock.db")
    for argv, says in (
        (["parked", "loyalty"], "loyalty: no database at"),
        (["purge", "stock.events", "--yes"], "holds only <service>.events.parked and <service>.events.retry"),
    ):
        done = _cli("--data-dir", str(tmp_path), *argv)
        assert done.returncode == 1
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert says in done.stderr
