"""One sale through the gateway is one trace, distributed: five processes on PostgreSQL, events over RabbitMQ, spans
exported by OTLP/HTTP to a receiver of the test's own. The till sends a sampled `traceparent` (a store edge's trace)
on each call of the sale; the trace then holds gateway -> checkout -> stock / customer / loyalty calls, SQL
statements, the relay's publish and the three consumers' handling, children of the publish and linked to it. Every
log line of the sale carries its trace id, and no process logs a demo customer's name, email or phone."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from pos.common.v1 import common_pb2
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_cli import demo_data
from storeplane_cli.seed import seed
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.testing import free_port_block, test_authority, wait_until

from .conftest import Stack, start_stack

STORE = "berlin-mitte"
WAIT = 30.0
SERVER, CLIENT, PRODUCER, CONSUMER = (
    trace_pb2.Span.SPAN_KIND_SERVER,
    trace_pb2.Span.SPAN_KIND_CLIENT,
    trace_pb2.Span.SPAN_KIND_PRODUCER,
    trace_pb2.Span.SPAN_KIND_CONSUMER,
)
SALE_COMPLETED = "pos.checkout.v1.SaleCompleted"


@dataclass(frozen=True)
class Span:
    """An exported span, flattened: the process (service.name) that made it and what the tree needs."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]
    attributes: dict[str, str]


class Receiver:
    """An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf) on a free local port; keeps every span."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = _read_body(self)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body), body)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest, body: bytes) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            links=tuple(link.span_id.hex() for link in span.links),
                            attributes={a.key: _text(a.value) for a in span.attributes},
                        )
                    )
        with self._lock:
            self.spans.extend(spans)
            self.raw.append(body)

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request's body, by its length or in chunks (Envoy's OpenTelemetry tracer posts chunked)."""
    if handler.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    body = b""
    while size := int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16):
        body += handler.rfile.read(size)
        handler.rfile.readline()
    handler.rfile.readline()
    return body


def _text(value: object) -> str:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return "" if kind is None else str(getattr(value, kind))


@dataclass
class Traced:
    stack: Stack
    receiver: Receiver
    channel: grpc.Channel


@pytest.fixture
def traced(make_postgres_url: Callable[[], str], make_amqp_url: Callable[[], str], tmp_path: Path) -> Iterator[Traced]:
    """The five processes exporting every span to the test's receiver, logging at DEBUG (one line per RPC and per
    handled event) to files of their own."""
    receiver = Receiver()
    logs = tmp_path / "logs"
    logs.mkdir()
    stacks = start_stack(
        make_postgres_url,
        tmp_path,
        make_amqp_url(),
        logs=logs,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_TRACES_SAMPLER="parentbased_always_on",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OUTBOX_POLL_SECONDS="0.2",
        LOG_LEVEL="DEBUG",
    )
    try:
        for stack in stacks:
            token = test_authority().token()
            report = seed(stack.addresses["gateway"], token)
            assert report.ok and not report.pending, report.render()
            with stack.gateway(token) as channel:
                yield Traced(stack, receiver, channel)
    finally:
        receiver.close()


def rid() -> str:
    return str(uuid.uuid4())


def _descends(spans: dict[str, Span], span: Span, ancestor: str) -> bool:
    """Whether `ancestor` (a span id) is on `span`'s parent chain within the trace."""
    seen = span
    while seen.parent_id:
        if seen.parent_id == ancestor:
            return True
        parent = spans.get(seen.parent_id)
        if parent is None:
            return False
        seen = parent
    return False


