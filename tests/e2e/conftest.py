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
from storeplane_runtime.testing import free_port_block, test_authority, wait_serving

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
    # How each child was started (its environment and working directory), to start it again the same way.
    environments: dict[str, dict[str, str]] = field(default_factory=dict)
    directory: Path | None = None
    # Children killed on purpose and not started again: their exit status is not a clean stop's.
    killed: set[str] = field(default_factory=set)
    # Children frozen (SIGSTOP): alive, holding their sockets open, answering nothing; thawed before the teardown.
    frozen: set[str] = field(default_factory=set)
    # host:port of each process's Prometheus metrics (start_stack(..., metrics=True); empty otherwise)
    metrics: dict[str, str] = field(default_factory=dict)
    # Where each child's stderr (its JSON log lines) goes, as `<name>.log`; None: the test's own stderr.
    logs: Path | None = None

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start the child `name` with its environment (its log file appended to, when logs are kept)."""
        if self.logs is None:
            return subprocess.Popen([sys.executable, "-m", name], env=self.environments[name], cwd=self.directory)
        with open(self.logs / f"{name}.log", "ab") as stderr:  # the child keeps its own descriptor
            return subprocess.Popen(
                [sys.executable, "-m", name], env=self.environments[name], cwd=self.directory, stderr=stderr
            )

    def log_lines(self, name: str) -> list[str]:
        """The lines the child `name` has written to stderr so far (logs kept only)."""
        assert self.logs is not None, "start_stack(..., logs=...) keeps the children's logs"
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def kill(self, name: str) -> None:
        """SIGKILL the child `name` (no shutdown of its own: no drain, no goodbye to the broker) and reap it."""
        child = self.children[name]
        self.killed.add(name)
        child.kill()
        child.wait(timeout=30)

    def stop(self, name: str) -> None:
        """SIGTERM the child `name` and wait until it has stopped cleanly."""
        child = self.children[name]
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0, f"{name} did not stop cleanly"

    def freeze(self, name: str) -> None:
        """SIGSTOP the child `name`: a peer that hangs (connections accepted, no answers), not one that is gone."""
        self.frozen.add(name)
        self.children[name].send_signal(signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        """SIGCONT the frozen child `name`: it goes on where it stopped."""
        self.children[name].send_signal(signal.SIGCONT)
        self.frozen.discard(name)

    def restart(self, name: str) -> None:
        """Start the stopped child `name` again as before (same environment, port and database); wait until it
        serves."""
        assert self.children[name].poll() is not None, f"{name} is still running"
        self.children[name] = self.spawn(name)
        self.killed.discard(name)
        wait_serving(self.addresses[name], SERVICES.get(name, ""))

    def gateway(self, token: str | None = None) -> grpc.Channel:
        """A channel to the gateway whose calls carry `token` (default: every scope, every store)."""
        return with_bearer(grpc.insecure_channel(self.addresses["gateway"]), token or test_authority().token())


def start_stack(
    make_postgres_url: Callable[[], str],
    tmp_path: Path,
    amqp_url: str = "",
    logs: Path | None = None,
    *,
    metrics: bool = False,
    **env: str,
) -> Iterator[Stack]:
    """The stack for the test's life; with `logs`, each child's stderr goes to `<logs>/<name>.log`."""
    # Ports outside the kernel's ephemeral range: an outgoing connection of any process on the machine could take a
    # port from that range between our check and the child's bind. gRPC ports first, then metrics ports.
    names = ("gateway", *SERVICES)
    first = free_port_block(2 * len(names))
    ports = {name: first + i for i, name in enumerate(names)}
    metrics_ports = {name: first + len(names) + i for i, name in enumerate(names)}
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
    stack = Stack(addresses, {name: make_postgres_url() for name in SERVICES}, amqp_url, directory=tmp_path, logs=logs)
    try:
        for name in (*SERVICES, "gateway"):
            child_env = {**base, "GRPC_PORT": str(ports[name])}
            if metrics:  # each process's Prometheus metrics on a port of its own
                metrics_port = metrics_ports[name]
                child_env["METRICS_PORT"] = str(metrics_port)
                stack.metrics[name] = f"127.0.0.1:{metrics_port}"
            if name != "gateway":
                child_env["DATABASE_URL"] = stack.databases[name]
            stack.environments[name] = child_env
            stack.children[name] = stack.spawn(name)
        for address in addresses.values():
            wait_serving(address)
        yield stack
    finally:
        for name in list(stack.frozen):
            stack.thaw(name)
        for child in stack.children.values():
            child.send_signal(signal.SIGTERM)
        for name, child in stack.children.items():
            assert child.wait(timeout=30) == 0 or name in stack.killed, f"{name} did not stop cleanly"


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
