"""The distributed stack of the end-to-end tests: the five processes as children, each service on a fresh
PostgreSQL database of its own, events over a fresh RabbitMQ vhost (or none), all trusting the test authority."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.testing import free_port, test_authority, wait_serving

SERVICES = {
    "checkout": "pos.checkout.v1.CheckoutService",
    "stock": "pos.stock.v1.StockService",
    "customer": "pos.customer.v1.CustomerService",
    "loyalty": "pos.loyalty.v1.LoyaltyService",
}


@dataclass
class Stack:
    """Addresses of the running processes (and the gateway's), the services' database URLs and the AMQP URL."""

    addresses: dict[str, str]
    databases: dict[str, str]
    amqp_url: str
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def gateway(self, token: str | None = None) -> grpc.Channel:
        """A channel to the gateway whose calls carry `token` (default: every scope, every store)."""
        return with_bearer(grpc.insecure_channel(self.addresses["gateway"]), token or test_authority().token())


def start_stack(
    make_postgres_url: Callable[[], str], tmp_path: Path, amqp_url: str = "", **env: str
) -> Iterator[Stack]:
    ports = {name: free_port() for name in ("gateway", *SERVICES)}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    base = {
        **os.environ,
        "GRPC_HOST": "127.0.0.1",
        "METRICS_PORT": "0",
        "DATA_DIR": str(tmp_path),
        "AUTH_JWKS_FILE": test_authority().jwks_file,
        **env,
    }
    if amqp_url:
        base["AMQP_URL"] = amqp_url
    base.update({f"{name.upper()}_ADDR": addresses[name] for name in SERVICES})
    stack = Stack(addresses, {name: make_postgres_url() for name in SERVICES}, amqp_url)
    try:
        for name in (*SERVICES, "gateway"):
            child_env = {**base, "GRPC_PORT": str(ports[name])}
            if name != "gateway":
                child_env["DATABASE_URL"] = stack.databases[name]
            stack.children[name] = subprocess.Popen([sys.executable, "-m", name], env=child_env, cwd=tmp_path)
        for address in addresses.values():
            wait_serving(address)
        yield stack
    finally:
        for child in stack.children.values():
            child.send_signal(signal.SIGTERM)
        for name, child in stack.children.items():
            assert child.wait(timeout=30) == 0, f"{name} did not stop cleanly"


@pytest.fixture
def distributed(make_postgres_url: Callable[[], str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """The five processes without a broker (each service's events stay in its own process)."""
    for stack in start_stack(make_postgres_url, tmp_path):
        yield stack.addresses


@pytest.fixture
def distributed_with_events(
    make_postgres_url: Callable[[], str], make_amqp_url: Callable[[], str], tmp_path: Path
) -> Iterator[Stack]:
    """The five processes, their events over RabbitMQ (a vhost of this test's own)."""
    yield from start_stack(make_postgres_url, tmp_path, make_amqp_url(), OUTBOX_POLL_SECONDS="0.2")
