"""ExportCustomers: keyset pages in (updated_at, customer_id) order, resumable from any updated_at, tombstones on
request, and a stream that stops reading when its client goes away."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import grpc
import pytest
from customer_kit import RunningCustomer, bulk_customers, register

from customer import storage
from pos.customer.v1 import customer_pb2 as pb
from storeplane_runtime.testing import wait_until
from storeplane_runtime.timestamps import to_timestamp

START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def paged(database_url: str, make_customer, monkeypatch) -> tuple[RunningCustomer, list[int]]:  # type: ignore[no-untyped-def]
    """The service with pages of 7, and the size of every page it read."""
    pages: list[int] = []
    real = storage.export_page

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        page = real(*args, **kwargs)
        pages.append(len(page))
        return page

    monkeypatch.setattr(storage, "export_page", spy)
    return make_customer(database_url, export_page_size=7), pages


def _export(customer: RunningCustomer, **fields: object) -> list[pb.Customer]:
    request = pb.ExportCustomersRequest(**fields)  # type: ignore[arg-type]
    return [r.customer for r in customer.stub.ExportCustomers(request, timeout=30)]


def _key(c: pb.Customer) -> tuple[int, int, str]:
    return (c.updated_at.seconds, c.updated_at.nanos, c.customer_id)


def test_export_streams_everyone_in_order_one_page_at_a_time(paged: tuple[RunningCustomer, list[int]]) -> None:
    customer, pages = paged
    bulk_customers(customer.database, 100, start=START, same_time=3, erased_every=10)
    live = _export(customer)
    assert len(live) == 90 and not any(c.erased for c in live)
    assert [_key(c) for c in live] == sorted(_key(c) for c in live)
    assert pages == [7] * 12 + [6]  # keyset pages of the configured size, never the whole table
    pages.clear()
    everyone = _export(customer, include_erased=True)
    assert len(everyone) == 100 and pages == [7] * 14 + [2]
    tombstones = [c for c in everyone if c.erased]
    assert len(tombstones) == 10 and all(not (c.email or c.given_name or c.loyalty_card_number) for c in tombstones)


def test_a_resumed_export_misses_nothing_and_repeats_only_the_rows_of_that_time(
    paged: tuple[RunningCustomer, list[int]],
) -> None:
    customer, _ = paged
    bulk_customers(customer.database, 60, start=START, same_time=4)
    first = _export(customer)
    for cut in (0, 13, 14, 15, 29, 59):  # the client saw first[: cut + 1], then the stream broke
        seen = first[: cut + 1]
        resumed = _export(customer, updated_since=seen[-1].updated_at)
        assert {c.customer_id for c in seen} | {c.customer_id for c in resumed} == {c.customer_id for c in first}
        repeated = [c for c in resumed if c.customer_id in {s.customer_id for s in seen}]
        assert all(c.updated_at == seen[-1].updated_at for c in repeated)
        assert len(repeated) <= 4


def test_updated_since_filters_and_a_change_moves_a_customer_to_the_end(customer: RunningCustomer) -> None:
    anna = register(customer.stub)
    mark = register(customer.stub)
    later = register(customer.stub)
    since = _export(customer, updated_since=mark.updated_at)
    assert [c.customer_id for c in since] == [mark.customer_id, later.customer_id]
    request = pb.UpdateCustomerRequest(
        request_id="move",
        customer=pb.Customer(customer_id=anna.customer_id, family_name="Moved"),
        update_mask={"paths": ["family_name"]},
    )
    customer.stub.UpdateCustomer(request, timeout=10)
    assert [c.customer_id for c in _export(customer)] == [mark.customer_id, later.customer_id, anna.customer_id]
    future = to_timestamp(datetime(2100, 1, 1, tzinfo=UTC))
    assert _export(customer, updated_since=future) == []


def test_a_cancelled_or_timed_out_export_stops_reading_pages(paged: tuple[RunningCustomer, list[int]]) -> None:
    customer, pages = paged
    bulk_customers(customer.database, 7_000, start=START)
    stream = customer.stub.ExportCustomers(pb.ExportCustomersRequest(), timeout=30)
    for _ in range(10):
        next(stream)
    stream.cancel()
    time.sleep(0.5)
    read = len(pages)
    assert read < 100  # of 1,000 pages: flow control lets the server run a little ahead, then it stops
    time.sleep(0.5)
    assert len(pages) == read
    pages.clear()
    slow = customer.stub.ExportCustomers(pb.ExportCustomersRequest(), timeout=0.5)
    next(slow)
    time.sleep(1.0)  # the deadline passes while the client does not read
    with pytest.raises(grpc.RpcError) as caught:
        list(slow)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: len(pages) < 500, timeout=2, what="the server to stop")
    read = len(pages)
    time.sleep(0.5)
    assert len(pages) == read
