"""Duplicated and reordered SaleCompleted / SaleReturned / CustomerRegistered events give the same ledger as
in-order delivery (a seeded shuffle loop over many orders: hypothesis is not in the environment)."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from typing import Any

from loyalty_kit import RunningLoyalty, adjust, registered, sale_completed, sale_returned
from sqlalchemy import select

from loyalty.storage.tables import accounts, entries, sales

TRIALS = 25


def _story(tag: str) -> list[Any]:
    """One customer's events in the order they happened: registration, sales (one paying with points), partial
    and full returns. Spend stays below Silver so the multiplier is Bronze in every order."""
    c, card = f"cust-{tag}", f"card-{tag}"
    who: dict[str, Any] = {"customer_id": c, "card": card}
    return [
        registered(c, card),
        sale_completed(f"s1-{tag}", lines=[("a", 3, 9_000), ("b", 1, 4_550)], **who),  # 135 points
        sale_completed(f"s2-{tag}", lines=[("a", 2, 12_000)], points_redeemed=80, hold_id=f"h2-{tag}", **who),
        sale_returned(f"r1-{tag}", f"s1-{tag}", lines=[("a", 1, 0)], refunded=3_000, **who),
        sale_completed(f"s3-{tag}", lines=[("x", 5, 7_777), ("y", 1, 1), ("z", 2, 222)], **who),
        sale_returned(f"r2-{tag}", f"s2-{tag}", lines=[("a", 1, 40)], refunded=6_000, **who),
        sale_returned(f"r3-{tag}", f"s1-{tag}", lines=[("a", 2, 0), ("b", 1, 0)], refunded=10_550, **who),
        sale_returned(f"r4-{tag}", f"s3-{tag}", lines=[("x", 3, 0), ("z", 1, 0)], refunded=5_000, **who),
    ]


def _ledger(loyalty: RunningLoyalty, tag: str) -> tuple[Any, ...]:
    with loyalty.database.engine.connect() as conn:
        account = conn.execute(select(accounts).where(accounts.c.customer_id == f"cust-{tag}")).one()
        rows = conn.execute(
            select(entries.c.kind, entries.c.points, entries.c.sale_id, entries.c.return_id).where(
                entries.c.account_id == account.account_id
            )
        ).all()
        booked = conn.execute(select(sales.c.sale_id, sales.c.lines).where(sales.c.account_id == account.account_id))
        lines = {sale_id.split("-")[0]: lines for sale_id, lines in booked}
    normal = Counter((kind, points, sale.split("-")[0], ret.split("-")[0]) for kind, points, sale, ret in rows)
    return (
        account.balance,
        account.held_points,
        account.tier,
        account.card_number.split("-")[0],
        sorted(normal.items()),
        lines,
    )


def test_any_order_with_duplicates_gives_the_in_order_ledger(loyalty: RunningLoyalty) -> None:
    rng = random.Random(20260115)
    ordered = "ordered"
    for event in _story(ordered):
        loyalty.deliver(event)
        if event.DESCRIPTOR.name == "CustomerRegistered":
            adjust(loyalty.stub, f"cust-{ordered}", 1_000)
    expected = _ledger(loyalty, ordered)
    # 1,000 goodwill; s1 earns 135 (lines a/b: 90/45), s2 redeems 80 and earns 120, s3 earns 80 (x/y/z: 78/0/2);
    # r1 claws 30, r2 60 and refunds 40, r3 60 + 45, r4 46 + 1.
    assert expected[0] == 1_000 + 135 - 80 + 120 + 80 - 30 - 60 + 40 - 60 - 45 - 46 - 1 == 1_053
    for trial in range(TRIALS):
        tag = f"t{trial}"
        deliveries = [(event, str(uuid.uuid4())) for event in _story(tag)]
        for _ in range(4):  # redeliveries: the same event id, or the same sale/return under a new one
            event, event_id = rng.choice(deliveries)
            deliveries.append((event, event_id if rng.random() < 0.5 else str(uuid.uuid4())))
        rng.shuffle(deliveries)
        adjusted = False
        for event, event_id in deliveries:
            loyalty.deliver(event, event_id=event_id)
            if event.DESCRIPTOR.name == "CustomerRegistered" and not adjusted:
                adjusted = True
                adjust(loyalty.stub, f"cust-{tag}", 1_000)
        order = [getattr(e, "sale_id", "") or getattr(e, "return_id", "") or "reg" for e, _ in deliveries]
        assert _ledger(loyalty, tag) == expected, f"trial {trial}: order {order}"
    loyalty.assert_ledger_sound()
