"""Fixtures of the customer tests: the real service (gRPC over a socket) on SQLite or PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from customer_kit import RunningCustomer, start_customer  # noqa: E402


@pytest.fixture
def make_customer() -> Iterator[Callable[..., RunningCustomer]]:
    started: list[RunningCustomer] = []

    def make(url: str, **overrides: Any) -> RunningCustomer:
        running = start_customer(url, **overrides)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def customer(database_url: str, make_customer: Callable[..., RunningCustomer]) -> RunningCustomer:
    """The service on SQLite and on PostgreSQL."""
    return make_customer(database_url)
