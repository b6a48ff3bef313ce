"""The loyalty rules as plain functions: earning, tiers, lots and FIFO consumption, debt, expiry, largest-remainder
clawback, quotes and hold arithmetic, on an injected clock (plain datetimes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loyalty.domain import (
    Account,
    AccountAnonymised,
    Hold,
    HoldCaptured,
    HoldOfAnotherCustomer,
    HoldState,
    InsufficientPoints,
    Lot,
    LoyaltyPolicy,
    RedemptionValue,
    SaleLine,
    Tier,
    add_months,
    allocate,
    check_debit,
    clawback,
    credit,
    debit,
    due_lots,
    expiring_soon,
    plan_hold,
    points_earned,
    quote,
    tier_for,
)
from storeplane_runtime.errors import InvalidInput

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = LoyaltyPolicy()


def account(balance: int = 1000, held: int = 0, *, anonymised: bool = False) -> Account:
    return Account("acc-1", "c1", "card-1", balance, held, Tier.BRONZE, anonymised, NOW)


# --- earning --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paid", "currency", "tier", "points"),
    [
        (12_345, "EUR", Tier.BRONZE, 123),  # whole euros only
        (12_399, "EUR", Tier.SILVER, 153),  # 123 x 1.25 = 153.75, down
        (12_399, "EUR", Tier.GOLD, 184),  # 123 x 1.5 = 184.5, down
        (99, "CHF", Tier.GOLD, 0),  # under one franc earns nothing
        (12_345, "JPY", Tier.BRONZE, 123),  # per 100 yen
        (5_000, "USD", Tier.SILVER, 62),  # 50 x 1.25 = 62.5
        (0, "EUR", Tier.GOLD, 0),
        (-500, "EUR", Tier.BRONZE, 0),
        (10_000, "GBP", Tier.BRONZE, 0),  # no earning rule for the currency
    ],
)
def test_points_are_whole_units_paid_times_the_tier_multiplier_rounded_down(
    paid: int, currency: str, tier: Tier, points: int
) -> None:
    assert points_earned(paid, currency, tier, POLICY).points == points


def test_the_multiplier_is_told_in_ppm() -> None:
    assert points_earned(100, "EUR", Tier.SILVER, POLICY).multiplier_ppm == 1_250_000


def test_earning_rules_come_from_the_policy() -> None:
    policy = LoyaltyPolicy(earn_minor_per_point={"EUR": 50})
    assert points_earned(1_000, "EUR", Tier.BRONZE, policy).points == 20


# --- allocation and clawback ----------------------------------------------------------------------------------


def test_largest_remainder_allocation_sums_exactly_and_favours_the_largest_remainders() -> None:
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]
    assert allocate(100, [5000, 3000, 2000]) == [50, 30, 20]
    assert allocate(7, [333, 333, 334]) == [2, 2, 3]
    assert sum(allocate(123, [999, 1, 17, 4242])) == 123
    assert allocate(5, [0, 0]) == [5, 0]
    assert allocate(0, [10, 20]) == [0, 0]
    assert allocate(5, []) == []


def test_partial_returns_claw_back_floor_of_the_returned_share_and_all_of_it_at_the_end() -> None:
    line = SaleLine("l1", quantity=3, points=10)
    first = clawback(line, 1)
    assert first.points == 3  # floor(10 x 1 / 3)
    second = clawback(first.line, 1)
    assert second.points == 3  # floor(10 x 2 / 3) - 3
    last = clawback(second.line, 1)
    assert last.points == 4  # 10 - 6: everything, never more
    assert last.line.clawed_back == 10
    assert clawback(last.line, 1).points == 0  # more units than sold take nothing more


def test_one_return_of_the_whole_line_takes_back_exactly_what_it_earned() -> None:
    assert clawback(SaleLine("l1", 7, 99), 7).points == 99


# --- tiers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spend", "tier"),
    [
        ({}, Tier.BRONZE),
        ({"EUR": 49_999}, Tier.BRONZE),
        ({"EUR": 50_000}, Tier.SILVER),
        ({"EUR": 149_999}, Tier.SILVER),
        ({"EUR": 150_000}, Tier.GOLD),
        ({"JPY": 49_999}, Tier.BRONZE),
        ({"JPY": 50_000}, Tier.SILVER),  # 500 major units x 100 yen
        ({"EUR": 10_000, "CHF": 50_000}, Tier.SILVER),  # per currency, the best
        ({"EUR": 150_000, "USD": 0}, Tier.GOLD),
        ({"GBP": 10**9}, Tier.BRONZE),  # no thresholds configured
    ],
)
def test_tier_follows_the_rolling_spend_per_currency(spend: dict[str, int], tier: Tier) -> None:
    assert tier_for(spend, POLICY) is tier


# --- lots, FIFO, debt, expiry ---------------------------------------------------------------------------------


def test_debits_consume_the_lots_expiring_first_then_the_lowest_lot_id() -> None:
    lots = [
        Lot(3, 50, NOW + timedelta(days=30)),
        Lot(1, 100, NOW + timedelta(days=60)),
        Lot(2, 20, NOW + timedelta(days=30)),
    ]
    booked = debit(170, lots, 80)
    assert booked.taken == ((2, 20), (3, 50), (1, 10))
    assert (booked.balance_after, booked.shortfall) == (90, 0)


def test_a_debit_beyond_the_lots_leaves_debt_that_the_next_credit_repays_first() -> None:
    booked = debit(30, [Lot(1, 30, NOW)], 50)
    assert (booked.taken, booked.shortfall, booked.balance_after) == (((1, 30),), 20, -20)
    repaid = credit(-20, 50)
    assert (repaid.repaid, repaid.lot_points, repaid.balance_after) == (20, 30, 30)
    small = credit(-20, 5)
    assert (small.repaid, small.lot_points, small.balance_after) == (5, 0, -15)


def test_only_lots_past_their_date_with_points_left_are_due() -> None:
    lots = [Lot(1, 10, NOW - timedelta(seconds=1)), Lot(2, 0, NOW - timedelta(days=1)), Lot(3, 5, NOW)]
    assert [lot.lot_id for lot in due_lots(lots, NOW)] == [1, 3]
    assert due_lots(lots, NOW - timedelta(days=2)) == []


def test_expiring_soon_lists_the_next_90_days_soonest_first_one_line_per_date() -> None:
    horizon = NOW + timedelta(days=90)
    lots = [
        Lot(1, 10, NOW + timedelta(days=10)),
        Lot(2, 5, NOW + timedelta(days=10)),
        Lot(3, 7, NOW + timedelta(days=2)),
        Lot(4, 9, NOW + timedelta(days=91)),
        Lot(5, 0, NOW + timedelta(days=3)),
    ]
    assert expiring_soon(lots, NOW, horizon) == [(NOW + timedelta(days=2), 7), (NOW + timedelta(days=10), 15)]


def test_lots_expire_24_calendar_months_after_they_were_earned() -> None:
    assert add_months(NOW, POLICY.expiry_months) == datetime(2028, 3, 1, 12, 0, tzinfo=UTC)
    assert add_months(datetime(2024, 2, 29, tzinfo=UTC), 24) == datetime(2026, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2026, 1, 31, tzinfo=UTC), 1) == datetime(2026, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2026, 1, 15, tzinfo=UTC), -12) == datetime(2025, 1, 15, tzinfo=UTC)


# --- quotes ---------------------------------------------------------------------------------------------------


def test_100_points_are_worth_one_euro_and_the_maximum_is_capped_by_points_and_basket() -> None:
    q = quote(POLICY, currency="EUR", points=250, available=1_000, basket_minor=600)
    assert (q.points, q.discount_minor, q.max_points, q.max_discount_minor, q.available) == (250, 250, 600, 600, 1000)
    q = quote(POLICY, currency="EUR", points=0, available=400, basket_minor=None)
    assert (q.max_points, q.max_discount_minor) == (400, 400)


def test_one_point_is_one_yen() -> None:
    q = quote(POLICY, currency="JPY", points=37, available=50, basket_minor=40)
    assert (q.points, q.discount_minor, q.max_points, q.max_discount_minor) == (37, 37, 40, 40)


def test_points_are_lowered_to_a_multiple_that_buys_whole_minor_units() -> None:
    policy = LoyaltyPolicy(redemption={"EUR": RedemptionValue(points=200, minor=100)})  # 2 points per cent
    q = quote(policy, currency="EUR", points=251, available=1001, basket_minor=None)
    assert (q.points, q.discount_minor, q.max_points, q.max_discount_minor) == (250, 125, 1000, 500)
    q = quote(policy, currency="EUR", points=0, available=10_000, basket_minor=333)
    assert (q.max_points, q.max_discount_minor) == (666, 333)


def test_a_currency_without_a_redemption_value_is_invalid() -> None:
    with pytest.raises(InvalidInput) as raised:
        quote(POLICY, currency="GBP", points=1, available=1, basket_minor=None)
    assert raised.value.violations[0].field == "currency_code"


# --- holds ----------------------------------------------------------------------------------------------------


def test_a_hold_may_take_the_available_points_and_no_more() -> None:
    later = NOW + timedelta(minutes=30)
    held = plan_hold(account(1000, 300), None, hold_id="b1", store_id="s", points=700, expires_at=later)
    assert (held.points, held.state) == (700, HoldState.ACTIVE)
    with pytest.raises(InsufficientPoints) as raised:
        plan_hold(account(1000, 300), None, hold_id="b1", store_id="s", points=701, expires_at=later)
    assert raised.value.metadata == {"requested": "701", "available": "700"}


def test_resizing_a_hold_counts_what_it_already_holds_and_lowering_always_works() -> None:
    existing = Hold("b1", "acc-1", "s", 300, HoldState.ACTIVE, NOW)
    grown = plan_hold(account(1000, 900), existing, hold_id="b1", store_id="s", points=400, expires_at=NOW)
    assert grown.points == 400
    with pytest.raises(InsufficientPoints):
        plan_hold(account(1000, 900), existing, hold_id="b1", store_id="s", points=401, expires_at=NOW)
    # Points expired meanwhile: the account is over-held, yet the hold may shrink.
    shrunk = plan_hold(account(100, 300), existing, hold_id="b1", store_id="s", points=200, expires_at=NOW)
    assert shrunk.points == 200


def test_zero_points_release_and_captured_or_foreign_holds_cannot_change() -> None:
    existing = Hold("b1", "acc-1", "s", 300, HoldState.ACTIVE, NOW)
    released = plan_hold(account(), existing, hold_id="b1", store_id="s", points=0, expires_at=NOW)
    assert (released.state, released.held) == (HoldState.RELEASED, 0)
    captured = Hold("b1", "acc-1", "s", 300, HoldState.CAPTURED, None)
    with pytest.raises(HoldCaptured):
        plan_hold(account(), captured, hold_id="b1", store_id="s", points=1, expires_at=NOW)
    foreign = Hold("b1", "acc-2", "s", 300, HoldState.ACTIVE, NOW)
    with pytest.raises(HoldOfAnotherCustomer):
        plan_hold(account(), foreign, hold_id="b1", store_id="s", points=1, expires_at=NOW)
    with pytest.raises(AccountAnonymised):
        plan_hold(account(anonymised=True), None, hold_id="b2", store_id="s", points=1, expires_at=NOW)


def test_available_is_never_negative_and_manual_debits_keep_holds_covered() -> None:
    assert account(100, 300).available == 0
    assert account(-50, 0).available == 0
    check_debit(account(1000, 300), 700)
    with pytest.raises(InsufficientPoints):
        check_debit(account(1000, 300), 701)
