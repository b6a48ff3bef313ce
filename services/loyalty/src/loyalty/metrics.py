"""Loyalty's business metrics: points earned and redeemed, by store and currency, counted from the events of each
commit (`watch`), so a rolled-back or redelivered booking counts nothing. Label values are bounded: store ids and
currencies are configuration."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence

from prometheus_client import Counter

from pos.loyalty.v1 import events_pb2
from storeplane_runtime.db import Database
from storeplane_runtime.outbox import PendingEvent
from storeplane_runtime.stores import Store, load_stores

__all__ = ["POINTS_EARNED", "POINTS_REDEEMED", "record_committed", "watch"]

_EARNED = events_pb2.PointsEarned.DESCRIPTOR.full_name
_REDEEMED = events_pb2.PointsRedeemed.DESCRIPTOR.full_name

POINTS_EARNED = Counter(
    "storeplane_loyalty_points_earned_total", "Points earned on sales, by store and currency", ["store", "currency"]
)
POINTS_REDEEMED = Counter(
    "storeplane_loyalty_points_redeemed_total",
    "Points redeemed as discounts, by store and currency",
    ["store", "currency"],
)


def record_committed(events: Sequence[PendingEvent]) -> None:
    """Count the points among one commit's events."""
    for event in events:
        if event.event_type == _EARNED:
            earned = events_pb2.PointsEarned.FromString(event.payload)
            POINTS_EARNED.labels(event.store_id, earned.earned_on.currency_code).inc(earned.points)
        elif event.event_type == _REDEEMED:
            redeemed = events_pb2.PointsRedeemed.FromString(event.payload)
            POINTS_REDEEMED.labels(event.store_id, redeemed.discount.currency_code).inc(redeemed.points)


_watched: weakref.WeakSet[Database] = weakref.WeakSet()


def watch(database: Database, stores: Iterable[Store] | None = None) -> None:
    """Count points from every commit of `database` (call it once per process, in `create_app`), the configured stores'
    series shown from the start at zero."""
    for store in load_stores().values() if stores is None else stores:
        POINTS_EARNED.labels(store.store_id, store.currency)
        POINTS_REDEEMED.labels(store.store_id, store.currency)
    if database not in _watched:  # wired twice (create_app and a test), counted once
        _watched.add(database)
        database.on_committed_events(record_committed)
