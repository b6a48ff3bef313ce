"""`storeplane events ...`: operator tools for the event backbone, on RabbitMQ or on an embedded stack.

    storeplane events depths                       queue depths of every consuming service
    storeplane events parked stock                 list parked messages (type, id, reason, attempts)
    storeplane events replay stock [--id ID]       put parked messages back on `stock.events`
    storeplane events purge stock.events.parked    drop every message of a queue (asks to confirm)

The broker is `--amqp-url` or AMQP_URL. Without one, the commands work on the embedded stack (`storeplane run`)
whose data directory is `--data-dir` (DATA_DIR, default ./var): each consuming service holds its waiting retries
and parked events in its own SQLite file there (`held_events`). They may run while the stack runs: it takes a
replayed event up within a second (or at its next start). Its ready events are in the running process's memory
and not shown.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import pika
import pika.exceptions
from sqlalchemy import inspect

from storeplane_cli.tokens import default_data_dir
from storeplane_runtime.db import Database
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.envelope import ORIGIN_QUEUE_HEADER, Envelope, from_amqp, to_amqp
from storeplane_runtime.messaging.held_events import PARKED, WAITING, HeldEvents
from storeplane_runtime.messaging.topology import QueueNames, known_services
from storeplane_runtime.tables import held_events_table


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    messages: int
    consumers: int | None  # None: not known (an embedded stack's held events)


@dataclass(frozen=True)
class ParkedMessage:
    event_type: str
    event_id: str
    reason: str
    attempts: int


def _connect(url: str) -> pika.BlockingConnection:
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1
    return pika.BlockingConnection(parameters)


def _names(service: str) -> QueueNames:
    return QueueNames(service, tuple(MessagingSettings().events_retry_delays))


def queue_depths(url: str, services: Sequence[str] = ()) -> list[QueueDepth]:
    """Messages and consumers of each existing queue of the given (default: all known) services."""
    rows: list[QueueDepth] = []
    connection = _connect(url)
    try:
        channel = connection.channel()
        for service in services or known_services():
            for queue in _names(service).all():
                try:
                    ok = channel.queue_declare(queue, passive=True).method
                except pika.exceptions.ChannelClosedByBroker:  # no such queue
                    channel = connection.channel()
                    continue
                rows.append(QueueDepth(queue, ok.message_count, ok.consumer_count))
    finally:
        connection.close()
    return rows


def _attempts(envelope: Envelope, delivery_limit: int) -> int:
    # The broker parks a message after delivery-limit + 1 deliveries; the parked copy's own delivery count
    # restarts (and rises each time it is looked at), so it says nothing about the attempts that were made.
    if envelope.reason.startswith("broker:"):
        return delivery_limit + 1
    return envelope.attempt


def list_parked(url: str, service: str, limit: int = 100) -> list[ParkedMessage]:
    """Look at (without removing) up to `limit` parked messages of a service."""
    found: list[ParkedMessage] = []
    limit_seen = MessagingSettings().events_delivery_limit
    connection = _connect(url)
    try:
        channel = connection.channel()
        for _ in range(limit):
            method, properties, body = channel.basic_get(_names(service).parked, auto_ack=False)
            if method is None:
                break
            envelope = from_amqp(properties, body)
            found.append(
                ParkedMessage(envelope.event_type, envelope.event_id, envelope.reason, _attempts(envelope, limit_seen))
            )
        # Closing the channel returns every unacknowledged message to the parking queue.
    finally:
        connection.close()
    return found


def replay_parked(url: str, service: str, *, event_ids: Sequence[str] = (), limit: int = 10_000) -> int:
    """Move parked messages (all, or those with the given event ids) back to the service's queue as a first
    attempt; each is acknowledged on the parking queue only after the broker confirmed the copy."""
    names = _names(service)
    wanted = set(event_ids)
    moved = 0
    connection = _connect(url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        count = channel.queue_declare(names.parked, passive=True).method.message_count
        for _ in range(min(count, limit)):
            method, properties, body = channel.basic_get(names.parked, auto_ack=False)
            if method is None:
                break
            envelope = from_amqp(properties, body)
            if wanted and envelope.event_id not in wanted:
                continue  # left unacknowledged: back to the parking queue when the channel closes
            target = _text((properties.headers or {}).get(ORIGIN_QUEUE_HEADER)) or names.main
            channel.basic_publish("", target, body, to_amqp(replace(envelope, attempt=1, reason="")), mandatory=True)
            channel.basic_ack(method.delivery_tag)
            moved += 1
    finally:
        connection.close()
    return moved


def purge(url: str, queue: str) -> int:
    connection = _connect(url)
    try:
        return int(connection.channel().queue_purge(queue).method.message_count)
    finally:
        connection.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


# embedded stack ------------------------------------------------------------------------------------------


class NoHeldEvents(Exception):
    """A service's held events cannot be read from the data directory (one-line message)."""


