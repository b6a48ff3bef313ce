"""Channels to sibling services: one per peer, retries for idempotent methods, deadlines always set."""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import grpc.experimental
from opentelemetry import propagate, trace

from storeplane_runtime.deadlines import remaining
from storeplane_runtime.telemetry import tracing_exported

__all__ = ["DetailsInterceptor", "PeerChannels", "TraceInterceptor", "replaced", "service_config"]

_tracer = trace.get_tracer("storeplane.grpc")


def service_config(service: str, idempotent_methods: Iterable[str], *, max_attempts: int = 4) -> str:
    """gRPC service config: retry UNAVAILABLE with exponential backoff, only for the named methods."""
    methods = [{"service": service, "method": m} for m in idempotent_methods]
    config: dict[str, Any] = {"methodConfig": []}
    if methods:
        config["methodConfig"].append(
            {
                "name": methods,
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    return json.dumps(config)


class DetailsInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """A client interceptor that changes only the details of each call (deadline, metadata): subclasses say how."""

    @abc.abstractmethod
    def details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        """The details the call goes out with."""

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self.details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self.details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self.details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self.details(details), requests)


def replaced(details: grpc.ClientCallDetails, **changes: Any) -> grpc.ClientCallDetails:
    """`details` with some fields changed (grpc's ClientCallDetails is read-only)."""
    fields = {
        "method": details.method,
        "timeout": details.timeout,
        "metadata": details.metadata,
        "credentials": details.credentials,
        "wait_for_ready": details.wait_for_ready,
        "compression": details.compression,
        **changes,
    }
    return _CallDetails(**fields)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self, key, value)


class _DeadlineInterceptor(DetailsInterceptor):
    """Every outgoing call gets a deadline: what is left of the call being served, or the default."""

    def __init__(self, default_timeout: float) -> None:
        self._default = default_timeout

    def details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if details.timeout is not None:
            return details
        return replaced(details, timeout=remaining(self._default))


class TraceInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Every outgoing call carries the trace context (W3C `traceparent`): when spans are exported, of the call's own
    CLIENT span (RPC semantic conventions, ended with the peer's status); otherwise of the call being served, so
    the peer's logs and events carry the same trace id. OpenTelemetry's client interceptor does the same at several
    times the cost per call."""

    def _start(self, details: grpc.ClientCallDetails) -> tuple[trace.Span | None, grpc.ClientCallDetails]:
        span = None
        context = None
        if tracing_exported():
            service, _, name = details.method.lstrip("/").partition("/")
            span = _tracer.start_span(
                details.method,
                kind=trace.SpanKind.CLIENT,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            )
            context = trace.set_span_in_context(span)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context)
        if not carrier:
            return span, details
        metadata = [(k, v) for k, v in details.metadata or () if k not in carrier]
        return span, replaced(details, metadata=[*metadata, *carrier.items()])

    @staticmethod
    def _finish(span: trace.Span | None, call: Any) -> Any:
        if span is not None:

            def done(outcome: Any) -> None:
                code = outcome.code()
                if isinstance(code, grpc.StatusCode):
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if code is not grpc.StatusCode.OK:
                        span.set_status(trace.StatusCode.ERROR, code.name)
                span.end()

            call.add_done_callback(done)
        return call

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        span, details = self._start(details)
        try:
            call = continuation(details, request)
        except BaseException:
            if span is not None:
                span.end()
            raise
        return self._finish(span, call)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return self._intercept(continuation, details, request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return self._intercept(continuation, details, request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return self._intercept(continuation, details, requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return self._intercept(continuation, details, requests)


class PeerChannels:
    """Holds one channel per peer address; close() them all on shutdown."""

    def __init__(
        self,
        *,
        default_timeout: float = 5.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        credentials: DetailsInterceptor | None = None,
    ) -> None:
        self._default_timeout = default_timeout
        # This service's own bearer token on every call to a peer (storeplane_runtime.auth.client.BearerToken).
        self._credentials = credentials
        self._max_message_bytes = max_message_bytes
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self._lock = threading.Lock()

    def _options(self, service_config_json: str) -> list[tuple[str, object]]:
        return [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config_json),
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.max_send_message_length", self._max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Fail fast while the peer is down instead of waiting out long reconnect backoffs.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]

    def channel(self, address: str, *, service: str = "", idempotent_methods: Sequence[str] = ()) -> grpc.Channel:
        """A traced channel whose calls always carry a deadline and retry the idempotent methods."""
        key = (address, service)
        with self._lock:
            if key not in self._channels:
                raw = grpc.insecure_channel(address, options=self._options(service_config(service, idempotent_methods)))
                interceptors: list[Any] = [TraceInterceptor(), _DeadlineInterceptor(self._default_timeout)]
                if self._credentials is not None:
                    interceptors.append(self._credentials)
                self._channels[key] = grpc.intercept_channel(raw, *interceptors)
            return self._channels[key]

    def raw_channel(self, address: str) -> grpc.Channel:
        """A bare channel for forwarding (the gateway sets deadlines itself and never retries)."""
        key = (address, "")
        with self._lock:
            if key not in self._channels:
                options = [
                    *self._options(service_config("", ())),
                    # Unary calls forwarded as unary-stream ones are then driven by the calling thread itself:
                    # as fast as a blocking call, yet cancellable (see gateway.proxy).
                    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
                ]
                self._channels[key] = grpc.insecure_channel(address, options=options)
            return self._channels[key]

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
