"""The RabbitMQ `Publisher` of the outbox relay: publishes a batch to `pos.events` with publisher confirms and
reports, per event, whether the broker took it, could route it to no queue, or failed."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions
from pika.spec import Basic

from storeplane_runtime.messaging.envelope import EXCHANGE, Envelope, to_amqp
from storeplane_runtime.messaging.relay import OK, UNROUTABLE
from storeplane_runtime.messaging.topology import declare_exchange

log = logging.getLogger(__name__)

UNROUTABLE_LOG_SECONDS = 60.0


class AmqpPublisher:
    """Publishes to `pos.events` with publisher confirms, all messages of a batch in flight at once.

    pika's BlockingChannel waits for each confirm in turn; here the batch is written through the channel's
    asynchronous implementation and confirms are collected by delivery tag while the connection pumps I/O.
    Not thread-safe: used by the relay thread only (except `interrupt`).
    """

    messaging_system = "rabbitmq"  # `messaging.system` of the relay's publish spans

    def __init__(
        self, url: str, *, app_id: str, heartbeat: int = 30, confirm_timeout: float = 30.0, connect_timeout: float = 5.0
    ) -> None:
        self.parameters = pika.URLParameters(url)
        self.parameters.heartbeat = heartbeat
        self.parameters.blocked_connection_timeout = confirm_timeout
        self.parameters.socket_timeout = connect_timeout
        self.parameters.stack_timeout = connect_timeout + 5
        self.parameters.connection_attempts = 1
        self.app_id = app_id
        self.confirm_timeout = confirm_timeout
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None  # the asynchronous pika.channel.Channel behind the BlockingChannel
        self._next_tag = 1
        self._pending: dict[int, int] = {}  # delivery tag -> index in the batch
        self._results: list[str] = []
        self._returned: set[str] = set()
        self._lock = threading.Lock()
        self._unroutable_told: dict[str, float] = {}  # event type -> when it was last logged

    def connect(self) -> None:
        if self._connection is not None and self._connection.is_open and self._channel is not None:
            return
        self.close()
        connection = pika.BlockingConnection(self.parameters)
        try:
            blocking_channel = connection.channel()
            declare_exchange(blocking_channel)
            channel = blocking_channel._impl
            selected = threading.Event()
            channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: selected.set())
            channel.add_on_return_callback(self._on_return)
            deadline = time.monotonic() + self.confirm_timeout
            while not selected.is_set() and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.1)
            if not selected.is_set():
                raise pika.exceptions.AMQPConnectionError("confirm.select not answered")
        except BaseException:
            _close_quietly(connection)
            raise
        with self._lock:
            self._connection, self._channel, self._next_tag = connection, channel, 1

    def publish(self, envelopes: Sequence[Envelope]) -> list[str]:
        self.connect()
        assert self._connection is not None
        self._results = ["no confirm"] * len(envelopes)
        self._pending = {}
        self._returned = set()
        try:
            for index, envelope in enumerate(envelopes):
                self._pending[self._next_tag] = index
                self._next_tag += 1
                self._channel.basic_publish(
                    EXCHANGE, envelope.event_type, envelope.payload, to_amqp(envelope), mandatory=True
                )
            deadline = time.monotonic() + self.confirm_timeout
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise pika.exceptions.AMQPConnectionError("publisher confirms timed out")
                self._connection.process_data_events(time_limit=min(remaining, 1.0))
        except BaseException:
            self.close()
            raise
        for index, envelope in enumerate(envelopes):
            if self._results[index] == OK and envelope.event_id in self._returned:
                self._results[index] = UNROUTABLE
        return self._results

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        tags = [t for t in self._pending if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            index = self._pending.pop(tag, None)
            if index is not None:
                self._results[index] = OK if ok else "nacked by broker"
        if not self._pending and self._connection is not None:
            # Callbacks of the underlying channel do not end process_data_events early; a ready event does.
            self._connection.add_callback_threadsafe(_nothing)

    def _on_return(self, _channel: Any, method: Any, properties: pika.BasicProperties, _body: bytes) -> None:
        # basic.return precedes the basic.ack of an unroutable mandatory message.
        self._returned.add(str(properties.message_id))
        # Once a minute per event type: a type nobody consumes (yet) would otherwise log every event it publishes.
        # Each one is counted in storeplane_events_unroutable_total and its outbox row marked.
        now = time.monotonic()
        event_type = str(properties.type)
        if now - self._unroutable_told.get(event_type, -UNROUTABLE_LOG_SECONDS) >= UNROUTABLE_LOG_SECONDS:
            self._unroutable_told[event_type] = now
            log.warning("event unroutable", extra={"event_type": event_type, "reply": method.reply_text})

    def idle(self, seconds: float, wake: threading.Event) -> None:
        connection = self._connection
        if connection is None or not connection.is_open:
            wake.wait(seconds)
            return
        try:
            connection.process_data_events(time_limit=seconds)
        except Exception:
            log.warning("publisher connection lost while idle", exc_info=True)
            self.close()

    def interrupt(self) -> None:
        with self._lock:
            connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):  # closed meanwhile: the relay is not waiting on it
                connection.add_callback_threadsafe(_nothing)

    def close(self) -> None:
        with self._lock:
            connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            _close_quietly(connection)


def _nothing() -> None:
    return None


def _close_quietly(connection: pika.BlockingConnection) -> None:
    with contextlib.suppress(Exception):
        if connection.is_open:
            connection.close()
