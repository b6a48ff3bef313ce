"""Checkout's business metrics: sales and returns by store and currency, sale amounts, basket durations, and lines
left unreserved because stock did not answer.

Sales and returns are counted from the events of each commit (`watch`), so a rolled-back or replayed call counts
nothing and offline uploads count too. Label values are bounded: store ids and currencies are configuration.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from datetime import datetime

from prometheus_client import Counter, Histogram

from pos.checkout.v1 import events_pb2
from storeplane_runtime.db import Database
from storeplane_runtime.outbox import PendingEvent
from storeplane_runtime.stores import MINOR_UNITS, Store, load_stores

__all__ = [
    "BASKET_DURATION",
    "LINES_UNRESERVED",
    "RETURNS",
    "SALES",
    "SALE_AMOUNT",
    "basket_completed",
    "line_unreserved",
    "record_committed",
    "watch",
]

SALE_COMPLETED = events_pb2.SaleCompleted.DESCRIPTOR.full_name
SALE_RETURNED = events_pb2.SaleReturned.DESCRIPTOR.full_name

SALES = Counter(
    "storeplane_checkout_sales_total",
    "Sales committed, by store, currency and channel (till or offline upload)",
    ["store", "currency", "channel"],
)
RETURNS = Counter(
    "storeplane_checkout_returns_total", "Returns committed, by store and currency", ["store", "currency"]
)
SALE_AMOUNT = Histogram(
    "storeplane_checkout_sale_amount",
    "Sale totals in major units of their currency (euros, francs), by currency",
    ["currency"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
BASKET_DURATION = Histogram(
    "storeplane_checkout_basket_duration_seconds",
    "From a basket's opening to its sale, by store",
    ["store"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
LINES_UNRESERVED = Counter(
    "storeplane_checkout_lines_unreserved_total",
    "Scans (operation=scan) and quantity changes (operation=quantity) left unreserved because stock was down: "
    "no answer within the budget, the breaker open, or the call refused",
    ["store", "operation"],
)


def _major(amount_minor: int, currency: str) -> float:
    return amount_minor / 10 ** MINOR_UNITS.get(currency, 2)


def record_committed(events: Sequence[PendingEvent]) -> None:
    """Count the sales and returns among one commit's events."""
    for event in events:
        if event.event_type == SALE_COMPLETED:
            sale = events_pb2.SaleCompleted.FromString(event.payload)
            channel = "offline" if sale.offline else "till"
            SALES.labels(sale.store_id, sale.currency_code, channel).inc()
            SALE_AMOUNT.labels(sale.currency_code).observe(_major(sale.total.amount_minor, sale.currency_code))
        elif event.event_type == SALE_RETURNED:
            sale_return = events_pb2.SaleReturned.FromString(event.payload)
            RETURNS.labels(sale_return.store_id, sale_return.currency_code).inc()


_watched: weakref.WeakSet[Database] = weakref.WeakSet()


def watch(database: Database, stores: Iterable[Store] | None = None) -> None:
    """Count sales and returns from every commit of `database` (call it once per process, in `create_app`), every series
    of the configured stores shown from the start at zero (a rate of nothing yet is 0, not missing)."""
    for store in load_stores().values() if stores is None else stores:
        for channel in ("till", "offline"):
            SALES.labels(store.store_id, store.currency, channel)
        RETURNS.labels(store.store_id, store.currency)
        SALE_AMOUNT.labels(store.currency)
        BASKET_DURATION.labels(store.store_id)
        for operation in ("scan", "quantity"):
            LINES_UNRESERVED.labels(store.store_id, operation)
    if database not in _watched:  # wired twice (create_app and a test), counted once
        _watched.add(database)
        database.on_committed_events(record_committed)


def basket_completed(store_id: str, opened_at: datetime, completed_at: datetime) -> None:
    BASKET_DURATION.labels(store_id).observe(max(0.0, (completed_at - opened_at).total_seconds()))


def line_unreserved(store_id: str, operation: str) -> None:
    LINES_UNRESERVED.labels(store_id, operation).inc()
