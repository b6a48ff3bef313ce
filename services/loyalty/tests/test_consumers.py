"""The events loyalty consumes, through the kit's inbox on SQLite and PostgreSQL: enrolment, earning and capture
from sales, clawback and refund from returns (exactly once, in any order), voided baskets, card changes, erasure,
tiers; and the events it publishes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from loyalty_kit import (
    TOKYO,
    RunningLoyalty,
    adjust,
    enrolled,
    erased,
    hold,
    registered,
    sale_completed,
    sale_returned,
    sweep,
    voided,
)
from sqlalchemy import MetaData, select, text

from loyalty.storage.tables import accounts
from pos.customer.v1 import events_pb2 as customer_events
from pos.loyalty.v1 import events_pb2, loyalty_pb2
from storeplane_runtime.testing import published, unsent_events, wait_until


def _kinds(loyalty: RunningLoyalty, customer_id: str) -> list[tuple[str, int]]:
    reply = loyalty.stub.ListTransactions(loyalty_pb2.ListTransactionsRequest(customer_id=customer_id))
    return [(loyalty_pb2.EntryKind.Name(e.kind).removeprefix("ENTRY_KIND_"), e.points) for e in reversed(reply.entries)]


def test_a_sale_earns_one_point_per_whole_euro_and_tells_it(loyalty: RunningLoyalty) -> None:
    loyalty.deliver(registered("cust-1", "card-1"))
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", lines=[("l1", 1, 12_345)]))
    assert loyalty.account("cust-1").balance == 123
    [event] = published(loyalty.database, events_pb2.PointsEarned)
    assert (event.customer_id, event.loyalty_card_number, event.sale_id, event.points) == (
        "cust-1",
        "card-1",
        "sale-1",
        123,
    )
    assert (event.earned_on.amount_minor, event.multiplier_ppm, event.balance_after) == (12_345, 1_000_000, 123)
    assert event.tier == loyalty_pb2.TIER_BRONZE and event.expires_at.ToDatetime().year == 2028
    assert event.meta.store_id == "berlin-mitte"


def test_yen_earn_per_100_and_a_sale_on_a_card_alone_opens_an_account(loyalty: RunningLoyalty) -> None:
    loyalty.deliver(sale_completed("sale-1", card="card-jp", lines=[("l1", 1, 12_345)], currency="JPY", store=TOKYO))
    account = loyalty.stub.GetAccount(loyalty_pb2.GetAccountRequest(loyalty_card_number="card-jp")).account
    assert (account.balance, account.customer_id) == (123, "")
    loyalty.deliver(registered("cust-jp", "card-jp"))  # the registration completes it: one account
    assert loyalty.account("cust-jp").balance == 123
    loyalty.assert_ledger_sound()


def test_a_sale_before_the_registration_is_not_lost_and_no_second_account_appears(loyalty: RunningLoyalty) -> None:
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", lines=[("l1", 1, 5_000)]))
    loyalty.deliver(sale_completed("sale-2", card="card-1", lines=[("l1", 1, 2_000)]))  # card alone, not known yet
    loyalty.deliver(registered("cust-1", "card-1"))
    account = loyalty.account("cust-1")
    assert (account.balance, account.loyalty_card_number) == (70, "card-1")
    with loyalty.database.engine.connect() as conn:
        owners = conn.execute(select(accounts.c.customer_id, accounts.c.card_number, accounts.c.balance)).all()
    assert sorted(owners, key=str) == sorted([("cust-1", "card-1", 70), (None, None, 0)], key=str)
    loyalty.assert_ledger_sound()


def test_anonymous_sales_and_returns_change_nothing(loyalty: RunningLoyalty) -> None:
    assert loyalty.deliver(sale_completed("sale-1")) == "applied"
    assert loyalty.deliver(sale_returned("ret-1", "sale-1")) == "applied"
    assert published(loyalty.database, events_pb2.PointsEarned) == []
    assert loyalty.verification().accounts == 0


def test_a_sale_captures_its_hold_as_a_redeem_of_exactly_the_points_used(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 1_000)
    hold(loyalty.stub, "basket-1", "cust-1", 400)
    loyalty.deliver(
        sale_completed(
            "sale-1", customer_id="cust-1", lines=[("l1", 1, 6_000)], points_redeemed=400, hold_id="basket-1"
        )
    )
    account = loyalty.account("cust-1")
    assert (account.balance, account.held_points) == (1_000 - 400 + 60, 0)
    assert _kinds(loyalty, "cust-1") == [("ADJUST", 1_000), ("REDEEM", -400), ("EARN", 60)]
    [redeemed] = published(loyalty.database, events_pb2.PointsRedeemed)
    assert (redeemed.hold_id, redeemed.points, redeemed.discount.amount_minor, redeemed.balance_after) == (
        "basket-1",
        400,
        400,
        600,
    )


def test_capture_after_the_hold_expired_still_redeems_even_below_zero(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 500)
    hold(loyalty.stub, "basket-1", "cust-1", 500)
    loyalty.clock.advance(timedelta(hours=1))
    sweep(loyalty, "hold-expiry")
    adjust(loyalty.stub, "cust-1", -300)  # the points were free again, and went elsewhere
    loyalty.deliver(
        sale_completed("sale-1", customer_id="cust-1", lines=[("l1", 1, 0)], points_redeemed=500, hold_id="basket-1")
    )
    account = loyalty.account("cust-1")
    assert (account.balance, account.held_points, account.available_points) == (-300, 0, 0)
    loyalty.deliver(sale_completed("sale-2", customer_id="cust-1", lines=[("l1", 1, 50_000)]))
    assert loyalty.account("cust-1").balance == 200  # the debt is repaid first
    loyalty.assert_ledger_sound()


def test_a_voided_basket_releases_its_hold(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 1_000)
    hold(loyalty.stub, "basket-1", "cust-1", 700)
    loyalty.deliver(voided("basket-1"))
    assert loyalty.account("cust-1").held_points == 0
    assert hold(loyalty.stub, "basket-2", "cust-1", 1_000).account.available_points == 0


def test_returns_claw_back_the_lines_share_and_refund_points_once_however_often_delivered(
    loyalty: RunningLoyalty,
) -> None:
    enrolled(loyalty, "cust-1", 300)
    hold(loyalty.stub, "basket-1", "cust-1", 300)
    sale = sale_completed(
        "sale-1",
        customer_id="cust-1",
        lines=[("a", 3, 10_000), ("b", 1, 5_000), ("c", 1, 5_000)],  # 200 points: 100 / 50 / 50
        points_redeemed=300,
        hold_id="basket-1",
    )
    loyalty.deliver(sale)
    assert loyalty.account("cust-1").balance == 200
    first = sale_returned("ret-1", "sale-1", customer_id="cust-1", lines=[("a", 1, 60)], refunded=3_333)
    assert loyalty.deliver(first, event_id="11111111-1111-4111-8111-111111111111") == "applied"
    assert loyalty.deliver(first, event_id="11111111-1111-4111-8111-111111111111") == "duplicate"
    assert loyalty.deliver(first) == "applied"  # the same return under another event id: no second effect
    assert _kinds(loyalty, "cust-1")[-2:] == [("CLAWBACK", -33), ("REFUND", 60)]
    loyalty.deliver(sale_returned("ret-2", "sale-1", customer_id="cust-1", lines=[("a", 2, 120), ("b", 1, 60)]))
    assert _kinds(loyalty, "cust-1")[-2:] == [("CLAWBACK", -117), ("REFUND", 180)]  # 100 - 33 + 50
    assert loyalty.account("cust-1").balance == 200 - 33 + 60 - 117 + 180
    loyalty.assert_ledger_sound()


def test_a_return_before_its_sale_is_kept_and_applied_when_the_sale_arrives(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1")
    loyalty.deliver(sale_returned("ret-1", "sale-1", customer_id="cust-1", lines=[("l1", 1, 0)], refunded=10_000))
    assert loyalty.account("cust-1").balance == 0
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", lines=[("l1", 1, 10_000)]))
    assert _kinds(loyalty, "cust-1") == [("EARN", 100), ("CLAWBACK", -100)]
    assert loyalty.account("cust-1").rolling_12m_spend[0].amount_minor == 0
    loyalty.assert_ledger_sound()


def test_a_clawback_of_spent_points_leaves_debt_and_redemptions_never_do(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1")
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", lines=[("l1", 1, 10_000)]))
    adjust(loyalty.stub, "cust-1", -100)  # spent
    loyalty.deliver(sale_returned("ret-1", "sale-1", customer_id="cust-1"))
    assert loyalty.account("cust-1").balance == -100
    loyalty.assert_ledger_sound()


def test_tiers_rise_with_the_rolling_spend_and_fall_when_it_leaves_the_window(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1")
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", lines=[("l1", 1, 50_000)]))
    account = loyalty.account("cust-1")
    assert (account.tier, account.balance) == (loyalty_pb2.TIER_SILVER, 500)  # earned at the tier before the sale
    loyalty.deliver(sale_completed("sale-2", customer_id="cust-1", lines=[("l1", 1, 10_000)]))
    assert loyalty.account("cust-1").balance == 500 + 125  # Silver: 1.25x
    [changed] = published(loyalty.database, events_pb2.TierChanged)
    assert (changed.previous_tier, changed.tier) == (loyalty_pb2.TIER_BRONZE, loyalty_pb2.TIER_SILVER)
    assert [(m.currency_code, m.amount_minor) for m in changed.rolling_12m_spend] == [("EUR", 50_000)]
    loyalty.clock.advance(timedelta(days=366))
    assert sweep(loyalty, "tiers") == 1
    assert loyalty.account("cust-1").tier == loyalty_pb2.TIER_BRONZE
    assert len(published(loyalty.database, events_pb2.TierChanged)) == 2
    assert sweep(loyalty, "tiers") == 0  # nothing above Bronze left to look at


def test_a_return_lowers_the_spend_and_can_lower_the_tier(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1")
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", lines=[("l1", 2, 60_000)]))
    assert loyalty.account("cust-1").tier == loyalty_pb2.TIER_SILVER
    loyalty.deliver(sale_returned("ret-1", "sale-1", customer_id="cust-1", refunded=30_000))
    account = loyalty.account("cust-1")
    assert (account.tier, account.balance) == (loyalty_pb2.TIER_BRONZE, 600 - 300)


def test_a_card_replacement_follows_the_customer(loyalty: RunningLoyalty) -> None:
    loyalty.deliver(registered("cust-1", "card-old"))
    loyalty.deliver(sale_completed("sale-1", card="card-new", lines=[("l1", 1, 1_000)]))  # new card used at once
    loyalty.deliver(
        customer_events.CustomerUpdated(
            customer_id="cust-1", loyalty_card_number="card-new", update_mask={"paths": ["loyalty_card_number"]}
        )
    )
    account = loyalty.account("cust-1")
    assert (account.loyalty_card_number, account.balance) == ("card-new", 10)
    loyalty.assert_ledger_sound()


def test_erasure_anonymises_the_account_releases_holds_and_forgets_the_card(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 500, card="card-secret-42")
    hold(loyalty.stub, "basket-1", "cust-1", 100)
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", lines=[("l1", 1, 1_000)]))
    loyalty.deliver(erased("cust-1", "card-secret-42"))
    account = loyalty.account("cust-1")
    assert (account.anonymised, account.loyalty_card_number, account.held_points, account.balance) == (
        True,
        "",
        0,
        510,
    )
    with pytest.raises(grpc.RpcError) as caught:
        loyalty.stub.GetAccount(loyalty_pb2.GetAccountRequest(loyalty_card_number="card-secret-42"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # The stored HoldPoints answer showed the card; the outbox's PointsEarned (not sent: no relay here) keeps it
    # until it is sent, then the erasure sweeper deletes it.
    with loyalty.database.engine.connect() as conn:
        answers = conn.execute(text("SELECT response FROM idempotency_keys")).scalars().all()
    assert all(b"card-secret-42" not in bytes(a) for a in answers)
    loyalty.assert_ledger_sound()


def _columns_holding(loyalty: RunningLoyalty, needle: str) -> list[str]:
    """Every table.column of the loyalty database where `needle` occurs (text, bytes or JSON)."""
    found = []
    reflected = MetaData()
    reflected.reflect(loyalty.database.engine)
    with loyalty.database.engine.connect() as conn:
        for table in reflected.sorted_tables:
            for row in conn.execute(select(table)).mappings():
                for column, value in row.items():
                    raw = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                    if needle.encode() in raw:
                        found.append(f"{table.name}.{column}")
    return sorted(set(found))


def test_after_erasure_no_loyalty_table_holds_the_card_number(loyalty: RunningLoyalty) -> None:
    card = "2990000000428"
    enrolled(loyalty, "cust-1", 500, card=card)
    hold(loyalty.stub, "basket-1", "cust-1", 100)  # its stored answer shows the card
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", card=card, lines=[("l1", 1, 1_000)]))
    wait_until(lambda: unsent_events(loyalty.database) == 0, 10, "the relay sent PointsEarned")
    loyalty.deliver(sale_completed("sale-2", customer_id="cust-1", card=card, lines=[("l1", 1, 1_000)]))
    assert _columns_holding(loyalty, card)  # the search finds it before
    loyalty.deliver(erased("cust-1", card))  # sale-2's PointsEarned may still be unsent: it goes out first
    wait_until(lambda: unsent_events(loyalty.database) == 0, 10, "the relay sent the rest")
    sweep(loyalty, "erased-events")
    assert _columns_holding(loyalty, card) == []
    assert loyalty.account("cust-1").balance == 520


def test_the_daily_tier_sweep_looks_at_each_account_above_bronze_once_a_day(
    database_url: str, make_loyalty: Callable[..., RunningLoyalty]
) -> None:
    loyalty = make_loyalty(database_url, sweep_batch_size=2)
    for i in range(5):
        loyalty.deliver(sale_completed(f"sale-{i}", customer_id=f"cust-{i}", lines=[("l1", 1, 60_000)]))
    loyalty.deliver(sale_completed("sale-b", customer_id="cust-bronze", lines=[("l1", 1, 100)]))
    loyalty.clock.advance(timedelta(days=2))
    assert sweep(loyalty, "tiers") == 5  # in batches of 2, and it ends
    assert sweep(loyalty, "tiers") == 0  # checked today already
    assert loyalty.account("cust-0").tier == loyalty_pb2.TIER_SILVER
    loyalty.clock.advance(timedelta(days=365))
    assert sweep(loyalty, "tiers") == 5
    assert {loyalty.account(f"cust-{i}").tier for i in range(5)} == {loyalty_pb2.TIER_BRONZE}
