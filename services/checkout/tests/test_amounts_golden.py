"""Golden amounts of the checkout money rules: every store, both tax modes, JPY, uneven discounts, a one-cent line,
the largest line, tenders and cash rounding, refunds. Expected values worked out by hand (see the comments)."""

from __future__ import annotations

import pytest

from checkout.domain import (
    MAX_MINOR,
    LineAmounts,
    PointsNotRedeemable,
    PricedLine,
    RedemptionValue,
    ReturnExceedsSold,
    TaxBreakdown,
    Tender,
    TenderExceedsDue,
    TenderInsufficient,
    TenderKind,
    UnknownTaxClass,
    largest_remainder,
    line_amounts,
    line_refund,
    plan_return,
    price_basket,
    round_half_away,
    round_to_increment,
    settle,
    share_of,
    tax_rate,
)
from storeplane_runtime.errors import InvalidInput, PreconditionFailed
from storeplane_runtime.stores import DEFAULT_STORES, Store

STORES = {s.store_id: s for s in DEFAULT_STORES}
BERLIN = STORES["berlin-mitte"]
ZURICH = STORES["zurich-bahnhofstrasse"]
NEW_YORK = STORES["new-york-5th-ave"]
TOKYO = STORES["tokyo-shibuya"]
MOST_EXPENSIVE_MINOR = 10**13  # stock's MAX_PRICE_MINOR
MOST_UNITS = 9999  # a line's quantity limit


def line(store: Store, sku: str, quantity: int, unit_price: int, tax_class: str = "standard") -> PricedLine:
    return PricedLine(sku, quantity, unit_price, tax_class, tax_rate(store, tax_class))


def cash(store: Store, amount: int) -> Tender:
    return Tender(TenderKind.CASH, amount, store.currency)


def card(store: Store, amount: int, reference: str = "") -> Tender:
    return Tender(TenderKind.CARD, amount, store.currency, reference)


def amounts(a: LineAmounts) -> tuple[int, int, int, int, int, int, int]:
    return a.gross_amount, a.discount, a.points_allocated, a.line_total, a.tax, a.net_amount, a.total_amount


# --- the arithmetic -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numerator", "denominator", "rounded"),
    [
        (0, 7, 0),
        (5, 2, 3),  # 2.5
        (-5, 2, -3),  # -2.5
        (7, 2, 4),  # 3.5
        (-7, 2, -4),
        (1, 2, 1),
        (-1, 2, -1),
        (4, 3, 1),  # 1.33
        (-4, 3, -1),
        (5, 3, 2),  # 1.67
        (-5, 3, -2),
        (1, 3, 0),
        (-1, 3, 0),
        (355, 10, 36),  # 35.5
        (-355, 10, -36),
        (10**20 + 1, 2, 5 * 10**19 + 1),
    ],
)
def test_round_half_away_rounds_exact_halves_away_from_zero_on_both_signs(
    numerator: int, denominator: int, rounded: int
) -> None:
    assert round_half_away(numerator, denominator) == rounded


def test_round_half_away_refuses_a_denominator_that_is_not_positive() -> None:
    with pytest.raises(ValueError):
        round_half_away(1, 0)
    with pytest.raises(ValueError):
        round_half_away(1, -2)


@pytest.mark.parametrize(
    ("amount", "increment", "rounded"),
    [
        (1800, 5, 1800),
        (1801, 5, 1800),
        (1802, 5, 1800),
        (1803, 5, 1805),
        (1804, 5, 1805),
        (1807, 5, 1805),
        (1808, 5, 1810),
        (0, 5, 0),
        (2, 5, 0),
        (15, 10, 20),  # an exact half goes up
        (14, 10, 10),
        (1807, 1, 1807),
    ],
)
def test_cash_rounds_to_the_increment_with_halves_up(amount: int, increment: int, rounded: int) -> None:
    assert round_to_increment(amount, increment) == rounded


