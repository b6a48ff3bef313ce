"""The in-process bus of the embedded stack (no AMQP_URL): the same outbox → relay → inbox path, without a broker."""

# One bus per process (`BUS`), shared by every service started in it, so checkout's relay delivers into stock's
# consumer, whose handler runs in stock's own database with stock's inbox. A consumer's queue exists from the moment
# its app is built (like a durable queue), so events published before it starts wait for it.
#
# Delivery guarantee: the relay marks an outbox row sent only after every bound consumer has settled the event —
# committed it with its inbox row, or held it (waiting for a retry, or parked) in its own database (held_events.py).
# A crash before that publishes the event again after restart (the inbox makes it harmless); after it, the consumer
# takes its held events up again when it starts: due retries run, parked events wait for an operator (`storeplane
# events parked|replay|purge` on the data directory). Only the ready events live in memory, and the relay still owns
# those (not marked sent yet).

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from storeplane_runtime import telemetry
from storeplane_runtime.clock import utcnow
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.consumers import InboxApplier, record_parked
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.messaging.held_events import PARKED, WAITING, HeldEvent, HeldEvents
from storeplane_runtime.messaging.relay import OK, UNROUTABLE
from storeplane_runtime.workers import ThreadWorker

log = logging.getLogger(__name__)


class _Settlement:
    """Counts down as each bound consumer settles one published event."""

    def __init__(self, count: int) -> None:
        self._remaining = count
        self._done = threading.Event()
        if count == 0:
            self._done.set()

    def settle(self) -> None:
        self._remaining -= 1  # only ever called under the owning queue's lock
        if self._remaining <= 0:
            self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


@dataclass
class _Item:
    envelope: Envelope
    waiters: list[_Settlement] = field(default_factory=list)
    held: bool = False  # taken up from the consumer's held events (a due retry)


class InProcessQueue:
    """The ready events of one consuming service (its retries and parked events are held in its database)."""

    def __init__(self, name: str, event_types: Sequence[str]) -> None:
        self.name = name
        self.event_types = frozenset(event_types)
        self._ready: dict[str, _Item] = {}  # by event id, in arrival order; a repeat joins the waiting one
        self._cond = threading.Condition()

    def put(self, envelope: Envelope, settlement: _Settlement | None) -> None:
        with self._cond:
            item = self._ready.get(envelope.event_id)
            if item is None:
                item = self._ready[envelope.event_id] = _Item(envelope)
            if settlement is not None:
                item.waiters.append(settlement)
            self._cond.notify()

    def take(self, limit: int, timeout: float) -> list[_Item]:
        """Up to `limit` ready items; waits up to `timeout` for one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while limit > 0:
                if self._ready:
                    ids = list(itertools.islice(self._ready, limit))
                    return [self._ready.pop(i) for i in ids]
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                self._cond.wait(wait)
            return []

    def settle(self, item: _Item) -> None:
        with self._cond:
            for waiter in item.waiters:
                waiter.settle()


class InProcessBus:
    """Routes published events to the queues bound to their type, and waits for them to be settled."""

    def __init__(self) -> None:
        self._queues: dict[str, InProcessQueue] = {}
        self._lock = threading.Lock()

    def bind(self, name: str, event_types: Sequence[str]) -> InProcessQueue:
        """The queue `name`, created on first use (and rebound to `event_types`)."""
        with self._lock:
            queue = self._queues[name] = InProcessQueue(name, event_types)
            return queue

    def queues(self) -> list[InProcessQueue]:
        with self._lock:
            return list(self._queues.values())

    def deliver(self, envelopes: Sequence[Envelope], timeout: float) -> list[str]:
        settlements: list[_Settlement | None] = []
        queues = self.queues()
        for envelope in envelopes:
            targets = [q for q in queues if envelope.event_type in q.event_types]
            if not targets:
                settlements.append(None)
                continue
            pending = _Settlement(len(targets))
            for q in targets:
                q.put(envelope, pending)
            settlements.append(pending)
        deadline = time.monotonic() + timeout
        results = []
        for settlement in settlements:
            if settlement is None:
                results.append(UNROUTABLE)
            elif settlement.wait(max(0.0, deadline - time.monotonic())):
                results.append(OK)
            else:
                results.append("not settled in time by a consumer")
        return results


BUS = InProcessBus()
"""The bus of this process, shared by every service app started in it."""


class InProcessPublisher:
    """The relay's `Publisher` on the in-process bus."""

    messaging_system = "storeplane_inprocess"  # `messaging.system` of the relay's publish spans

    def __init__(self, bus: InProcessBus = BUS, *, settle_timeout: float = 10.0) -> None:
        self.bus = bus
        self.settle_timeout = settle_timeout

    def connect(self) -> None:
        return None

    def publish(self, envelopes: Sequence[Envelope]) -> list[str]:
        return self.bus.deliver(envelopes, self.settle_timeout)

    def idle(self, seconds: float, wake: threading.Event) -> None:
        wake.wait(seconds)

    def interrupt(self) -> None:
        return None

    def close(self) -> None:
        return None


T = TypeVar("T")
# How often a consumer looks for held events changed from outside (an operator's replay) when none of its own falls due.
HELD_POLL_SECONDS = 1.0


