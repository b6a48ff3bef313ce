"""The RabbitMQ consumer runner of one service: one connection owned by an I/O thread, handlers on another."""

# pika is not thread-safe: only the I/O thread touches the connection. It keeps heartbeats flowing while a handler
# runs; the handler thread hands results back with `add_callback_threadsafe`, and the I/O thread acknowledges,
# sends failures to the retry queue for their attempt, or parks them after the last attempt, each with a publisher
# confirm before the original is acknowledged. Connection loss: reconnect with backoff and jitter; whatever was
# unacknowledged is redelivered and the inbox makes it harmless.
#
# Crash loops. When a consumer's connection closes, a quorum queue raises the delivery count of *every* message it
# held unacknowledged, and dead-letters past `x-delivery-limit`. A process that dies on one poison message, again and
# again, would so park the innocent messages in flight beside it. Hence a slow start: each connection consumes with
# one message in flight, and only after `events_slow_start_deliveries` first-time deliveries in a row were applied
# and acknowledged does it add a consumer with the full prefetch (a new `basic.qos` does not change the prefetch of
# a running quorum-queue consumer). And a suspect delivery (redelivered, maybe what killed the previous process) is
# always applied on its own and acknowledged before the handler takes anything else. A crash on a suspect message
# thus raises the count of that message alone, and only it reaches the delivery limit.

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from storeplane_runtime import telemetry
from storeplane_runtime.clock import utcnow
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.consumers import InboxApplier, Outcome, record_parked
from storeplane_runtime.messaging.envelope import (
    ORIGIN_QUEUE_HEADER,
    PARKED_AT_HEADER,
    REASON_HEADER,
    Envelope,
    from_amqp,
    to_amqp,
)
from storeplane_runtime.messaging.topology import QueueNames, declare_consumer_queues

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Delivery:
    generation: int
    tag: int
    envelope: Envelope
    suspect: bool = False  # delivered before and not acknowledged: it may be what crashed a consumer


def _suspect(method: Any, properties: pika.BasicProperties) -> bool:
    if method.redelivered:
        return True
    count = (properties.headers or {}).get("x-delivery-count")
    return isinstance(count, int) and count > 0


