"""Channels to sibling services: one per peer, retries for idempotent methods, deadlines always set."""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import grpc.experimental
from opentelemetry.instrumentation.grpc import client_interceptor as otel_client_interceptor
from opentelemetry.instrumentation.grpc import grpcext

from storeplane_runtime.deadlines import remaining

__all__ = ["DetailsInterceptor", "PeerChannels", "replaced", "service_config"]


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
                # OpenTelemetry's client interceptor is not a grpc.*ClientInterceptor: it needs its own wrapper.
                traced = grpcext.intercept_channel(raw, otel_client_interceptor())
                interceptors: list[Any] = [_DeadlineInterceptor(self._default_timeout)]
                if self._credentials is not None:
                    interceptors.append(self._credentials)
                self._channels[key] = grpc.intercept_channel(traced, *interceptors)
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
