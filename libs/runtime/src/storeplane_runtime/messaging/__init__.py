"""The event backbone: outbox relay, consumers with inbox dedupe, retries and parking, on RabbitMQ or in process.

A service declares its handlers with `Consumers` and passes them to `ServiceApp.with_database(consumers=...)`;
the relay is attached to every app with a database. See ARCHITECTURE.md §5.
"""

from storeplane_runtime.messaging.amqp_consumer import AmqpConsumer
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.consumers import Consumers, InboxApplier, Outcome
from storeplane_runtime.messaging.envelope import EXCHANGE, Envelope
from storeplane_runtime.messaging.inprocess import BUS, InProcessBus, InProcessConsumer, InProcessPublisher
from storeplane_runtime.messaging.relay import AmqpPublisher, OutboxRelay, Publisher
from storeplane_runtime.messaging.wiring import messaging_workers

__all__ = [
    "BUS",
    "EXCHANGE",
    "AmqpConsumer",
    "AmqpPublisher",
    "Consumers",
    "Envelope",
    "InProcessBus",
    "InProcessConsumer",
    "InProcessPublisher",
    "InboxApplier",
    "MessagingSettings",
    "OutboxRelay",
    "Outcome",
    "Publisher",
    "messaging_workers",
]
