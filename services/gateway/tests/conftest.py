"""Fixtures of the gateway tests: the development issuer, a fake backend under the real APIs' names, the real gateway
in front of it, and a Redis key space of its own per test."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway_kit import FrontedBackend, RunningGateway, serve, start_gateway  # noqa: E402

from storeplane_runtime.auth.issuer import DevIssuer  # noqa: E402
from storeplane_runtime.testing import need  # noqa: E402

REDIS_URL = os.environ.get("STOREPLANE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer(tmp_path / "auth").ensure()


@pytest.fixture
def fronted() -> Iterator[tuple[FrontedBackend, int]]:
    """The fake backend serving the real stock API's name, and its port."""
    backend = FrontedBackend()
    server, port = serve(backend.handler())
    yield backend, port
    server.stop(None)


@pytest.fixture
def make_gateway(fronted: tuple[FrontedBackend, int], issuer: DevIssuer) -> Iterator[Callable[..., RunningGateway]]:
    """Starts gateways (settings overridden as given) in front of `fronted`; stops them after the test."""
    started: list[RunningGateway] = []

    def make(**overrides: Any) -> RunningGateway:
        running = start_gateway(fronted[1], issuer.jwks_file, **overrides)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        need("Redis", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test run uses; its keys are deleted after the test."""
    import redis

    prefix = f"sp-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
