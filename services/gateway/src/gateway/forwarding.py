"""What a call the gateway forwards carries to the backend: the caller's metadata that may be relayed, the caller
appended to ``x-forwarded-for``, and the trace context — of the gateway's CLIENT span of the call when spans are
exported (the backend's SERVER span is its child)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from opentelemetry import propagate, trace

from storeplane_runtime.telemetry import tracing_exported

Metadata = tuple[tuple[str, str | bytes], ...]

_tracer = trace.get_tracer("storeplane.gateway")

# Keys gRPC/HTTP2 own or refuse: set by the transport itself, hop-by-hop, or illegal in HTTP/2.
_TRANSPORT_KEYS = frozenset(
    {
        "user-agent",
        "te",
        "content-type",
        "content-length",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "accept-encoding",
        "content-encoding",
        "x-forwarded-for",  # rebuilt by the gateway, see _forward_metadata
    }
)
# The only ``grpc-*`` keys an application may legitimately relay: tracing context and rich error details.
_RELAYABLE_GRPC_KEYS = frozenset({"grpc-trace-bin", "grpc-tags-bin", "grpc-status-details-bin"})


def relayable(metadata: Any) -> Metadata:
    """Metadata entries the gateway may set on the next hop (pseudo-headers and transport keys dropped)."""
    if not metadata:
        return ()
    return tuple(
        (key, value)
        for key, value in metadata
        if key
        and key[0] != ":"
        and key not in _TRANSPORT_KEYS
        and (not key.startswith("grpc-") or key in _RELAYABLE_GRPC_KEYS)
    )


def peer_address(peer: str) -> str:
    """``ipv4:10.0.0.7:5123`` -> ``10.0.0.7``; ``ipv6:%5B::1%5D:5123`` -> ``::1``; anything else as is."""
    scheme, sep, rest = peer.partition(":")
    if not sep:
        return peer
    if scheme == "ipv4":
        return rest.rpartition(":")[0] or rest
    if scheme == "ipv6":
        host = rest.replace("%5B", "[").replace("%5D", "]")
        if host.startswith("["):
            return host[1 : host.find("]")] if "]" in host else host[1:]
        return host
    return peer


def client_span(method: str) -> trace.Span | None:
    """When spans are exported: the gateway's CLIENT span of the backend call (a child of its SERVER span, the parent
    of the backend's), named like every gRPC span here (`/pkg.Service/Method`). None otherwise."""
    if not tracing_exported():
        return None
    service, _, name = method.lstrip("/").partition("/")
    return _tracer.start_span(
        method,
        kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )


def end_span(span: trace.Span | None, code: grpc.StatusCode) -> None:
    if span is not None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(trace.StatusCode.ERROR, code.name)
        span.end()


def ending(messages: Iterator[bytes], span: trace.Span | None, context: grpc.ServicerContext) -> Iterator[bytes]:
    """A relayed response stream that ends the call's CLIENT span when it ends, with the status the caller got."""
    if span is None:
        return messages

    def relay() -> Iterator[bytes]:
        try:
            yield from messages
        finally:
            code = context.code()  # type: ignore[attr-defined]  # set when the relay aborted the call
            end_span(span, code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK)

    return relay()


def forward_metadata(context: grpc.ServicerContext, span: trace.Span | None = None) -> Metadata:
    """The caller's metadata for the backend, with the caller appended to ``x-forwarded-for``; with `span` (the
    gateway's CLIENT span of the call), its trace context, which parents the backend's span."""
    incoming = context.invocation_metadata()
    forwarded = [str(value) for key, value in incoming if key == "x-forwarded-for"]
    forwarded.append(peer_address(context.peer()))
    relayed = relayable(incoming)
    if span is not None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        if carrier:
            relayed = (*((k, v) for k, v in relayed if k not in carrier), *carrier.items())
    return (*relayed, ("x-forwarded-for", ", ".join(forwarded)))