def test_largest_remainder_gives_the_leftover_to_the_largest_remainders_ties_to_the_earlier_part() -> None:
    assert largest_remainder(100, [1000, 1000, 1000]) == (34, 33, 33)
    assert largest_remainder(2, [1, 1, 1]) == (1, 1, 0)
    assert largest_remainder(500, [1998, 249]) == (445, 55)  # 444.59 and 55.41
    assert largest_remainder(7, [0, 3, 0, 4]) == (0, 3, 0, 4)
    assert largest_remainder(0, [0, 0]) == (0, 0)
    assert largest_remainder(0, []) == ()
    assert largest_remainder(1, [1, 999_999, 1]) == (0, 1, 0)


def test_largest_remainder_refuses_what_cannot_be_split() -> None:
    with pytest.raises(ValueError):
        largest_remainder(1, [0, 0])
    with pytest.raises(ValueError):
        largest_remainder(-1, [1])


def test_the_last_unit_takes_the_rest_of_a_share() -> None:
    assert [share_of(1000, k, 3) for k in range(4)] == [0, 333, 667, 1000]
    assert [share_of(1001, k, 2) for k in range(3)] == [0, 501, 1001]  # 500.5 rounds away from zero


# --- pricing, store by store ----------------------------------------------------------------------------------------


def test_berlin_prices_include_tax_and_each_line_is_taxed_at_its_rate() -> None:
    pricing = price_basket(BERLIN, [line(BERLIN, "coffee", 2, 999), line(BERLIN, "bread", 1, 249, "reduced")])

    # 1998 x 19/119 = 319.01; 249 x 7/107 = 16.29
    assert [amounts(a) for a in pricing.lines] == [
        (1998, 0, 0, 1998, 319, 1679, 1998),
        (249, 0, 0, 249, 16, 233, 249),
    ]
    assert (pricing.subtotal, pricing.discount_total, pricing.tax_total, pricing.total) == (2247, 0, 335, 2247)
    assert pricing.currency == "EUR"
    assert pricing.tax_inclusive
    assert pricing.tax_breakdown == (
        TaxBreakdown("standard", 190_000, 1679, 319, 1998),
        TaxBreakdown("reduced", 70_000, 233, 16, 249),
    )


def test_berlin_discount_that_does_not_divide_evenly_goes_by_largest_remainder_before_tax() -> None:
    pricing = price_basket(
        BERLIN, [line(BERLIN, "coffee", 2, 999), line(BERLIN, "bread", 1, 249, "reduced")], points=500
    )

    # 5.00 over 19.98 and 2.49: 444.59 and 55.41, the leftover cent to the larger remainder.
    # Tax then from line totals: 1553 x 19/119 = 247.96; 194 x 7/107 = 12.69.
    assert [amounts(a) for a in pricing.lines] == [
        (1998, 445, 445, 1553, 248, 1305, 1553),
        (249, 55, 55, 194, 13, 181, 194),
    ]
    assert (pricing.points_redeemed, pricing.redemption_discount) == (500, 500)
    assert (pricing.subtotal, pricing.discount_total, pricing.tax_total, pricing.total) == (2247, 500, 261, 1747)


def test_a_discount_tie_goes_to_the_earlier_line() -> None:
    lines = [line(BERLIN, sku, 1, 1000) for sku in ("a", "b", "c")]

    pricing = price_basket(BERLIN, lines, points=100)

    assert [(a.discount, a.points_allocated) for a in pricing.lines] == [(34, 34), (33, 33), (33, 33)]
    # 966 x 19/119 = 154.24; 967 x 19/119 = 154.40
    assert [a.tax for a in pricing.lines] == [154, 154, 154]
    assert pricing.total == 2900


def test_zurich_prices_include_tax_at_swiss_rates() -> None:
    pricing = price_basket(ZURICH, [line(ZURICH, "chocolate", 3, 495), line(ZURICH, "milk", 1, 322, "reduced")])

    # 1485 x 81/1081 = 111.27; 322 x 26/1026 = 8.16
    assert [amounts(a) for a in pricing.lines] == [
        (1485, 0, 0, 1485, 111, 1374, 1485),
        (322, 0, 0, 322, 8, 314, 322),
    ]
    assert (pricing.subtotal, pricing.tax_total, pricing.total) == (1807, 119, 1807)
    assert pricing.tax_breakdown == (
        TaxBreakdown("standard", 81_000, 1374, 111, 1485),
        TaxBreakdown("reduced", 26_000, 314, 8, 322),
    )


