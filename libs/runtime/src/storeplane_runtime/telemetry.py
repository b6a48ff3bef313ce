"""OpenTelemetry tracing and Prometheus metrics shared by every process.

Tracing is configured by the standard OTEL_* variables: with OTEL_EXPORTER_OTLP_ENDPOINT set, spans go out
by OTLP/HTTP; without it no spans are recorded (trace ids still reach logs and messages). Sampling follows
OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default `parentbased_always_on`: a caller's sampled trace stays
sampled). When exporting, the hops of the kit make spans: gRPC server and client, SQL statements (`db`, `driver`),
the relay's `publish pos.events` and the consumers' `process pos.events`.
"""

from __future__ import annotations

import logging
import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, _get_from_env_or_default
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from storeplane_runtime.settings import SettingsError
from storeplane_runtime.spans import LeanTracerProvider

__all__ = [
    "BATCH_CALLS",
    "EVENTS_CONSUMED",
    "EVENTS_PARKED",
    "EVENTS_PUBLISHED",
    "EVENTS_RETRIED",
    "EVENTS_UNROUTABLE",
    "EVENT_LAG",
    "OUTBOX_BACKLOG",
    "OUTBOX_OLDEST_AGE",
    "ROWS_PRUNED",
    "RPC_HANDLED",
    "RPC_LATENCY",
    "configure_tracing",
    "serve_metrics",
    "statement_span",
    "tracing_exported",
]

# Messaging semantic conventions (https://opentelemetry.io/docs/specs/semconv/messaging/): the exchange every event
# goes to, as `messaging.destination.name`.
DESTINATION = "pos.events"

log = logging.getLogger(__name__)
_sql_tracer = trace.get_tracer("storeplane.sql")
_lock = threading.Lock()
_configured = False
_exporting = False
_metrics_ports: set[int] = set()

RPC_HANDLED = Counter(
    "storeplane_rpc_handled_total",
    "RPCs completed, by service, method and status code",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_LATENCY = Histogram(
    "storeplane_rpc_duration_seconds",
    "Server-side RPC latency",
    ["grpc_service", "grpc_method"],
    # 0.3: the ScanItem SLO's threshold (p99 <= 300 ms) is a bucket bound, so the SLO counts calls, not guesses.
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1, 2.5, 5, 10),
)
BATCH_CALLS = Histogram(
    "storeplane_batch_calls",
    "Calls done together in one shared transaction (group commit), by method",
    ["grpc_method"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
OUTBOX_BACKLOG = Gauge("storeplane_outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_OLDEST_AGE = Gauge("storeplane_outbox_oldest_age_seconds", "Age of the oldest unpublished row", ["service"])
EVENTS_PUBLISHED = Counter("storeplane_events_published_total", "Events published", ["service", "event_type"])
EVENTS_CONSUMED = Counter("storeplane_events_consumed_total", "Events handled", ["consumer", "event_type", "outcome"])
EVENTS_RETRIED = Counter(
    "storeplane_events_retried_total",
    "Events whose handler failed and that were sent to a retry",
    ["consumer", "event_type"],
)
EVENTS_PARKED = Counter(
    "storeplane_events_parked_total", "Events parked after their last attempt", ["consumer", "event_type"]
)
EVENTS_UNROUTABLE = Counter(
    "storeplane_events_unroutable_total", "Events the broker could route to no queue", ["service", "event_type"]
)
EVENT_LAG = Histogram(
    "storeplane_event_lag_seconds",
    "From the event's occurrence to its handler's commit",
    ["consumer", "event_type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ROWS_PRUNED = Counter(
    "storeplane_rows_pruned_total", "Rows deleted past their retention, by service and table", ["service", "table"]
)


def configure_tracing(service_name: str) -> None:
    """Install the tracer provider once per process. The exporter follows the standard variables:
    OTEL_TRACES_EXPORTER (otlp, console, none) and OTEL_EXPORTER_OTLP_ENDPOINT; with neither set, no span is
    recorded (trace ids still reach logs and messages). Exporting also turns on the SQL statement spans."""
    global _configured, _exporting
    with _lock:
        if _configured:
            return
        named = os.environ.get("OTEL_SERVICE_NAME") or _named_in_resource_attributes()
        resource = Resource.create({"service.name": named or service_name})
        exporters = {e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "").lower().split(",") if e.strip()}
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        otlp = "otlp" in exporters or bool(endpoint and not exporters)
        exporting = otlp or "console" in exporters
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
        ).strip()
        if otlp and protocol not in ("", "http/protobuf", "grpc"):
            # http/json is not spoken: sending protobuf where JSON is expected would lose every span silently.
            raise SettingsError(
                f"{service_name}: bad setting: OTEL_EXPORTER_OTLP_PROTOCOL={protocol} "
                "(http/protobuf, the default, or grpc)"
            )
        # With nowhere to send spans, do not record them: trace ids are still made and propagated (logs, events),
        # at a fraction of the cost per call. Spans are the kit's lean ones (spans.py), read by the SDK's processors
        # and exporters; the sampler is the SDK's, from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
        provider = LeanTracerProvider(
            resource, _get_from_env_or_default() if exporting else ALWAYS_OFF, named_by_service=not named
        )
        if otlp:  # OTLP/HTTP (OpenTelemetry's exporter) or gRPC, with an encoder a third of the cost (span_export.py)
            from storeplane_runtime.span_export import CompactGrpcSpanExporter, CompactSpanExporter

            exporter = CompactGrpcSpanExporter() if protocol == "grpc" else CompactSpanExporter()
            provider.add_span_processor(BatchSpanProcessor(exporter))
        if "console" in exporters:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
        _configured, _exporting = True, exporting
    if exporting:
        from storeplane_runtime.db import trace_statements

        trace_statements()


def _named_in_resource_attributes() -> str | None:
    """The service.name OTEL_RESOURCE_ATTRIBUTES sets, if it sets one."""
    for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "service.name" and value.strip():
            return value.strip()
    return None


def statement_span(statement: str, system: str, namespace: str | None) -> trace.Span | None:
    """A started CLIENT span for one SQL statement (database semantic conventions), or None outside a recorded
    span: a statement belongs to the call or event it serves (the relay's polls make no traces of their own).
    The text has placeholders, never values."""
    if not trace.get_current_span().is_recording():
        return None
    key = (statement, system, namespace)
    described = _statements.get(key)
    if described is None:
        described = _describe(statement, system, namespace)
        if len(_statements) >= STATEMENTS_KEPT:
            _statements.clear()
        _statements[key] = described
    return _sql_tracer.start_span(described[0], kind=trace.SpanKind.CLIENT, attributes=described[1])


# A service runs a few hundred distinct statements: each one's span name and attributes are worked out once.
STATEMENTS_KEPT = 4096
_statements: dict[tuple[str, str, str | None], tuple[str, dict[str, str]]] = {}


def _describe(statement: str, system: str, namespace: str | None) -> tuple[str, dict[str, str]]:
    operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
    attributes = {"db.system.name": system, "db.operation.name": operation, "db.query.text": statement[:2000]}
    if not namespace:
        return operation, attributes
    attributes["db.namespace"] = namespace
    return f"{operation} {namespace}", attributes


def tracing_exported() -> bool:
    """Whether spans go anywhere (decided by `configure_tracing`): hops may skip making their own otherwise."""
    return _exporting


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Expose Prometheus metrics over HTTP once per port (several services may share one process)."""
    if port <= 0:
        return
    with _lock:
        if port in _metrics_ports:
            return
        start_http_server(port, addr=host)
        _metrics_ports.add(port)
    log.info("metrics served", extra={"port": port})
