"""The server-side chain every process runs: deadline, metrics and logs, domain errors to statuses, trace context."""

from __future__ import annotations

import abc
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextvars import Token
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from storeplane_runtime.deadlines import reset_deadline, set_deadline
from storeplane_runtime.errors import DomainError
from storeplane_runtime.spans import current_service
from storeplane_runtime.status import ErrorMapper, build_status
from storeplane_runtime.telemetry import RPC_HANDLED, RPC_LATENCY

__all__ = ["HandlerWrapper", "ServerSpans", "ServiceInterceptor", "rewrapped"]

log = logging.getLogger("storeplane.rpc")
HEALTH_SERVICE = "grpc.health.v1.Health"


def _split(method: str) -> tuple[str, str]:
    _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", "", method)
    return service, name


_PROPAGATOR = TraceContextTextMapPropagator()


def _attach_trace_context(context: grpc.ServicerContext) -> Token[Context]:
    """The call's trace context, without a span SDK: the caller's trace id (W3C `traceparent`) or a new one, and a
    span id of this hop, unsampled. Logs and the events this call writes carry them; nothing is recorded."""
    trace_id = 0
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            parent = trace.get_current_span(_PROPAGATOR.extract({"traceparent": str(value)})).get_span_context()
            trace_id = parent.trace_id if parent.is_valid else 0
            break
    span = SpanContext(
        trace_id or random.getrandbits(128), random.getrandbits(64), is_remote=False, trace_flags=TraceFlags(0)
    )
    return otel_context.attach(trace.set_span_in_context(NonRecordingSpan(span)))


_tracer = trace.get_tracer("storeplane.grpc")
# Codes that are the server's failure (OpenTelemetry's RPC conventions): the span's status is ERROR for these only.
_SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})


