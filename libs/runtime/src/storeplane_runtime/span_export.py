"""OTLP/HTTP span export with a compact encoder: the same ExportTraceServiceRequest bytes OpenTelemetry's encoder
makes, written straight to the wire format.

OpenTelemetry's encoder builds a protobuf object per span, per attribute and per value before serializing them: in
the sale benchmark with every trace sampled, that was the largest single cost of tracing in every process (a fifth
of checkout's Python time). Here a span is a few byte strings joined, and what repeats from span to span (attribute
pairs such as `db.query.text` with its statement, span names, the resource and scope) is encoded once and kept.
`tests: libs/runtime/tests/test_span_export.py` parses the bytes back with the OTLP protobuf classes and compares
them with what OpenTelemetry's own encoder makes for the same spans.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind

__all__ = ["CompactGrpcSpanExporter", "CompactSpanExporter", "encode_request"]

log = logging.getLogger(__name__)

_Q = struct.Struct("<Q").pack
_D = struct.Struct("<d").pack
_I = struct.Struct("<I").pack
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200
# Encoded pieces kept (attribute pairs, names): past this many the memory starts again.
CACHE_ENTRIES = 8192


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return bytes((n,))
    n &= 0xFFFFFFFFFFFFFFFF  # int64: two's complement, ten bytes for a negative number
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Span.kind: the SDK's kinds are the protocol's less one.
_KINDS = {kind: b"\x30" + _varint(kind.value + 1) for kind in SpanKind}
# Span.flags (fixed32): whether the parent is known to be remote, and whether it is.
_LOCAL_PARENT = b"\x85\x01" + _I(_FLAGS_HAS_IS_REMOTE)
_REMOTE_PARENT = b"\x85\x01" + _I(_FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (`tag`: the field number shifted, with wire type 2)."""
    return _varint(tag) + _varint(len(payload)) + payload


def _value(value: Any) -> bytes:
    """An AnyValue's bytes (oneof members are written even when they hold their type's default)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(0x0A, value.encode())
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"attribute value {value} does not fit an int64")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _D(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join(_field(0x0A, _value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(0x32, b"".join(_field(0x0A, _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"attribute value of type {type(value).__name__}")


def _varint_tagged(tag: int, payload: bytearray) -> bytes:
    """`payload` as a length-delimited field `tag` (a one-byte tag)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _key_value(key: str, value: Any) -> bytes:
    return _field(0x0A, key.encode()) + _field(0x12, _value(value))