def test_a_sale_through_the_gateway_is_one_trace_across_grpc_sql_and_rabbitmq_and_its_logs_carry_its_id(
    traced: Traced,
) -> None:
    checkout = checkout_pb2_grpc.CheckoutServiceStub(traced.channel)
    customers = customer_pb2_grpc.CustomerServiceStub(traced.channel)
    loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(traced.channel)
    person = next(p for p in demo_data.customers() if p.home_store_id == STORE)
    on_hand = {sku: n for store, sku, n in demo_data.stock_levels() if store == STORE}
    items = [i for i in demo_data.catalogue() if "EUR" in i.prices_minor and on_hand.get(i.sku, 0) >= 3][:2]
    customer_id = customers.FindCustomer(
        customer_pb2.FindCustomerRequest(loyalty_card_number=person.loyalty_card_number), timeout=5
    ).customer.customer_id

    def enrolled() -> bool:
        try:
            loyalty.GetAccount(loyalty_pb2.GetAccountRequest(customer_id=customer_id), timeout=5)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    wait_until(enrolled, WAIT, "loyalty enrolled the demo customer")
    loyalty.AdjustPoints(
        loyalty_pb2.AdjustPointsRequest(
            customer_id=customer_id, points=1_000, reason=loyalty_pb2.ADJUSTMENT_REASON_PROMOTION, request_id=rid()
        ),
        timeout=5,
    )
    marks = {name: len(traced.stack.log_lines(name)) for name in traced.stack.children}

    # The sale: each call in the store edge's sampled trace (its span id is the gateway spans' parent).
    trace_id, edge = secrets.token_hex(16), secrets.token_hex(8)
    sale_call = {"timeout": 5, "metadata": (("traceparent", f"00-{trace_id}-{edge}-01"),)}
    basket = checkout.OpenBasket(
        checkout_pb2.OpenBasketRequest(store_id=STORE, terminal_id="till-1", cashier_id="c-1", request_id=rid()),
        **sale_call,
    ).basket
    for item in items:
        checkout.ScanItem(
            checkout_pb2.ScanItemRequest(basket_id=basket.basket_id, barcode=item.barcode, request_id=rid()),
            **sale_call,
        )
    checkout.AttachCustomer(
        checkout_pb2.AttachCustomerRequest(
            basket_id=basket.basket_id, loyalty_card_number=person.loyalty_card_number, request_id=rid()
        ),
        **sale_call,
    )
    basket = checkout.RedeemPoints(
        checkout_pb2.RedeemPointsRequest(basket_id=basket.basket_id, points=200, request_id=rid()), **sale_call
    ).basket
    tender = checkout_pb2.Tender(
        type=checkout_pb2.TENDER_TYPE_CARD,
        amount=common_pb2.Money(amount_minor=basket.total.amount_minor, currency_code="EUR"),
    )
    checkout.CompleteSale(
        checkout_pb2.CompleteSaleRequest(basket_id=basket.basket_id, tenders=[tender], request_id=rid()), **sale_call
    )

    def handled_by_all() -> bool:
        handling = {s.service for s in traced.receiver.trace(trace_id) if s.kind == CONSUMER}
        return handling >= {"stock", "loyalty", "customer"}

    wait_until(handled_by_all, WAIT, "stock, loyalty and customer handled the sale's event, in its trace")
    wait_until(lambda: _settled(traced.receiver, trace_id), WAIT, "the spans of the handling were exported")
    spans = {s.span_id: s for s in traced.receiver.trace(trace_id)}
    every = list(spans.values())

    # Five processes, one trace.
    assert {s.service for s in every} == {"gateway", "checkout", "stock", "customer", "loyalty"}
    # gateway: one SERVER span per call of the till, children of the edge's span.
    fronted = [s for s in every if s.service == "gateway" and s.kind == SERVER]
    assert sorted(s.name.rsplit("/", 1)[-1] for s in fronted) == sorted(
        ["OpenBasket", *(["ScanItem"] * len(items)), "AttachCustomer", "RedeemPoints", "CompleteSale"]
    )
    assert all(s.parent_id == edge for s in fronted)
    # checkout serves each as a child of the gateway's CLIENT span of the call, itself a child of the gateway's
    # SERVER span of the same method.
    served = [s for s in every if s.service == "checkout" and s.kind == SERVER]
    assert len(served) == len(fronted)
    for span in served:
        forwarding = spans[span.parent_id]
        # Envoy names its upstream span after the cluster ("router <cluster> egress"), not the method.
        assert (forwarding.service, forwarding.kind) == ("gateway", CLIENT), span
        assert forwarding.name == f"router {span.name.strip('/').split('/')[0].replace('.', '_')} egress", forwarding
        assert spans[forwarding.parent_id] in fronted and spans[forwarding.parent_id].name == span.name
    (complete,) = [s for s in served if s.name.endswith("/CompleteSale")]
    # checkout's CLIENT calls to its peers, each served by the peer as its child.
    for peer in ("stock", "customer", "loyalty"):
        handled = [s for s in every if s.service == peer and s.kind == SERVER]
        assert handled, f"no {peer} call in the sale's trace"
        for span in handled:
            caller = spans[span.parent_id]
            assert (caller.service, caller.kind) == ("checkout", CLIENT), span
            assert caller.name.rsplit("/", 1)[-1] == span.name.rsplit("/", 1)[-1]
    assert any(s.name.endswith("/Reserve") for s in every if s.service == "stock" and s.kind == SERVER)
    # SQL statements, on PostgreSQL, inside the calls (checkout's commit of the sale among them).
    statements = [s for s in every if s.kind == CLIENT and s.attributes.get("db.system.name") == "postgresql"]
    assert {s.service for s in statements} >= {"checkout", "stock", "customer", "loyalty"}
    assert any(_descends(spans, s, complete.span_id) for s in statements if s.service == "checkout")
    # The relay publishes SaleCompleted in a PRODUCER span under CompleteSale...
    (publish,) = [
        s
        for s in every
        if s.kind == PRODUCER and s.attributes.get("messaging.rabbitmq.destination.routing_key") == SALE_COMPLETED
    ]
    assert publish.service == "checkout" and publish.name == "publish pos.events"
    assert _descends(spans, publish, complete.span_id)
    assert publish.attributes["messaging.destination.name"] == "pos.events"
    assert publish.attributes["messaging.system"] == "rabbitmq"
    sale_event_id = publish.attributes["messaging.message.id"]
    # ... and stock, loyalty and customer each handle it in a CONSUMER span, child of and linked to the publish.
    handling = [s for s in every if s.kind == CONSUMER and s.attributes.get("messaging.message.id") == sale_event_id]
    assert sorted(s.service for s in handling) == ["customer", "loyalty", "stock"]
    for span in handling:
        assert span.name == "process pos.events"
        assert span.parent_id == publish.span_id and span.links == (publish.span_id,)
        assert span.attributes["messaging.consumer.group.name"] == span.service
        assert any(_descends(spans, s, span.span_id) for s in statements if s.service == span.service), span

    # Logs: one JSON line per RPC and per handled event of the sale, each with the sale's trace id.
    wait_until(lambda: _sale_lines(traced.stack, marks, sale_event_id)[2], WAIT, "the processes logged the sale")
    rpc_lines, event_lines, _ = _sale_lines(traced.stack, marks, sale_event_id)
    # Envoy writes its access log every 100 ms: lines of the calls made before the marks may land after them.
    rpc_lines = [(name, line) for name, line in rpc_lines if name != "gateway" or line.get("trace_id") == trace_id]
    assert {name for name, _ in rpc_lines} == {"gateway", "checkout", "stock", "customer", "loyalty"}
    assert sum(1 for name, _ in rpc_lines if name == "gateway") == len(fronted)
    assert sorted(name for name, _ in event_lines) == ["customer", "loyalty", "stock"]
    for name, line in [*rpc_lines, *event_lines]:
        assert line.get("trace_id") == trace_id and len(line.get("span_id", "")) == 16, (name, line)

    # No personal data of any demo customer in any process's logs, nor in any exported span.
    everything = "\n".join(line for name in traced.stack.children for line in traced.stack.log_lines(name))
    spans_text = b"".join(traced.receiver.raw)
    for someone in demo_data.customers():
        for secret in (someone.email, someone.phone, f"{someone.given_name} {someone.family_name}"):
            assert secret not in everything, f"a log line carries a demo customer's data ({secret[:3]}...)"
            assert secret.encode() not in spans_text, f"a span carries a demo customer's data ({secret[:3]}...)"
        assert someone.family_name not in everything


