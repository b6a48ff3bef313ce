"""The message format on the wire: an outbox row becomes a protobuf body plus AMQP properties and headers
(CloudEvents attributes for both SDK bindings, W3C trace context); a received message becomes an `Envelope` again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pika

from storeplane_runtime.clock import as_utc

CONTENT_TYPE = "application/protobuf"
EXCHANGE = "pos.events"
# Each CloudEvents attribute goes out twice, so that a sibling reads it with either binding of the cloudevents SDK:
# `cloudEvents:<name>` for the AMQP binding (`cloudevents.core.bindings.amqp`), `ce-<name>` for the RabbitMQ binding
# (`cloudevents.core.bindings.rabbitmq`: pika and aio-pika users, Knative's RabbitMQ broker). Both take
# `datacontenttype` from the `content_type` property. Every value is a string (`time` in RFC 3339, which the RabbitMQ
# binding requires and the AMQP binding accepts).
CE_PREFIX = "cloudEvents:"
CE_RABBITMQ_PREFIX = "ce-"
# What a received message may carry its attributes under: ours, the AMQP binding's JMS-friendly variant (the SDK's
# `amqp.to_binary` writes it), the RabbitMQ binding's. Compared ignoring case.
_RECEIVED_PREFIXES = (CE_PREFIX.lower(), "cloudevents_", CE_RABBITMQ_PREFIX)
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
    occurred = as_utc(envelope.occurred_at)
    attributes = {
        "specversion": "1.0",
        "id": envelope.event_id,
        "source": cloudevents_source(envelope.source),
        "type": envelope.event_type,
        "time": occurred.isoformat().replace("+00:00", "Z"),
    }
    if envelope.subject:
        attributes["subject"] = envelope.subject
    headers: dict[str, Any] = {}
    for prefix in (CE_PREFIX, CE_RABBITMQ_PREFIX):
        headers.update((prefix + name, value) for name, value in attributes.items())
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
    """Read back what `to_amqp` wrote, or what a sibling published: CloudEvents attributes under any binding's
    prefix, or only the plain AMQP properties (`message_id`, `type`, `app_id`, `timestamp`)."""
    headers: dict[str, Any] = dict(properties.headers or {})
    attributes = _cloudevents_attributes(headers)
    source = _text(properties.app_id) or _text(attributes.get("source")).rsplit("/", 1)[-1]
    return Envelope(
        event_id=_text(properties.message_id) or _text(attributes.get("id")),
        event_type=_text(properties.type) or _text(attributes.get("type")),
        source=source,
        payload=body,
        occurred_at=_parse_time(attributes.get("time"), properties.timestamp),
        subject=_text(attributes.get("subject")),
        store_id=_text(headers.get("store_id")),
        trace_headers={k: _text(headers[k]) for k in ("traceparent", "tracestate") if headers.get(k)},
        attempt=int(headers.get(ATTEMPT_HEADER) or 1),
        reason=_text(headers.get(REASON_HEADER)) or _death_reason(headers),
        redelivered=redelivered,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _cloudevents_attributes(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The CloudEvents attributes among the headers, by name (an attribute under several prefixes: the first)."""
    found: dict[str, Any] = {}
    for header, value in headers.items():
        lowered = header.lower()
        for prefix in _RECEIVED_PREFIXES:
            if lowered.startswith(prefix):
                found.setdefault(lowered[len(prefix) :], value)
                break
    return found


def _parse_time(value: Any, fallback_epoch: int | None) -> datetime:
    # RFC 3339 text (both bindings), or an AMQP timestamp: milliseconds since the epoch as the SDK's AMQP binding
    # writes it, or a datetime as pika decodes a timestamp-typed header.
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, UTC)
    if value:
        try:
            return as_utc(datetime.fromisoformat(_text(value).replace("Z", "+00:00")))
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
