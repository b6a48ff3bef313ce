"""Small real gRPC servers (real sockets, real protobuf) standing in for the customer and loyalty services in checkout's
tests: FindCustomer, GetAccount and HoldPoints as their contracts describe them, with state the test sets."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc


class Customers(customer_pb2_grpc.CustomerServiceServicer):
    def __init__(self) -> None:
        self.customers: list[customer_pb2.Customer] = []

    def FindCustomer(
        self, request: customer_pb2.FindCustomerRequest, context: grpc.ServicerContext
    ) -> customer_pb2.FindCustomerResponse:
        key = request.WhichOneof("lookup")
        value = getattr(request, key) if key else ""
        if key == "email" and "@" not in value:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not an email address")
        for customer in self.customers:
            if getattr(customer, key or "customer_id") == (value.lower() if key == "email" else value):
                return customer_pb2.FindCustomerResponse(customer=customer)
        context.abort(grpc.StatusCode.NOT_FOUND, "no such customer")
        raise AssertionError


@dataclass
class Loyalty(loyalty_pb2_grpc.LoyaltyServiceServicer):
    balances: dict[str, int] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    holds: dict[str, tuple[str, int]] = field(default_factory=dict)  # hold id -> (customer, points)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _account(self, customer_id: str) -> loyalty_pb2.Account:
        held = sum(p for c, p in self.holds.values() if c == customer_id)
        balance = self.balances[customer_id]
        return loyalty_pb2.Account(
            customer_id=customer_id,
            balance=balance,
            held_points=held,
            available_points=balance - held,
            tier=self.tiers.get(customer_id, loyalty_pb2.TIER_BRONZE),  # type: ignore[arg-type]
        )

    def GetAccount(
        self, request: loyalty_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> loyalty_pb2.GetAccountResponse:
        with self.lock:
            if request.customer_id not in self.balances:
                context.abort(grpc.StatusCode.NOT_FOUND, "no account")
            return loyalty_pb2.GetAccountResponse(account=self._account(request.customer_id))

    def HoldPoints(
        self, request: loyalty_pb2.HoldPointsRequest, context: grpc.ServicerContext
    ) -> loyalty_pb2.HoldPointsResponse:
        with self.lock:
            if request.customer_id not in self.balances:
                context.abort(grpc.StatusCode.NOT_FOUND, "no account")
            current = self.holds.get(request.hold_id, (request.customer_id, 0))[1]
            available = self._account(request.customer_id).available_points + current
            if request.points > available:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS")
            if request.points:
                self.holds[request.hold_id] = (request.customer_id, request.points)
            else:
                self.holds.pop(request.hold_id, None)
            hold = loyalty_pb2.Hold(hold_id=request.hold_id, customer_id=request.customer_id, points=request.points)
            return loyalty_pb2.HoldPointsResponse(hold=hold, account=self._account(request.customer_id))


class PeerServer:
    """One gRPC server on a free loopback port; stop() and start() again on the same port (a peer going down)."""

    def __init__(self, register: object, servicer: object) -> None:
        self.register = register
        self.servicer = servicer
        self.port = 0
        self.server: grpc.Server | None = None
        self.start()

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.register(self.servicer, server)  # type: ignore[operator]
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None
