"""Peer channels: deadlines always set (inherited from the call being served), retries only where safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan

from storeplane_runtime import clients
from storeplane_runtime.clients import PeerChannels
from storeplane_runtime.server import ServiceHost
from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.testing import free_port, free_port_block

SERVICE = "test.v1.PeerService"


class Peer:
    """A backend that fails the first N calls of each method with UNAVAILABLE and reports deadlines seen."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.time_remaining: list[float | None] = []
        self.traceparents: list[str | bytes | None] = []

    def handler(self, method: str):
        def behave(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.traceparents.append(dict(context.invocation_metadata()).get("traceparent"))
            self.calls[method] = self.calls.get(method, 0) + 1
            self.time_remaining.append(context.time_remaining())
            if self.calls[method] <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            return request

        return grpc.unary_unary_rpc_method_handler(behave)


@pytest.fixture
def peer() -> Iterator[tuple[Peer, str]]:
    backend = Peer(failures=2)
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Read": backend.handler("Read"), "Write": backend.handler("Write")}
    )
    host = ServiceHost(  # a test peer that declares no scopes: nothing to authorise
        ServiceSettings(service_name="peer", grpc_host="127.0.0.1", grpc_port=0),
        generic_handlers=[handler],
        authorise=False,
    )
    port = host.start()
    yield backend, f"127.0.0.1:{port}"
    host.stop(0)


def test_idempotent_method_is_retried_on_unavailable(peer: tuple[Peer, str]) -> None:
    backend, address = peer
    channels = PeerChannels(default_timeout=5)
    channel = channels.channel(address, service=SERVICE, idempotent_methods=["Read"])
    assert channel.unary_unary(f"/{SERVICE}/Read")(b"ok") == b"ok"
    assert backend.calls["Read"] == 3
    channels.close()


def test_non_idempotent_method_is_not_retried(peer: tuple[Peer, str]) -> None:
    backend, address = peer
    channels = PeerChannels(default_timeout=5)
    channel = channels.channel(address, service=SERVICE, idempotent_methods=["Read"])
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"/{SERVICE}/Write")(b"ok")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert backend.calls["Write"] == 1
    channels.close()


def test_call_without_a_timeout_gets_the_default_deadline(peer: tuple[Peer, str]) -> None:
    backend, address = peer
    backend.failures = 0
    channels = PeerChannels(default_timeout=2.5)
    channels.channel(address, service=SERVICE).unary_unary(f"/{SERVICE}/Read")(b"x")
    seen = backend.time_remaining[-1]
    assert seen is not None
    # gRPC rounds a deadline up when it puts it on the wire (seen here: 2.5085 s for 2.5 s); no deadline would
    # show up as ~9e18 s, a doubled or unapplied default as 5 s or more.
    assert 0 < seen <= 2.5 + 0.05
    channels.close()


def test_peer_down_fails_fast_with_unavailable() -> None:
    channels = PeerChannels(default_timeout=5)
    channel = channels.channel(f"127.0.0.1:{free_port()}", service=SERVICE, idempotent_methods=["Read"])
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"/{SERVICE}/Read")(b"x", timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    channels.close()


CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_call_carries_the_trace_of_the_call_being_served_when_no_spans_are_exported(
    peer: tuple[Peer, str],
) -> None:
    backend, address = peer
    backend.failures = 0
    channels = PeerChannels(default_timeout=5)
    served = trace.set_span_in_context(
        NonRecordingSpan(trace.get_current_span(propagate.extract({"traceparent": CALLER})).get_span_context())
    )
    token = otel_context.attach(served)
    try:
        channels.channel(address, service=SERVICE).unary_unary(f"/{SERVICE}/Read")(b"x")
    finally:
        otel_context.detach(token)
        channels.close()
    assert backend.traceparents[-1] == CALLER


def test_with_spans_exported_a_call_is_a_client_span_that_parents_the_peers(
    peer: tuple[Peer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call: a CLIENT span, a child of the call being served, named by the method, ended with the peer's
    status (ERROR when it failed); the traceparent the peer gets names it."""
    backend, address = peer
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    monkeypatch.setattr(clients, "tracing_exported", lambda: True)
    monkeypatch.setattr(clients, "_tracer", provider.get_tracer("test"))
    channels = PeerChannels(default_timeout=5)
    channel = channels.channel(address, service=SERVICE)
    try:
        with provider.get_tracer("test").start_as_current_span("served") as served:
            with pytest.raises(grpc.RpcError):
                channel.unary_unary(f"/{SERVICE}/Write")(b"x")  # the peer's first calls fail UNAVAILABLE
            backend.failures = 0
            assert channel.unary_unary(f"/{SERVICE}/Read")(b"x") == b"x"
    finally:
        channels.close()
    failed, read, _served = exported.get_finished_spans()
    assert [failed.name, read.name] == [f"/{SERVICE}/Write", f"/{SERVICE}/Read"]
    for span in (failed, read):
        assert span.kind is trace.SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == served.get_span_context().span_id
    assert read.attributes is not None and read.attributes["rpc.grpc.status_code"] == 0 and read.status.is_unset
    assert failed.attributes is not None
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert failed.status.status_code is trace.StatusCode.ERROR
    _version, trace_id, parent_id, _flags = str(backend.traceparents[-1]).split("-")
    assert (trace_id, parent_id) == (f"{read.context.trace_id:032x}", f"{read.context.span_id:016x}")


def test_console_exporter_chosen_by_otel_variable_prints_server_spans(tmp_path: Path) -> None:
    port = free_port_block(1)  # outside the ephemeral range: nothing else takes it before the child binds
    script = Path(__file__).with_name("slow_service.py")
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "slow-test"}
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(f"/{'test.v1.SlowService'}/Sleep")(b"1", timeout=5) == b"done"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert '"name": "/test.v1.SlowService/Sleep"' in out
    assert '"service.name": "slow-test"' in out
