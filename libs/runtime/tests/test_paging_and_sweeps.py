"""Page tokens (AIP-158, signed, bound to their listing) and the sweeper that runs a due-work step in batches."""

from __future__ import annotations

from datetime import datetime

import pytest

from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import InvalidInput
from storeplane_runtime.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageTokens
from storeplane_runtime.sweeps import Sweeper


def request(customer: str = "c-1", size: int = 0, token: str = ""):  # type: ignore[no-untyped-def]
    from pos.loyalty.v1 import loyalty_pb2

    return loyalty_pb2.ListTransactionsRequest(customer_id=customer, page_size=size, page_token=token)


def test_page_sizes_follow_common_proto() -> None:
    pages = PageTokens("k", "svc")
    assert pages.read(request(size=0)).size == DEFAULT_PAGE_SIZE
    assert pages.read(request(size=7)).size == 7
    assert pages.read(request(size=10_000)).size == MAX_PAGE_SIZE
    with pytest.raises(InvalidInput) as caught:
        pages.read(request(size=-1))
    assert [v.field for v in caught.value.violations] == ["page_size"]


def test_a_token_reads_back_its_cursor_for_the_same_listing_only() -> None:
    pages = PageTokens("k", "svc")
    token = pages.next_token(request("c-1"), ("2026-01-01T00:00:00Z", 42))
    assert pages.read(request("c-1", size=5, token=token)).cursor == ("2026-01-01T00:00:00Z", 42)
    for other in (request("c-2", token=token), PageTokens("other-key", "svc").read):
        with pytest.raises(InvalidInput) as caught:
            other(request("c-1", token=token)) if callable(other) else pages.read(other)
        assert [v.field for v in caught.value.violations] == ["page_token"]


@pytest.mark.parametrize(
    "mangle", [lambda t: t[:-2] + "AA", lambda t: "x" + t, lambda t: "garbage", lambda t: t + ".x"]
)
def test_altered_tokens_are_invalid_argument(mangle) -> None:  # type: ignore[no-untyped-def]
    pages = PageTokens("k", "svc")
    token = pages.next_token(request("c-1"), ("a", 1))
    with pytest.raises(InvalidInput):
        pages.read(request("c-1", token=mangle(token)))


def test_the_sweeper_runs_batches_until_one_comes_back_short(tmp_path) -> None:  # type: ignore[no-untyped-def]
    database = Database(f"sqlite:///{tmp_path}/s.db")
    due = [7]
    seen: list[tuple[datetime, int]] = []

    def step(uow: UnitOfWork, now: datetime, limit: int) -> int:
        seen.append((now, limit))
        handled = min(due[0], limit)
        due[0] -= handled
        return handled

    sweeper = Sweeper("test-sweeper", database, step, interval=60, batch=3, source="test")
    assert sweeper.sweep() == 7
    assert [limit for _, limit in seen] == [3, 3, 3]
    assert len({now for now, _ in seen}) == 1  # one "now" per sweep
    assert sweeper.sweep() == 0
    database.dispose()
