"""The message format on the wire: an outbox row becomes a protobuf body plus AMQP properties and headers
(CloudEvents AMQP binding attributes, W3C trace context); a received message becomes an `Envelope` again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pika

CONTENT_TYPE = "application/protobuf"
EXCHANGE = "pos.events"
CE_PREFIX = "cloudEvents:"
# Our own bookkeeping headers, kept apart from the CloudEvents ones.
ATTEMPT_HEADER = "x-storeplane-attempt"
REASON_HEADER = "x-storeplane-reason"
PARKED_AT_HEADER = "x-storeplane-parked-at"
ORIGIN_QUEUE_HEADER = "x-storeplane-queue"


@dataclass(frozen=True)
class Envelope:
    """One event with everything a consumer, the broker or an operator needs to know about it."""

    event_id: str
    event_type: str
    source: str  # producing service, e.g. "checkout"
    payload: bytes
    occurred_at: datetime
    subject: str = ""
    store_id: str = ""
    trace_headers: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1  # which handler attempt this delivery is (1 = first)
    reason: str = ""  # why it was parked, when it was
    redelivered: bool = False

    def next_attempt(self) -> Envelope:
        return replace(self, attempt=self.attempt + 1, redelivered=False)


def cloudevents_source(service: str) -> str:
    return f"/storeplane/{service}"


def to_amqp(envelope: Envelope, *, extra_headers: Mapping[str, Any] | None = None) -> pika.BasicProperties:
    """AMQP properties of an event: persistent, typed, CloudEvents attributes and trace context as headers."""
    occurred = envelope.occurred_at if envelope.occurred_at.tzinfo else envelope.occurred_at.replace(tzinfo=UTC)
    headers: dict[str, Any] = {
        f"{CE_PREFIX}specversion": "1.0",
        f"{CE_PREFIX}id": envelope.event_id,
        f"{CE_PREFIX}source": cloudevents_source(envelope.source),
        f"{CE_PREFIX}type": envelope.event_type,
        f"{CE_PREFIX}time": occurred.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    if envelope.subject:
        headers[f"{CE_PREFIX}subject"] = envelope.subject
    if envelope.store_id:
        headers["store_id"] = envelope.store_id
    for key in ("traceparent", "tracestate"):
        if envelope.trace_headers.get(key):
            headers[key] = envelope.trace_headers[key]
    if envelope.attempt > 1:
        headers[ATTEMPT_HEADER] = envelope.attempt
    if extra_headers:
        headers.update(extra_headers)
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=envelope.event_id,
        type=envelope.event_type,
        timestamp=int(occurred.timestamp()),
        app_id=envelope.source,
        headers=headers,
    )


def from_amqp(properties: pika.BasicProperties, body: bytes, *, redelivered: bool = False) -> Envelope:
    """Read back what `to_amqp` wrote; tolerant of messages a sibling system published by hand."""
    headers: dict[str, Any] = dict(properties.headers or {})

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value or "")

    source = text(properties.app_id) or text(headers.get(f"{CE_PREFIX}source")).rsplit("/", 1)[-1]
    occurred_at = _parse_time(text(headers.get(f"{CE_PREFIX}time")), properties.timestamp)
    return Envelope(
        event_id=text(properties.message_id) or text(headers.get(f"{CE_PREFIX}id")),
        event_type=text(properties.type) or text(headers.get(f"{CE_PREFIX}type")),
        source=source,
        payload=body,
        occurred_at=occurred_at,
        subject=text(headers.get(f"{CE_PREFIX}subject")),
        store_id=text(headers.get("store_id")),
        trace_headers={k: text(headers[k]) for k in ("traceparent", "tracestate") if headers.get(k)},
        attempt=int(headers.get(ATTEMPT_HEADER) or 1),
        reason=text(headers.get(REASON_HEADER)) or _death_reason(headers),
        redelivered=redelivered,
    )


def _parse_time(value: str, fallback_epoch: int | None) -> datetime:
    if value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.fromtimestamp(fallback_epoch or 0, UTC)


def _death_reason(headers: Mapping[str, Any]) -> str:
    # Dead-lettered by the broker itself (delivery limit reached after crash loops, rejected...).
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths[0], dict):
        reason = deaths[0].get("reason", b"")
        return f"broker: {reason.decode() if isinstance(reason, bytes) else reason}"
    return ""
