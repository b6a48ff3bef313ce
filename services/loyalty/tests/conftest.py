"""Fixtures of the loyalty tests: the real service (gRPC over a socket) on SQLite or PostgreSQL, on a test clock."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from loyalty_kit import Clock, RunningLoyalty, start_loyalty  # noqa: E402


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_loyalty(clock: Clock) -> Iterator[Callable[..., RunningLoyalty]]:
    started: list[RunningLoyalty] = []

    def make(url: str, **overrides: Any) -> RunningLoyalty:
        running = start_loyalty(url, clock, **overrides)
        started.append(running)
        return running

    yield make
    for running in started:
        running.channel.close()
        running.app.stop(0)


@pytest.fixture
def loyalty(database_url: str, make_loyalty: Callable[..., RunningLoyalty]) -> RunningLoyalty:
    """The service on SQLite and on PostgreSQL."""
    return make_loyalty(database_url)
