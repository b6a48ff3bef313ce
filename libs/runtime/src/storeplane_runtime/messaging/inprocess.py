"""The in-process bus of the embedded stack (no AMQP_URL): the same outbox → relay → inbox path, without a broker.

One bus per process (`BUS`), shared by every service started in it, so checkout's relay delivers into stock's
consumer, whose handler runs in stock's own database with stock's inbox. A consumer's queue exists from the moment
its app is built (like a durable queue), so events published before it starts wait for it.

Delivery guarantee: the relay marks an outbox row sent only after every bound consumer has settled the event —
committed it with its inbox row, or taken it into its retry schedule or parking list. A crash before that
publishes the event again after restart (the inbox makes it harmless). Retry schedules and parked events live in
memory: a process that stops forgets them (the embedded stack is a development mode; parked events are logged).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from storeplane_runtime import telemetry
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.consumers import InboxApplier, record_parked
from storeplane_runtime.messaging.envelope import Envelope
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
class ParkedEvent:
    envelope: Envelope
    reason: str
    parked_at: datetime


@dataclass
class _Item:
    envelope: Envelope
    waiters: list[_Settlement] = field(default_factory=list)


class InProcessQueue:
    """The queue of one consuming service: ready events, a retry schedule, and the parked list."""

    def __init__(self, name: str, event_types: Sequence[str]) -> None:
        self.name = name
        self.event_types = frozenset(event_types)
        self.parked: list[ParkedEvent] = []
        self._ready: dict[str, _Item] = {}  # by event id, in arrival order; a repeat joins the waiting one
        self._retries: list[tuple[float, int, Envelope]] = []
        self._counter = itertools.count()
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
        """Up to `limit` ready items (moving due retries in first); waits up to `timeout` for one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                while self._retries and self._retries[0][0] <= now:
                    _, _, envelope = heapq.heappop(self._retries)
                    self._ready.setdefault(envelope.event_id, _Item(envelope))
                if self._ready:
                    ids = list(itertools.islice(self._ready, limit))
                    return [self._ready.pop(i) for i in ids]
                wait = deadline - now
                if self._retries:
                    wait = min(wait, self._retries[0][0] - now)
                if wait <= 0:
                    return []
                self._cond.wait(wait)

    def settle(self, item: _Item) -> None:
        with self._cond:
            for waiter in item.waiters:
                waiter.settle()

    def schedule_retry(self, envelope: Envelope, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._retries, (time.monotonic() + delay, next(self._counter), envelope))
            self._cond.notify()

    def park(self, envelope: Envelope, reason: str) -> None:
        with self._cond:
            self.parked.append(ParkedEvent(envelope, reason, datetime.now(UTC)))

    def replay_parked(self) -> int:
        """Put every parked event back as a first attempt; returns how many."""
        with self._cond:
            parked, self.parked = self.parked, []
        for p in parked:
            self.put(replace(p.envelope, attempt=1, reason=""), None)
        return len(parked)

    def depth(self) -> dict[str, int]:
        with self._cond:
            return {"ready": len(self._ready), "retrying": len(self._retries), "parked": len(self.parked)}


class InProcessBus:
    """Routes published events to the queues bound to their type, and waits for them to be settled."""

    def __init__(self) -> None:
        self._queues: dict[str, InProcessQueue] = {}
        self._lock = threading.Lock()

    def bind(self, name: str, event_types: Sequence[str]) -> InProcessQueue:
        """The queue `name`, created on first use (and rebound to `event_types`)."""
        with self._lock:
            existing = self._queues.get(name)
            queue = InProcessQueue(name, event_types)
            if existing is not None:
                queue.parked = existing.parked
            self._queues[name] = queue
            return queue

    def unbind(self, name: str) -> None:
        with self._lock:
            self._queues.pop(name, None)

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


class InProcessConsumer(ThreadWorker):
    """A `Worker`: applies the events of its in-process queue, retrying with delay and parking like RabbitMQ."""

    def __init__(
        self, applier: InboxApplier, *, bus: InProcessBus = BUS, settings: MessagingSettings | None = None
    ) -> None:
        self.applier = applier
        self.bus = bus
        self.settings = settings or MessagingSettings()
        self.name = applier.consumers.name
        self.queue = bus.bind(self.name, applier.consumers.event_types)
        self.thread_name = f"events-inprocess-{self.name}"
        super().__init__()

    def _run(self) -> None:
        delays = self.settings.events_retry_delays
        while not self._stopping.is_set():
            items = self.queue.take(self.settings.events_batch_size, timeout=0.2)
            if not items:
                continue
            outcomes = self.applier.apply_until_done([i.envelope for i in items], self._stopping.is_set)
            if outcomes is None:
                for item in items:  # not applied: leave them to the next start (the relay republishes)
                    self.queue.put(item.envelope, None)
                return
            for item, outcome in zip(items, outcomes, strict=True):
                envelope = item.envelope
                if outcome.failed:
                    if not outcome.final and envelope.attempt <= len(delays):
                        self.queue.schedule_retry(envelope.next_attempt(), delays[envelope.attempt - 1])
                        telemetry.EVENTS_RETRIED.labels(self.name, envelope.event_type).inc()
                    else:
                        self.queue.park(envelope, outcome.reason)
                        record_parked(self.name, envelope, outcome.reason)
                self.queue.settle(item)
