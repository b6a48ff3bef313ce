"""A lean span implementation behind the OpenTelemetry API: what `configure_tracing` installs.

The OpenTelemetry SDK's `Tracer.start_span` and `Span` validate and copy every attribute through a bounded,
locked mapping, make a frozen copy of the span when it ends and ask the sampler about every child. With every sale
traced that was the largest cost left in each process (a sale makes 83 spans, 55 of them SQL statements). Here a
span is one object: it is the `ReadableSpan` the exporters read (the batch processor, the compact OTLP encoder and
the console exporter take it as it is), and a child of a local or remote parent follows the parent's sampled flag
without a call to the sampler when the sampler is parent-based (the only kind the OTEL_TRACES_SAMPLER variables
make with a parent's decision in it). Root spans, and any other sampler, go through the configured sampler.

Several services in one process (the embedded stack) each get their own `service.name`: the code serving a call
or running a service's worker sets `current_service` (the kit's server interceptors per call, `ServiceApp.start`
for the threads it starts), and a span takes the resource of the service it was made for.

Limits: at most 128 attributes, events and links per span (the SDK's defaults; past them, new ones are dropped and
counted). Attribute values are kept as given (None is dropped): the kit's hops set strings, numbers and booleans.
`tests: libs/runtime/tests/test_spans.py` checks it against the SDK's own spans.
"""

from __future__ import annotations

import atexit
import random
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from time import time_ns
from types import TracebackType

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager

__all__ = ["LeanSpan", "LeanTracer", "LeanTracerProvider", "current_service"]

LIMIT = 128
# The service the running code serves, where one process runs several (None: the process's own).
current_service: ContextVar[str | None] = ContextVar("storeplane_current_service", default=None)
# Flags of a span the sampler decided on: (sampled, trace id random) -> W3C trace flags.
_FLAGS = {
    (sampled, random_id): TraceFlags(
        (TraceFlags.SAMPLED if sampled else 0) | (TraceFlags.RANDOM_TRACE_ID if random_id else 0)
    )
    for sampled in (False, True)
    for random_id in (False, True)
}
_INVALID_TRACE_ID = trace.INVALID_TRACE_ID
_INVALID_SPAN_ID = trace.INVALID_SPAN_ID
_getrandbits = random.getrandbits


def _span_id() -> int:
    span_id = _getrandbits(64)
    while span_id == _INVALID_SPAN_ID:
        span_id = _getrandbits(64)
    return span_id


def _trace_id() -> int:
    trace_id = _getrandbits(128)
    while trace_id == _INVALID_TRACE_ID:
        trace_id = _getrandbits(128)
    return trace_id