def test_new_york_adds_tax_on_top_of_the_line_total() -> None:
    pricing = price_basket(NEW_YORK, [line(NEW_YORK, "cap", 3, 1999)])

    # 5997 x 0.08875 = 532.23
    assert [amounts(a) for a in pricing.lines] == [(5997, 0, 0, 5997, 532, 5997, 6529)]
    assert (pricing.subtotal, pricing.tax_total, pricing.total) == (5997, 532, 6529)
    assert not pricing.tax_inclusive
    assert pricing.tax_breakdown == (TaxBreakdown("standard", 88_750, 5997, 532, 6529),)


def test_new_york_rounds_an_exact_half_cent_of_tax_away_from_zero() -> None:
    pricing = price_basket(NEW_YORK, [line(NEW_YORK, "mug", 1, 400)])

    assert pricing.lines[0].tax == 36  # 400 x 0.08875 = 35.5
    assert pricing.total == 436


def test_new_york_discount_is_taken_before_tax() -> None:
    pricing = price_basket(
        NEW_YORK, [line(NEW_YORK, "cap", 3, 1999), line(NEW_YORK, "gum", 1, 100, "reduced")], points=1000
    )

    # 10.00 over 59.97 and 1.00: 983.61 and 16.39 -> 984 and 16. Tax: 5013 x 0.08875 = 444.90; 84 x 0.08875 = 7.46
    assert [amounts(a) for a in pricing.lines] == [
        (5997, 984, 984, 5013, 445, 5013, 5458),
        (100, 16, 16, 84, 7, 84, 91),
    ]
    assert (pricing.subtotal, pricing.discount_total, pricing.tax_total, pricing.total) == (6097, 1000, 452, 5549)
    # total = sum(line_total) + tax_total in a tax-exclusive store
    assert pricing.total == sum(a.line_total for a in pricing.lines) + pricing.tax_total


def test_one_breakdown_entry_per_rate_names_no_class_when_two_classes_share_it() -> None:
    pricing = price_basket(NEW_YORK, [line(NEW_YORK, "cap", 3, 1999), line(NEW_YORK, "gum", 1, 100, "reduced")])

    # 100 x 0.08875 = 8.875 -> 9
    assert pricing.tax_breakdown == (TaxBreakdown("", 88_750, 6097, 541, 6638),)


def test_breakdown_is_ordered_by_rate_descending_whatever_the_line_order() -> None:
    lines = [
        line(TOKYO, "onigiri", 2, 150, "reduced"),
        line(TOKYO, "towel", 1, 1100),
        line(TOKYO, "tea", 1, 108, "reduced"),
    ]

    pricing = price_basket(TOKYO, lines)

    assert [(b.tax_class, b.rate_ppm) for b in pricing.tax_breakdown] == [("standard", 100_000), ("reduced", 80_000)]
    # 300 x 8/108 = 22.22; 1100 / 11 = 100; 108 x 8/108 = 8
    assert [a.tax for a in pricing.lines] == [22, 100, 8]
    assert pricing.tax_breakdown[1] == TaxBreakdown("reduced", 80_000, 378, 30, 408)


def test_tokyo_yen_have_no_minor_unit_and_a_point_is_worth_one_yen() -> None:
    pricing = price_basket(TOKYO, [line(TOKYO, "bento", 1, 1080, "reduced"), line(TOKYO, "soap", 3, 298)], points=100)

    # 100 yen over 1080 and 894: 54.71 and 45.29 -> 55 and 45. Tax: 1025 x 8/108 = 75.93; 849 / 11 = 77.18
    assert [amounts(a) for a in pricing.lines] == [
        (1080, 55, 55, 1025, 76, 949, 1025),
        (894, 45, 45, 849, 77, 772, 849),
    ]
    assert (pricing.points_redeemed, pricing.redemption_discount, pricing.total) == (100, 100, 1874)


def test_tokyo_without_discount() -> None:
    pricing = price_basket(TOKYO, [line(TOKYO, "bento", 1, 1080, "reduced"), line(TOKYO, "soap", 3, 298)])

    # 1080 x 8/108 = 80 exactly; 894 / 11 = 81.27
    assert [a.tax for a in pricing.lines] == [80, 81]
    assert (pricing.subtotal, pricing.tax_total, pricing.total) == (1974, 161, 1974)


