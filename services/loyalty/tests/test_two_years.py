"""Two years of simulated time, day by day: customers earn, redeem through holds, return goods and get goodwill;
lots expire on their day. At every step the ledger sums to the balance and no lot is expired twice; on
PostgreSQL two replicas sweep expiry at the same moment."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import timedelta

import grpc
from loyalty_kit import RunningLoyalty, adjust, hold, registered, sale_completed, sale_returned, sweep
from sqlalchemy import func, select

from loyalty.domain import add_months
from loyalty.storage.tables import entries, lots
from storeplane_runtime.clock import as_utc

DAYS = 2 * 365 + 100
CUSTOMERS = 6  # the first two go dormant after three months


def test_two_years_of_earning_redeeming_returning_and_expiring_keep_the_ledger_exact(
    database_url: str, make_loyalty: Callable[..., RunningLoyalty]
) -> None:
    loyalty = make_loyalty(database_url)
    replica = make_loyalty(database_url) if database_url.startswith("postgresql") else None
    rng = random.Random(730)
    customers = [f"sim-{i}" for i in range(CUSTOMERS)]
    dormant = customers[:2]  # they shop in the first three months only: their points live to expire
    for c in customers:
        loyalty.deliver(registered(c, f"card-{c}"))
    start = loyalty.clock()
    sold: list[tuple[str, str, int]] = []  # (sale id, customer, units) open for returns
    n = 0
    for day in range(DAYS):
        today = loyalty.clock.advance(timedelta(days=1))
        for c in rng.sample(customers if day < 90 else customers[2:], 2):
            n += 1
            action = rng.random()
            if action < 0.6:
                units = rng.randint(1, 4)
                available = loyalty.account(c).available_points
                redeem = rng.choice([0, 0, 0, 0, min(available, rng.randint(1, 100))])
                basket = f"basket-{n}"
                if redeem:
                    hold(loyalty.stub, basket, c, redeem)
                sale = sale_completed(
                    f"sale-{n}",
                    customer_id=c,
                    lines=[("a", units, rng.randint(500, 9_000) * units), ("b", 1, rng.randint(0, 5_000))],
                    points_redeemed=redeem,
                    hold_id=basket if redeem else "",
                    completed_at=today,
                )
                loyalty.deliver(sale)
                sold.append((f"sale-{n}", c, units))
            elif action < 0.8 and sold:
                sale_id, owner, units = sold.pop(rng.randrange(len(sold)))
                if day >= 90 and owner in dormant:
                    continue  # dormant customers bring nothing back either
                loyalty.deliver(
                    sale_returned(
                        f"ret-{n}",
                        sale_id,
                        customer_id=owner,
                        lines=[("a", rng.randint(1, units), rng.randint(0, 50))],
                        refunded=rng.randint(0, 5_000),
                    )
                )
            elif action < 0.9:
                adjust(loyalty.stub, c, rng.randint(1, 200))
            else:
                try:
                    adjust(loyalty.stub, c, -rng.randint(1, 50))
                except grpc.RpcError as exc:
                    refused = exc.code()
                    assert refused == grpc.StatusCode.FAILED_PRECONDITION
        sweep(loyalty, "hold-expiry")
        if replica is not None:  # two replicas sweep lots at once
            threads = [threading.Thread(target=sweep, args=(r, "lot-expiry")) for r in (loyalty, replica)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            sweep(loyalty, "lot-expiry")
        if day % 7 == 0 or day > 720:
            loyalty.assert_ledger_sound()
        with loyalty.database.engine.connect() as conn:
            late = conn.execute(
                select(func.count()).select_from(lots).where(lots.c.remaining > 0, lots.c.expires_at <= today)
            ).scalar_one()
            assert late == 0, f"day {day}: {late} lots past their date still hold points"
    loyalty.assert_ledger_sound()
    with loyalty.database.engine.connect() as conn:
        expired = conn.execute(
            select(entries.c.lot_id, entries.c.points, entries.c.occurred_at, lots.c.expires_at, lots.c.points)
            .join(lots, lots.c.lot_id == entries.c.lot_id)
            .where(entries.c.kind == "EXPIRE")
        ).all()
        first_lot = conn.execute(select(func.min(lots.c.expires_at))).scalar_one()
    assert expired, "two years on, some points expired"
    assert [loyalty.account(c).balance for c in dormant] == [0, 0]  # everything they had, expired
    assert len({row.lot_id for row in expired}) == len(expired)  # no lot expired twice
    for row in expired:
        # On the day it fell due (the sweep runs daily here), never before, and never more than the lot held.
        assert as_utc(row.expires_at) <= as_utc(row.occurred_at) < as_utc(row.expires_at) + timedelta(days=1)
        assert 0 < -row.points <= row.points_1
    assert as_utc(first_lot) >= add_months(start, 24)
