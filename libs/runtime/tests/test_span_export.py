"""The compact span encoder writes what OpenTelemetry's own encoder writes: both parsed back with the OTLP protobuf
classes are equal, for every kind of span the processes make (server, client, SQL, publish, process with a link,
errors with events, remote parents, trace state, every attribute value type, several resources and scopes). And
the exporter sends it over real HTTP to a receiver that parses it."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags, TraceState

from storeplane_runtime.span_export import (
    CACHE_ENTRIES,
    CompactGrpcSpanExporter,
    CompactSpanExporter,
    _Encoder,
    encode_request,
)
from storeplane_runtime.spans import LeanTracerProvider
from storeplane_runtime.testing import free_port


def _provider(service: str, exported: InMemorySpanExporter, lean: bool) -> TracerProvider | LeanTracerProvider:
    resource = Resource.create({"service.name": service, "host.cores": 2})
    provider = (
        LeanTracerProvider(resource, ParentBased(ALWAYS_ON), shutdown_on_exit=False)
        if lean
        else TracerProvider(resource=resource)
    )
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider


@pytest.fixture(params=["sdk", "lean"], autouse=True)
def _lean(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs on the SDK's spans and on the kit's lean ones (what the processes make)."""
    monkeypatch.setattr(sys.modules[__name__], "LEAN", request.param == "lean")


LEAN = False


def _spans() -> list[ReadableSpan]:
    exported = InMemorySpanExporter()
    checkout, stock = _provider("checkout", exported, LEAN), _provider("stock", exported, LEAN)
    rpc = checkout.get_tracer("storeplane.grpc")
    sql = checkout.get_tracer("storeplane.sql", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.26.0")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value"), ("other", "1")]),
    )
    with rpc.start_as_current_span(
        "/pos.checkout.v1.CheckoutService/ScanItem",
        context=trace.set_span_in_context(NonRecordingSpan(remote)),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.grpc.status_code": 0},
    ):
        for statement in ("SELECT 1 FROM baskets WHERE basket_id = %(k)s", "UPDATE baskets SET state = %(s)s"):
            sql.start_span(
                statement.split()[0], kind=trace.SpanKind.CLIENT, attributes={"db.query.text": statement}
            ).end()
        client = rpc.start_span("/pos.stock.v1.StockService/Reserve", kind=trace.SpanKind.CLIENT)
        client.set_attribute("rpc.grpc.status_code", 14)
        client.set_status(trace.StatusCode.ERROR, "UNAVAILABLE")
        client.record_exception(RuntimeError("peer down"), attributes={"retry": False})
        client.end()
        rpc.start_span(
            "every type",
            attributes={
                "text": "",
                "yes": True,
                "no": False,
                "zero": 0,
                "negative": -42,
                "large": 2**62,
                "ratio": 0.25,
                "texts": ["a", "b"],
                "numbers": [1, 2, 3],
                "flags": [True, False],
                "unicode": "Zürich — 東京",
            },
        ).end()
    messaging = stock.get_tracer("storeplane.messaging")
    publish = messaging.start_span("publish pos.events", kind=trace.SpanKind.PRODUCER)
    publish.end()
    producer = publish.get_span_context()
    messaging.start_span(
        "process pos.events",
        context=trace.set_span_in_context(NonRecordingSpan(producer)),
        kind=trace.SpanKind.CONSUMER,
        links=[Link(producer, {"messaging.operation": "publish"})],
        attributes={"messaging.message.id": "e-1"},
    ).end()
    stock.get_tracer("").start_span("no scope name").end()
    return list(exported.get_finished_spans())


