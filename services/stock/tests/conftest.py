"""Fixtures of the stock tests: the real service (gRPC over a socket) on SQLite or PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from stock_kit import RunningStock, start_stock  # noqa: E402


@pytest.fixture
def make_stock() -> Iterator[Callable[..., RunningStock]]:
    started: list[RunningStock] = []

    def make(url: str, **overrides: Any) -> RunningStock:
        running = start_stock(url, **overrides)
        started.append(running)
        return running

    yield make
    for running in started:
        running.channel.close()
        running.app.stop(0)


@pytest.fixture
def stock(database_url: str, make_stock: Callable[..., RunningStock]) -> RunningStock:
    """The service on SQLite and on PostgreSQL."""
    return make_stock(database_url)