def test_a_one_cent_line_carries_no_tax_and_at_most_its_cent_of_discount() -> None:
    berlin = price_basket(BERLIN, [line(BERLIN, "sticker", 1, 1)])
    new_york = price_basket(NEW_YORK, [line(NEW_YORK, "sticker", 1, 1)])
    shared = price_basket(BERLIN, [line(BERLIN, "sticker", 1, 1), line(BERLIN, "tv", 1, 99_999)], points=99)

    assert amounts(berlin.lines[0]) == (1, 0, 0, 1, 0, 1, 1)  # 1 x 19/119 = 0.16
    assert amounts(new_york.lines[0]) == (1, 0, 0, 1, 0, 1, 1)  # 1 x 0.08875 = 0.09
    # 99 cents over 1 and 99999: 0.00099 and 98.99901 -> 0 and 98, the leftover cent to the larger remainder
    assert [a.discount for a in shared.lines] == [0, 99]


def test_a_whole_basket_paid_with_points_costs_nothing_and_carries_no_tax() -> None:
    pricing = price_basket(NEW_YORK, [line(NEW_YORK, "cap", 1, 1999)], points=1999)

    assert amounts(pricing.lines[0]) == (1999, 1999, 1999, 0, 0, 0, 0)
    assert pricing.total == 0


def test_9999_of_the_most_expensive_item_price_exactly_within_a_money() -> None:
    gross = MOST_UNITS * MOST_EXPENSIVE_MINOR  # 99,990,000,000,000,000 minor units

    berlin = price_basket(BERLIN, [line(BERLIN, "yacht", MOST_UNITS, MOST_EXPENSIVE_MINOR)], points=10**15)
    new_york = price_basket(NEW_YORK, [line(NEW_YORK, "yacht", MOST_UNITS, MOST_EXPENSIVE_MINOR)])
    tokyo = price_basket(TOKYO, [line(TOKYO, "yacht", MOST_UNITS, MOST_EXPENSIVE_MINOR)])

    # (gross - 10^15) x 19/119 = 15,805,126,050,420,168.07
    assert amounts(berlin.lines[0]) == (
        gross,
        10**15,
        10**15,
        gross - 10**15,
        15_805_126_050_420_168,
        gross - 10**15 - 15_805_126_050_420_168,
        gross - 10**15,
    )
    # gross x 0.08875 = 8,874,112,500,000,000 exactly
    assert (new_york.tax_total, new_york.total) == (8_874_112_500_000_000, 108_864_112_500_000_000)
    assert tokyo.tax_total == 9_090_000_000_000_000  # gross / 11 exactly
    assert max(berlin.total, new_york.total, tokyo.total) <= MAX_MINOR


def test_amounts_a_money_cannot_hold_are_refused() -> None:
    lines = [line(NEW_YORK, f"yacht-{i}", MOST_UNITS, MOST_EXPENSIVE_MINOR) for i in range(85)]  # 9.25e18 with tax

    with pytest.raises(InvalidInput) as raised:
        price_basket(NEW_YORK, lines)

    assert raised.value.reason == "AMOUNT_TOO_LARGE"


def test_an_empty_basket_costs_nothing() -> None:
    pricing = price_basket(BERLIN, [], points=500)

    assert (pricing.subtotal, pricing.points_redeemed, pricing.total, pricing.tax_breakdown) == (0, 0, 0, ())


def test_bad_lines_are_named() -> None:
    with pytest.raises(InvalidInput) as raised:
        price_basket(BERLIN, [PricedLine("a", 0, 100, "standard", 190_000), PricedLine("b", 1, -1, "standard", -1)])

    assert [v.field for v in raised.value.violations] == [
        "lines[0].quantity",
        "lines[1].unit_price",
        "lines[1].tax_rate_ppm",
    ]


def test_an_unknown_tax_class_is_a_precondition() -> None:
    with pytest.raises(UnknownTaxClass) as raised:
        tax_rate(BERLIN, "luxury")

    assert isinstance(raised.value, PreconditionFailed)
    assert raised.value.reason == "UNKNOWN_TAX_CLASS"


# --- redemption -----------------------------------------------------------------------------------------------------


