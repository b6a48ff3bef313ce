"""Exchange and queues, declared idempotently at start by every relay and consumer."""

# Per consuming service `<svc>`:
# - `<svc>.events`: quorum queue bound to `pos.events` by the event types it handles; `x-delivery-limit` guards
#   against crash loops, past it the broker dead-letters to the parking queue (at-least-once).
# - `<svc>.events.retry.<ms>ms`: one quorum queue per retry delay; a failed message waits there for its TTL and is
#   dead-lettered (at-least-once) back to `<svc>.events` with its attempt number in a header.
# - `<svc>.events.parked`: where a message goes after its last attempt, with the reason; operators replay it.

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel

from storeplane_runtime.messaging.envelope import EXCHANGE


@dataclass(frozen=True)
class QueueNames:
    """The queue names of one consuming service."""

    service: str
    retry_delays: tuple[float, ...]

    @property
    def main(self) -> str:
        return f"{self.service}.events"

    @property
    def parked(self) -> str:
        return f"{self.service}.events.parked"

    @property
    def retries(self) -> list[str]:
        return [retry_queue(self.service, d) for d in self.retry_delays]

    def retry_for(self, attempt_failed: int) -> str | None:
        """The retry queue after the `attempt_failed`-th attempt failed, or None when it was the last."""
        index = attempt_failed - 1
        return self.retries[index] if index < len(self.retry_delays) else None

    def all(self) -> list[str]:
        return [self.main, *self.retries, self.parked]


def retry_queue(service: str, delay_seconds: float) -> str:
    # Named by delay so that changing the configured delays declares new queues instead of clashing.
    return f"{service}.events.retry.{round(delay_seconds * 1000)}ms"


def _quorum(**extra: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **extra}


def _dead_letter_to(queue: str) -> dict[str, Any]:
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def main_queue_arguments(delivery_limit: int, parked: str) -> dict[str, Any]:
    return _quorum(**{"x-delivery-limit": delivery_limit}, **_dead_letter_to(parked))


def declare_exchange(channel: BlockingChannel) -> None:
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)


def declare_consumer_queues(
    channel: BlockingChannel, names: QueueNames, *, delivery_limit: int, event_types: Iterable[str]
) -> None:
    """Declare the exchange and a service's queues and bind its main queue to the event types it handles."""
    declare_exchange(channel)
    channel.queue_declare(names.parked, durable=True, arguments=_quorum())
    channel.queue_declare(names.main, durable=True, arguments=main_queue_arguments(delivery_limit, names.parked))
    for delay, queue in zip(names.retry_delays, names.retries, strict=True):
        arguments = _quorum(**{"x-message-ttl": round(delay * 1000)}, **_dead_letter_to(names.main))
        channel.queue_declare(queue, durable=True, arguments=arguments)
    for event_type in sorted(set(event_types)):
        channel.queue_bind(names.main, EXCHANGE, routing_key=event_type)


def known_services() -> Sequence[str]:
    """Consuming services of the platform (docs/conventions.md), for the operator tools."""
    return ("checkout", "stock", "customer", "loyalty")