class AmqpConsumer:
    """A `Worker`: consumes `<service>.events` and applies each event through an `InboxApplier`."""

    def __init__(self, url: str, applier: InboxApplier, *, settings: MessagingSettings | None = None) -> None:
        self.settings = settings or MessagingSettings()
        self.parameters = pika.URLParameters(url)
        self.parameters.heartbeat = self.settings.amqp_heartbeat_seconds
        self.parameters.connection_attempts = 1
        self.parameters.socket_timeout = 5
        self.applier = applier
        self.name = applier.consumers.name
        self.queues = QueueNames(self.name, tuple(self.settings.events_retry_delays))
        self.ready = threading.Event()  # consuming (tests wait on it)
        self.connections_opened = 0
        self._stopping = threading.Event()
        self._work: queue.Queue[_Delivery] = queue.Queue()
        self._generation = 0
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._publisher: Any = None
        # I/O thread, per connection: slow start (one message in flight) until a run of clean deliveries.
        self._full_prefetch = False
        self._clean_run = 0
        self._on_message: Any = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._threads:
            return
        self._stopping.clear()
        self._threads = [  # each in a copy of the starter's context (spans.current_service)
            threading.Thread(
                target=contextvars.copy_context().run, args=(loop,), name=f"events-{kind}-{self.name}", daemon=True
            )
            for kind, loop in (("io", self._io_loop), ("handler", self._handler_loop))
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):  # closed meanwhile
                connection.add_callback_threadsafe(lambda: None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []

    # I/O thread -------------------------------------------------------------------------------------------

    def _io_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._consume()
                failures = 0
            except Exception as exc:
                failures += 1
                self.ready.clear()
                delay = min(self.settings.reconnect_max_seconds, 0.25 * 2 ** min(failures, 8)) * random.uniform(
                    0.5, 1.0
                )
                log.warning(
                    "event consumer disconnected, reconnecting",
                    extra={"consumer": self.name, "error": f"{type(exc).__name__}: {exc}", "retry_in": delay},
                )
                self._stopping.wait(delay)

    def _consume(self) -> None:
        connection = pika.BlockingConnection(self.parameters)
        self._generation += 1
        generation = self._generation
        self._drop_stale_work()
        try:
            channel = connection.channel()
            declare_consumer_queues(
                channel,
                self.queues,
                delivery_limit=self.settings.events_delivery_limit,
                event_types=self.applier.consumers.event_types,
            )
            publisher = connection.channel()
            publisher.confirm_delivery()
            slow_start = self.settings.events_slow_start_deliveries > 0 and self.settings.events_prefetch > 1
            channel.basic_qos(prefetch_count=1 if slow_start else self.settings.events_prefetch)
            self._full_prefetch, self._clean_run = not slow_start, 0

            def on_message(_ch: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
                envelope = from_amqp(properties, body, redelivered=bool(method.redelivered))
                self._work.put(_Delivery(generation, method.delivery_tag, envelope, _suspect(method, properties)))

            self._on_message = on_message
            channel.basic_consume(self.queues.main, on_message, auto_ack=False)
            self._connection = connection
            self._channel, self._publisher = channel, publisher
            self.connections_opened += 1
            self.ready.set()
            while not self._stopping.is_set():
                connection.process_data_events(time_limit=1.0)
        finally:
            self.ready.clear()
            self._connection = None
            with contextlib.suppress(Exception):
                if connection.is_open:
                    connection.close()

    def _settle(self, deliveries: list[_Delivery], outcomes: list[Outcome], settled: threading.Event) -> None:
        """In the I/O thread: ack, retry or park each delivery of one applied batch."""
        try:
            if not deliveries or deliveries[0].generation != self._generation or self._connection is None:
                return  # the connection these tags belong to is gone; the broker redelivers them
            for delivery, outcome in zip(deliveries, outcomes, strict=True):
                if outcome.failed:
                    self._send_failure(delivery.envelope, outcome)  # confirmed before the ack below
            # One ack for the whole batch. The handler thread takes deliveries in the order they arrived and
            # batches are settled in turn, so every tag up to the last of this batch is either in it or was
            # settled with an earlier batch: `multiple` acknowledges exactly this batch.
            self._channel.basic_ack(deliveries[-1].tag, multiple=True)
            if not self._full_prefetch:
                for delivery in deliveries:
                    self._clean_run = 0 if delivery.suspect else self._clean_run + 1
                if self._clean_run >= self.settings.events_slow_start_deliveries:
                    self._take_full_prefetch()
        finally:
            settled.set()

    def _take_full_prefetch(self) -> None:
        """End of the slow start: a second consumer on the channel with the configured prefetch.

        `basic.qos` applies to consumers started after it only, so the first consumer keeps its one message in
        flight (cancelling it would make pika reject, and so redeliver, what is on the wire for it meanwhile)."""
        self._full_prefetch = True
        self._channel.basic_qos(prefetch_count=self.settings.events_prefetch)
        self._channel.basic_consume(self.queues.main, self._on_message, auto_ack=False)
        log.debug("event consumer takes its full prefetch", extra={"consumer": self.name})

    def _send_failure(self, envelope: Envelope, outcome: Outcome) -> None:
        retry = None if outcome.final else self.queues.retry_for(envelope.attempt)
        if retry is not None:
            self._publisher.basic_publish("", retry, envelope.payload, to_amqp(envelope.next_attempt()), mandatory=True)
            telemetry.EVENTS_RETRIED.labels(self.name, envelope.event_type).inc()
            return
        headers = {
            REASON_HEADER: outcome.reason,
            PARKED_AT_HEADER: utcnow().isoformat(),
            ORIGIN_QUEUE_HEADER: self.queues.main,
        }
        self._publisher.basic_publish(
            "", self.queues.parked, envelope.payload, to_amqp(envelope, extra_headers=headers), mandatory=True
        )
        record_parked(self.name, envelope, outcome.reason)

    def _drop_stale_work(self) -> None:
        try:
            while True:
                self._work.get_nowait()
        except queue.Empty:
            pass

    # handler thread --------------------------------------------------------------------------------------

    def _handler_loop(self) -> None:
        following: _Delivery | None = None  # taken from the queue already; it starts the next batch
        while not self._stopping.is_set():
            if following is None:
                try:
                    following = self._work.get(timeout=0.2)
                except queue.Empty:
                    continue
            batch, following = self._take_batch(following)
            if batch[0].generation != self._generation:
                continue  # a reconnect happened: these tags are void, the broker redelivers them
            outcomes = self.applier.apply_until_done([d.envelope for d in batch], self._stopping.is_set)
            if outcomes is None:
                return
            connection = self._connection
            if connection is None:
                continue
            settled = threading.Event()
            try:
                connection.add_callback_threadsafe(lambda b=batch, o=outcomes, s=settled: self._settle(b, o, s))
            except Exception:
                log.warning("could not acknowledge, the connection closed; events will be redelivered")
                continue
            if batch[0].suspect:
                # Acknowledged before anything else is applied: should the next message kill the process, this
                # one, applied already, must not be redelivered once more (and come nearer the delivery limit).
                self._await_settled(settled, batch[0].generation)

    def _take_batch(self, first: _Delivery) -> tuple[list[_Delivery], _Delivery | None]:
        """The batch that starts with `first` (what arrived with it, in order, of its connection), and the delivery
        that starts the next one, if taken already. A suspect delivery is a batch of its own."""
        batch = [first]
        if first.suspect:
            return batch, None
        while len(batch) < self.settings.events_batch_size:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item.suspect or item.generation != first.generation:
                return batch, item
            batch.append(item)
        return batch, None

    def _await_settled(self, settled: threading.Event, generation: int) -> None:
        while not settled.wait(0.05):
            if self._stopping.is_set() or generation != self._generation or self._connection is None:
                return
