"""Fixtures of the checkout tests: the real checkout and stock services (gRPC over sockets), each with its own
database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import contextlib

from checkout_kit import Till, load_demo_stock, start_checkout, start_stock  # noqa: E402

from pos.checkout.v1 import checkout_pb2_grpc  # noqa: E402
from storeplane_runtime.messaging import BUS  # noqa: E402
from storeplane_runtime.testing import RunningService, unsent_events, wait_until  # noqa: E402


@pytest.fixture
def peer_url(database_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Another database of the same kind as the test's (a peer service's own)."""

    def make(name: str) -> str:
        if database_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path}/{name}.db"
        maker: Callable[[], str] = request.getfixturevalue("make_postgres_url")
        return maker()

    return make


@pytest.fixture
def services() -> Iterator[list[RunningService]]:
    # Consumers other tests of this process stopped may still be bound on the in-process bus: unbind them, so no
    # event of ours waits on a consumer that is gone.
    for name in ("checkout", "stock", "customer", "loyalty"):
        BUS.bind(name, [])
    started: list[RunningService] = []
    yield started
    # The services share the process's in-process bus: let every event reach its consumer before any stops (an event
    # for a stopped consumer would hold its relay until the bus's settle timeout).
    for running in started:
        with contextlib.suppress(Exception):
            wait_until(lambda r=running: unsent_events(r.database) == 0, timeout=15, what="the outbox drained")
    for running in reversed(started):
        running.stop()
        # A stopped consumer's in-process queue would stay bound and hold every later publisher of its event types
        # (other tests in this process) until the bus's settle timeout: unbind it.
        if running.app.consumers is not None:
            BUS.bind(running.app.consumers.name, [])


@pytest.fixture
def stock(peer_url: Callable[[str], str], services: list[RunningService]) -> RunningService:
    """The stock service, empty: the `checkout` fixture loads it once checkout listens to its events."""
    running = start_stock(peer_url("stock"))
    services.append(running)
    return running


@pytest.fixture
def make_checkout(database_url: str, services: list[RunningService]) -> Callable[..., RunningService]:
    def make(stock_port: int, **overrides: Any) -> RunningService:
        running = start_checkout(database_url, stock_port=stock_port, **overrides)
        services.append(running)
        return running

    return make


@pytest.fixture
def checkout(make_checkout: Callable[..., RunningService], stock: RunningService) -> RunningService:
    running = make_checkout(stock.port)
    load_demo_stock(stock)
    return running


@pytest.fixture
def till(checkout: RunningService) -> Till:
    return Till(checkout.stub_of(checkout_pb2_grpc.CheckoutServiceStub))