@contextmanager
def held_events(data_dir: Path, service: str) -> Iterator[HeldEvents]:
    """The held events of `service` in the embedded stack's SQLite file of it under `data_dir`."""
    path = data_dir / f"{service}.db"
    if not path.is_file():  # never create one: a mistyped service or directory must say so
        raise NoHeldEvents(f"{service}: no database at {path}")
    database = Database(f"sqlite:///{path}")
    try:
        if not inspect(database.engine).has_table(held_events_table.name):
            raise NoHeldEvents(f"{service}: {path} has no held events yet (start the stack once to upgrade it)")
        yield HeldEvents(database, service)
    finally:
        database.dispose()


def held_depths(data_dir: Path, services: Sequence[str] = ()) -> list[QueueDepth]:
    """Waiting retries (`<svc>.events.retry`) and parked events of each service with a database under `data_dir`."""
    rows: list[QueueDepth] = []
    for service in services or known_services():
        try:
            with held_events(data_dir, service) as held:
                counts = held.counts()
        except NoHeldEvents:
            if services:
                raise
            continue
        names = _names(service)
        rows.append(QueueDepth(f"{names.main}.retry", counts[WAITING], None))
        rows.append(QueueDepth(names.parked, counts[PARKED], None))
    return rows


def list_held_parked(data_dir: Path, service: str, limit: int = 100) -> list[ParkedMessage]:
    with held_events(data_dir, service) as held:
        return [
            ParkedMessage(p.envelope.event_type, p.envelope.event_id, p.reason, p.envelope.attempt)
            for p in held.parked(limit)
        ]


def replay_held(data_dir: Path, service: str, *, event_ids: Sequence[str] = ()) -> int:
    with held_events(data_dir, service) as held:
        return held.replay(event_ids)


def purge_held(data_dir: Path, queue: str) -> int:
    """`<svc>.events.parked` drops the parked events, `<svc>.events.retry[...]` the ones waiting for a retry."""
    service, _, kind = queue.partition(".events.")
    state = PARKED if kind == "parked" else WAITING if kind.split(".")[0] == "retry" else ""
    if not service or not state:
        raise NoHeldEvents(f"{queue}: an embedded stack holds only <service>.events.parked and <service>.events.retry")
    with held_events(data_dir, service) as held:
        return held.purge(state)


