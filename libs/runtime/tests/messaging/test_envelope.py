"""The wire format against the cloudevents SDK's two bindings for RabbitMQ: what we publish reads with either, and
what a sibling publishes with either (or with bare AMQP properties) becomes the same `Envelope` as ours."""

from __future__ import annotations

from datetime import UTC, datetime

import pika
import pytest
from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_runtime.messaging.envelope import Envelope, from_amqp, to_amqp

SALE = checkout_events.SaleCompleted.DESCRIPTOR.full_name
OCCURRED = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
# Not valid UTF-8, as protobuf bodies often are not: the SDK hands such data back as bytes, not text.
PAYLOAD = checkout_events.SaleCompleted(sale_id="S-1").SerializeToString() + b"\xff\xfe"


def _envelope(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "event_id": "0190a1b2-0000-7000-8000-000000000001",
        "event_type": SALE,
        "source": "checkout",
        "payload": PAYLOAD,
        "occurred_at": OCCURRED,
        "subject": "S-1",
        "store_id": "berlin-mitte",
        "trace_headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def _as_received(properties: pika.BasicProperties) -> pika.BasicProperties:
    """The properties as a consumer gets them: through pika's AMQP 0-9-1 encoding and decoding."""
    received = pika.BasicProperties()
    received.decode(b"".join(properties.encode()))
    return received


def _read_with_both_bindings(properties: pika.BasicProperties, body: bytes) -> list[CloudEvent]:
    headers = dict(properties.headers or {})
    by_amqp = ce_amqp.from_binary(
        ce_amqp.AMQPMessage(
            properties={"content-type": properties.content_type}, application_properties=headers, application_data=body
        ),
        JSONFormat(),
    )
    by_rabbitmq = ce_rabbitmq.from_binary(
        ce_rabbitmq.RabbitMQMessage(headers=headers, content_type=properties.content_type, body=body), JSONFormat()
    )
    return [by_amqp, by_rabbitmq]  # type: ignore[list-item]


def test_both_sdk_bindings_read_every_attribute_and_the_body_of_what_we_publish() -> None:
    envelope = _envelope()
    properties = _as_received(to_amqp(envelope))
    for event in _read_with_both_bindings(properties, envelope.payload):
        assert event.get_id() == envelope.event_id
        assert event.get_source() == "/storeplane/checkout"
        assert event.get_type() == SALE
        assert event.get_specversion() == "1.0"
        assert event.get_time() == OCCURRED
        assert event.get_subject() == "S-1"
        assert event.get_datacontenttype() == "application/protobuf"
        assert event.get_data() == PAYLOAD


def test_an_event_without_subject_has_none_in_either_binding() -> None:
    envelope = _envelope(subject="")
    properties = _as_received(to_amqp(envelope))
    for event in _read_with_both_bindings(properties, envelope.payload):
        assert event.get_subject() is None
        assert event.get_id() == envelope.event_id


def test_a_naive_occurrence_time_is_published_as_utc() -> None:
    envelope = _envelope(occurred_at=OCCURRED.replace(tzinfo=None))
    properties = _as_received(to_amqp(envelope))
    for event in _read_with_both_bindings(properties, envelope.payload):
        assert event.get_time() == OCCURRED


def test_the_plain_amqp_properties_stay_as_they_were() -> None:
    properties = _as_received(to_amqp(_envelope(attempt=3)))
    assert properties.message_id == "0190a1b2-0000-7000-8000-000000000001"
    assert properties.type == SALE
    assert properties.app_id == "checkout"
    assert properties.content_type == "application/protobuf"
    assert properties.delivery_mode == 2
    assert properties.timestamp == int(OCCURRED.timestamp())
    headers = properties.headers or {}
    assert headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers["store_id"] == "berlin-mitte"
    assert headers["x-storeplane-attempt"] == 3


def test_what_we_publish_reads_back_as_the_same_envelope() -> None:
    envelope = _envelope(attempt=2)
    assert from_amqp(_as_received(to_amqp(envelope)), envelope.payload) == envelope


def _sibling_event(**extra: object) -> CloudEvent:
    return CloudEvent(
        attributes={
            "id": "erp-42",
            "source": "/storeplane/checkout",
            "type": SALE,
            "specversion": "1.0",
            "time": OCCURRED,
            "subject": "S-1",
            "datacontenttype": "application/protobuf",
            **extra,
        },
        data=PAYLOAD,
    )


def _expected_from_sibling() -> Envelope:
    return _envelope(event_id="erp-42", store_id="", trace_headers={})


def test_a_sibling_publishing_with_the_sdk_rabbitmq_binding_is_read_like_one_of_ours() -> None:
    message = ce_rabbitmq.to_binary(_sibling_event(), JSONFormat())
    # What a pika user does with it: headers and content_type, nothing else (no message_id, type, app_id...).
    properties = _as_received(pika.BasicProperties(headers=dict(message.headers), content_type=message.content_type))
    assert from_amqp(properties, message.body) == _expected_from_sibling()


def test_a_sibling_publishing_with_the_sdk_amqp_binding_is_read_like_one_of_ours() -> None:
    # The SDK writes `cloudEvents_` names and the time as an AMQP timestamp (milliseconds since the epoch).
    message = ce_amqp.to_binary(_sibling_event(time=OCCURRED.replace(microsecond=589000)), JSONFormat())
    assert isinstance(message.application_properties["cloudEvents_time"], int)
    properties = _as_received(
        pika.BasicProperties(
            headers=dict(message.application_properties), content_type=message.properties["content-type"]
        )
    )
    assert from_amqp(properties, message.application_data) == _envelope(
        event_id="erp-42", store_id="", trace_headers={}, occurred_at=OCCURRED.replace(microsecond=589000)
    )


@pytest.mark.parametrize("prefix", ["cloudEvents:", "ce-", "CE-"])
def test_a_sibling_with_only_cloudevents_headers_of_either_kind_is_read_like_one_of_ours(prefix: str) -> None:
    headers = {
        f"{prefix}specversion": "1.0",
        f"{prefix}id": "erp-42",
        f"{prefix}source": "/storeplane/checkout",
        f"{prefix}type": SALE,
        f"{prefix}time": "2025-03-14T09:26:53.589793Z",
        f"{prefix}subject": "S-1",
    }
    properties = _as_received(pika.BasicProperties(headers=headers))
    assert from_amqp(properties, PAYLOAD) == _expected_from_sibling()


def test_a_sibling_with_only_plain_amqp_properties_is_read_from_them() -> None:
    properties = _as_received(
        pika.BasicProperties(message_id="erp-43", type=SALE, app_id="erp", timestamp=int(OCCURRED.timestamp()))
    )
    envelope = from_amqp(properties, PAYLOAD)
    assert (envelope.event_id, envelope.event_type, envelope.source) == ("erp-43", SALE, "erp")
    assert envelope.occurred_at == OCCURRED.replace(microsecond=0)
