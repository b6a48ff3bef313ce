"""Routing core of the gateway: forwards every gRPC call, undecoded, to the backend that owns its service.

A :class:`Router` is a ``grpc.GenericRpcHandler`` for a sync ``grpc.server``. For a method path
``/pos.stock.v1.StockService/GetItem`` it picks the channel registered for ``pos.stock.v1.StockService``
and relays the call byte for byte (no serializer on either side), together with:

* the caller's metadata (minus pseudo-headers and transport keys gRPC sets itself), an
  ``x-forwarded-for`` entry naming the caller, and the trace context (forwarding.py);
* the caller's remaining deadline, or ``default_timeout`` when the caller sent none;
* the backend's initial and trailing metadata, and on failure its exact status code, details and
  trailers, ``grpc-status-details-bin`` (google.rpc.Status rich error details) included;
* cancellation: when the caller cancels or its deadline passes, the backend call is cancelled too.

Hot path: unary calls are issued as unary-stream calls (the same bytes on the wire). On a channel made by
:func:`backend_channel` (gRPC's ``SingleThreadedUnaryStream`` option) such a call is driven by the
handler thread itself, as fast as a blocking call, yet it is an object the caller's termination
callback can cancel. ``future()`` would go through the channel's spin thread: one more thread handoff,
measured at +0.2-0.6x a bare round trip on a 2-core box. Any other channel works too, just slower.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import grpc
import grpc.experimental
from google.protobuf import descriptor_pool

from gateway.forwarding import client_span, end_span, ending, forward_metadata, relayable
from storeplane_runtime.telemetry import RPC_HANDLED, RPC_LATENCY

__all__ = ["MethodKind", "Router", "backend_channel", "descriptor_method_kind", "split_method"]

log = logging.getLogger(__name__)
_rpc_log = logging.getLogger("storeplane.rpc")

# A caller without a deadline shows up with ~9.2e18 s remaining; anything past this counts as "none".
_NO_DEADLINE_ABOVE = 30 * 24 * 3600.0

# Messages grpc-core gives a call that never reached the backend (connect/resolve/transport failure).
_TRANSPORT_FAILURE_MARKERS = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "empty address list",
    "dns resolution failed",
    "connection refused",
    "socket closed",
    "connection reset",
    "broken pipe",
    "goaway received",
    "keepalive watchdog timeout",
)


class MethodKind(enum.Enum):
    """Cardinality of a gRPC method."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"


def split_method(method: str) -> tuple[str, str] | None:
    """``/pkg.Service/Method`` -> ``("pkg.Service", "Method")``; None when the path is malformed."""
    if not method.startswith("/"):
        return None
    service, sep, name = method[1:].partition("/")
    if not sep or not service or not name or "/" in name:
        return None
    return service, name


def descriptor_method_kind(method: str) -> MethodKind | None:
    """Kind of ``method`` per the default protobuf descriptor pool; None when the method is unknown.

    Only services whose generated ``*_pb2`` modules have been imported are in the pool, so the
    gateway's bootstrap must import the contracts of every routed service before serving.
    """
    parts = split_method(method)
    if parts is None:
        return None
    try:
        service = descriptor_pool.Default().FindServiceByName(parts[0])
    except KeyError:
        return None
    desc = service.methods_by_name.get(parts[1])
    if desc is None:
        return None
    if desc.client_streaming:
        return MethodKind.STREAM_STREAM if desc.server_streaming else MethodKind.STREAM_UNARY
    return MethodKind.UNARY_STREAM if desc.server_streaming else MethodKind.UNARY_UNARY


