"""Spans of the kit when they are exported: SQL statements (SQLAlchemy's and those run straight on psycopg), the
relay's `publish pos.events` and the consumers' `process pos.events` (parent, link, attributes), the sampler from
the standard variables; and none of it when spans are not exported (the default)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from datetime import UTC, datetime

import grpc
import pytest
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from pos.checkout.v1 import events_pb2 as checkout_events
from pos.common.v1 import common_pb2
from storeplane_runtime import db, interceptors, telemetry
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.driver import driver_execute
from storeplane_runtime.errors import NotFound
from storeplane_runtime.interceptors import ServiceInterceptor
from storeplane_runtime.logs import JsonFormatter
from storeplane_runtime.messaging import consumers as consumers_module
from storeplane_runtime.messaging import relay as relay_module
from storeplane_runtime.messaging.consumers import Consumers, InboxApplier
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.messaging.inprocess import InProcessBus, InProcessConsumer, InProcessPublisher
from storeplane_runtime.messaging.relay import OK, OutboxRelay
from storeplane_runtime.status import ErrorMapper
from storeplane_runtime.tables import messaging_metadata


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans exported to memory: the kit's tracers on a provider of the test's own (the process's global provider
    is set once, by whichever test started a service first), and `tracing_exported()` true."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "_exporting", True)
    monkeypatch.setattr(telemetry, "_sql_tracer", provider.get_tracer("storeplane.sql"))
    monkeypatch.setattr(relay_module, "tracer", provider.get_tracer("storeplane.messaging"))
    monkeypatch.setattr(consumers_module, "tracer", provider.get_tracer("storeplane.messaging"))
    monkeypatch.setattr(interceptors, "_tracer", provider.get_tracer("storeplane.grpc"))
    db.trace_statements()
    try:
        yield exporter
    finally:
        db.untrace_statements()
        provider.shutdown()


@pytest.fixture
def caller(spans: InMemorySpanExporter) -> trace.Tracer:
    """A tracer for the test's own spans (a call being served), on the same provider as the kit's."""
    return consumers_module.tracer


def _database(url: str) -> Database:
    database = Database(url)
    messaging_metadata.create_all(database.engine)
    return database


def _sale(sale_id: str) -> checkout_events.SaleCompleted:
    return checkout_events.SaleCompleted(meta=common_pb2.EventMeta(store_id="berlin-mitte"), sale_id=sale_id)


def _named(exported: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in exported if s.name == name]


def test_statements_of_a_traced_call_are_client_spans_and_those_of_no_call_make_none(
    database_url: str, spans: InMemorySpanExporter, caller: trace.Tracer
) -> None:
    database = _database(database_url)
    try:
        with database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # outside any call: the relay's polls must not make traces
        assert spans.get_finished_spans() == ()
        with (
            caller.start_as_current_span("call", kind=trace.SpanKind.SERVER) as call,
            database.engine.connect() as conn,
        ):
            conn.execute(text("SELECT 2"))
        (statement,) = [s for s in spans.get_finished_spans() if s.name.startswith("SELECT")]
        assert statement.kind is trace.SpanKind.CLIENT
        assert statement.parent is not None and statement.parent.span_id == call.get_span_context().span_id
        attributes = dict(statement.attributes or {})
        assert attributes["db.system.name"] == database.engine.dialect.name
        assert attributes["db.operation.name"] == "SELECT"
        assert attributes["db.query.text"] == "SELECT 2"
    finally:
        database.dispose()


def test_a_statement_run_straight_on_psycopg_is_a_span_when_exported_and_costs_no_span_otherwise(
    postgres_url: str, spans: InMemorySpanExporter, caller: trace.Tracer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = _database(postgres_url)
    db.untrace_statements()  # only the driver's own span is looked at here
    try:
        with caller.start_as_current_span("call") as call, database.engine.connect() as conn:
            driver_execute(conn, "SELECT %(n)s AS n", {"n": 41}).fetchall()
            monkeypatch.setattr(telemetry, "_exporting", False)
            driver_execute(conn, "SELECT %(n)s AS m", {"n": 42}).fetchall()
        (statement,) = [s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.CLIENT]
        assert statement.parent is not None and statement.parent.span_id == call.get_span_context().span_id
        attributes = dict(statement.attributes or {})
        assert attributes["db.system.name"] == "postgresql"
        assert attributes["db.query.text"] == "SELECT %(n)s AS n"  # placeholders, never the values
        assert statement.name == f"SELECT {database.engine.url.database}"
    finally:
        database.dispose()


class _Recording:
    """A relay `Publisher` that keeps what it was given."""

    messaging_system = "rabbitmq"

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    def connect(self) -> None:
        return None

    def publish(self, envelopes: Sequence[Envelope]) -> list[str]:
        self.envelopes.extend(envelopes)
        return [OK] * len(envelopes)

    def idle(self, seconds: float, wake: threading.Event) -> None:
        wake.wait(seconds)

    def interrupt(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_the_relay_publishes_each_event_in_a_producer_span_child_of_the_call_that_wrote_it(
    database_url: str, spans: InMemorySpanExporter, caller: trace.Tracer
) -> None:
    database = _database(database_url)
    publisher = _Recording()
    try:
        with (
            caller.start_as_current_span("CompleteSale", kind=trace.SpanKind.SERVER) as call,
            UnitOfWork(database, source="checkout") as uow,
        ):
            first, second = uow.publish(_sale("S1")), uow.publish(_sale("S2"))
            uow.commit()
        assert OutboxRelay(database, publisher, service="checkout").relay_once() == 2

        published = _named(spans.get_finished_spans(), "publish pos.events")
        assert [s.attributes["messaging.message.id"] for s in published if s.attributes] == [first, second]
        for span, envelope in zip(published, publisher.envelopes, strict=True):
            assert span.kind is trace.SpanKind.PRODUCER
            assert span.parent is not None and span.parent.span_id == call.get_span_context().span_id
            assert span.context is not None and span.context.trace_id == call.get_span_context().trace_id
            attributes = dict(span.attributes or {})
            assert attributes["messaging.system"] == "rabbitmq"
            assert attributes["messaging.operation.name"] == "publish"
            assert attributes["messaging.destination.name"] == "pos.events"
            assert attributes["messaging.rabbitmq.destination.routing_key"] == "pos.checkout.v1.SaleCompleted"
            # The message carries the publish span's context: the consumers' spans become its children.
            carried = trace.get_current_span(propagate.extract(envelope.trace_headers)).get_span_context()
            assert carried.span_id == span.context.span_id
    finally:
        database.dispose()


def test_the_relay_leaves_the_trace_context_alone_when_spans_are_not_exported(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "_exporting", False)
    database = _database(sqlite_url)
    publisher = _Recording()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    try:
        with UnitOfWork(database, source="checkout") as uow:
            uow.trace_headers = {"traceparent": traceparent}
            uow.publish(_sale("S1"))
            uow.commit()
        OutboxRelay(database, publisher, service="checkout").relay_once()
        assert publisher.envelopes[0].trace_headers == {"traceparent": traceparent}
    finally:
        database.dispose()


def test_handling_an_event_is_a_consumer_span_child_of_and_linked_to_the_producer_with_one_log_line(
    database_url: str, spans: InMemorySpanExporter, caller: trace.Tracer, caplog: pytest.LogCaptureFixture
) -> None:
    database = _database(database_url)
    consumers = Consumers("stock")

    @consumers.handler(checkout_events.SaleCompleted)
    def on_sale(uow: UnitOfWork, event: checkout_events.SaleCompleted) -> None:
        logging.getLogger("test.handler").info("applying")

    lines = _JsonLines()
    logger = logging.getLogger("storeplane_runtime.messaging.consumers")
    logger.addHandler(lines)
    caplog.set_level(logging.DEBUG, logger=logger.name)
    try:
        with caller.start_as_current_span("publish pos.events", kind=trace.SpanKind.PRODUCER) as producer:
            headers: dict[str, str] = {}
            propagate.inject(headers)
        envelope = Envelope(
            "E1", "pos.checkout.v1.SaleCompleted", "checkout", _sale("S1").SerializeToString(), datetime.now(UTC)
        )
        envelope = Envelope(**{**envelope.__dict__, "trace_headers": headers})
        (outcome,) = InboxApplier(database, consumers).apply([envelope])
        assert outcome.status == "applied"
        (handled,) = _named(spans.get_finished_spans(), "process pos.events")
        produced = producer.get_span_context()
        assert handled.kind is trace.SpanKind.CONSUMER
        assert handled.parent is not None and handled.parent.span_id == produced.span_id
        assert [link.context.span_id for link in handled.links] == [produced.span_id]
        attributes = dict(handled.attributes or {})
        assert attributes["messaging.operation.name"] == "process"
        assert attributes["messaging.destination.name"] == "pos.events"
        assert attributes["messaging.message.id"] == "E1"
        assert attributes["messaging.consumer.group.name"] == "stock"
        (line,) = [line for line in lines.lines if line["message"] == "event handled"]
        assert line["trace_id"] == f"{produced.trace_id:032x}"
        assert handled.context is not None and line["span_id"] == f"{handled.context.span_id:016x}"
        assert line["event_id"] == "E1" and line["consumer"] == "stock"
        # The handler's own statements are children of the consumer span.
        statements = [s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.CLIENT]
        assert all(s.context and s.context.trace_id == produced.trace_id for s in statements)
    finally:
        logger.removeHandler(lines)
        database.dispose()


class _JsonLines(logging.Handler):
    """Keeps each record as the JSON line the process would write (formatted when logged: in its trace context)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


