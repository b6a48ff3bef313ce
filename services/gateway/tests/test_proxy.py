"""The gateway's Router over real gRPC: caller -> gateway server -> test backend, all on localhost."""

from __future__ import annotations

import contextlib
import queue
import socket
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from gateway_kit import SERVICE, WAIT, Backend, rich_status, serve
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from gateway.proxy import MethodKind, Router, backend_channel, descriptor_method_kind

DEFAULT_TIMEOUT = 7.0
# gRPC rounds a deadline up when it puts it on the wire: even a direct call can see ~10 ms more than it set.
WIRE_SLACK = 0.05

KINDS = {
    "Echo": MethodKind.UNARY_UNARY,
    "Fail": MethodKind.UNARY_UNARY,
    "FailUnavailable": MethodKind.UNARY_UNARY,
    "Hang": MethodKind.UNARY_UNARY,
    "Split": MethodKind.UNARY_STREAM,
    "Gated": MethodKind.UNARY_STREAM,
    "StreamThenFail": MethodKind.UNARY_STREAM,
    "Join": MethodKind.STREAM_UNARY,
    "Chat": MethodKind.STREAM_STREAM,
    "HeadersFirst": MethodKind.STREAM_STREAM,
    # Served as streams by the backend, declared unary to the gateway: a backend breaking the contract.
    "NoAnswer": MethodKind.UNARY_UNARY,
    "TwoAnswers": MethodKind.UNARY_UNARY,
}


def method_kind(method: str) -> MethodKind | None:
    service, _, name = method.lstrip("/").partition("/")
    return KINDS.get(name) if service == SERVICE else None


@pytest.fixture
def backend() -> Iterator[tuple[Backend, int]]:
    state = Backend()
    server, port = serve(state.handler())
    yield state, port
    server.stop(None)


@contextlib.contextmanager
def gateway_for(backend_port: int, flavour: str = "backend_channel") -> Iterator[grpc.Channel]:
    target = f"127.0.0.1:{backend_port}"
    upstream = backend_channel(target) if flavour == "backend_channel" else grpc.insecure_channel(target)
    router = Router({SERVICE: upstream}, method_kind=method_kind, default_timeout=DEFAULT_TIMEOUT)
    server, port = serve(router)
    caller = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield caller
    caller.close()
    server.stop(None)
    upstream.close()


# The Router must behave the same on its recommended channels and on any plain channel.
CHANNEL_FLAVOURS = ["backend_channel", "plain_channel"]


