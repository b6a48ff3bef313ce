"""`storeplane events depths | purge | parked` against a real broker: what they print and what they do to it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pika
import pytest
from messaging_kit import Pipeline, unique_name

from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_runtime.messaging import MessagingSettings
from storeplane_runtime.messaging.envelope import EXCHANGE, Envelope, to_amqp
from storeplane_runtime.messaging.topology import QueueNames, declare_consumer_queues
from storeplane_runtime.testing import wait_until

pytestmark = [pytest.mark.rabbitmq]
SALE = checkout_events.SaleCompleted.DESCRIPTOR.full_name


def _cli(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`storeplane ...` as an operator runs it: its own process, stdout and stderr, and a standard input.
    (In process, `cmd_*` print to the `sys.stdout` of import time, which pytest's capture has closed since.)"""
    env = {k: v for k, v in os.environ.items() if k != "AMQP_URL"}
    return subprocess.run(
        [sys.executable, "-m", "storeplane_cli.main", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _ok(argv: list[str]) -> str:
    done = _cli(argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _names(service: str) -> QueueNames:
    # The names the CLI looks at: the retry delays configured in this environment.
    return QueueNames(service, tuple(MessagingSettings().events_retry_delays))


def _declare(url: str, service: str) -> QueueNames:
    names = _names(service)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        declare_consumer_queues(connection.channel(), names, delivery_limit=3, event_types=[SALE])
    finally:
        connection.close()
    return names


def _put(url: str, *, routed: int = 0, to_queue: str = "", direct: int = 0) -> None:
    """Publish `routed` events through the exchange and `direct` ones straight to `to_queue`, with confirms."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for n in range(routed + direct):
            envelope = Envelope(f"e-{unique_name()}-{n}", SALE, "checkout", b"", datetime.now(UTC))
            if n < routed:
                channel.basic_publish(EXCHANGE, SALE, b"", to_amqp(envelope), mandatory=True)
            else:
                channel.basic_publish("", to_queue, b"", to_amqp(envelope), mandatory=True)
    finally:
        connection.close()


def _depth(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def _table(out: str) -> dict[str, tuple[int, int]]:
    lines = out.strip().splitlines()
    assert lines[0].split() == ["queue", "messages", "consumers"]
    rows = {}
    for line in lines[1:]:
        queue, messages, consumers = line.split()
        rows[queue] = (int(messages), int(consumers))
    return rows


@pytest.fixture
def vhost(fresh_rabbitmq: str) -> str:
    return fresh_rabbitmq


def test_depths_prints_every_queue_of_the_consuming_services_with_messages_and_consumers(
    vhost: str,
) -> None:
    assert _table(_ok(["events", "--amqp-url", vhost, "depths"])) == {}  # an empty vhost: the header only

    stock = _declare(vhost, "stock")
    other = _declare(vhost, unique_name())
    _put(vhost, routed=3)  # bound to both main queues
    _put(vhost, to_queue=stock.parked, direct=2)
    watcher = pika.BlockingConnection(pika.URLParameters(vhost))
    try:
        watcher.channel().basic_consume(stock.retries[0], lambda *_: None)
        out = _ok(["events", "--amqp-url", vhost, "depths"])
        expected = {stock.main: (3, 0), stock.parked: (2, 0)} | {q: (0, 0) for q in stock.retries}
        expected[stock.retries[0]] = (0, 1)
        assert _table(out) == expected  # the known services only: `other` is not one of them

        out = _ok(["events", "--amqp-url", vhost, "depths", other.service])
        assert _table(out) == {other.main: (3, 0), other.parked: (0, 0)} | {q: (0, 0) for q in other.retries}
    finally:
        watcher.close()


def test_purge_refuses_without_the_typed_queue_name_and_purges_with_it_or_yes(vhost: str) -> None:
    names = _declare(vhost, unique_name())
    _put(vhost, to_queue=names.parked, direct=5)
    argv = ["events", "--amqp-url", vhost, "purge", names.parked]

    wrong = _cli(argv, stdin="stock.events\n")
    assert wrong.returncode == 1
    assert "Type the queue name to confirm" in wrong.stdout
    assert "not purged" in wrong.stdout
    assert _depth(vhost, names.parked) == 5

    no_answer = _cli(argv, stdin="")  # no terminal, nobody to answer (as in CI)
    assert no_answer.returncode == 1
    assert "not purged" in no_answer.stdout
    assert "Traceback" not in no_answer.stderr
    assert _depth(vhost, names.parked) == 5

    typed = _cli(argv, stdin=f"{names.parked}\n")
    assert typed.returncode == 0, typed.stderr
    assert f"5 message(s) purged from {names.parked}" in typed.stdout
    assert _depth(vhost, names.parked) == 0

    _put(vhost, to_queue=names.parked, direct=2)
    _put(vhost, routed=4)
    out = _ok([*argv, "--yes"])
    assert f"2 message(s) purged from {names.parked}" in out
    assert _depth(vhost, names.parked) == 0
    assert _depth(vhost, names.main) == 4  # only the named queue


@pytest.mark.postgres
def test_parked_lists_type_id_reason_and_attempts_and_leaves_them_parked(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline("rabbitmq")
    pipeline.rec.poison.update({"P1", "P2"})
    p1, p2 = pipeline.publish("P1", "P2")
    pipeline.publish("G")
    wait_until(lambda: len(pipeline.parked()) == 2, 20, "two events parked")
    argv = ["events", "--amqp-url", pipeline.url, "parked", pipeline.name]
    outputs = []
    for _ in range(2):  # listing is read-only: a second listing shows the same
        outputs.append(_ok(argv))
    assert outputs[0] == outputs[1]
    lines = outputs[0].strip().splitlines()
    assert lines[0].split() == ["type", "event", "id", "attempts", "reason"]
    assert lines[-1] == "2 parked message(s) shown"
    rows = {}
    for line in lines[1:-1]:
        event_type, event_id, attempts, reason = line.split(maxsplit=3)
        rows[event_id] = (event_type, int(attempts), reason)
    attempts = pipeline.settings.max_attempts
    assert rows == {
        p1: (SALE, attempts, "ValueError: cannot apply sale P1"),
        p2: (SALE, attempts, "ValueError: cannot apply sale P2"),
    }
    assert _depth(pipeline.url, f"{pipeline.name}.events.parked") == 2


def test_commands_without_a_broker_url_say_so(tmp_path: Path) -> None:
    # (and without an embedded stack's data: test_inprocess_restart.py has the commands on one)
    done = _cli(["events", "--data-dir", str(tmp_path / "none"), "depths"])
    assert done.returncode == 2
    assert "no broker: set AMQP_URL or pass --amqp-url" in done.stderr


def test_purge_or_parked_of_a_missing_queue_says_so_in_one_line(vhost: str) -> None:
    missing = unique_name()
    for argv in (["purge", f"{missing}.events", "--yes"], ["parked", missing]):
        done = _cli(["events", "--amqp-url", vhost, *argv])
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert "NOT_FOUND" in done.stderr


def test_parked_by_the_broker_reports_delivery_limit_plus_one_attempts_every_time(vhost: str) -> None:
    from storeplane_cli import events as events_cli

    limit = MessagingSettings().events_delivery_limit
    names = QueueNames(unique_name(), tuple(MessagingSettings().events_retry_delays))
    connection = pika.BlockingConnection(pika.URLParameters(vhost))
    channel = connection.channel()
    declare_consumer_queues(channel, names, delivery_limit=limit, event_types=[SALE])
    channel.basic_publish("", names.main, b"", to_amqp(Envelope("e1", SALE, "checkout", b"", datetime.now(UTC))))
    for _ in range(limit + 1):  # every delivery handed back, as by a consumer that crashed on it
        method = None
        while method is None:
            method, _props, _body = channel.basic_get(names.main)
        channel.basic_nack(method.delivery_tag, requeue=True)
    connection.close()
    wait_until(lambda: _depth(vhost, names.parked) == 1, 10, "the broker to park the message")
    listings = [events_cli.list_parked(vhost, names.service) for _ in range(3)]
    assert [p.reason for p in listings[0]] == ["broker: delivery_limit"]
    assert [[p.attempts for p in listing] for listing in listings] == [[limit + 1]] * 3
