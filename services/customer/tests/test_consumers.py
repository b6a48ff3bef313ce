"""Purchase statistics from checkout's SaleCompleted and SaleReturned: exactly once, in any order, anonymous sales
ignored; a change of the statistics is a change of the customer (updated_at, export)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from customer_kit import BERLIN, ZURICH, RunningCustomer, register

from pos.checkout.v1 import events_pb2 as checkout
from pos.common.v1 import common_pb2
from pos.customer.v1 import customer_pb2 as pb
from storeplane_runtime.testing import deliver
from storeplane_runtime.timestamps import to_timestamp

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def _money(amount: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency_code=currency)


def sale(customer_id: str, sale_id: str, amount: int, *, currency: str = "EUR", store: str = BERLIN, hours: int = 0):
    return checkout.SaleCompleted(
        sale_id=sale_id,
        store_id=store,
        customer_id=customer_id,
        currency_code=currency,
        amount_paid=_money(amount, currency),
        completed_at=to_timestamp(T0 + timedelta(hours=hours)),
    )


def refund(customer_id: str, return_id: str, sale_id: str, amount: int, *, currency: str = "EUR"):
    return checkout.SaleReturned(
        return_id=return_id,
        original_sale_id=sale_id,
        store_id=BERLIN,
        customer_id=customer_id,
        currency_code=currency,
        amount_refunded=_money(amount, currency),
        returned_at=to_timestamp(T0 + timedelta(days=1)),
    )


def _stats(customer: RunningCustomer, customer_id: str) -> pb.PurchaseStats:
    return customer.stub.GetCustomer(pb.GetCustomerRequest(customer_id=customer_id), timeout=10).customer.stats


def test_duplicated_and_reordered_sales_and_returns_give_exact_totals(customer: RunningCustomer) -> None:
    anna = register(customer.stub)
    events = [
        sale(anna.customer_id, "s1", 10_00, hours=1),
        sale(anna.customer_id, "s2", 25_50, hours=5, store=ZURICH, currency="CHF"),
        sale(anna.customer_id, "s3", 7_00, hours=3),
        refund(anna.customer_id, "r1", "s1", 4_00),
        refund(anna.customer_id, "r2", "s2", 25_50, currency="CHF"),
    ]
    deliveries = [(event, f"event-{i}") for i, event in enumerate(events)]
    deliveries += deliveries[:3]  # redelivered with the same event ids
    deliveries += [(events[3], "replayed-under-a-new-id"), (events[0], "another-new-id")]
    random.Random(7).shuffle(deliveries)
    deliveries.insert(0, (events[4], "event-4-early"))  # a return before its sale
    outcomes = [deliver(customer.app, event, event_id=event_id) for event, event_id in deliveries]
    assert outcomes.count("applied") == len(outcomes) - 3  # the three same-id redeliveries are duplicates
    stats = _stats(customer, anna.customer_id)
    assert (stats.sale_count, stats.return_count) == (3, 2)
    assert {m.currency_code: m.amount_minor for m in stats.lifetime_spend} == {"EUR": 13_00, "CHF": 0}
    assert stats.last_purchase_at == to_timestamp(T0 + timedelta(hours=5))
    assert stats.last_purchase_store_id == ZURICH


def test_anonymous_and_unknown_customers_sales_change_nothing(customer: RunningCustomer) -> None:
    anna = register(customer.stub)
    assert deliver(customer.app, sale("", "anon", 5_00)) == "applied"
    assert deliver(customer.app, sale("no-such-customer", "ghost", 5_00)) == "applied"
    assert deliver(customer.app, refund("", "anon-r", "anon", 1_00)) == "applied"
    assert _stats(customer, anna.customer_id).sale_count == 0


def test_a_stats_change_moves_updated_at_and_the_export_shows_it_last(customer: RunningCustomer) -> None:
    anna = register(customer.stub)
    register(customer.stub)
    deliver(customer.app, sale(anna.customer_id, "s-late", 3_00))
    after = customer.stub.GetCustomer(pb.GetCustomerRequest(customer_id=anna.customer_id), timeout=10).customer
    assert after.updated_at.ToDatetime() > anna.updated_at.ToDatetime()
    exported = [r.customer.customer_id for r in customer.stub.ExportCustomers(pb.ExportCustomersRequest(), timeout=10)]
    assert exported[-1] == anna.customer_id


def test_an_erased_customers_stats_stay_in_the_tombstone(customer: RunningCustomer) -> None:
    anna = register(customer.stub)
    deliver(customer.app, sale(anna.customer_id, "s-before", 9_00))
    customer.stub.EraseCustomer(pb.EraseCustomerRequest(request_id="er", customer_id=anna.customer_id), timeout=10)
    deliver(customer.app, refund(anna.customer_id, "r-after", "s-before", 2_00))
    tombstone = customer.stub.GetCustomer(pb.GetCustomerRequest(customer_id=anna.customer_id), timeout=10).customer
    assert tombstone.erased and (tombstone.stats.sale_count, tombstone.stats.return_count) == (1, 1)
    assert [(m.currency_code, m.amount_minor) for m in tombstone.stats.lifetime_spend] == [("EUR", 7_00)]