class LeanSpan(trace.Span, ReadableSpan):
    """A recording span. Until `end` it takes attributes, events, links, a status and a new name; at `end` it is
    handed, as it is, to each span processor (nothing changes it afterwards)."""

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, types.AttributeValue],
        links: Sequence[Link],
        start_time: int,
        tracer: LeanTracer,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> None:
        # ReadableSpan's fields, set directly (its constructor would wrap them again).
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = None
        self._instrumentation_scope = tracer.scope
        self._parent = parent
        self._start_time = start_time
        self._end_time: int | None = None
        # The same collections under names of their own: ReadableSpan declares its fields read-only.
        self._kept_attributes = self._attributes = attributes
        self._kept_events: list[Event] = []
        self._events = self._kept_events
        self._kept_links: list[Link] = list(links[:LIMIT]) if links else []
        self._links = self._kept_links
        self._span_context = context
        self._resource = tracer.provider.resource_for(current_service.get())
        self._status = Status(StatusCode.UNSET)
        self._provider = tracer.provider
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        self._dropped = [0, 0, max(len(links) - LIMIT, 0) if links else 0]  # attributes, events, links

    # --- what exporters read beyond ReadableSpan's own properties -------------------------------------------------

    @property
    def dropped_attributes(self) -> int:
        return self._dropped[0]

    @property
    def dropped_events(self) -> int:
        return self._dropped[1]

    @property
    def dropped_links(self) -> int:
        return self._dropped[2]

    # --- the API ----------------------------------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._span_context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end_time is not None or value is None:
            return
        attributes = self._kept_attributes
        if key not in attributes and len(attributes) >= LIMIT:
            self._dropped[0] += 1
            return
        attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is not None:
            return
        if len(self._kept_events) >= LIMIT:
            self._dropped[1] += 1
            return
        kept = {k: v for k, v in attributes.items() if v is not None} if attributes else None
        self._kept_events.append(Event(name, kept, timestamp if timestamp is not None else time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end_time is not None or not context.is_valid:
            return
        if len(self._kept_links) >= LIMIT:
            self._dropped[2] += 1
            return
        self._kept_links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, and UNSET changes nothing.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module, qualname = type(exception).__module__, type(exception).__qualname__
        recorded: dict[str, types.AttributeValue] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time_ns()
        for processor in self._provider.processors:  # none after the provider shut down
            processor.on_end(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_val is not None and self._end_time is None:
            if self._record_exception:
                self.record_exception(exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()


class LeanTracer(trace.Tracer):
    """Makes `LeanSpan`s for one instrumentation scope."""

    def __init__(self, provider: LeanTracerProvider, scope: InstrumentationScope) -> None:
        self.provider = provider
        self.scope = scope

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        provider = self.provider
        trace_state: TraceState | None
        if parent is not None and parent.is_valid and provider.follows_parent:
            # The parent's decision, its trace state and its flags (sampled, random trace id) carry over.
            trace_id, flags, trace_state = parent.trace_id, parent.trace_flags, parent.trace_state
            sampled = flags.sampled
        else:
            if parent is not None and parent.is_valid:
                trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
            else:
                parent, trace_id, random_id = None, _trace_id(), True
            result = provider.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            # The sampler's attributes are the span's (the SDK's samplers return those they were given).
            sampled, trace_state, attributes = result.decision.is_sampled(), result.trace_state, result.attributes
            flags = _FLAGS[sampled, random_id]
        span_context = SpanContext(trace_id, _span_id(), is_remote=False, trace_flags=flags, trace_state=trace_state)
        if not sampled or not provider.processors:
            return NonRecordingSpan(span_context)
        kept: dict[str, types.AttributeValue] = (
            {k: v for k, v in attributes.items() if v is not None} if attributes else {}
        )
        if len(kept) > LIMIT:
            kept = dict(list(kept.items())[:LIMIT])
        span = LeanSpan(
            name,
            span_context,
            parent,
            kind,
            kept,
            links or (),
            start_time if start_time is not None else time_ns(),
            self,
            record_exception,
            set_status_on_exception,
        )
        for processor in provider.processors:
            processor.on_start(span, context)  # type: ignore[arg-type]  # the SDK's processors take any ReadableSpan
        return span

    @_agnosticcontextmanager
    def start_as_current_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class LeanTracerProvider(trace.TracerProvider):
    """A tracer provider of `LeanTracer`s: one resource, one sampler, span processors as the SDK's (the batch
    processor with an OTLP exporter, the simple one with the console exporter). Shut down at exit, which flushes
    the batch processor's last spans."""

    def __init__(
        self, resource: Resource, sampler: Sampler, *, shutdown_on_exit: bool = True, named_by_service: bool = True
    ) -> None:
        self.resource = resource
        # Resources of the other services this process runs (`current_service`), made on first use; none when the
        # service name is fixed (OTEL_SERVICE_NAME).
        self._named_by_service = named_by_service
        self._service = resource.attributes.get("service.name")
        self._resources: dict[str, Resource] = {}
        self.sampler = sampler
        # A parent-based sampler made from the standard variables keeps the parent's decision, local or remote.
        self.follows_parent = isinstance(sampler, ParentBased)
        self.processors: tuple[SpanProcessor, ...] = ()
        self._lock = threading.Lock()
        self._tracers: dict[tuple[str, str | None, str | None], LeanTracer] = {}
        if shutdown_on_exit:
            atexit.register(self.shutdown)

    def resource_for(self, service: str | None) -> Resource:
        """The resource of spans made for `service`: the process's own, with that service's name."""
        if service is None or service == self._service or not self._named_by_service:
            return self.resource
        resource = self._resources.get(service)
        if resource is None:
            with self._lock:
                resource = self._resources.get(service)
                if resource is None:
                    resource = self.resource.merge(Resource({"service.name": service}))
                    self._resources[service] = resource
        return resource

    def add_span_processor(self, processor: SpanProcessor) -> None:
        with self._lock:
            self.processors = (*self.processors, processor)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace.Tracer:
        key = (instrumenting_module_name, instrumenting_library_version, schema_url)
        with self._lock:
            tracer = self._tracers.get(key) if attributes is None else None
            if tracer is None:
                scope = InstrumentationScope(  # as the SDK's: no version or schema is an empty one
                    instrumenting_module_name, instrumenting_library_version or "", schema_url or "", attributes
                )
                tracer = LeanTracer(self, scope)
                if attributes is None:
                    self._tracers[key] = tracer
        return tracer

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(processor.force_flush(timeout_millis) for processor in self.processors)

    def shutdown(self) -> None:
        with self._lock:
            processors, self.processors = self.processors, ()
        for processor in processors:
            processor.shutdown()
