"""Helpers of the gateway tests: a raw-bytes fake backend serving real RPCs of the four fronted services (Envoy routes
only the RPCs the contracts declare; it never decodes a gRPC body, so raw bytes are fine) and the real gateway,
Envoy and its companion as `create_app` builds them, started in front of it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from gateway.main import FRONTED, Settings, create_app
from storeplane_runtime.app import ServiceApp
from storeplane_runtime.testing import service_settings

WAIT = 5.0  # bound on every wait for something to happen on the other side

STOCK, CUSTOMER = FRONTED["stock"], FRONTED["customer"]
CHECKOUT, LOYALTY = FRONTED["checkout"], FRONTED["loyalty"]
# What each behaviour of the fake backend is served as (one real RPC of the contracts each).
GET_ITEM = f"/{STOCK}/GetItem"  # unary: echoes, with initial and trailing metadata
GET_AVAILABILITY = f"/{STOCK}/GetAvailability"  # unary: fails with rich details
ADJUST_STOCK = f"/{STOCK}/AdjustStock"  # unary: UNAVAILABLE with its own message
RESERVE = f"/{STOCK}/Reserve"  # unary: hangs until cancelled
WATCH_STOCK = f"/{STOCK}/WatchStock"  # server stream: one message per byte of the request
EXPORT_CUSTOMERS = f"/{CUSTOMER}/ExportCustomers"  # server stream: gated (or partial then failed, see below)
IMPORT_ITEMS = f"/{STOCK}/ImportItems"  # client stream: joins the messages with |
IMPORT_STOCK_LEVELS = f"/{STOCK}/ImportStockLevels"  # client stream: reads until cancelled
GET_ACCOUNT = f"/{LOYALTY}/GetAccount"  # unary of another service: echoes
GET_SALE = f"/{CHECKOUT}/GetSale"  # unary of another service: echoes
THEN_FAIL = b"then-fail"  # ExportCustomers with this request: one message, then the rich failure

# Every test channel makes its own connections: a TLS test must not ride on another channel's handshake.
OWN_CONNECTIONS = (("grpc.use_local_subchannel_pool", 1),)


def rich_status() -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason="OUT_OF_STOCK", domain="stock.storeplane", metadata={"sku": "A-1"})
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="sku A-1 is out of stock", details=[detail])


@dataclass
class Seen:
    """What the backend saw during one test (a fresh one per test: a call left over from another cannot leak in)."""

    calls: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    time_remaining: float | None = None
    started: threading.Event = field(default_factory=threading.Event)
    terminated: threading.Event = field(default_factory=threading.Event)
    saw_inactive: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    received: list[bytes] = field(default_factory=list)

    def count(self, method: str) -> int:
        return self.calls.count(method)


class FakeBackend:
    """All four fronted services on one port, raw bytes in and out, recording what reached it in `seen`."""

    def __init__(self) -> None:
        self.seen = Seen()
        self._lock = threading.Lock()
        self.health = health.HealthServicer()

    def reset(self) -> Seen:
        self.seen = Seen()
        return self.seen

    @property
    def calls(self) -> int:
        return len(self.seen.calls)

    def _enter(self, method: str, context: grpc.ServicerContext) -> Seen:
        seen = self.seen
        with self._lock:
            seen.calls.append(method)
        seen.metadata = dict(context.invocation_metadata())
        seen.time_remaining = context.time_remaining()
        return seen

    def echo(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            self._enter(method, context)
            context.send_initial_metadata((("x-backend-initial", "hello"),))
            context.set_trailing_metadata((("x-backend-trailing", "bye"), ("x-blob-bin", b"\x00\xff")))
            return b"echo:" + request

        return handle

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter(GET_AVAILABILITY, context)
        status = rpc_status.to_status(rich_status())
        context.set_trailing_metadata((*status.trailing_metadata, ("x-extra", "kept")))
        context.abort(status.code, status.details)

    def fail_unavailable(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter(ADJUST_STOCK, context)
        context.abort(grpc.StatusCode.UNAVAILABLE, "stock database is down")

    def hang(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        seen = self._enter(RESERVE, context)
        context.add_callback(seen.terminated.set)
        seen.started.set()
        while context.is_active() and not seen.terminated.wait(0.01):
            pass
        if not context.is_active():
            seen.saw_inactive.set()
        return b""

    def split(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter(WATCH_STOCK, context)
        context.send_initial_metadata((("x-backend-initial", "stream"),))
        context.set_trailing_metadata((("x-backend-trailing", "stream-done"),))
        yield from (bytes([b]) for b in request)

    def gated(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        seen = self._enter(EXPORT_CUSTOMERS, context)
        if request == THEN_FAIL:
            yield b"partial"
            context.abort_with_status(rpc_status.to_status(rich_status()))
        context.add_callback(seen.terminated.set)
        yield b"first"
        seen.started.set()
        if not seen.gate.wait(WAIT * 3):  # longer than any test waits: only cancellation ends it early
            return
        yield b"second"

    def join(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._enter(IMPORT_ITEMS, context)
        return b"|".join(requests)

    def read_until_cancelled(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        seen = self._enter(IMPORT_STOCK_LEVELS, context)
        context.add_callback(seen.terminated.set)
        for request in requests:
            seen.received.append(request)
            seen.started.set()
        return b"done"

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        uu, us, su = (
            grpc.unary_unary_rpc_method_handler,
            grpc.unary_stream_rpc_method_handler,
            grpc.stream_unary_rpc_method_handler,
        )
        return [
            grpc.method_handlers_generic_handler(
                STOCK,
                {
                    "GetItem": uu(self.echo(GET_ITEM)),
                    "GetAvailability": uu(self.fail),
                    "AdjustStock": uu(self.fail_unavailable),
                    "Reserve": uu(self.hang),
                    "WatchStock": us(self.split),
                    "ImportItems": su(self.join),
                    "ImportStockLevels": su(self.read_until_cancelled),
                },
            ),
            grpc.method_handlers_generic_handler(CUSTOMER, {"ExportCustomers": us(self.gated)}),
            grpc.method_handlers_generic_handler(LOYALTY, {"GetAccount": uu(self.echo(GET_ACCOUNT))}),
            grpc.method_handlers_generic_handler(CHECKOUT, {"GetSale": uu(self.echo(GET_SALE))}),
        ]

    def serve(self) -> tuple[grpc.Server, int]:
        """The backend on a free loopback port, SERVING on the health service (Envoy health-checks its clusters
        and the companion asks every backend: an unhealthy backend gets no calls at all)."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        server.add_generic_rpc_handlers(self.handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for name in ("", *FRONTED.values()):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server, port


