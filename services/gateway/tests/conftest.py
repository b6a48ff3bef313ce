"""Fixtures of the gateway tests: the development issuer, one fake backend serving the four fronted services, and the
real gateway (Envoy) in front of it. Envoy takes a moment to start, so gateways of equal settings are shared by the
whole session (`gateway_with`); a test that changes what a gateway holds (its backend, its files) starts its own."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway_kit import FakeBackend, RunningGateway, start_gateway  # noqa: E402

from storeplane_runtime.auth.issuer import DevIssuer  # noqa: E402

Gateways = Callable[..., RunningGateway]

# The shared gateway: the defaults, except a short default deadline (only calls without one see it; every other
# test call sets its own) and a generous budget for calls without a token (health checks, refusals of missing
# tokens: a test of that budget starts a gateway of its own).
SHARED = {"default_deadline_seconds": 1.0, "anonymous_rate_limit_per_second": 1000, "anonymous_rate_limit_burst": 1000}


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> DevIssuer:
    return DevIssuer(tmp_path_factory.mktemp("auth")).ensure()


@pytest.fixture(scope="session")
def backend_server() -> Iterator[tuple[FakeBackend, int]]:
    backend = FakeBackend()
    server, port = backend.serve()
    yield backend, port
    server.stop(None)


@pytest.fixture
def backend(backend_server: tuple[FakeBackend, int]) -> FakeBackend:
    """The shared fake backend, with a fresh record of what reaches it."""
    backend_server[0].reset()
    return backend_server[0]


@pytest.fixture(scope="session")
def gateway_with(backend_server: tuple[FakeBackend, int], issuer: DevIssuer) -> Iterator[Gateways]:
    """gateway_with(**settings): the session's gateway of those settings in front of the shared backend."""
    running: dict[tuple[tuple[str, Any], ...], RunningGateway] = {}

    def get(**overrides: Any) -> RunningGateway:
        key = tuple(sorted({**SHARED, **overrides}.items()))
        if key not in running:
            running[key] = start_gateway(backend_server[1], issuer.jwks_file, **dict(key))
        return running[key]

    yield get
    for gateway in running.values():
        gateway.stop()


@pytest.fixture
def gateway(gateway_with: Gateways) -> Iterator[RunningGateway]:
    """The shared gateway; the channels a test opens on it are closed after the test."""
    shared = gateway_with()
    yield shared
    shared.close_channels()


@pytest.fixture
def channel(gateway: RunningGateway) -> grpc.Channel:
    return gateway.channel()


@pytest.fixture
def make_gateway(backend_server: tuple[FakeBackend, int], issuer: DevIssuer) -> Iterator[Gateways]:
    """Starts gateways of their own (settings as given, in front of the shared backend unless `backend_port`
    says otherwise); stops them after the test."""
    started: list[RunningGateway] = []

    def make(backend_port: int | None = None, **overrides: Any) -> RunningGateway:
        port = backend_server[1] if backend_port is None else backend_port
        gateway = start_gateway(port, issuer.jwks_file, **{**SHARED, **overrides})
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.stop()