def test_a_redemption_is_lowered_when_the_basket_shrinks_below_it() -> None:
    pricing = price_basket(BERLIN, [line(BERLIN, "pen", 2, 150)], points=500)

    assert (pricing.points_requested, pricing.points_redeemed, pricing.redemption_discount) == (500, 300, 300)
    assert pricing.total == 0


def test_points_are_lowered_to_a_multiple_that_buys_whole_minor_units() -> None:
    three_for_two = RedemptionValue(points=3, minor=2)
    hundred_per_yen = RedemptionValue(points=100, minor=1)

    pricing = price_basket(BERLIN, [line(BERLIN, "pen", 1, 1000)], points=100, redemption=three_for_two)
    yen = price_basket(TOKYO, [line(TOKYO, "pen", 1, 1000)], points=1234, redemption=hundred_per_yen)

    assert (pricing.points_redeemed, pricing.redemption_discount) == (99, 66)
    assert (yen.points_redeemed, yen.redemption_discount) == (1200, 12)


def test_points_in_a_currency_without_redemption_value_are_refused() -> None:
    london = Store("london", "London", "GBP", "Europe/London", True, {"standard": 200_000})

    with pytest.raises(PointsNotRedeemable):
        price_basket(london, [line(london, "tea", 1, 500)], points=100)
    assert price_basket(london, [line(london, "tea", 1, 500)]).total == 500


def test_negative_points_are_invalid() -> None:
    with pytest.raises(InvalidInput):
        price_basket(BERLIN, [line(BERLIN, "pen", 1, 100)], points=-1)


# --- tenders --------------------------------------------------------------------------------------------------------


def test_cash_gives_change_and_card_is_exact() -> None:
    by_cash = settle(BERLIN, 2247, [cash(BERLIN, 5000)])
    by_card = settle(BERLIN, 2247, [card(BERLIN, 2247)])

    assert (by_cash.amount_paid, by_cash.change_due, by_cash.cash_rounding) == (2247, 2753, 0)
    assert [p.applied for p in by_cash.tenders] == [2247]
    assert (by_card.amount_paid, by_card.change_due, by_card.cash_rounding) == (2247, 0, 0)


def test_zurich_cash_is_rounded_down_to_five_rappen() -> None:
    settlement = settle(ZURICH, 1807, [cash(ZURICH, 2000)])

    assert (settlement.cash_rounding, settlement.amount_paid, settlement.change_due) == (-2, 1805, 195)
    assert settlement.tenders[0].applied == 1805


def test_zurich_cash_is_rounded_up_to_five_rappen() -> None:
    settlement = settle(ZURICH, 1808, [cash(ZURICH, 1810)])

    assert (settlement.cash_rounding, settlement.amount_paid, settlement.change_due) == (2, 1810, 0)


def test_zurich_card_payments_are_not_rounded() -> None:
    settlement = settle(ZURICH, 1807, [card(ZURICH, 1807)])

    assert (settlement.cash_rounding, settlement.amount_paid) == (0, 1807)


def test_zurich_only_the_part_paid_in_cash_is_rounded() -> None:
    # card 10.00, cash due 8.07 -> 8.05
    settlement = settle(ZURICH, 1807, [card(ZURICH, 1000), cash(ZURICH, 1000)])

    assert (settlement.cash_rounding, settlement.amount_paid, settlement.change_due) == (-2, 1805, 195)
    assert [p.applied for p in settlement.tenders] == [1000, 805]


def test_zurich_cash_short_of_the_rounded_amount_is_insufficient() -> None:
    with pytest.raises(TenderInsufficient):
        settle(ZURICH, 1808, [cash(ZURICH, 1808)])  # 18.08 is due in cash as 18.10


def test_a_card_for_more_than_is_due_is_refused() -> None:
    with pytest.raises(TenderExceedsDue) as raised:
        settle(BERLIN, 2247, [card(BERLIN, 2248)])

    assert isinstance(raised.value, PreconditionFailed)
    assert raised.value.reason == "TENDER_EXCEEDS_DUE"


def test_a_second_card_for_more_than_is_left_due_is_refused() -> None:
    with pytest.raises(TenderExceedsDue) as raised:
        settle(BERLIN, 2247, [card(BERLIN, 2000), Tender(TenderKind.GIFT_CARD, 248, "EUR")])

    assert raised.value.metadata["tender_index"] == "1"
    assert raised.value.metadata["left_due"] == "247"