class InProcessConsumer(ThreadWorker):
    """A `Worker`: applies the events of its in-process queue, retrying with delay and parking like RabbitMQ; both
    kinds of held event are kept in the consumer's database, so they outlive the process."""

    def __init__(
        self, applier: InboxApplier, *, bus: InProcessBus = BUS, settings: MessagingSettings | None = None
    ) -> None:
        self.applier = applier
        applier.messaging_system = InProcessPublisher.messaging_system  # what its `process` spans say
        self.bus = bus
        self.settings = settings or MessagingSettings()
        self.name = applier.consumers.name
        self.queue = bus.bind(self.name, applier.consumers.event_types)
        self.held = HeldEvents(applier.database, self.name)
        self.thread_name = f"events-inprocess-{self.name}"
        self._held_ids: set[str] = set()  # every event held (or more: an operator may have purged some)
        self._look_now = threading.Event()
        super().__init__()

    def replay_parked(self, event_ids: Collection[str] = ()) -> int:
        """Parked events (all, or those with the given ids) due again as a first attempt; returns how many."""
        count = self.held.replay(event_ids)
        self._look_now.set()
        return count

    def _run(self) -> None:
        try:
            self._loop()
        except _Stopped:
            return

    def _loop(self) -> None:
        # Taken up from the last run: waiting retries are looked for below, parked events wait for an operator.
        self._held_ids, counts = self._until_done(lambda: (self.held.held_ids(), self.held.counts()))
        if counts[PARKED]:
            log.warning("consumer has parked events", extra={"consumer": self.name, **counts})
        next_look = 0.0  # monotonic time to look for due retries in the database
        limit = self.settings.events_batch_size
        while not self._stopping.is_set():
            items: list[_Item] = []
            now = time.monotonic()
            if now >= next_look or self._look_now.is_set():
                self._look_now.clear()
                envelopes, next_due = self._until_done(lambda: self.held.due(limit))
                items = [_Item(e, held=True) for e in envelopes]
                next_look = now + HELD_POLL_SECONDS
                if next_due is not None:
                    next_look = min(next_look, now + (next_due - utcnow()).total_seconds())
            wait = 0.0 if items else min(0.2, max(0.0, next_look - time.monotonic()))
            items = _merged(items + self.queue.take(limit - len(items), timeout=wait))
            if not items:
                continue
            soonest = self._apply(items)
            next_look = min(next_look, time.monotonic() + soonest)

    def _apply(self, items: list[_Item]) -> float:
        """Apply a batch, then hold what failed and settle; returns the delay of the soonest retry it scheduled
        (inf if none). Raises `_Stopped` when asked to stop before it was done (what was not settled is delivered
        again after the next start)."""
        outcomes = self.applier.apply_until_done([i.envelope for i in items], self._stopping.is_set)
        if outcomes is None:
            for item in items:  # not applied: leave them to the next start (the relay republishes)
                if not item.held:
                    self.queue.put(item.envelope, None)
            raise _Stopped
        delays = self.settings.events_retry_delays
        new: list[HeldEvent] = []
        copies: list[HeldEvent] = []
        changed: list[HeldEvent] = []
        released: list[str] = []
        failed: list[_Item] = []
        soonest = float("inf")
        for item, outcome in zip(items, outcomes, strict=True):
            envelope = item.envelope
            if not outcome.failed:
                if item.held or envelope.event_id in self._held_ids:
                    released.append(envelope.event_id)  # applied (now or before): no longer held
                self.queue.settle(item)
                continue
            failed.append(item)
            if not outcome.final and envelope.attempt <= len(delays):
                delay = delays[envelope.attempt - 1]
                soonest = min(soonest, delay)
                due = utcnow() + timedelta(seconds=delay)
                held = HeldEvent(envelope.next_attempt(), WAITING, outcome.reason, due)
            else:
                held = HeldEvent(envelope, PARKED, outcome.reason)
            # A copy of an event held already (delivered again by the relay) is not held twice: its insert yields
            # to the row there is (and is not counted as a retry or a parking of its own).
            (changed if item.held else copies if envelope.event_id in self._held_ids else new).append(held)
        if new or copies or changed or released:
            self._until_done(lambda: self.held.record([*new, *copies], changed, released))
            self._held_ids.difference_update(released)
            self._held_ids.update(h.envelope.event_id for h in new)
        for held in (*new, *changed):
            if held.state == WAITING:
                telemetry.EVENTS_RETRIED.labels(self.name, held.envelope.event_type).inc()
            else:
                record_parked(self.name, held.envelope, held.reason)
        for item in failed:
            self.queue.settle(item)  # only now: it is held (committed)
        return soonest

    def _until_done(self, work: Callable[[], T]) -> T:
        """`work()` on the database, retried with backoff while it is unreachable; `_Stopped` if asked to stop."""
        delay = 0.2
        while True:
            try:
                return work()
            except Exception:
                log.warning("consumer cannot reach its held events, retrying", exc_info=True)
                if self._stopping.wait(delay):
                    raise _Stopped from None
                delay = min(delay * 2, 10.0)


class _Stopped(Exception):
    """The consumer was asked to stop while waiting for its database."""


def _merged(items: list[_Item]) -> list[_Item]:
    """One item per event id: a copy delivered while its held retry fell due joins the held one."""
    by_id: dict[str, _Item] = {}
    for item in items:
        first = by_id.setdefault(item.envelope.event_id, item)
        if first is not item:
            first.waiters.extend(item.waiters)
    return list(by_id.values())
