"""Forwarding through the edge over real gRPC: caller -> Envoy -> fake backend, all on localhost. The contracts
declare no bidirectional stream, so Envoy routes none (and none is tested here)."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from gateway_kit import (
    ADJUST_STOCK,
    EXPORT_CUSTOMERS,
    GET_ACCOUNT,
    GET_AVAILABILITY,
    GET_ITEM,
    GET_SALE,
    IMPORT_ITEMS,
    IMPORT_STOCK_LEVELS,
    RESERVE,
    STOCK,
    THEN_FAIL,
    WAIT,
    WATCH_STOCK,
    FakeBackend,
    RunningGateway,
    bearer,
    host_addresses,
    rich_status,
    su,
    us,
    uu,
)
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.testing import wait_until

Gateways = Callable[..., RunningGateway]
# gRPC rounds a deadline up when it puts it on the wire: even a direct call can see ~10 ms more than it set.
WIRE_SLACK = 0.05


@pytest.fixture(scope="module")
def auth(issuer: DevIssuer) -> tuple[tuple[str, str], ...]:
    """The bearer metadata of every call here (Envoy refuses calls without a valid token)."""
    return bearer(issuer.mint(subject="till-forwarding"))


# --- forwarding of the three kinds the contracts have --------------------------------------------------------------


def test_unary_call_is_forwarded_byte_for_byte(channel: grpc.Channel, auth: tuple[tuple[str, str], ...]) -> None:
    payload = bytes(range(256))
    assert uu(channel, GET_ITEM)(payload, timeout=WAIT, metadata=auth) == b"echo:" + payload


def test_each_service_is_routed_to_its_own_backend(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    for method in (GET_ITEM, GET_ACCOUNT, GET_SALE):
        assert uu(channel, method)(b"x", timeout=WAIT, metadata=auth) == b"echo:x"
    assert backend.seen.calls == [GET_ITEM, GET_ACCOUNT, GET_SALE]


def test_server_stream_is_forwarded_message_by_message(
    channel: grpc.Channel, auth: tuple[tuple[str, str], ...]
) -> None:
    assert list(us(channel, WATCH_STOCK)(b"abc", timeout=WAIT, metadata=auth)) == [b"a", b"b", b"c"]


def test_server_stream_messages_reach_the_caller_before_the_stream_ends(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    seen = backend.seen
    responses = us(channel, EXPORT_CUSTOMERS)(b"", timeout=WAIT, metadata=auth)
    assert next(responses) == b"first"  # arrives while the backend still holds the stream open
    assert not seen.gate.is_set()
    seen.gate.set()
    assert list(responses) == [b"second"]


def test_client_stream_is_forwarded(channel: grpc.Channel, auth: tuple[tuple[str, str], ...]) -> None:
    messages = iter([b"a", b"bb", b"", b"ccc"])
    assert su(channel, IMPORT_ITEMS)(messages, timeout=WAIT, metadata=auth) == b"a|bb||ccc"


def test_client_stream_messages_reach_the_backend_before_the_caller_ends_the_stream(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    seen = backend.seen
    outbox: queue.Queue[bytes | None] = queue.Queue()
    call = su(channel, IMPORT_STOCK_LEVELS).future(iter(outbox.get, None), timeout=WAIT, metadata=auth)
    outbox.put(b"row-1")
    assert seen.started.wait(WAIT)  # the backend has the first row while the caller's stream is still open
    assert seen.received == [b"row-1"]
    outbox.put(None)
    assert call.result(timeout=WAIT) == b"done"


# --- metadata and deadline -------------------------------------------------------------------------------------------


def test_caller_metadata_reaches_the_backend_with_x_forwarded_for(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    metadata = (*auth, ("x-store-id", "s-042"), ("x-till-bin", b"\x01\x02"))
    uu(channel, GET_ITEM)(b"", timeout=WAIT, metadata=metadata)
    seen = backend.seen.metadata
    assert seen["x-store-id"] == "s-042"
    assert seen["x-till-bin"] == b"\x01\x02"
    # Set by Envoy (use_remote_address): the caller's address, and for a caller on loopback (this test) the host's
    # own address, never a value the caller chose.
    assert seen["x-forwarded-for"] in host_addresses()


def test_a_forwarded_for_sent_by_the_caller_is_appended_to(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    uu(channel, GET_ITEM)(b"", timeout=WAIT, metadata=(*auth, ("x-forwarded-for", "10.1.2.3")))
    first, _, appended = backend.seen.metadata["x-forwarded-for"].partition(",")
    assert (first, appended in host_addresses()) == ("10.1.2.3", True)


def test_metadata_of_the_stream_kinds_reaches_the_backend(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    metadata = (*auth, ("x-store-id", "s-7"))
    su(channel, IMPORT_ITEMS)(iter([b"a"]), timeout=WAIT, metadata=metadata)
    assert backend.seen.metadata["x-store-id"] == "s-7"
    backend.seen.metadata = {}
    list(us(channel, WATCH_STOCK)(b"a", timeout=WAIT, metadata=metadata))
    assert backend.seen.metadata["x-store-id"] == "s-7"


def test_backend_initial_and_trailing_metadata_reach_the_caller(
    channel: grpc.Channel, auth: tuple[tuple[str, str], ...]
) -> None:
    response, call = uu(channel, GET_ITEM).with_call(b"x", timeout=WAIT, metadata=auth)
    assert response == b"echo:x"
    assert ("x-backend-initial", "hello") in call.initial_metadata()
    trailing = call.trailing_metadata()
    assert ("x-backend-trailing", "bye") in trailing
    assert ("x-blob-bin", b"\x00\xff") in trailing


def test_backend_stream_metadata_reaches_the_caller(channel: grpc.Channel, auth: tuple[tuple[str, str], ...]) -> None:
    call = us(channel, WATCH_STOCK)(b"ab", timeout=WAIT, metadata=auth)
    assert ("x-backend-initial", "stream") in call.initial_metadata()
    assert list(call) == [b"a", b"b"]
    assert ("x-backend-trailing", "stream-done") in call.trailing_metadata()


def test_backend_headers_reach_the_caller_of_an_empty_server_stream(
    channel: grpc.Channel, auth: tuple[tuple[str, str], ...]
) -> None:
    call = us(channel, WATCH_STOCK)(b"", timeout=WAIT, metadata=auth)
    assert list(call) == []
    assert ("x-backend-initial", "stream") in call.initial_metadata()
    assert ("x-backend-trailing", "stream-done") in call.trailing_metadata()


def test_caller_deadline_is_passed_to_the_backend(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    uu(channel, GET_ITEM)(b"", timeout=3.0, metadata=auth)  # longer than the shared gateway's default of 1 s
    remaining = backend.seen.time_remaining
    assert remaining is not None
    assert 2.0 < remaining <= 3.0 + WIRE_SLACK


def test_stream_deadline_is_passed_to_the_backend(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    su(channel, IMPORT_ITEMS)(iter([b"a"]), timeout=3.0, metadata=auth)
    remaining = backend.seen.time_remaining
    assert remaining is not None
    assert 2.0 < remaining <= 3.0 + WIRE_SLACK


def test_a_call_without_deadline_is_ended_at_the_default_deadline_and_so_is_the_backend_call(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    """DEFAULT_DEADLINE_SECONDS (1 s on the shared gateway) is Envoy's max_stream_duration of each unary route: Envoy
    gives the backend that deadline (grpc-timeout) and ends the call with DEADLINE_EXCEEDED when it has passed."""
    seen = backend.seen
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        uu(channel, RESERVE)(b"", metadata=auth)  # no timeout: the caller would wait forever
    took = time.monotonic() - started
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, caught.value
    assert 0.9 <= took < 1.0 + WAIT
    assert seen.time_remaining is not None
    assert 0.5 < seen.time_remaining <= 1.0 + WIRE_SLACK
    assert seen.terminated.wait(WAIT)
    assert seen.saw_inactive.wait(WAIT)


# --- errors ----------------------------------------------------------------------------------------------------------


def test_backend_status_and_rich_error_details_reach_the_caller(
    channel: grpc.Channel, auth: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        uu(channel, GET_AVAILABILITY)(b"", timeout=WAIT, metadata=auth)
    error = caught.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "sku A-1 is out of stock"
    assert ("x-extra", "kept") in error.trailing_metadata()
    status = rpc_status.from_call(error)
    assert status == rich_status()
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("OUT_OF_STOCK", "stock.storeplane", {"sku": "A-1"})


def test_rich_error_after_stream_messages_reaches_the_caller(
    channel: grpc.Channel, auth: tuple[tuple[str, str], ...]
) -> None:
    responses = us(channel, EXPORT_CUSTOMERS)(THEN_FAIL, timeout=WAIT, metadata=auth)
    assert next(responses) == b"partial"
    with pytest.raises(grpc.RpcError) as caught:
        next(responses)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_status.from_call(caught.value) == rich_status()


def test_backend_unavailable_status_keeps_its_own_details(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        uu(channel, ADJUST_STOCK)(b"", timeout=WAIT, metadata=auth)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "stock database is down"
    # A unary RPC answered UNAVAILABLE is retried by Envoy (retry_policy, RETRY_ATTEMPTS = 2) before the caller
    # sees the last answer.
    assert backend.seen.count(ADJUST_STOCK) == 3


def test_unknown_method_of_a_fronted_service_is_unimplemented(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    """No route matches a method the contracts do not declare: Envoy answers HTTP 404, which gRPC reads as
    UNIMPLEMENTED; the backend is never asked."""
    for method in (f"/{STOCK}/NoSuchMethod", "/test.v1.NoSuchService/Echo"):
        with pytest.raises(grpc.RpcError) as caught:
            uu(channel, method)(b"", timeout=WAIT, metadata=auth)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED, method
    assert backend.calls == 0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


UNREACHABLE_CALLS: dict[str, Callable[[grpc.Channel, tuple[tuple[str, str], ...]], object]] = {
    "unary": lambda ch, md: uu(ch, GET_ITEM)(b"", timeout=WAIT, metadata=md),
    "server_stream": lambda ch, md: list(us(ch, WATCH_STOCK)(b"ab", timeout=WAIT, metadata=md)),
    "client_stream": lambda ch, md: su(ch, IMPORT_ITEMS)(iter([b"a"]), timeout=WAIT, metadata=md),
}


@pytest.fixture(scope="module")
def unreachable(gateway_with: Gateways) -> RunningGateway:
    """A gateway whose every backend address is a closed port."""
    port = closed_port()
    return gateway_with(
        checkout_addr=f"127.0.0.1:{port}",
        stock_addr=f"127.0.0.1:{port}",
        customer_addr=f"127.0.0.1:{port}",
        loyalty_addr=f"127.0.0.1:{port}",
    )


@pytest.mark.parametrize("kind", sorted(UNREACHABLE_CALLS))
def test_unreachable_backend_is_unavailable(
    unreachable: RunningGateway, auth: tuple[tuple[str, str], ...], kind: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        UNREACHABLE_CALLS[kind](unreachable.channel(), auth)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    # Envoy's words, which name no service: "upstream connect error or disconnect/reset before headers. ... remote
    # connection failure" until its health check has marked the backend down, "no healthy upstream" after.
    details = caught.value.details() or ""
    assert "upstream connect error" in details or details == "no healthy upstream", details


# --- cancellation ----------------------------------------------------------------------------------------------------


def test_caller_cancelling_a_unary_call_cancels_the_backend_call(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    seen = backend.seen
    call = uu(channel, RESERVE).future(b"", timeout=WAIT * 4, metadata=auth)
    assert seen.started.wait(WAIT)
    call.cancel()
    assert seen.terminated.wait(WAIT)
    assert seen.saw_inactive.wait(WAIT)


def test_caller_deadline_passing_ends_the_backend_call(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        uu(channel, RESERVE)(b"", timeout=0.5, metadata=auth)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert backend.seen.terminated.wait(WAIT)


def test_caller_cancelling_a_server_stream_cancels_the_backend_stream(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    seen = backend.seen
    responses = us(channel, EXPORT_CUSTOMERS)(b"", timeout=WAIT * 4, metadata=auth)
    assert next(responses) == b"first"
    assert seen.started.wait(WAIT)
    responses.cancel()
    assert seen.terminated.wait(WAIT)  # long before the backend's gate would have released it
    assert not seen.gate.is_set()


def test_caller_cancelling_a_client_stream_cancels_the_backend_stream(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    seen = backend.seen
    outbox: queue.Queue[bytes | None] = queue.Queue()
    call = su(channel, IMPORT_STOCK_LEVELS).future(iter(outbox.get, None), timeout=WAIT * 4, metadata=auth)
    outbox.put(b"row-1")
    assert seen.started.wait(WAIT)
    call.cancel()
    assert seen.terminated.wait(WAIT)
    outbox.put(None)  # release the caller's request-sending thread


# --- tracing ---------------------------------------------------------------------------------------------------------

CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def test_without_exported_spans_the_callers_trace_context_passes_through_untouched(
    channel: grpc.Channel, backend: FakeBackend, auth: tuple[tuple[str, str], ...]
) -> None:
    uu(channel, GET_ITEM)(b"", timeout=WAIT, metadata=(*auth, ("traceparent", TRACEPARENT)))
    assert backend.seen.metadata["traceparent"] == TRACEPARENT


class Collector:
    """An OTLP/HTTP endpoint that keeps the paths it was sent spans to."""

    def __init__(self) -> None:
        posts: list[str] = []
        self.posts = posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                posts.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


def test_with_exported_spans_the_edges_span_parents_the_backends_in_the_callers_trace(
    make_gateway: Gateways,
    backend: FakeBackend,
    collector: Collector,
    auth: tuple[tuple[str, str], ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, Envoy's OpenTelemetry tracer makes a span per call in the caller's
    trace, names it the backend's parent in the traceparent it forwards, and sends it to the endpoint."""
    for variable in (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    channel = make_gateway().channel()
    uu(channel, GET_ITEM)(b"", timeout=WAIT, metadata=(*auth, ("traceparent", TRACEPARENT)))
    version, trace_id, parent_span, flags = str(backend.seen.metadata["traceparent"]).split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01")
    assert parent_span != CALLER_SPAN  # the edge's span, between the caller's and the backend's
    # Envoy sends its spans in batches (every 5 s at most).
    wait_until(lambda: "/v1/traces" in collector.posts, timeout=3 * WAIT, what="spans sent to the collector")