def test_tenders_short_of_the_total_are_insufficient() -> None:
    with pytest.raises(TenderInsufficient) as raised:
        settle(BERLIN, 2247, [card(BERLIN, 2000), cash(BERLIN, 200)])

    assert raised.value.reason == "TENDER_INSUFFICIENT"
    assert raised.value.metadata["short"] == "47"
    with pytest.raises(TenderInsufficient):
        settle(BERLIN, 2247, [card(BERLIN, 2246)])
    with pytest.raises(TenderInsufficient):
        settle(BERLIN, 1, [])


def test_cash_pays_what_the_other_tenders_leave_wherever_it_is_listed() -> None:
    settlement = settle(BERLIN, 1500, [cash(BERLIN, 2000), card(BERLIN, 500, "auth-1")])

    assert [(p.tender.kind, p.applied) for p in settlement.tenders] == [(TenderKind.CASH, 1000), (TenderKind.CARD, 500)]
    assert (settlement.amount_paid, settlement.change_due) == (1500, 1000)


def test_a_zero_total_needs_no_tender() -> None:
    settlement = settle(BERLIN, 0, [])

    assert (settlement.amount_paid, settlement.change_due, settlement.tenders) == (0, 0, ())


def test_tokyo_cash_change_in_whole_yen() -> None:
    settlement = settle(TOKYO, 1874, [cash(TOKYO, 2000)])

    assert (settlement.cash_rounding, settlement.amount_paid, settlement.change_due) == (0, 1874, 126)


def test_tenders_must_be_positive_and_in_the_store_currency() -> None:
    with pytest.raises(InvalidInput) as raised:
        settle(BERLIN, 100, [card(BERLIN, 0), Tender(TenderKind.CARD, 100, "USD")])

    assert [v.field for v in raised.value.violations] == [
        "tenders[0].amount.amount_minor",
        "tenders[1].amount.currency_code",
    ]


# --- refunds --------------------------------------------------------------------------------------------------------