def backend_channel(target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """An insecure channel to a backend, set up for the Router's hot path (see the module docstring)."""
    return grpc.insecure_channel(
        target, options=[*options, (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]
    )


class _Observed:
    """Per-method call count (by status code) and latency: what the services' interceptor records for them."""

    def __init__(self, service: str, name: str) -> None:
        self._service, self._name = service, name
        self._latency = RPC_LATENCY.labels(service, name)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def done(self, started: float, code: grpc.StatusCode) -> None:
        elapsed = time.perf_counter() - started
        self._latency.observe(elapsed)
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = RPC_HANDLED.labels(self._service, self._name, code.name)
        counter.inc()
        if _rpc_log.isEnabledFor(logging.INFO):  # one line per call, as the services' interceptor writes
            _rpc_log.info(
                "rpc",
                extra={
                    "grpc_method": f"{self._service}/{self._name}",
                    "grpc_code": code.name,
                    "ms": round(elapsed * 1e3, 3),
                },
            )


def _code_of(error: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(error, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _timeout(context: grpc.ServicerContext, default_timeout: float) -> float:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_ABOVE:
        return default_timeout
    return remaining


def _bind_cancel(context: grpc.ServicerContext, call: grpc.RpcContext) -> None:
    """Cancel the upstream call when the caller's RPC ends (cancelled, deadline passed, or done)."""
    if not context.add_callback(call.cancel):
        call.cancel()  # the caller's RPC already terminated


def _send_initial(context: grpc.ServicerContext, call: grpc.Call) -> None:
    metadata = relayable(call.initial_metadata())
    if metadata:
        context.send_initial_metadata(metadata)


def _set_trailing(context: grpc.ServicerContext, call: grpc.Call) -> None:
    metadata = relayable(call.trailing_metadata())
    if metadata:
        context.set_trailing_metadata(metadata)


def _relay_error(context: grpc.ServicerContext, error: grpc.RpcError, service: str) -> NoReturn:
    """Answer the caller with the backend's status code, details and trailers (rich details included)."""
    code: grpc.StatusCode = getattr(error, "code", lambda: grpc.StatusCode.UNKNOWN)() or grpc.StatusCode.UNKNOWN
    details: str = getattr(error, "details", lambda: "")() or ""
    if code is grpc.StatusCode.UNAVAILABLE and any(m in details.lower() for m in _TRANSPORT_FAILURE_MARKERS):
        # The call never got an answer from the backend: say which backend, keep gRPC's reason.
        log.warning("backend for %s unreachable: %s", service, details)
        details = f"gateway: backend for {service} is unreachable: {details}"
    trailing = getattr(error, "trailing_metadata", None)
    if trailing is not None:
        metadata = relayable(trailing())
        if metadata:
            context.set_trailing_metadata(metadata)
    context.abort(code, details)


class Router(grpc.GenericRpcHandler):
    """Forwards each call to the backend channel registered for its service, payload untouched.

    ``routes`` maps a full service name (``pos.stock.v1.StockService``) to the channel of the backend
    serving it; ``method_kind`` tells the cardinality of a full method path (None: unknown method);
    ``default_timeout`` (seconds) is the deadline given to calls that came without one. Unknown services
    and methods get no handler, so gRPC answers UNIMPLEMENTED.
    """

    def __init__(
        self,
        routes: Mapping[str, grpc.Channel],
        method_kind: Callable[[str], MethodKind | None] = descriptor_method_kind,
        default_timeout: float = 10.0,
    ) -> None:
        if default_timeout <= 0:
            raise ValueError(f"default_timeout must be positive, got {default_timeout!r}")
        self._routes = dict(routes)
        self._method_kind = method_kind
        self._default_timeout = default_timeout
        # Handlers of known methods only: unknown paths are caller-controlled and must not grow memory.
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._build(method)
            if handler is not None:
                self._handlers[method] = handler
        return handler

    def _build(self, method: str) -> grpc.RpcMethodHandler | None:
        parts = split_method(method)
        if parts is None:
            return None
        channel = self._routes.get(parts[0])
        if channel is None:
            return None
        kind = self._method_kind(method)
        if kind is None:
            return None
        builder = {
            MethodKind.UNARY_UNARY: self._unary_unary,
            MethodKind.UNARY_STREAM: self._unary_stream,
            MethodKind.STREAM_UNARY: self._stream_unary,
            MethodKind.STREAM_STREAM: self._stream_stream,
        }[kind]
        return builder(channel, method, parts[0], _Observed(*parts))

    def _unary_unary(
        self, channel: grpc.Channel, method: str, service: str, observed: _Observed
    ) -> grpc.RpcMethodHandler:
        # Issued as unary-stream: identical on the wire, but on a channel from backend_channel() the call
        # is driven by this handler thread (no channel spin-thread handoff) and can still be cancelled.
        upstream = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
        default_timeout = self._default_timeout

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            started = time.perf_counter()
            span = client_span(method)
            code = grpc.StatusCode.OK
            try:
                call: Any = upstream(
                    request, timeout=_timeout(context, default_timeout), metadata=forward_metadata(context, span)
                )
                _bind_cancel(context, call)
                try:
                    response: bytes | None = next(call, None)
                    extra = next(call, None)  # the status: a unary backend ends after one message
                except grpc.RpcError as error:
                    code = _code_of(error)
                    _answer_failure(context, call, error, service, observed, started)
                if response is None or extra is not None:
                    call.cancel()
                    code = grpc.StatusCode.INTERNAL
                    observed.done(started, code)
                    context.abort(code, f"gateway: backend for {service} broke unary {method}")
                _answer_success(context, call, observed, started)
                return response
            finally:
                end_span(span, code)

        return grpc.unary_unary_rpc_method_handler(forward, request_deserializer=None, response_serializer=None)

    def _unary_stream(
        self, channel: grpc.Channel, method: str, service: str, observed: _Observed
    ) -> grpc.RpcMethodHandler:
        upstream = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
        default_timeout = self._default_timeout

        def forward(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            started = time.perf_counter()
            span = client_span(method)
            metadata = forward_metadata(context, span)
            call = upstream(request, timeout=_timeout(context, default_timeout), metadata=metadata)
            _bind_cancel(context, call)
            return ending(_relay_server_stream(context, call, service, observed, started), span, context)

        return grpc.unary_stream_rpc_method_handler(forward, request_deserializer=None, response_serializer=None)

    def _stream_unary(
        self, channel: grpc.Channel, method: str, service: str, observed: _Observed
    ) -> grpc.RpcMethodHandler:
        upstream = channel.stream_unary(method, request_serializer=None, response_deserializer=None)
        default_timeout = self._default_timeout

        def forward(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            # The caller's request iterator is handed on as is: gRPC reads it as the caller sends.
            started = time.perf_counter()
            span = client_span(method)
            code = grpc.StatusCode.OK
            try:
                call = upstream.future(
                    requests, timeout=_timeout(context, default_timeout), metadata=forward_metadata(context, span)
                )
                _bind_cancel(context, call)
                try:
                    response: bytes = call.result()
                except grpc.RpcError as error:
                    code = _code_of(error)
                    _answer_failure(context, call, error, service, observed, started)
                except grpc.FutureCancelledError:
                    code = grpc.StatusCode.CANCELLED
                    observed.done(started, code)
                    context.abort(code, "gateway: call cancelled")
                _answer_success(context, call, observed, started)
                return response
            finally:
                end_span(span, code)

        return grpc.stream_unary_rpc_method_handler(forward, request_deserializer=None, response_serializer=None)

    def _stream_stream(
        self, channel: grpc.Channel, method: str, service: str, observed: _Observed
    ) -> grpc.RpcMethodHandler:
        upstream = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        default_timeout = self._default_timeout

        def forward(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            started = time.perf_counter()
            span = client_span(method)
            metadata = forward_metadata(context, span)
            call = upstream(requests, timeout=_timeout(context, default_timeout), metadata=metadata)
            _bind_cancel(context, call)
            return ending(_relay_bidi(context, call, service, observed, started), span, context)

        return grpc.stream_stream_rpc_method_handler(forward, request_deserializer=None, response_serializer=None)


def _answer_failure(
    context: grpc.ServicerContext, call: Any, error: grpc.RpcError, service: str, observed: _Observed, started: float
) -> NoReturn:
    """A unary answer (unary or client-stream call) that failed at the backend: its headers, status and trailers."""
    observed.done(started, _code_of(error))
    _send_initial(context, call)
    _relay_error(context, error, service)


def _answer_success(context: grpc.ServicerContext, call: Any, observed: _Observed, started: float) -> None:
    """A unary answer the backend gave: its headers and trailers go with the response."""
    _send_initial(context, call)
    _set_trailing(context, call)
    observed.done(started, grpc.StatusCode.OK)


def _relay_server_stream(
    context: grpc.ServicerContext, call: Any, service: str, observed: _Observed, started: float
) -> Iterator[bytes]:
    """Yield the backend's messages as they come; its headers go out with the first message.

    On a backend_channel() the call is single-threaded and its ``initial_metadata()`` would block while
    holding the call's lock (stalling a concurrent cancel), so headers are read once a message (or the
    end of the stream) has arrived, when they are known to be there.
    """
    code = grpc.StatusCode.CANCELLED  # the caller went away mid-stream, unless the stream ends otherwise
    headers_sent = False
    try:
        try:
            for message in call:
                if not headers_sent:
                    _send_initial(context, call)
                    headers_sent = True
                yield message
        except grpc.RpcError as error:
            code = _code_of(error)
            if not headers_sent:
                _send_initial(context, call)
            _relay_error(context, error, service)
        if not headers_sent:
            _send_initial(context, call)
        _set_trailing(context, call)
        code = grpc.StatusCode.OK
    finally:
        observed.done(started, code)


def _relay_bidi(
    context: grpc.ServicerContext, call: Any, service: str, observed: _Observed, started: float
) -> Iterator[bytes]:
    """Yield the backend's messages as they come; its headers are relayed as soon as they arrive.

    Eagerly, because a bidi caller may wait for headers before sending its first message.
    """
    code = grpc.StatusCode.CANCELLED
    try:
        try:
            _send_initial(context, call)
            yield from call
        except grpc.RpcError as error:
            code = _code_of(error)
            _relay_error(context, error, service)
        _set_trailing(context, call)
        code = grpc.StatusCode.OK
    finally:
        observed.done(started, code)
