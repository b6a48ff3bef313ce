"""Loyalty's business metrics: points earned and redeemed by store and currency, counted from the events of a commit
(a transaction rolled back counts nothing)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from loyalty import metrics
from pos.common.v1 import common_pb2
from pos.loyalty.v1 import events_pb2
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.tables import messaging_metadata


def value(name: str, **labels: str) -> float:
    found = REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_points_are_counted_when_their_events_commit(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'loyalty.db'}")
    messaging_metadata.create_all(database.engine)
    metrics.watch(database)
    metrics.watch(database)  # wired twice: counted once
    where = {"store": "zurich-bahnhofstrasse", "currency": "CHF"}
    earned, redeemed = (
        value("storeplane_loyalty_points_earned_total", **where),
        value("storeplane_loyalty_points_redeemed_total", **where),
    )
    earn = events_pb2.PointsEarned(points=120, earned_on=common_pb2.Money(amount_minor=12000, currency_code="CHF"))
    redeem = events_pb2.PointsRedeemed(points=500, discount=common_pb2.Money(amount_minor=500, currency_code="CHF"))

    with UnitOfWork(database, source="loyalty") as uow:
        uow.publish(earn, store_id="zurich-bahnhofstrasse")
        uow.publish(redeem, store_id="zurich-bahnhofstrasse")
        uow.rollback()
    assert value("storeplane_loyalty_points_earned_total", **where) == earned

    with UnitOfWork(database, source="loyalty") as uow:
        uow.publish(earn, store_id="zurich-bahnhofstrasse")
        uow.publish(redeem, store_id="zurich-bahnhofstrasse")
        uow.commit()
    assert value("storeplane_loyalty_points_earned_total", **where) == earned + 120
    assert value("storeplane_loyalty_points_redeemed_total", **where) == redeemed + 500
    database.dispose()