def test_returning_units_one_by_one_refunds_cumulative_shares_and_the_last_takes_the_rest() -> None:
    pricing = price_basket(BERLIN, [line(BERLIN, "glass", 3, 1000 // 3 + 1)])  # 3 x 3.34 = 10.02
    sold = pricing.lines[0]

    refunds = [line_refund(sold, before, 1) for before in range(3)]

    # 1002 / 3 = 334 each; tax 1002 x 19/119 = 159.98 -> 160: 53.33, 106.67 -> 53, 54, 53
    assert [r.refund_amount for r in refunds] == [334, 334, 334]
    assert [r.tax for r in refunds] == [53, 54, 53]
    assert sum(r.tax for r in refunds) == sold.tax


def test_a_half_share_of_a_refund_is_rounded_away_from_zero() -> None:
    pricing = price_basket(BERLIN, [line(BERLIN, "vase", 2, 500)], points=33)
    sold = pricing.lines[0]
    assert (sold.total_amount, sold.tax, sold.points_allocated) == (967, 154, 33)

    first = line_refund(sold, 0, 1)
    second = line_refund(sold, 1, 1)

    assert (first.refund_amount, first.tax, first.points_returned) == (484, 77, 17)  # 483.5, 77, 16.5
    assert (second.refund_amount, second.tax, second.points_returned) == (483, 77, 16)


def test_new_york_refunds_include_the_tax_paid_on_top() -> None:
    pricing = price_basket(NEW_YORK, [line(NEW_YORK, "mug", 3, 400)])  # 1200 + 106.5 -> 107 tax = 1307
    settlement = settle(NEW_YORK, pricing.total, [card(NEW_YORK, 1307, "auth-9")])

    plans = [plan_return(pricing.lines, settlement, [before], [1]) for before in range(3)]

    # 1307 / 3: 435.67, 871.33 -> 436, 435, 436; tax 107 / 3: 35.67, 71.33 -> 36, 35, 36
    assert [(p.lines[0].refund_amount, p.lines[0].tax) for p in plans] == [(436, 36), (435, 35), (436, 36)]
    assert [p.tenders for p in plans] == [(Tender(TenderKind.CARD, n, "USD", "auth-9"),) for n in (436, 435, 436)]


def test_money_goes_back_to_non_cash_tenders_first_then_cash_net_of_change() -> None:
    pricing = price_basket(BERLIN, [line(BERLIN, "plate", 1, 700), line(BERLIN, "bowl", 1, 800)])
    settlement = settle(BERLIN, 1500, [cash(BERLIN, 2000), card(BERLIN, 500, "auth-1")])  # cash 10.00 net of change

    first = plan_return(pricing.lines, settlement, [0, 0], [1, 0])
    second = plan_return(pricing.lines, settlement, [1, 0], [0, 1])

    assert first.tenders == (Tender(TenderKind.CARD, 500, "EUR", "auth-1"), Tender(TenderKind.CASH, 200, "EUR"))
    assert second.tenders == (Tender(TenderKind.CASH, 800, "EUR"),)
    assert (first.amount_refunded, second.amount_refunded) == (700, 800)


def test_zurich_cash_refunds_are_rounded_cumulatively_to_give_back_exactly_what_was_paid() -> None:
    pricing = price_basket(ZURICH, [line(ZURICH, "knife", 1, 1003), line(ZURICH, "cheese", 1, 804, "reduced")])
    settlement = settle(ZURICH, pricing.total, [cash(ZURICH, 2000)])  # 18.07 paid as 18.05
    assert settlement.amount_paid == 1805

    first = plan_return(pricing.lines, settlement, [0, 0], [1, 0])
    second = plan_return(pricing.lines, settlement, [1, 0], [0, 1])
    everything = plan_return(pricing.lines, settlement, [0, 0], [1, 1])

    # 10.03 -> 10.05 in cash; then 18.07 -> 18.05 cumulatively, so 8.00
    assert (first.refund_due, first.amount_refunded, first.cash_rounding) == (1003, 1005, 2)
    assert (second.refund_due, second.amount_refunded, second.cash_rounding) == (804, 800, -4)
    assert (everything.refund_due, everything.amount_refunded, everything.cash_rounding) == (1807, 1805, -2)


def test_points_paid_come_back_as_points() -> None:
    pricing = price_basket(BERLIN, [line(BERLIN, "lamp", 1, 2000), line(BERLIN, "bulb", 2, 250)], points=1000)
    settlement = settle(BERLIN, pricing.total, [card(BERLIN, pricing.total)])

    plan = plan_return(pricing.lines, settlement, [0, 0], [1, 2])

    # 10.00 over 20.00 and 5.00: 800 and 200
    assert [r.points_returned for r in plan.lines] == [800, 200]
    assert plan.points_returned == 1000
    assert plan.amount_refunded == 1500


def test_a_line_cannot_be_returned_more_often_than_it_was_sold() -> None:
    pricing = price_basket(BERLIN, [line(BERLIN, "plate", 2, 700), line(BERLIN, "bowl", 1, 800)])
    settlement = settle(BERLIN, pricing.total, [card(BERLIN, pricing.total)])

    with pytest.raises(ReturnExceedsSold) as raised:
        plan_return(pricing.lines, settlement, [1, 1], [2, 1])

    assert isinstance(raised.value, PreconditionFailed)
    assert raised.value.reason == "RETURN_EXCEEDS_SOLD"
    assert raised.value.metadata == {
        "line_0": "sold=2,returned=1,returning=2",
        "line_1": "sold=1,returned=1,returning=1",
    }


def test_a_refund_never_contains_more_tax_than_money() -> None:
    # 4 units discounted to 0.02 at a 50 % inclusive rate: tax 2 x 0.5/1.5 = 0.67 -> 1
    sold = line_amounts(PricedLine("x", 4, 1, "high", 500_000), tax_inclusive=True, discount=2)
    assert (sold.total_amount, sold.tax) == (2, 1)

    refunds = [line_refund(sold, before, 1) for before in range(4)]

    # money 0.5, 1, 1.5, 2 -> 1, 0, 1, 0; tax follows the money refunded so far: 1 x 1/2 = 0.5 -> 1, then 1, 1, 1
    assert [(r.refund_amount, r.tax) for r in refunds] == [(1, 1), (0, 0), (1, 0), (0, 0)]