# command line --------------------------------------------------------------------------------------------


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register `events` and its subcommands on the `storeplane` parser."""
    events = sub.add_parser(
        "events", parents=list(parents), help="operate the event bus (RabbitMQ, or an embedded stack's data)"
    )
    events.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", ""), help="default: AMQP_URL")
    events.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="without a broker: the embedded stack's data directory (default: DATA_DIR or ./var)",
    )
    inner = events.add_subparsers(dest="events_command", required=True)
    depths = inner.add_parser("depths", help="queue depths of the consuming services")
    depths.add_argument("services", nargs="*")
    depths.set_defaults(func=cmd_depths)
    parked = inner.add_parser("parked", help="list parked messages of a service")
    parked.add_argument("service")
    parked.add_argument("--limit", type=int, default=100)
    parked.set_defaults(func=cmd_parked)
    replay = inner.add_parser("replay", help="put parked messages back on the service's queue")
    replay.add_argument("service")
    replay.add_argument("--id", dest="event_ids", action="append", default=[], help="only this event id (repeatable)")
    replay.set_defaults(func=cmd_replay)
    purge_cmd = inner.add_parser("purge", help="drop every message of a queue")
    purge_cmd.add_argument("queue")
    purge_cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge_cmd.set_defaults(func=cmd_purge)


def _embedded(args: argparse.Namespace) -> bool:
    """No broker: the commands work on the embedded stack's data directory, which must exist."""
    if args.amqp_url:
        return False
    if not any((args.data_dir / f"{s}.db").is_file() for s in known_services()):
        print(
            "storeplane events: no broker: set AMQP_URL or pass --amqp-url "
            f"(or --data-dir of an embedded stack: none at {args.data_dir})",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return True


def _unavailable(exc: NoHeldEvents) -> int:
    print(f"storeplane events: {exc}", file=sys.stderr)
    return 1


def cmd_depths(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if _embedded(args):
        try:
            rows = held_depths(args.data_dir, args.services)
        except NoHeldEvents as exc:
            return _unavailable(exc)
    else:
        rows = queue_depths(str(args.amqp_url), args.services)
    print(f"{'queue':<40} {'messages':>9} {'consumers':>9}", file=out)
    for row in rows:
        consumers = "-" if row.consumers is None else row.consumers
        print(f"{row.queue:<40} {row.messages:>9} {consumers:>9}", file=out)
    return 0


def cmd_parked(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        if _embedded(args):
            rows = list_held_parked(args.data_dir, args.service, args.limit)
        else:
            rows = list_parked(str(args.amqp_url), args.service, args.limit)
    except NoHeldEvents as exc:
        return _unavailable(exc)
    except pika.exceptions.ChannelClosedByBroker as exc:
        print(f"storeplane events: {args.service}: {exc.reply_text}", file=sys.stderr)
        return 1
    print(f"{'type':<36} {'event id':<36} {'attempts':>8}  reason", file=out)
    for row in rows:
        print(f"{row.event_type:<36} {row.event_id:<36} {row.attempts:>8}  {row.reason}", file=out)
    print(f"{len(rows)} parked message(s) shown", file=out)
    return 0


def cmd_replay(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    embedded = _embedded(args)
    try:
        if embedded:
            moved = replay_held(args.data_dir, args.service, event_ids=args.event_ids)
        else:
            moved = replay_parked(str(args.amqp_url), args.service, event_ids=args.event_ids)
    except NoHeldEvents as exc:
        return _unavailable(exc)
    except pika.exceptions.ChannelClosedByBroker as exc:
        print(f"storeplane events: {args.service}: {exc.reply_text}", file=sys.stderr)
        return 1
    print(f"{moved} message(s) replayed to {args.service}.events", file=out)
    if embedded and moved:
        print("the running stack applies them within a second; a stopped one when it starts", file=out)
    return 0


def cmd_purge(args: argparse.Namespace, out: TextIO | None = None, ask: Callable[[str], str] = input) -> int:
    out = out or sys.stdout
    embedded = _embedded(args)
    if not args.yes:
        try:
            answer = ask(f"Purge every message of {args.queue}? Type the queue name to confirm: ")
        except EOFError:  # no terminal to ask (a script, CI): never purge without a yes
            answer = ""
        if answer.strip() != args.queue:
            print("not purged", file=out)
            return 1
    try:
        purged = purge_held(args.data_dir, args.queue) if embedded else purge(str(args.amqp_url), args.queue)
    except NoHeldEvents as exc:
        return _unavailable(exc)
    except pika.exceptions.ChannelClosedByBroker as exc:
        print(f"storeplane events: {args.queue}: {exc.reply_text}", file=sys.stderr)
        return 1
    print(f"{purged} message(s) purged from {args.queue}", file=out)
    return 0
