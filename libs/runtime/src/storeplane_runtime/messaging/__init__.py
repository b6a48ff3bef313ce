"""The event backbone: outbox relay, consumers with inbox dedupe, retries and parking, on RabbitMQ or in process."""

# A service declares its handlers with `Consumers` and passes them to `ServiceApp.with_database(consumers=...)`,
# which attaches the relay, the consumer and the pruner (`messaging_workers`) to every app with a database.
# See ARCHITECTURE.md §5.

from storeplane_runtime.messaging.amqp_consumer import AmqpConsumer
from storeplane_runtime.messaging.amqp_publisher import AmqpPublisher
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.consumers import Consumers, InboxApplier, Outcome
from storeplane_runtime.messaging.envelope import EXCHANGE, Envelope
from storeplane_runtime.messaging.held_events import HeldEvent, HeldEvents, ParkedEvent
from storeplane_runtime.messaging.inprocess import BUS, InProcessBus, InProcessConsumer, InProcessPublisher
from storeplane_runtime.messaging.pruning import Pruner
from storeplane_runtime.messaging.relay import OutboxRelay, Publisher
from storeplane_runtime.messaging.wiring import messaging_workers

__all__ = [
    "BUS",
    "EXCHANGE",
    "AmqpConsumer",
    "AmqpPublisher",
    "Consumers",
    "Envelope",
    "HeldEvent",
    "HeldEvents",
    "InProcessBus",
    "InProcessConsumer",
    "InProcessPublisher",
    "InboxApplier",
    "MessagingSettings",
    "OutboxRelay",
    "Outcome",
    "ParkedEvent",
    "Pruner",
    "Publisher",
    "messaging_workers",
]