_PROBE = """
import json
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from storeplane_runtime import telemetry
telemetry.configure_tracing("probe")
tracer = trace.get_tracer("probe")
edge = SpanContext(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, is_remote=True, trace_flags=TraceFlags(1))
with tracer.start_as_current_span("child", context=trace.set_span_in_context(NonRecordingSpan(edge))) as child:
    continued = child.get_span_context().trace_flags.sampled
roots = [tracer.start_span("root").get_span_context().trace_flags.sampled for _ in range(200)]
print(json.dumps({"exported": telemetry.tracing_exported(), "continued": continued, "roots": sum(roots)}))
"""


def _probe(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def test_without_an_exporter_nothing_is_recorded_even_in_a_sampled_trace() -> None:
    result = json.loads(_probe().stdout)
    assert result == {"exported": False, "continued": False, "roots": 0}


def test_the_sampler_follows_the_standard_variables_and_keeps_a_sampled_callers_trace_sampled() -> None:
    # A ratio of 0 samples no new trace, yet the store edge's sampled one stays sampled (parent-based).
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }
    result = json.loads(_probe(**env).stdout.strip().splitlines()[-1])
    assert result == {"exported": True, "continued": True, "roots": 0}
    everything = json.loads(_probe(**{**env, "OTEL_TRACES_SAMPLER_ARG": "1"}).stdout.strip().splitlines()[-1])
    assert everything["roots"] == 200