def _settled(receiver: Receiver, trace_id: str) -> bool:
    """The trace has stopped growing: two looks 0.5 s apart see the same spans."""
    before = len(receiver.trace(trace_id))
    time.sleep(0.5)
    return before == len(receiver.trace(trace_id)) and before > 0


def _sale_lines(
    stack: Stack, marks: dict[str, int], event_id: str
) -> tuple[list[tuple[str, dict[str, str]]], list[tuple[str, dict[str, str]]], bool]:
    """The JSON lines each process wrote since `marks`: (process, line) of every RPC line and of every handling of
    the event `event_id`; and whether all three consumers' handling lines are there."""
    rpc: list[tuple[str, dict[str, str]]] = []
    events: list[tuple[str, dict[str, str]]] = []
    for name in stack.children:
        for text in stack.log_lines(name)[marks[name] :]:
            if not text.startswith("{"):
                continue
            line = json.loads(text)
            if line.get("logger") == "storeplane.rpc" and line.get("message") == "rpc":
                rpc.append((name, line))
            elif line.get("message") == "event handled" and line.get("event_id") == event_id:
                events.append((name, line))
    return rpc, events, len(events) >= 3


def test_in_the_embedded_stack_each_services_spans_carry_its_own_name(tmp_path: Path) -> None:
    """`storeplane run` serves all five in one process: a sale's spans still say which service made them (the
    SERVER span of each call, the SQL under it, the relay's publish and each consumer's handling)."""
    receiver = Receiver()
    base_port = free_port_block(5)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OUTBOX_POLL_SECONDS": "0.2",
    }
    data = tmp_path / "data"
    command = [sys.executable, "-m", "storeplane_cli", "run", "--data-dir", str(data), "--base-port", str(base_port)]
    proc = subprocess.Popen(
        [*command, "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "gateway at" in proc.stdout.readline()
        token = subprocess.run(
            [sys.executable, "-m", "storeplane_cli", "token", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=True,
            env=env,
        ).stdout.strip()
        on_hand = {sku: n for store, sku, n in demo_data.stock_levels() if store == STORE}
        item = next(i for i in demo_data.catalogue() if "EUR" in i.prices_minor and on_hand.get(i.sku, 0) >= 3)
        with with_bearer(grpc.insecure_channel(f"127.0.0.1:{base_port}"), token) as channel:
            checkout = checkout_pb2_grpc.CheckoutServiceStub(channel)
            trace_id = secrets.token_hex(16)
            call = {"timeout": 10, "metadata": (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)}

            scanned: list[checkout_pb2.Basket] = []

            def scan() -> bool:  # the stack seeds the demo data as it starts: until then the item is unknown
                try:
                    request = checkout_pb2.OpenBasketRequest(
                        store_id=STORE, terminal_id="till-1", cashier_id="c-1", request_id=rid()
                    )
                    basket_id = checkout.OpenBasket(request, **call).basket.basket_id
                    line = checkout_pb2.ScanItemRequest(basket_id=basket_id, barcode=item.barcode, request_id=rid())
                    scanned.append(checkout.ScanItem(line, **call).basket)
                except grpc.RpcError as exc:
                    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                        return False
                    raise
                return True

            wait_until(scan, 60, "a basket with the scanned item")
            basket = scanned[-1]
            tender = checkout_pb2.Tender(
                type=checkout_pb2.TENDER_TYPE_CASH,
                amount=common_pb2.Money(amount_minor=basket.total.amount_minor, currency_code="EUR"),
            )
            checkout.CompleteSale(
                checkout_pb2.CompleteSaleRequest(basket_id=basket.basket_id, tenders=[tender], request_id=rid()),
                **call,
            )

        def handled() -> bool:
            return {s.service for s in receiver.trace(trace_id) if s.kind == CONSUMER} >= {"stock", "loyalty"}

        wait_until(handled, WAIT, "stock and loyalty handled the sale's event, in its trace")
        wait_until(lambda: _settled(receiver, trace_id), WAIT, "the spans of the handling were exported")
        spans = {s.span_id: s for s in receiver.trace(trace_id)}
        every = list(spans.values())
        assert {s.service for s in every} >= {"gateway", "checkout", "stock", "loyalty"}
        # Each call is served under the name of the service it belongs to (pos.<service>.v1.<Service>/<method>),
        # the gateway's own SERVER spans excepted.
        for span in every:
            if span.kind == SERVER and span.service != "gateway":
                assert span.name.split(".")[1] == span.service, span
        assert {s.service for s in every if s.kind == SERVER} >= {"gateway", "checkout", "stock"}
        for span in every:
            parent = spans.get(span.parent_id)
            if span.kind == CLIENT and "db.system.name" in span.attributes:
                assert parent is not None and parent.service == span.service, span  # SQL: the service it ran for
            if span.kind == CONSUMER:
                assert span.attributes["messaging.consumer.group.name"] == span.service, span
            if span.kind == PRODUCER:
                assert span.service == "checkout" or parent is None or parent.service == span.service, span
        assert any(s.kind == PRODUCER and s.service == "checkout" for s in every)
    finally:
        proc.send_signal(signal.SIGTERM)  # (that it stops gracefully is test_processes.py's)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        receiver.close()