def _start_server_span(context: grpc.ServicerContext, service: str, name: str, serving: str | None) -> _ServerSpan:
    """The call's SERVER span (RPC semantic conventions), a child of the caller's W3C trace context, made current,
    for the service `serving` (several may share a process: see spans.current_service). OpenTelemetry's own server
    interceptor does the same and more (peer addresses, a wrapped servicer context) at a cost per call the sale
    flow's tracing budget cannot afford."""
    serving_token = current_service.set(serving) if serving is not None else None
    carrier = {key: str(value) for key, value in context.invocation_metadata() or () if key in _TRACE_KEYS}
    parent = propagate.extract(carrier)
    span = _tracer.start_span(
        f"/{service}/{name}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    return span, otel_context.attach(trace.set_span_in_context(span, parent)), serving_token


_ServerSpan = tuple[trace.Span, Token[Context], Token[str | None] | None]


def _end_server_span(started: _ServerSpan, code: str) -> None:
    span, token, serving_token = started
    if span.is_recording():
        status = getattr(grpc.StatusCode, code, None)
        if status is not None:
            span.set_attribute("rpc.grpc.status_code", status.value[0])
        if code in _SERVER_FAULTS:
            span.set_status(trace.StatusCode.ERROR, code)
    span.end()
    otel_context.detach(token)
    if serving_token is not None:
        current_service.reset(serving_token)


_TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


class HandlerWrapper(grpc.ServerInterceptor):
    """A server interceptor that wraps each method's handler once (`wrap`) and hands out that wrapper on every call
    (grpc asks for the handler on every call; the wrapper is remade only if the handler is another)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @abc.abstractmethod
    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler calls of `method` get instead of `handler`."""

    def passes(self, method: str) -> bool:
        """Whether calls of `method` go through unwrapped (none, unless a subclass says so)."""
        return False

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or self.passes(method):
            return handler  # None: not served here, gRPC answers UNIMPLEMENTED
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        if len(self._wrapped) < 10_000:  # methods are known ones (a handler exists); the bound is belt and braces
            self._wrapped[method] = (handler, wrapped)
        return wrapped


def rewrapped(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Any], Callable[..., Any]],
    streaming: Callable[[Any], Callable[..., Any]],
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped: by `unary` when it answers one message, by `streaming` when it answers
    a stream; the same kind, serializers and deserializers."""
    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)


class ServiceInterceptor(HandlerWrapper):
    """Wraps each handler: applies a default deadline, records metrics and one log line, and turns
    exceptions into statuses — domain errors by the service's table, anything else INTERNAL without a
    traceback to the caller (never UNKNOWN).

    With `trace_context`, it also sets the call's trace context (see `_attach_trace_context`): what
    OpenTelemetry's server interceptor does with a sampler that records nothing, at a fraction of the cost
    per call. The host uses it when spans are not exported. With `spans` (when they are), it makes each call's
    SERVER span instead (`_start_server_span`), the sampler deciding whether it is recorded."""

    def __init__(
        self,
        mapper: ErrorMapper,
        default_deadline: float,
        *,
        trace_context: bool = False,
        spans: bool = False,
        serving: str | None = None,
    ) -> None:
        super().__init__()
        self._spans = spans
        self._serving = serving
        self._mapper = mapper
        self._default_deadline = default_deadline
        self._trace_context = trace_context

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, name = _split(method)
        return rewrapped(
            handler,
            lambda behaviour: self._wrap_unary(behaviour, service, name),
            lambda behaviour: self._wrap_stream(behaviour, service, name),
        )

    def _wrap_unary(self, behaviour: Callable[..., Any], service: str, name: str) -> Callable[..., Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            token = set_deadline(self._budget(context))
            trace_token = _attach_trace_context(context) if self._trace_context else None
            span = _start_server_span(context, service, name, self._serving) if self._spans else None
            try:
                return behaviour(request, context)
            except Exception as exc:
                self._abort(exc, context, service, name)
                raise  # unreachable: _abort always raises
            finally:
                code = self._record(context, service, name, started)  # in the call's trace context: its log line
                if span is not None:
                    _end_server_span(span, code)
                if trace_token is not None:
                    otel_context.detach(trace_token)
                reset_deadline(token)

        return handle

    def _wrap_stream(self, behaviour: Callable[..., Any], service: str, name: str) -> Callable[..., Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            token = set_deadline(self._budget(context))
            trace_token = _attach_trace_context(context) if self._trace_context else None
            span = _start_server_span(context, service, name, self._serving) if self._spans else None
            try:
                yield from behaviour(request, context)
            except Exception as exc:
                self._abort(exc, context, service, name)
            finally:
                code = self._record(context, service, name, started)  # in the call's trace context: its log line
                if span is not None:
                    _end_server_span(span, code)
                if trace_token is not None:
                    otel_context.detach(trace_token)
                reset_deadline(token)

        return handle

    def _budget(self, context: grpc.ServicerContext) -> float:
        left = context.time_remaining()
        if left is None or left > self._default_deadline * 100:
            return self._default_deadline
        return left

    def _abort(self, exc: Exception, context: grpc.ServicerContext, service: str, name: str) -> None:
        if _already_aborted(context):
            if isinstance(exc, NotImplementedError):  # generated base servicer: scaffolding, not a fault
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{service}/{name} is not implemented yet")
            raise exc
        code = self._mapper.code_for(exc) if isinstance(exc, DomainError) else None
        if isinstance(exc, DomainError) and code is not None:
            log.info(
                "rpc refused",
                extra={"grpc_method": f"{service}/{name}", "grpc_code": code.name, "reason": exc.reason},
            )
            context.abort_with_status(self._mapper.to_status(exc, code))
        log.exception("rpc failed", extra={"grpc_method": f"{service}/{name}"})
        context.abort_with_status(
            build_status(
                grpc.StatusCode.INTERNAL,
                "internal error; it has been logged",
                reason="INTERNAL",
                domain=self._mapper.domain,
            )
        )

    @staticmethod
    def _record(context: grpc.ServicerContext, service: str, name: str, started: float) -> str:
        """Count and time the call, log its line; returns its status code's name."""
        elapsed = time.perf_counter() - started
        code = _code_name(context)
        RPC_HANDLED.labels(service, name, code).inc()
        RPC_LATENCY.labels(service, name).observe(elapsed)
        # Health checks (the edge asks every second or two) are counted, not logged: they would drown the calls.
        if service != HEALTH_SERVICE and log.isEnabledFor(logging.INFO):
            log.info(
                "rpc", extra={"grpc_method": f"{service}/{name}", "grpc_code": code, "ms": round(elapsed * 1e3, 3)}
            )
        return code


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()  # type: ignore[attr-defined]
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


def _already_aborted(context: grpc.ServicerContext) -> bool:
    # context.abort() raises a bare Exception after setting the code; pass it through untouched.
    code = context.code()  # type: ignore[attr-defined]
    return code is not None and code != grpc.StatusCode.OK


class ServerSpans(HandlerWrapper):
    """A SERVER span per call (`_start_server_span`), for a server whose chain has no ServiceInterceptor (the
    gateway's) when spans are exported. The span ends with the status the handler set (OK when it set none).
    `serving`: the process's service name, for the spans the calls make (see spans.current_service)."""

    def __init__(self, serving: str | None = None) -> None:
        super().__init__()
        self._serving = serving

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, name = _split(method)

        def unary(behaviour: Any) -> Callable[..., Any]:
            def handle(request: Any, context: grpc.ServicerContext) -> Any:
                span = _start_server_span(context, service, name, self._serving)
                try:
                    return behaviour(request, context)
                except Exception:
                    if _code_name(context) == "OK":
                        context.set_code(grpc.StatusCode.UNKNOWN)  # what grpc answers for an escaped exception
                    raise
                finally:
                    _end_server_span(span, _code_name(context))

            return handle

        def streaming(behaviour: Any) -> Callable[..., Any]:
            def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                span = _start_server_span(context, service, name, self._serving)
                try:
                    yield from behaviour(request, context)
                finally:
                    _end_server_span(span, _code_name(context))

            return handle

        return rewrapped(handler, unary, streaming)
