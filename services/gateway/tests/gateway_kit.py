"""Helpers of the gateway tests: a raw-bytes fake backend of all four call kinds (under a test service name, or under
the real stock API's, where the gateway's real rules and method kinds apply) and the real gateway started on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.main import Settings, create_app
from storeplane_runtime.app import ServiceApp
from storeplane_runtime.testing import service_settings

SERVICE = "test.v1.EchoService"
WAIT = 5.0  # bound on every wait for something to happen on the other side

STOCK = "pos.stock.v1.StockService"
GET_ITEM, WATCH_STOCK, IMPORT_ITEMS = f"/{STOCK}/GetItem", f"/{STOCK}/WatchStock", f"/{STOCK}/ImportItems"
# Every test channel makes its own connections: a TLS test must not ride on another channel's handshake.
OWN_CONNECTIONS = (("grpc.use_local_subchannel_pool", 1),)


def rich_status() -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason="OUT_OF_STOCK", domain="stock.storeplane", metadata={"sku": "A-1"})
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="sku A-1 is out of stock", details=[detail])


@dataclass
class Backend:
    """Raw-bytes test backend of all four kinds, recording what it saw."""

    metadata: dict[str, Any] = field(default_factory=dict)
    time_remaining: float | None = None
    started: threading.Event = field(default_factory=threading.Event)
    terminated: threading.Event = field(default_factory=threading.Event)
    saw_inactive: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)

    def _record(self, context: grpc.ServicerContext) -> None:
        self.metadata = dict(context.invocation_metadata())
        self.time_remaining = context.time_remaining()

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        context.send_initial_metadata((("x-backend-initial", "hello"),))
        context.set_trailing_metadata((("x-backend-trailing", "bye"), ("x-blob-bin", b"\x00\xff")))
        return b"echo:" + request

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        status = rpc_status.to_status(rich_status())
        context.set_trailing_metadata((*status.trailing_metadata, ("x-extra", "kept")))
        context.abort(status.code, status.details)

    def fail_unavailable(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.UNAVAILABLE, "stock database is down")

    def hang(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.add_callback(self.terminated.set)
        self.started.set()
        while context.is_active() and not self.terminated.wait(0.01):
            pass
        if not context.is_active():
            self.saw_inactive.set()
        return b""

    def split(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        context.send_initial_metadata((("x-backend-initial", "stream"),))
        context.set_trailing_metadata((("x-backend-trailing", "stream-done"),))
        yield from (bytes([b]) for b in request)

    def gated(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        context.add_callback(self.terminated.set)
        yield b"first"
        self.started.set()
        if not self.gate.wait(WAIT * 3):  # longer than any test waits: only cancellation ends it early
            return
        yield b"second"

    def stream_then_fail(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"partial"
        context.abort_with_status(rpc_status.to_status(rich_status()))

    def join(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._record(context)
        return b"|".join(requests)

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        context.add_callback(self.terminated.set)
        for request in requests:
            yield b"re:" + request

    def headers_first(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        context.send_initial_metadata((("x-backend-initial", "ready"),))
        for request in requests:
            yield b"re:" + request

    def answers(self, count: int) -> Any:
        def handle(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            yield from [request] * count

        return handle

    def handler(self) -> grpc.GenericRpcHandler:
        uu, us = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        su, ss = grpc.stream_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": uu(self.echo),
                "Fail": uu(self.fail),
                "FailUnavailable": uu(self.fail_unavailable),
                "Hang": uu(self.hang),
                "Split": us(self.split),
                "Gated": us(self.gated),
                "StreamThenFail": us(self.stream_then_fail),
                "Join": su(self.join),
                "Chat": ss(self.chat),
                "HeadersFirst": ss(self.headers_first),
                "NoAnswer": us(self.answers(0)),
                "TwoAnswers": us(self.answers(2)),
            },
        )


def serve(handler: grpc.GenericRpcHandler) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class FrontedBackend:
    """The fake backend under the real stock API's name: GetItem echoes, WatchStock splits, ImportItems joins. It
    counts the calls that reached it and keeps the metadata of the last one (`state.metadata`)."""

    def __init__(self) -> None:
        self.state = Backend()
        self.calls = 0
        self._lock = threading.Lock()

    def _counted(self, behaviour: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self.calls += 1
            return behaviour(request, context)

        return run

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            STOCK,
            {
                "GetItem": grpc.unary_unary_rpc_method_handler(self._counted(self.state.echo)),
                "WatchStock": grpc.unary_stream_rpc_method_handler(self._counted(self.state.split)),
                "ImportItems": grpc.stream_unary_rpc_method_handler(self._counted(self.state.join)),
            },
        )


@dataclass
class RunningGateway:
    """The gateway app (create_app, as `python -m gateway` builds it) serving on a free port."""

    app: ServiceApp
    port: int
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address, options=OWN_CONNECTIONS)
        self.channels.append(channel)
        return channel

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        self.app.stop(0)


def start_gateway(backend_port: int, jwks_file: Path, **overrides: Any) -> RunningGateway:
    """The gateway in front of a backend serving every fronted API at `backend_port`, trusting `jwks_file`."""
    backend = f"127.0.0.1:{backend_port}"
    settings = service_settings(
        Settings,
        "gateway",
        "",
        checkout_addr=backend,
        stock_addr=backend,
        customer_addr=backend,
        loyalty_addr=backend,
        auth_jwks_file=str(jwks_file),
        **overrides,
    )
    app = create_app(settings)
    return RunningGateway(app, app.start())


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def get_item(
    channel: grpc.Channel, token: str | None, payload: bytes = b"sku-1", metadata: Sequence[tuple[str, Any]] = ()
) -> bytes:
    """A raw GetItem through the gateway (the fake backend answers `echo:` + payload)."""
    call = channel.unary_unary(GET_ITEM, request_serializer=None, response_deserializer=None)
    answer: bytes = call(payload, timeout=WAIT, metadata=(*(bearer(token) if token else ()), *metadata))
    return answer


def watch_stock(channel: grpc.Channel, token: str | None, payload: bytes = b"abc") -> list[bytes]:
    call = channel.unary_stream(WATCH_STOCK, request_serializer=None, response_deserializer=None)
    return list(call(payload, timeout=WAIT, metadata=bearer(token) if token else ()))


def import_items(channel: grpc.Channel, token: str | None, messages: Iterator[bytes]) -> bytes:
    call = channel.stream_unary(IMPORT_ITEMS, request_serializer=None, response_deserializer=None)
    answer: bytes = call(messages, timeout=WAIT, metadata=bearer(token) if token else ())
    return answer