def _parsed(data: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(data)


def test_the_bytes_mean_what_opentelemetrys_encoder_says() -> None:
    spans = _spans()
    ours = _parsed(encode_request(spans))
    theirs = encode_spans(spans)
    assert ours == theirs
    assert sum(len(s.spans) for r in ours.resource_spans for s in r.scope_spans) == len(spans)


def test_what_is_kept_between_batches_changes_nothing() -> None:
    encoder = _Encoder()
    spans = _spans()
    first = encoder.request(spans)
    assert encoder.request(spans) == first  # from the kept pieces
    again = _spans()  # other ids and times, the same names, attributes and scopes
    assert _parsed(encoder.request(again)) == encode_spans(again)


def test_a_full_cache_starts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("storeplane_runtime.span_export.CACHE_ENTRIES", 3)
    encoder = _Encoder()
    spans = _spans()
    assert _parsed(encoder.request(spans)) == encode_spans(spans)
    assert len(encoder._pairs) <= 3 < CACHE_ENTRIES


def test_an_attribute_otlp_cannot_carry_sends_the_batch_through_opentelemetrys_encoder(
    receiver: tuple[str, list[bytes]],
) -> None:
    endpoint, bodies = receiver
    spans = _spans()
    exporter = CompactSpanExporter(endpoint=endpoint)
    bad = spans[0]
    bad._attributes = {"too big": 2**70}  # type: ignore[attr-defined]  # an int64 cannot hold it
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert _parsed(bodies[-1]) == encode_spans(spans)  # OpenTelemetry's encoder drops the attribute and logs it


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP receiver on a real socket that keeps the bodies it got."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.headers["Content-Type"] == "application/x-protobuf"
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_the_exporter_posts_the_batch_and_refuses_after_shutdown(receiver: tuple[str, list[bytes]]) -> None:
    endpoint, bodies = receiver
    spans = _spans()
    exporter = CompactSpanExporter(endpoint=endpoint)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert _parsed(bodies[-1]) == encode_spans(spans)
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert len(bodies) == 1


SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class _Collector:
    """An OTLP/gRPC trace receiver on a real socket: keeps each request it parsed and the metadata it came with;
    answers the statuses in `refusals` first."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.refusals: list[grpc.StatusCode] = []
        self.rejected = 0

        def export(request: ExportTraceServiceRequest, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
            self.metadata.append(dict(context.invocation_metadata()))  # type: ignore[arg-type]
            if self.refusals:
                context.abort(self.refusals.pop(0), "not now")
            self.requests.append(request)
            answer = ExportTraceServiceResponse()
            if self.rejected:
                answer.partial_success.rejected_spans = self.rejected
            return answer

        handler = grpc.unary_unary_rpc_method_handler(
            export,
            request_deserializer=ExportTraceServiceRequest.FromString,
            response_serializer=ExportTraceServiceResponse.SerializeToString,
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}
                )
            ]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@pytest.fixture
def collector() -> Iterator[_Collector]:
    running = _Collector()
    try:
        yield running
    finally:
        running.server.stop(None)


def test_over_grpc_the_collector_gets_the_same_request_with_the_configured_headers(
    collector: _Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20abc,x-tenant=store-1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    spans = _spans()
    exporter = CompactGrpcSpanExporter(f"http://127.0.0.1:{collector.port}")
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    (request,) = collector.requests
    assert request == encode_spans(spans)
    assert collector.metadata[0]["authorization"] == "Bearer abc" and collector.metadata[0]["x-tenant"] == "store-1"
    assert exporter.export(spans) is SpanExportResult.FAILURE  # after shutdown
    assert len(collector.requests) == 1


def test_over_grpc_a_retryable_refusal_is_retried_and_a_final_one_drops_the_batch(
    collector: _Collector, caplog: pytest.LogCaptureFixture
) -> None:
    spans = _spans()
    tls = CompactGrpcSpanExporter(f"127.0.0.1:{collector.port}", timeout=1)  # no scheme: TLS unless INSECURE
    try:
        assert tls.export(spans) is SpanExportResult.FAILURE
    finally:
        tls.shutdown()
    assert collector.requests == []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        exporter = CompactGrpcSpanExporter(f"127.0.0.1:{collector.port}", timeout=5)
    try:
        collector.refusals = [grpc.StatusCode.UNAVAILABLE]
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert len(collector.requests) == 1 and len(collector.metadata) == 2
        collector.refusals = [grpc.StatusCode.INVALID_ARGUMENT]
        assert exporter.export(spans) is SpanExportResult.FAILURE  # not retryable
        assert len(collector.requests) == 1 and len(collector.metadata) == 3
        collector.rejected = 2
        with caplog.at_level(logging.WARNING, logger="storeplane_runtime.span_export"):
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert "rejected 2 of" in caplog.text
    finally:
        exporter.shutdown()


def test_over_grpc_a_collector_that_is_not_there_fails_the_batch_within_the_timeout() -> None:
    port = free_port()
    exporter = CompactGrpcSpanExporter(f"http://127.0.0.1:{port}", timeout=1.5)
    started = time.monotonic()
    try:
        assert exporter.export(_spans()) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert time.monotonic() - started < 5
