"""The kit's lean spans (spans.py) record what the OpenTelemetry SDK's spans record, for the same calls: names,
kinds, parents, attributes, events, links, statuses, resource and scope; and they sample as the SDK does (a child
follows a parent-based sampler's parent, local or remote; a root span asks the sampler)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags, TraceState

from storeplane_runtime.spans import LIMIT, LeanSpan, LeanTracerProvider, current_service

RESOURCE = Resource.create({"service.name": "checkout"})
EDGE = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True, trace_flags=TraceFlags(1))


def _lean(sampler: Sampler = ParentBased(ALWAYS_ON)) -> tuple[LeanTracerProvider, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = LeanTracerProvider(RESOURCE, sampler, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider, exported


def _sdk(sampler: Sampler = ParentBased(ALWAYS_ON)) -> tuple[TracerProvider, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE, sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider, exported


def _scenario(provider: Any) -> None:
    """What the kit's hops do with spans: a SERVER span under a remote parent, made current; SQL CLIENT spans; a
    failing CLIENT call; a PRODUCER and a CONSUMER linked to it; an exception escaping a current span."""
    rpc = provider.get_tracer("storeplane.grpc")
    sql = provider.get_tracer("storeplane.sql", "1.0", schema_url="https://opentelemetry.io/schemas/1.26.0")
    with rpc.start_as_current_span(
        "/pos.checkout.v1.CheckoutService/ScanItem",
        context=trace.set_span_in_context(NonRecordingSpan(EDGE)),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.method": "ScanItem"},
    ) as server:
        statement = {"db.system.name": "postgresql", "db.query.text": "SELECT 1"}
        sql.start_span("SELECT checkout", kind=trace.SpanKind.CLIENT, attributes=statement).end()
        statement["db.query.text"] = "changed after the span started"  # the span keeps its own copy
        client = rpc.start_span("/pos.stock.v1.StockService/Reserve", kind=trace.SpanKind.CLIENT)
        client.set_attributes({"rpc.grpc.status_code": 14, "server.port": 50051})
        client.set_status(trace.StatusCode.ERROR, "UNAVAILABLE")
        client.record_exception(RuntimeError("peer down"), attributes={"retry": False})
        client.update_name("/pos.stock.v1.StockService/Reserve again")
        client.end()
        server.set_attribute("rpc.grpc.status_code", 0)
        server.set_status(trace.StatusCode.OK)
        server.set_status(trace.StatusCode.ERROR, "ignored: OK is final")
    messaging = provider.get_tracer("storeplane.messaging")
    publish = messaging.start_span("publish pos.events", kind=trace.SpanKind.PRODUCER)
    publish.end()
    produced = publish.get_span_context()
    consumer = messaging.start_span(
        "process pos.events",
        context=trace.set_span_in_context(NonRecordingSpan(produced)),
        kind=trace.SpanKind.CONSUMER,
        links=[Link(produced, {"messaging.operation.type": "publish"})],
    )
    consumer.add_event("retried", {"attempt": 2}, timestamp=1_700_000_000_000_000_000)
    consumer.end()
    with pytest.raises(ValueError), messaging.start_as_current_span("handler"):
        raise ValueError("bad event")


def _meaning(span: ReadableSpan, ids: dict[int, int]) -> dict[str, Any]:
    """A finished span without its random ids and times (ids renumbered in order of appearance)."""

    def number(span_id: int | None) -> int | None:
        return None if span_id is None else ids.setdefault(span_id, len(ids))

    context, parent = span.get_span_context(), span.parent
    assert context is not None and span.start_time and span.end_time and span.end_time >= span.start_time
    return {
        "name": span.name,
        "kind": span.kind,
        "span": number(context.span_id),
        "edge trace": context.trace_id == EDGE.trace_id,
        "flags": int(context.trace_flags),
        "parent": None if parent is None else (number(parent.span_id), parent.is_remote),
        "attributes": dict(span.attributes or {}),
        "events": [
            (e.name, {k: v for k, v in (e.attributes or {}).items() if k != "exception.stacktrace"})
            for e in span.events
        ],
        "stacktraces": ["Traceback" in str((e.attributes or {}).get("exception.stacktrace", "")) for e in span.events],
        "links": [(number(link.context.span_id), dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "resource": dict(span.resource.attributes),
        "scope": span.instrumentation_scope,
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
    }


def test_lean_spans_record_what_the_sdks_record() -> None:
    lean, lean_spans = _lean()
    sdk, sdk_spans = _sdk()
    _scenario(lean)
    _scenario(sdk)
    ours, theirs = lean_spans.get_finished_spans(), sdk_spans.get_finished_spans()
    assert all(isinstance(span, LeanSpan) for span in ours)
    assert [_meaning(s, {}) for s in ours] == [_meaning(s, {}) for s in theirs]
    assert len(ours) == 6


def test_an_attribute_without_a_value_is_not_kept() -> None:
    provider, exported = _lean()
    span = provider.get_tracer("t").start_span("none", attributes={"kept": 1, "none": None})
    span.set_attribute("also none", None)  # type: ignore[arg-type]
    span.end()
    (finished,) = exported.get_finished_spans()
    assert dict(finished.attributes or {}) == {"kept": 1}


def test_a_finished_span_changes_no_more_and_is_exported_once() -> None:
    provider, exported = _lean()
    span = provider.get_tracer("t").start_span("once", attributes={"a": 1})
    span.end()
    span.set_attribute("a", 2)
    span.add_event("late")
    span.set_status(trace.StatusCode.ERROR)
    span.update_name("renamed")
    span.end()
    (finished,) = exported.get_finished_spans()
    assert not span.is_recording()
    assert (finished.name, dict(finished.attributes or {}), finished.events) == ("once", {"a": 1}, ())
    assert finished.status.status_code is trace.StatusCode.UNSET


def test_past_the_limits_new_attributes_events_and_links_are_dropped_and_counted() -> None:
    provider, exported = _lean()
    links = [Link(SpanContext(1, n + 1, is_remote=True)) for n in range(LIMIT + 3)]
    span = provider.get_tracer("t").start_span("full", attributes={f"a{n}": n for n in range(LIMIT + 5)}, links=links)
    span.set_attribute("a0", "replaced")  # a key it has: kept
    span.set_attribute("one more", 1)
    for n in range(LIMIT + 2):
        span.add_event(f"e{n}")
    span.end()
    (finished,) = exported.get_finished_spans()
    assert len(finished.attributes or {}) == LIMIT and (finished.attributes or {})["a0"] == "replaced"
    assert (len(finished.events), len(finished.links)) == (LIMIT, LIMIT)
    assert (finished.dropped_attributes, finished.dropped_events, finished.dropped_links) == (1, 2, 3)


def _sampled_roots(provider: Any, count: int = 400) -> int:
    tracer = provider.get_tracer("t")
    return sum(tracer.start_span("root").get_span_context().trace_flags.sampled for _ in range(count))


@pytest.mark.parametrize(
    ("sampler", "edge_sampled", "child_sampled"),
    [
        (ParentBasedTraceIdRatio(0.0), True, True),  # the store edge's sampled trace stays sampled
        (ParentBasedTraceIdRatio(1.0), False, False),  # and its unsampled one unsampled
        (ParentBased(ALWAYS_OFF), True, True),
        (TraceIdRatioBased(0.0), True, False),  # not parent-based: the sampler decides, whatever the parent
        (ALWAYS_ON, False, True),
    ],
)
def test_children_are_sampled_as_the_sdk_samples_them(
    sampler: Sampler, edge_sampled: bool, child_sampled: bool
) -> None:
    edge = SpanContext(EDGE.trace_id, EDGE.span_id, is_remote=True, trace_flags=TraceFlags(int(edge_sampled)))
    parent = trace.set_span_in_context(NonRecordingSpan(edge))
    for provider, exported in (_lean(sampler), _sdk(sampler)):
        tracer = provider.get_tracer("t")
        child = tracer.start_span("child", context=parent)
        assert child.get_span_context().trace_flags.sampled is child_sampled
        assert child.get_span_context().trace_id == EDGE.trace_id
        assert child.is_recording() is child_sampled
        with trace.use_span(child, end_on_exit=True):
            grandchild = tracer.start_span("grandchild")  # a local parent: the same decision
            assert grandchild.get_span_context().trace_flags.sampled is child_sampled
            grandchild.end()
        assert len(exported.get_finished_spans()) == (2 if child_sampled else 0)


def test_root_spans_ask_the_sampler() -> None:
    assert _sampled_roots(_lean(ParentBasedTraceIdRatio(0.0))[0]) == 0
    assert _sampled_roots(_lean(ParentBasedTraceIdRatio(1.0))[0]) == 400
    assert 100 < _sampled_roots(_lean(ParentBasedTraceIdRatio(0.5))[0]) < 300
    assert _sampled_roots(_lean(ALWAYS_OFF)[0]) == 0


def test_the_trace_context_goes_on_with_the_parents_trace_state_and_flags() -> None:
    provider, _ = _lean()
    state = TraceState([("vendor", "value")])
    edge = SpanContext(EDGE.trace_id, EDGE.span_id, is_remote=True, trace_flags=TraceFlags(1), trace_state=state)
    span = provider.get_tracer("t").start_span("child", context=trace.set_span_in_context(NonRecordingSpan(edge)))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        carrier: dict[str, str] = {}
        inject(carrier)
    finally:
        otel_context.detach(token)
    span_id = f"{span.get_span_context().span_id:016x}"
    assert carrier["traceparent"] == f"00-{EDGE.trace_id:032x}-{span_id}-01"
    assert carrier["tracestate"] == "vendor=value"


def test_a_tracer_per_scope_and_shutdown_flushes_every_processor() -> None:
    provider, exported = _lean()
    assert provider.get_tracer("a") is provider.get_tracer("a")
    assert provider.get_tracer("a") is not provider.get_tracer("a", "2.0")
    open_span = provider.get_tracer("a").start_span("x")
    assert provider.force_flush()
    provider.shutdown()
    open_span.end()  # ended after shutdown: nowhere to go, no error
    assert exported.get_finished_spans() == ()
    assert not provider.get_tracer("a").start_span("after").is_recording()


def test_spans_made_for_another_service_of_the_process_carry_its_name() -> None:
    provider, exported = _lean()  # the process is checkout (RESOURCE)
    tracer = provider.get_tracer("t")
    tracer.start_span("own").end()
    token = current_service.set("stock")  # what the kit's interceptors and ServiceApp.start set
    try:
        tracer.start_span("stock's").end()
    finally:
        current_service.reset(token)
    fixed = LeanTracerProvider(RESOURCE, ParentBased(ALWAYS_ON), shutdown_on_exit=False, named_by_service=False)
    fixed.add_span_processor(SimpleSpanProcessor(exported))
    token = current_service.set("stock")
    try:
        fixed.get_tracer("t").start_span("named by OTEL_SERVICE_NAME").end()
    finally:
        current_service.reset(token)
    names = {span.name: span.resource.attributes["service.name"] for span in exported.get_finished_spans()}
    assert names == {"own": "checkout", "stock's": "stock", "named by OTEL_SERVICE_NAME": "checkout"}
    stock = next(s for s in exported.get_finished_spans() if s.name == "stock's").resource
    assert stock.attributes["telemetry.sdk.language"] == "python"  # the rest of the process's resource
    assert provider.resource_for("stock") is stock  # made once
