"""Which messaging workers a service process runs: its relay and consumer (RabbitMQ when AMQP_URL is set, else the
in-process bus) and the pruner of its shared tables."""

from __future__ import annotations

from typing import Protocol

from pydantic import ValidationError

from storeplane_runtime.db import Database
from storeplane_runtime.messaging.amqp_consumer import AmqpConsumer
from storeplane_runtime.messaging.amqp_publisher import AmqpPublisher
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.consumers import Consumers, InboxApplier
from storeplane_runtime.messaging.inprocess import BUS, InProcessBus, InProcessConsumer, InProcessPublisher
from storeplane_runtime.messaging.pruning import Pruner
from storeplane_runtime.messaging.relay import OutboxRelay, Publisher
from storeplane_runtime.settings import ServiceSettings, SettingsError, describe


class MessagingWorker(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def load_messaging_settings(service: str) -> MessagingSettings:
    """EVENTS_*, OUTBOX_*, INBOX_* and PRUNE_* from the environment; a wrong value stops the process with one line."""
    try:
        return MessagingSettings()
    except ValidationError as exc:
        raise SettingsError(f"{service}: bad setting: {describe(exc)}") from None


def messaging_workers(
    service: str,
    settings: ServiceSettings,
    database: Database,
    consumers: Consumers | None = None,
    *,
    messaging: MessagingSettings | None = None,
    bus: InProcessBus = BUS,
) -> list[MessagingWorker]:
    """The consumer runner (if the service handles events), the outbox relay and the pruner of one service process."""
    messaging = messaging or load_messaging_settings(service)
    workers: list[MessagingWorker] = []
    if consumers:
        applier = InboxApplier(database, consumers)
        if settings.amqp_url:
            workers.append(AmqpConsumer(settings.amqp_url, applier, settings=messaging))
        else:
            workers.append(InProcessConsumer(applier, bus=bus, settings=messaging))
    publisher: Publisher
    if settings.amqp_url:
        publisher = AmqpPublisher(settings.amqp_url, app_id=service, heartbeat=messaging.amqp_heartbeat_seconds)
    else:
        publisher = InProcessPublisher(bus)
    workers.append(OutboxRelay(database, publisher, service=service, settings=messaging))
    workers.append(Pruner(database, service=service, settings=messaging))
    return workers