@dataclass
class RunningGateway:
    """The gateway app (create_app, as `python -m gateway` builds it): Envoy on a port it picked, its companion."""

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

    def close_channels(self) -> None:
        for channel in self.channels:
            channel.close()
        self.channels.clear()

    def stop(self) -> None:
        self.close_channels()
        self.app.stop(0)


def gateway_settings(backend_port: int, jwks_file: Path, **overrides: Any) -> Settings:
    backend = f"127.0.0.1:{backend_port}"
    values: dict[str, Any] = {f"{name}_addr": backend for name in ("checkout", "stock", "customer", "loyalty")}
    values.update(auth_jwks_file=str(jwks_file), envoy_concurrency=2)
    values.update(overrides)
    return service_settings(Settings, "gateway", "", **values)


def start_gateway(backend_port: int, jwks_file: Path, **overrides: Any) -> RunningGateway:
    """The gateway in front of a backend serving every fronted API at `backend_port`, trusting `jwks_file`."""
    app = create_app(gateway_settings(backend_port, jwks_file, **overrides))
    return RunningGateway(app, app.start())


def host_addresses() -> set[str]:
    """This host's IPv4 addresses besides loopback: what Envoy puts in x-forwarded-for for a caller on loopback
    (it appends its own local address then, not 127.0.0.1)."""
    import fcntl
    import struct

    found = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), 0x8915, request)  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address on that interface
            found.add(socket.inet_ntoa(answer[20:24]))
    return {address for address in found if not address.startswith("127.")}


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def uu(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def us(channel: grpc.Channel, method: str) -> grpc.UnaryStreamMultiCallable:
    return channel.unary_stream(method, request_serializer=None, response_deserializer=None)


def su(channel: grpc.Channel, method: str) -> grpc.StreamUnaryMultiCallable:
    return channel.stream_unary(method, request_serializer=None, response_deserializer=None)


def get_item(
    channel: grpc.Channel, token: str | None, payload: bytes = b"sku-1", metadata: Sequence[tuple[str, Any]] = ()
) -> bytes:
    """A raw GetItem through the gateway (the fake backend answers `echo:` + payload)."""
    answer: bytes = uu(channel, GET_ITEM)(payload, timeout=WAIT, metadata=(*bearer(token), *metadata))
    return answer


def watch_stock(channel: grpc.Channel, token: str | None, payload: bytes = b"abc") -> list[bytes]:
    return list(us(channel, WATCH_STOCK)(payload, timeout=WAIT, metadata=bearer(token)))


def import_items(channel: grpc.Channel, token: str | None, messages: Iterator[bytes]) -> bytes:
    answer: bytes = su(channel, IMPORT_ITEMS)(messages, timeout=WAIT, metadata=bearer(token))
    return answer