@pytest.fixture(params=CHANNEL_FLAVOURS)
def gateway(backend: tuple[Backend, int], request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
    with gateway_for(backend[1], request.param) as caller:
        yield caller


@pytest.fixture
def state(backend: tuple[Backend, int]) -> Backend:
    return backend[0]


def uu(channel: grpc.Channel, name: str, service: str = SERVICE) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{service}/{name}", request_serializer=None, response_deserializer=None)


def us(channel: grpc.Channel, name: str) -> grpc.UnaryStreamMultiCallable:
    return channel.unary_stream(f"/{SERVICE}/{name}", request_serializer=None, response_deserializer=None)


def su(channel: grpc.Channel, name: str) -> grpc.StreamUnaryMultiCallable:
    return channel.stream_unary(f"/{SERVICE}/{name}", request_serializer=None, response_deserializer=None)


def ss(channel: grpc.Channel, name: str) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream(f"/{SERVICE}/{name}", request_serializer=None, response_deserializer=None)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- forwarding of the four kinds -------------------------------------------------------------


def test_unary_call_is_forwarded_byte_for_byte(gateway: grpc.Channel) -> None:
    payload = bytes(range(256))
    assert uu(gateway, "Echo")(payload, timeout=WAIT) == b"echo:" + payload


def test_server_stream_is_forwarded_message_by_message(gateway: grpc.Channel) -> None:
    assert list(us(gateway, "Split")(b"abc", timeout=WAIT)) == [b"a", b"b", b"c"]


def test_server_stream_messages_reach_the_caller_before_the_stream_ends(gateway: grpc.Channel, state: Backend) -> None:
    responses = us(gateway, "Gated")(b"", timeout=WAIT)
    assert next(responses) == b"first"  # arrives while the backend still holds the stream open
    state.gate.set()
    assert list(responses) == [b"second"]


def test_client_stream_is_forwarded(gateway: grpc.Channel) -> None:
    assert su(gateway, "Join")(iter([b"a", b"bb", b"", b"ccc"]), timeout=WAIT) == b"a|bb||ccc"


def test_bidi_stream_is_forwarded_lazily_in_both_directions(gateway: grpc.Channel) -> None:
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (item := outbox.get(timeout=WAIT)) is not None:
            yield item

    replies = ss(gateway, "Chat")(requests(), timeout=WAIT)
    # Ping-pong: each request is only sent after the previous reply came back through the gateway.
    for word in (b"one", b"two", b"three"):
        outbox.put(word)
        assert next(replies) == b"re:" + word
    outbox.put(None)
    assert list(replies) == []


# --- metadata and deadline ----------------------------------------------------------------------


def test_caller_metadata_reaches_the_backend_with_x_forwarded_for(gateway: grpc.Channel, state: Backend) -> None:
    uu(gateway, "Echo")(b"", timeout=WAIT, metadata=(("x-store-id", "s-042"), ("x-till-bin", b"\x01\x02")))
    assert state.metadata["x-store-id"] == "s-042"
    assert state.metadata["x-till-bin"] == b"\x01\x02"
    assert state.metadata["x-forwarded-for"] == "127.0.0.1"


def test_existing_x_forwarded_for_is_appended_to(gateway: grpc.Channel, state: Backend) -> None:
    uu(gateway, "Echo")(b"", timeout=WAIT, metadata=(("x-forwarded-for", "10.1.2.3"),))
    assert state.metadata["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"


def test_transport_keys_from_the_caller_are_not_forwarded(gateway: grpc.Channel, state: Backend) -> None:
    uu(gateway, "Echo")(b"", timeout=WAIT, metadata=(("grpc-custom", "x"), ("host", "evil"), ("connection", "close")))
    assert "grpc-custom" not in state.metadata
    assert "connection" not in state.metadata
    assert state.metadata.get("host") != "evil"


def test_metadata_of_every_stream_kind_reaches_the_backend(gateway: grpc.Channel, state: Backend) -> None:
    md = (("x-store-id", "s-7"),)
    su(gateway, "Join")(iter([b"a"]), timeout=WAIT, metadata=md)
    assert state.metadata["x-store-id"] == "s-7"
    state.metadata = {}
    list(ss(gateway, "Chat")(iter([b"a"]), timeout=WAIT, metadata=md))
    assert state.metadata["x-store-id"] == "s-7"


def test_backend_initial_and_trailing_metadata_reach_the_caller(gateway: grpc.Channel) -> None:
    response, call = uu(gateway, "Echo").with_call(b"x", timeout=WAIT)
    assert response == b"echo:x"
    assert ("x-backend-initial", "hello") in call.initial_metadata()
    trailing = call.trailing_metadata()
    assert ("x-backend-trailing", "bye") in trailing
    assert ("x-blob-bin", b"\x00\xff") in trailing


def test_backend_stream_metadata_reaches_the_caller(gateway: grpc.Channel) -> None:
    call = us(gateway, "Split")(b"ab", timeout=WAIT)
    assert ("x-backend-initial", "stream") in call.initial_metadata()
    assert list(call) == [b"a", b"b"]
    assert ("x-backend-trailing", "stream-done") in call.trailing_metadata()


def test_backend_headers_reach_the_caller_of_an_empty_server_stream(gateway: grpc.Channel) -> None:
    call = us(gateway, "Split")(b"", timeout=WAIT)
    assert list(call) == []
    assert ("x-backend-initial", "stream") in call.initial_metadata()
    assert ("x-backend-trailing", "stream-done") in call.trailing_metadata()


def test_bidi_backend_headers_reach_the_caller_before_any_message(gateway: grpc.Channel) -> None:
    outbox: queue.Queue[bytes | None] = queue.Queue()
    call = ss(gateway, "HeadersFirst")(iter(outbox.get, None), timeout=WAIT)
    # Nothing sent yet: the headers must not wait for a message (a caller may wait for them first).
    assert ("x-backend-initial", "ready") in call.initial_metadata()
    outbox.put(b"hi")
    assert next(call) == b"re:hi"
    outbox.put(None)
    assert list(call) == []


def test_caller_deadline_is_passed_to_the_backend(gateway: grpc.Channel, state: Backend) -> None:
    uu(gateway, "Echo")(b"", timeout=2.0)
    assert state.time_remaining is not None
    assert 1.0 < state.time_remaining <= 2.0 + WIRE_SLACK


def test_call_without_deadline_gets_the_default_timeout(gateway: grpc.Channel, state: Backend) -> None:
    uu(gateway, "Echo")(b"")
    assert state.time_remaining is not None
    assert DEFAULT_TIMEOUT - 2.0 < state.time_remaining <= DEFAULT_TIMEOUT + WIRE_SLACK


def test_stream_deadline_is_passed_to_the_backend(gateway: grpc.Channel, state: Backend) -> None:
    su(gateway, "Join")(iter([b"a"]), timeout=3.0)
    assert state.time_remaining is not None
    assert 2.0 < state.time_remaining <= 3.0 + WIRE_SLACK


# --- errors ---------------------------------------------------------------------------------------


def test_backend_status_and_rich_error_details_reach_the_caller(gateway: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        uu(gateway, "Fail")(b"", timeout=WAIT)
    error = caught.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "sku A-1 is out of stock"
    assert ("x-extra", "kept") in error.trailing_metadata()
    status = rpc_status.from_call(error)
    assert status is not None
    assert status == rich_status()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("OUT_OF_STOCK", "stock.storeplane", {"sku": "A-1"})


def test_rich_error_after_stream_messages_reaches_the_caller(gateway: grpc.Channel) -> None:
    responses = us(gateway, "StreamThenFail")(b"", timeout=WAIT)
    assert next(responses) == b"partial"
    with pytest.raises(grpc.RpcError) as caught:
        next(responses)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_status.from_call(caught.value) == rich_status()


def test_backend_unavailable_status_keeps_its_own_details(gateway: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        uu(gateway, "FailUnavailable")(b"", timeout=WAIT)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "stock database is down"


@pytest.mark.parametrize("name", ["NoAnswer", "TwoAnswers"])
def test_backend_breaking_the_unary_contract_is_an_internal_error(gateway: grpc.Channel, name: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        uu(gateway, name)(b"x", timeout=WAIT)
    assert caught.value.code() is grpc.StatusCode.INTERNAL


def test_unknown_service_is_unimplemented(gateway: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        uu(gateway, "Echo", service="test.v1.NoSuchService")(b"", timeout=WAIT)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_unknown_method_of_a_routed_service_is_unimplemented(gateway: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        uu(gateway, "NoSuchMethod")(b"", timeout=WAIT)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


UNREACHABLE_CALLS = {
    "unary": lambda ch: uu(ch, "Echo")(b"", timeout=WAIT),
    "server_stream": lambda ch: list(us(ch, "Split")(b"ab", timeout=WAIT)),
    "client_stream": lambda ch: su(ch, "Join")(iter([b"a"]), timeout=WAIT),
    "bidi": lambda ch: list(ss(ch, "Chat")(iter([b"a"]), timeout=WAIT)),
}


@pytest.mark.parametrize("flavour", CHANNEL_FLAVOURS)
@pytest.mark.parametrize("kind", sorted(UNREACHABLE_CALLS))
def test_unreachable_backend_is_unavailable_naming_the_service(kind: str, flavour: str) -> None:
    with gateway_for(closed_port(), flavour) as caller, pytest.raises(grpc.RpcError) as caught:
        UNREACHABLE_CALLS[kind](caller)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert SERVICE in caught.value.details()
    assert "unreachable" in caught.value.details()


# --- cancellation ---------------------------------------------------------------------------------


def test_caller_cancelling_a_unary_call_cancels_the_backend_call(gateway: grpc.Channel, state: Backend) -> None:
    call = uu(gateway, "Hang").future(b"", timeout=WAIT * 4)
    assert state.started.wait(WAIT)
    call.cancel()
    assert state.terminated.wait(WAIT)
    assert state.saw_inactive.wait(WAIT)


def test_caller_deadline_passing_ends_the_backend_call(gateway: grpc.Channel, state: Backend) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        uu(gateway, "Hang")(b"", timeout=0.5)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert state.terminated.wait(WAIT)


def test_caller_cancelling_a_stream_cancels_the_backend_stream(gateway: grpc.Channel, state: Backend) -> None:
    responses = us(gateway, "Gated")(b"", timeout=WAIT * 4)
    assert next(responses) == b"first"
    assert state.started.wait(WAIT)
    time.sleep(0.2)  # let the gateway settle into waiting on the backend's next message
    responses.cancel()
    assert state.terminated.wait(WAIT)  # long before the backend's gate would have released it


def test_caller_cancelling_a_bidi_stream_cancels_the_backend_stream(gateway: grpc.Channel, state: Backend) -> None:
    outbox: queue.Queue[bytes] = queue.Queue()
    replies = ss(gateway, "Chat")(iter(outbox.get, b"never"), timeout=WAIT * 4)
    outbox.put(b"one")
    assert next(replies) == b"re:one"
    time.sleep(0.2)  # both sides now wait: the backend for a request, the gateway for a reply
    replies.cancel()
    assert state.terminated.wait(WAIT)
    outbox.put(b"never")  # release the caller's request-sending thread


# --- method kinds from descriptors ------------------------------------------------------------------


def test_descriptor_method_kind_reads_the_default_pool() -> None:
    from grpc_health.v1 import health_pb2  # noqa: F401  (registers grpc.health.v1.Health)

    assert descriptor_method_kind("/grpc.health.v1.Health/Check") is MethodKind.UNARY_UNARY
    assert descriptor_method_kind("/grpc.health.v1.Health/Watch") is MethodKind.UNARY_STREAM
    assert descriptor_method_kind("/grpc.health.v1.Health/Nope") is None
    assert descriptor_method_kind("/no.such.Service/Check") is None
    assert descriptor_method_kind("garbage") is None


# --- metrics (the gateway runs without the services' interceptor: the Router counts its calls itself) ----------


def _handled(method: str, code: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    return REGISTRY.get_sample_value("storeplane_rpc_handled_total", labels) or 0.0


def test_forwarded_calls_are_counted_by_method_and_status(gateway: grpc.Channel) -> None:
    before = {
        "ok": _handled("Echo", "OK"),
        "failed": _handled("Fail", "FAILED_PRECONDITION"),
        "stream": _handled("Split", "OK"),
    }
    uu(gateway, "Echo")(b"a", timeout=WAIT)
    uu(gateway, "Echo")(b"b", timeout=WAIT)
    with pytest.raises(grpc.RpcError):
        uu(gateway, "Fail")(b"", timeout=WAIT)
    assert list(us(gateway, "Split")(b"xy", timeout=WAIT)) == [b"x", b"y"]
    assert _handled("Echo", "OK") == before["ok"] + 2
    assert _handled("Fail", "FAILED_PRECONDITION") == before["failed"] + 1
    assert _handled("Split", "OK") == before["stream"] + 1


# --- tracing --------------------------------------------------------------------------------------------------

CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_without_exported_spans_the_callers_trace_context_passes_through_untouched(
    gateway: grpc.Channel, state: Backend
) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    uu(gateway, "Echo")(b"", timeout=WAIT, metadata=(("traceparent", traceparent),))
    assert state.metadata["traceparent"] == traceparent


def test_with_exported_spans_the_gateways_client_span_parents_the_backends(
    backend: tuple[Backend, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the gateway runs when OTEL_* names an exporter: the kit's ServerSpans makes a SERVER span per call, the
    gateway a CLIENT span of the backend call under it, and the traceparent the backend gets names that CLIENT span,
    in the caller's trace; a failed call's spans carry the backend's status."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    import gateway.forwarding
    from storeplane_runtime import interceptors

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    monkeypatch.setattr(gateway.forwarding, "tracing_exported", lambda: True)
    monkeypatch.setattr(gateway.forwarding, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(interceptors, "_tracer", provider.get_tracer("test"))
    state, backend_port = backend
    upstream = backend_channel(f"127.0.0.1:{backend_port}")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptors.ServerSpans()])
    server.add_generic_rpc_handlers((Router({SERVICE: upstream}, method_kind, DEFAULT_TIMEOUT),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    edge = (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as caller:
            uu(caller, "Echo")(b"", timeout=WAIT, metadata=edge)
            version, trace_id, parent_span, _flags = str(state.metadata["traceparent"]).split("-")
            with pytest.raises(grpc.RpcError):
                uu(caller, "Fail")(b"", timeout=WAIT, metadata=edge)
    finally:
        server.stop(None)
        upstream.close()
    spans = exported.get_finished_spans()
    served = [s for s in spans if s.kind is SpanKind.SERVER]
    calls = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert [s.name for s in calls] == [f"/{SERVICE}/Echo", f"/{SERVICE}/Fail"]
    echo, fail = calls
    assert (version, trace_id) == ("00", CALLER_TRACE)
    assert parent_span == format(echo.context.span_id, "016x")  # the backend's parent: the gateway's CLIENT span
    assert echo.parent is not None and echo.parent.span_id == served[0].context.span_id
    assert served[0].parent is not None and format(served[0].parent.span_id, "016x") == CALLER_SPAN
    assert echo.attributes is not None and fail.attributes is not None
    assert (echo.attributes["rpc.service"], echo.attributes["rpc.method"]) == (SERVICE, "Echo")
    assert echo.attributes["rpc.grpc.status_code"] == 0
    assert fail.attributes["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert not fail.status.is_ok
    assert [s.name for s in served] == [f"/{SERVICE}/Echo", f"/{SERVICE}/Fail"]
    assert served[1].attributes is not None
    assert served[1].attributes["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