class _Encoder:
    """Keeps what repeats; one per exporter (the batch processor exports from one thread at a time)."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, type, Any], bytes] = {}
        self._texts: dict[str, bytes] = {}
        self._resources: dict[int, tuple[Any, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes]] = {}

    def _attributes(self, tag: int, attributes: Mapping[str, Any] | None) -> list[bytes]:
        """Each attribute as a repeated KeyValue field `tag`."""
        if not attributes:
            return []
        pairs = self._pairs
        out = []
        for key, value in attributes.items():
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                memo = (key, type(value), value)
                encoded = pairs.get(memo)
                if encoded is None:
                    if len(pairs) >= CACHE_ENTRIES:
                        pairs.clear()
                    encoded = pairs[memo] = _field(tag, _key_value(key, value))
                out.append(encoded)
            else:
                out.append(_field(tag, _key_value(key, value)))
        return out

    def _text(self, tag: int, text: str) -> bytes:
        key = f"{tag}:{text}"
        encoded = self._texts.get(key)
        if encoded is None:
            if len(self._texts) >= CACHE_ENTRIES:
                self._texts.clear()
            encoded = self._texts[key] = _field(tag, text.encode())
        return encoded

    def _resource(self, resource: Any) -> bytes:
        kept = self._resources.get(id(resource))
        if kept is None or kept[0] is not resource:
            attributes = b"".join(self._attributes(0x0A, resource.attributes))
            encoded = _field(0x0A, attributes)
            kept = self._resources[id(resource)] = (resource, encoded)
        return kept[1]

    def _scope(self, scope: Any) -> bytes:
        kept = self._scopes.get(id(scope))
        if kept is None or kept[0] is not scope:
            parts = []
            if scope is not None:
                if scope.name:
                    parts.append(_field(0x0A, scope.name.encode()))
                if scope.version:
                    parts.append(_field(0x12, scope.version.encode()))
                parts.extend(self._attributes(0x1A, getattr(scope, "attributes", None)))
            kept = self._scopes[id(scope)] = (scope, _field(0x0A, b"".join(parts)))
        return kept[1]

    def span(self, span: ReadableSpan) -> bytes:
        """One Span message, its field tag and length included. What most spans share (an UNSET status, no events
        or links, a name seen before) costs a lookup; the properties ReadableSpan copies on each read are read
        once."""
        context = span.get_span_context()
        assert context is not None
        parent = span.parent
        out = bytearray(b"\x0a\x10")
        out += context.trace_id.to_bytes(16, "big")
        out += b"\x12\x08"
        out += context.span_id.to_bytes(8, "big")
        if context.trace_state:
            out += _field(0x1A, ",".join(f"{k}={v}" for k, v in context.trace_state.items()).encode())
        if parent is not None:
            out += b"\x22\x08"
            out += parent.span_id.to_bytes(8, "big")
        out += self._text(0x2A, span.name)
        out += _KINDS[span.kind]
        out += b"\x39"
        out += _Q(span.start_time or 0)
        out += b"\x41"
        out += _Q(span.end_time or 0)
        for encoded in self._attributes(0x4A, span.attributes):
            out += encoded
        if span.dropped_attributes:
            out += b"\x50" + _varint(span.dropped_attributes)
        for event in span.events:
            body = [b"\x09" + _Q(event.timestamp), _field(0x12, event.name.encode())]
            body.extend(self._attributes(0x1A, event.attributes))
            if event.dropped_attributes:
                body.append(b"\x20" + _varint(event.dropped_attributes))
            out += _field(0x5A, b"".join(body))
        if span.dropped_events:
            out += b"\x60" + _varint(span.dropped_events)
        for link in span.links:
            body = [
                b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big"),
                b"\x12\x08" + link.context.span_id.to_bytes(8, "big"),
            ]
            body.extend(self._attributes(0x22, link.attributes))
            if link.dropped_attributes:
                body.append(b"\x28" + _varint(link.dropped_attributes))
            body.append(b"\x35" + _I(_flags(link.context)))
            out += _field(0x6A, b"".join(body))
        if span.dropped_links:
            out += b"\x70" + _varint(span.dropped_links)
        status = span.status
        if status.description or status.status_code.value:
            body = []
            if status.description:
                body.append(_field(0x12, status.description.encode()))
            if status.status_code.value:
                body.append(b"\x18" + _varint(status.status_code.value))
            out += _field(0x7A, b"".join(body))
        else:
            out += b"\x7a\x00"
        out += _REMOTE_PARENT if parent is not None and parent.is_remote else _LOCAL_PARENT
        return _varint_tagged(0x12, out)

    def request(self, spans: Sequence[ReadableSpan]) -> bytes:
        """ExportTraceServiceRequest: the spans grouped by resource, then by instrumentation scope, in order."""
        grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope or None
            by_scope = grouped.setdefault(id(resource), (resource, {}))[1]
            by_scope.setdefault(id(scope), (scope, []))[1].append(self.span(span))
        out = []
        for resource, by_scope in grouped.values():
            body = [self._resource(resource)]
            for scope, encoded in by_scope.values():
                scope_spans = [self._scope(scope), *encoded]
                if scope is not None and scope.schema_url:
                    scope_spans.append(_field(0x1A, scope.schema_url.encode()))
                body.append(_field(0x12, b"".join(scope_spans)))
            if resource.schema_url:
                body.append(_field(0x1A, resource.schema_url.encode()))
            out.append(_field(0x0A, b"".join(body)))
        return b"".join(out)


def _flags(parent: SpanContext | None) -> int:
    flags = _FLAGS_HAS_IS_REMOTE
    if parent is not None and parent.is_remote:
        flags |= _FLAGS_IS_REMOTE
    return flags


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """The spans as the bytes of one OTLP ExportTraceServiceRequest (a fresh encoder: nothing kept)."""
    return _Encoder().request(spans)


class CompactSpanExporter(OTLPSpanExporter):
    """OpenTelemetry's OTLP/HTTP exporter (endpoint, headers, timeout, compression and retries from the standard
    variables) with the compact encoder. A batch it cannot encode (an attribute of a type OTLP has no value for)
    goes through OpenTelemetry's encoder instead, which drops that attribute and logs it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = _Encoder()
        self._fallback: Callable[[Sequence[ReadableSpan]], bytes] = lambda spans: encode_spans(
            spans
        ).SerializePartialToString()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            log.warning("span exporter already shut down: batch dropped")
            return SpanExportResult.FAILURE
        try:
            data = self._encoder.request(spans)
        except (TypeError, ValueError, AttributeError):
            data = self._fallback(spans)
        if len(data) > self._max_request_size:
            log.warning("span batch of %d bytes over the limit of %d: dropped", len(data), self._max_request_size)
            return SpanExportResult.FAILURE
        result = self._client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE


# --- OTLP over gRPC ----------------------------------------------------------------------------------------------

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# Codes OTLP says a client retries (https://opentelemetry.io/docs/specs/otlp/#failures); others drop the batch.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _setting(name: str, default: str = "") -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<name>, else OTEL_EXPORTER_OTLP_<name>."""
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}") or default
    )


def _headers(text: str) -> tuple[tuple[str, str], ...]:
    """`key=value,key2=value2` (values URL-encoded, the variables' format) as gRPC metadata."""
    pairs = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs.append((urllib.parse.unquote(key.strip()).lower(), urllib.parse.unquote(value.strip())))
    return tuple(pairs)


class CompactGrpcSpanExporter(SpanExporter):
    """OTLP over gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc) with the compact encoder: the request bytes go out as they
    are, on a channel of grpc's own. The standard variables: endpoint (default http://localhost:4317; http:// or
    OTEL_EXPORTER_OTLP_INSECURE=true for plaintext, otherwise TLS, OTEL_EXPORTER_OTLP_CERTIFICATE for a private
    CA), headers, timeout (seconds, default 10) and gzip compression. A retryable status is retried with backoff
    within the timeout; OTLP's partial success is logged."""

    def __init__(self, endpoint: str | None = None, *, timeout: float | None = None) -> None:
        target = endpoint or _setting("ENDPOINT", "http://localhost:4317")
        parsed = urllib.parse.urlsplit(target if "://" in target else f"//{target}")
        address = parsed.netloc or parsed.path
        insecure = parsed.scheme == "http" or (
            parsed.scheme == "" and _setting("INSECURE", "false").strip().lower() == "true"
        )
        if insecure:
            self._channel = grpc.insecure_channel(address)
        else:
            certificate = _setting("CERTIFICATE")
            roots = Path(certificate).read_bytes() if certificate else None
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots))
        self._timeout = timeout if timeout is not None else float(_setting("TIMEOUT", "10"))
        self._metadata = _headers(_setting("HEADERS"))
        self._compression = grpc.Compression.Gzip if _setting("COMPRESSION") == "gzip" else None
        self._export = self._channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=lambda data: data,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        self._encoder = _Encoder()
        self._shutdown = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown.is_set():
            log.warning("span exporter already shut down: batch dropped")
            return SpanExportResult.FAILURE
        try:
            data = self._encoder.request(spans)
        except (TypeError, ValueError, AttributeError):
            data = encode_spans(spans).SerializePartialToString()
        deadline = time.monotonic() + self._timeout
        backoff = 0.5
        while True:
            left = deadline - time.monotonic()
            try:
                answer = self._export(
                    data, timeout=max(left, 0.001), metadata=self._metadata, compression=self._compression
                )
            except grpc.RpcError as exc:
                code = exc.code()
                left = deadline - time.monotonic()
                if code not in _RETRYABLE or left <= backoff or self._shutdown.wait(backoff):
                    log.warning("span batch of %d not exported: %s", len(spans), code.name)
                    return SpanExportResult.FAILURE
                backoff *= 2
                continue
            rejected = answer.partial_success.rejected_spans
            if rejected:
                log.warning(
                    "collector rejected %d of %d spans: %s", rejected, len(spans), answer.partial_success.error_message
                )
            return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        self._shutdown.set()
        self._channel.close()