def test_an_otlp_protocol_the_process_cannot_speak_stops_it_with_one_line() -> None:
    result = _probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318", OTEL_EXPORTER_OTLP_PROTOCOL="http/json")
    assert result.returncode != 0
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/json" in result.stderr.strip().splitlines()[-1]


def test_with_the_grpc_protocol_a_process_exports_its_spans_over_grpc() -> None:
    """The probe process, configured by the standard variables alone, sends its spans to a real OTLP/gRPC
    receiver (flushed as it exits)."""
    received: list[ExportTraceServiceRequest] = []

    def export(request: ExportTraceServiceRequest, _context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        received.append(request)
        return ExportTraceServiceResponse()

    handler = grpc.unary_unary_rpc_method_handler(
        export,
        request_deserializer=ExportTraceServiceRequest.FromString,
        response_serializer=ExportTraceServiceResponse.SerializeToString,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service = "opentelemetry.proto.collector.trace.v1.TraceService"
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {"Export": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = _probe(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
            OTEL_TRACES_SAMPLER_ARG="1",
        )
    finally:
        server.stop(None)
    assert result.returncode == 0, result.stderr
    spans = [s for request in received for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    assert [s.name for s in spans] == ["child"]  # the probe's root spans are never ended: not exported
    resources = [r.resource for request in received for r in request.resource_spans]
    assert {a.value.string_value for r in resources for a in r.attributes if a.key == "service.name"} == {"probe"}


class _Context:
    """What the service interceptor asks of a call's context."""

    def __init__(self, traceparent: str) -> None:
        self._metadata = (("traceparent", traceparent),)
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float:
        return 5.0

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def abort_with_status(self, status: grpc.Status) -> None:
        self._code = status.code
        raise Exception("aborted")  # as grpc's context does


def test_the_line_of_an_rpc_carries_the_callers_trace_id_when_spans_are_not_exported() -> None:
    lines = _JsonLines()
    logger = logging.getLogger("storeplane.rpc")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        interceptor = ServiceInterceptor(ErrorMapper(domain="test.storeplane"), 5.0, trace_context=True)
        handle = interceptor._wrap_unary(lambda request, context: request, "pos.test.v1.TestService", "Echo")
        assert handle("hello", _Context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")) == "hello"
    finally:
        logger.setLevel(level)
        logger.removeHandler(lines)
    (line,) = lines.lines
    assert line["message"] == "rpc" and line["grpc_method"] == "pos.test.v1.TestService/Echo"
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["span_id"] not in ("b7ad6b7169203331", "0" * 16)


def test_on_the_in_process_bus_the_handling_is_a_child_of_the_publish_of_the_call_that_wrote_the_event(
    sqlite_url: str, spans: InMemorySpanExporter, caller: trace.Tracer
) -> None:
    database = _database(sqlite_url)
    consumers = Consumers("loyalty")

    @consumers.handler(checkout_events.SaleCompleted)
    def on_sale(uow: UnitOfWork, event: checkout_events.SaleCompleted) -> None:
        return None

    bus = InProcessBus()
    consumer = InProcessConsumer(InboxApplier(database, consumers), bus=bus)
    consumer.start()
    try:
        with (
            caller.start_as_current_span("CompleteSale", kind=trace.SpanKind.SERVER) as call,
            UnitOfWork(database, source="checkout") as uow,
        ):
            event_id = uow.publish(_sale("S1"))
            uow.commit()
        # The in-process publisher waits until the consumer has settled the event.
        assert OutboxRelay(database, InProcessPublisher(bus), service="checkout").relay_once() == 1
    finally:
        consumer.stop()
        database.dispose()
    (published,) = _named(spans.get_finished_spans(), "publish pos.events")
    (handled,) = _named(spans.get_finished_spans(), "process pos.events")
    assert published.parent is not None and published.parent.span_id == call.get_span_context().span_id
    assert published.context is not None and handled.parent is not None
    assert handled.parent.span_id == published.context.span_id
    assert [link.context.span_id for link in handled.links] == [published.context.span_id]
    for span in (published, handled):
        attributes = dict(span.attributes or {})
        assert attributes["messaging.system"] == "storeplane_inprocess"
        assert attributes["messaging.message.id"] == event_id


def test_with_spans_exported_each_call_is_a_server_span_child_of_the_callers_with_its_status(
    spans: InMemorySpanExporter,
) -> None:
    """The service interceptor's own SERVER span: named by the method, a child of the caller's traceparent, current
    while the handler runs; its status is ERROR only for a fault of the server (INTERNAL), not for a refusal."""
    interceptor = ServiceInterceptor(ErrorMapper(domain="test.storeplane"), 5.0, spans=True)
    service = "pos.test.v1.TestService"
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def current(request: object, context: object) -> int:
        return trace.get_current_span().get_span_context().span_id

    def refuse(request: object, context: object) -> None:
        raise NotFound("no such thing")

    def fail(request: object, context: object) -> None:
        raise RuntimeError("bug")

    inner = interceptor._wrap_unary(current, service, "Echo")("x", _Context(caller))
    for handler, name in ((refuse, "Refuse"), (fail, "Fail")):
        with pytest.raises(Exception, match="aborted"):
            interceptor._wrap_unary(handler, service, name)("x", _Context(caller))
    echo, refused, failed = spans.get_finished_spans()
    assert echo.name == f"/{service}/Echo" and echo.kind is trace.SpanKind.SERVER
    assert echo.context.span_id == inner  # current while the handler ran
    assert echo.parent is not None and format(echo.parent.span_id, "016x") == "b7ad6b7169203331"
    assert format(echo.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert echo.attributes == {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": "Echo",
        "rpc.grpc.status_code": 0,
    }
    assert (
        refused.attributes is not None
        and refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    )
    assert refused.status.is_unset
    assert (
        failed.attributes is not None and failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    )
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert trace.get_current_span().get_span_context().span_id != inner  # detached after the call
