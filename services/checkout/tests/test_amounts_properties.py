"""Properties of the checkout money rules over many random baskets, payments and returns.

Hypothesis is not installed here, so each property is a loop over a seeded `random.Random`: reproducible, and a
failure names its seed and case. Exact expectations come from `fractions.Fraction` (a rational, never a float).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import math
import random
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from checkout.domain import (
    DEFAULT_REDEMPTION_VALUES,
    PPM,
    LineAmounts,
    PricedLine,
    Pricing,
    RedemptionValue,
    ReturnPlan,
    Settlement,
    Tender,
    TenderExceedsDue,
    TenderInsufficient,
    TenderKind,
    largest_remainder,
    plan_return,
    price_basket,
    round_half_away,
    round_to_increment,
    settle,
)
from storeplane_runtime.stores import DEFAULT_STORES, Store

SEEDS = range(8)
CASES_PER_SEED = 250
DOMAIN = Path(__file__).parents[1] / "src" / "checkout" / "domain"
# A store with odd settings: a 0 % class, two classes sharing a rate, cash rounded to 10 minor units.
ODD = Store("odd", "Odd", "SEK", "Europe/Stockholm", True, {"zero": 0, "a": 250_000, "b": 250_000}, 10)
STORES = (*DEFAULT_STORES, ODD)
NON_CASH = [k for k in TenderKind if k is not TenderKind.CASH]


def exact_round(value: Fraction) -> int:
    """Half away from zero, the slow and obvious way."""
    magnitude = abs(value)
    whole = math.floor(magnitude)
    if magnitude - whole >= Fraction(1, 2):
        whole += 1
    return whole if value >= 0 else -whole


def random_price(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.05:
        return 0
    if pick < 0.15:
        return 1
    if pick < 0.9:
        return rng.randint(1, 20_000)
    return rng.randint(1, 10**13)


def random_lines(rng: random.Random, store: Store) -> list[PricedLine]:
    lines = []
    for i in range(rng.randint(0, 8)):
        tax_class = rng.choice(sorted(store.tax_rates_ppm))
        quantity = rng.choice([1, 1, 2, 3, rng.randint(1, 50), rng.randint(1, 9999)])
        unit_price = random_price(rng)
        if unit_price > 10**9:
            quantity = min(quantity, 5)
        lines.append(PricedLine(f"sku-{i}", quantity, unit_price, tax_class, store.tax_rates_ppm[tax_class]))
    return lines


def random_redemption(rng: random.Random) -> RedemptionValue | None:
    if rng.random() < 0.7:
        return None
    return RedemptionValue(rng.randint(1, 300), rng.randint(1, 300))


def random_basket(rng: random.Random) -> tuple[Store, list[PricedLine], int, RedemptionValue | None]:
    store = rng.choice(STORES)
    lines = random_lines(rng, store)
    subtotal = sum(line.gross_amount for line in lines)
    points = 0 if rng.random() < 0.3 or subtotal == 0 else rng.randint(0, min(2 * subtotal, 10**8) + 5)
    redemption = random_redemption(rng)
    if store is ODD and redemption is None and points:
        redemption = RedemptionValue(100, 100)
    return store, lines, points, redemption


def baskets() -> Iterator[tuple[str, Store, list[PricedLine], int, RedemptionValue | None]]:
    for seed in SEEDS:
        rng = random.Random(seed)
        for case in range(CASES_PER_SEED):
            yield f"seed {seed} case {case}", *random_basket(rng)


def leaves(value: object) -> Iterator[object]:
    """Every scalar inside a result, through dataclasses, tuples, lists and dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from leaves(getattr(value, f.name))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from leaves(item)
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from leaves(k)
            yield from leaves(item)
    else:
        yield value


def assert_only_ints(value: object, where: str) -> None:
    for leaf in leaves(value):
        assert isinstance(leaf, int | str | bool | enum.Enum), f"{where}: {leaf!r} is a {type(leaf).__name__}"
        assert not isinstance(leaf, float), where


def pay(rng: random.Random, store: Store, total: int) -> list[Tender]:
    """Random valid tenders for `total`: some exact non-cash tenders, then cash for the rest (with change) or not."""
    tenders = []
    left = total
    for _ in range(rng.randint(0, 3)):
        if left == 0:
            break
        amount = rng.randint(1, left)
        tenders.append(Tender(rng.choice(NON_CASH), amount, store.currency, f"ref-{len(tenders)}"))
        left -= amount
    if left or rng.random() < 0.5:
        due = round_to_increment(left, store.cash_rounding_minor)
        given = due + rng.choice([0, 0, rng.randint(0, 10_000)])
        if given == 0:
            given = store.cash_rounding_minor
        split = rng.randint(1, given) if given > 1 and rng.random() < 0.2 else given
        tenders.insert(rng.randint(0, len(tenders)), Tender(TenderKind.CASH, split, store.currency))
        if split < given:
            tenders.append(Tender(TenderKind.CASH, given - split, store.currency))
    return tenders


# --- the arithmetic -------------------------------------------------------------------------------------------------


def test_round_half_away_matches_exact_rational_rounding_on_both_signs() -> None:
    rng = random.Random(17)
    for _ in range(20_000):
        numerator = rng.randint(-(10**20), 10**20) if rng.random() < 0.5 else rng.randint(-50, 50)
        denominator = rng.randint(1, 2_000_000) if rng.random() < 0.5 else rng.randint(1, 12)
        assert round_half_away(numerator, denominator) == exact_round(Fraction(numerator, denominator)), (
            numerator,
            denominator,
        )
        assert round_half_away(-numerator, denominator) == -round_half_away(numerator, denominator)


def test_cash_rounding_is_the_nearest_multiple_with_halves_up() -> None:
    rng = random.Random(5)
    for _ in range(20_000):
        amount, increment = rng.randint(0, 10**9), rng.choice([1, 5, 10, 20, 25, 50, 100])
        rounded = round_to_increment(amount, increment)
        assert rounded % increment == 0
        assert 2 * abs(rounded - amount) <= increment
        if 2 * abs(rounded - amount) == increment:
            assert rounded > amount


def test_largest_remainder_sums_exactly_and_stays_within_one_unit_of_the_exact_share() -> None:
    rng = random.Random(11)
    for _ in range(5_000):
        weights = [rng.choice([0, 1, rng.randint(0, 100), rng.randint(0, 10**12)]) for _ in range(rng.randint(1, 10))]
        if not any(weights):
            weights[0] = 1
        total = rng.randint(0, sum(weights))
        parts = largest_remainder(total, weights)
        assert sum(parts) == total
        for part, weight in zip(parts, weights, strict=True):
            exact = Fraction(total * weight, sum(weights))
            assert math.floor(exact) <= part <= math.ceil(exact)
            assert 0 <= part <= weight
        # The leftover units go to the largest remainders, ties to the earlier part.
        remainders = [Fraction(total * w, sum(weights)) % 1 for w in weights]
        bumped = [i for i, (part, w) in enumerate(zip(parts, weights, strict=True)) if part > total * w // sum(weights)]
        order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
        assert bumped == sorted(order[: len(bumped)])


# --- pricing --------------------------------------------------------------------------------------------------------


def check_pricing(where: str, store: Store, lines: list[PricedLine], points: int, pricing: Pricing) -> None:
    assert len(pricing.lines) == len(lines), where
    for line, a in zip(lines, pricing.lines, strict=True):
        rate = Fraction(line.tax_rate_ppm, PPM)
        assert a.line == line, where
        assert a.gross_amount == line.quantity * line.unit_price, where
        assert 0 <= a.discount <= a.gross_amount, where
        assert a.line_total == a.gross_amount - a.discount, where
        expected_tax = exact_round(a.line_total * rate / (1 + rate) if store.tax_inclusive else a.line_total * rate)
        assert a.tax == expected_tax, where
        assert a.net_amount + a.tax == a.total_amount, where
        assert a.total_amount == (a.line_total if store.tax_inclusive else a.line_total + a.tax), where
    assert pricing.subtotal == sum(a.gross_amount for a in pricing.lines), where
    assert pricing.discount_total == sum(a.discount for a in pricing.lines) == pricing.redemption_discount, where
    assert pricing.tax_total == sum(a.tax for a in pricing.lines), where
    line_totals = sum(a.line_total for a in pricing.lines)
    assert pricing.total == line_totals + (0 if store.tax_inclusive else pricing.tax_total), where
    assert pricing.total == sum(a.total_amount for a in pricing.lines) >= 0, where
    assert sum(a.points_allocated for a in pricing.lines) == pricing.points_redeemed, where
    assert 0 <= pricing.points_redeemed <= points, where
    rates = [b.rate_ppm for b in pricing.tax_breakdown]
    assert rates == sorted({line.tax_rate_ppm for line in lines}, reverse=True), where
    for entry in pricing.tax_breakdown:
        group = [a for a in pricing.lines if a.line.tax_rate_ppm == entry.rate_ppm]
        classes = {a.line.tax_class for a in group}
        assert entry.tax_class == (classes.pop() if len(classes) == 1 else ""), where
        assert entry.net == sum(a.net_amount for a in group), where
        assert entry.tax == sum(a.tax for a in group), where
        assert entry.gross == entry.net + entry.tax, where
    assert sum(b.gross for b in pricing.tax_breakdown) == pricing.total, where
    assert sum(b.tax for b in pricing.tax_breakdown) == pricing.tax_total, where


def test_totals_are_the_sums_of_the_rounded_lines_and_tax_plus_net_is_total() -> None:
    for where, store, lines, points, redemption in baskets():
        pricing = price_basket(store, lines, points=points, redemption=redemption)
        check_pricing(where, store, lines, points, pricing)
        assert_only_ints(pricing, where)


def test_redemptions_are_whole_minor_units_allocated_exactly_in_proportion_to_gross() -> None:
    for where, store, lines, points, redemption in baskets():
        pricing = price_basket(store, lines, points=points, redemption=redemption)
        value = redemption or DEFAULT_REDEMPTION_VALUES.get(store.currency, RedemptionValue(100, 100))
        assert pricing.points_redeemed % value.step == 0, where
        assert pricing.redemption_discount * value.points == pricing.points_redeemed * value.minor, where
        assert pricing.redemption_discount <= pricing.subtotal, where
        # Not lowered more than needed: a step more would not fit in the basket or was not asked for.
        more = pricing.points_redeemed + value.step
        assert more > points or value.worth(more) > pricing.subtotal, where
        grosses = [a.gross_amount for a in pricing.lines]
        assert tuple(a.discount for a in pricing.lines) == largest_remainder(pricing.redemption_discount, grosses)
        for a in pricing.lines:
            worth = Fraction(a.points_allocated * value.minor, value.points)
            if value.points % value.minor == 0:  # a minor unit is whole points: a line's points buy its discount
                assert worth == a.discount, where
            else:
                assert abs(worth - a.discount) < Fraction(value.minor, value.points), where


# --- payment --------------------------------------------------------------------------------------------------------


def check_settlement(where: str, store: Store, total: int, tenders: list[Tender], settlement: Settlement) -> None:
    cash_given = sum(t.amount for t in tenders if t.kind is TenderKind.CASH)
    non_cash = sum(t.amount for t in tenders if t.kind is not TenderKind.CASH)
    cash_applied = sum(p.applied for p in settlement.tenders if p.tender.kind is TenderKind.CASH)
    assert [p.tender for p in settlement.tenders] == tenders, where
    assert settlement.amount_paid == total + settlement.cash_rounding == sum(p.applied for p in settlement.tenders)
    assert settlement.change_due == cash_given - cash_applied >= 0, where
    assert all(p.applied == p.tender.amount for p in settlement.tenders if p.tender.kind is not TenderKind.CASH)
    if cash_given:
        assert cash_applied % store.cash_rounding_minor == 0, where
        assert cash_applied == round_to_increment(total - non_cash, store.cash_rounding_minor), where
        assert 2 * abs(settlement.cash_rounding) <= store.cash_rounding_minor, where
    else:
        assert settlement.cash_rounding == 0, where
        assert non_cash == total, where


def test_valid_payments_settle_with_paid_equal_to_total_plus_cash_rounding() -> None:
    for where, store, lines, points, redemption in baskets():
        rng = random.Random(where)
        pricing = price_basket(store, lines, points=points, redemption=redemption)
        tenders = pay(rng, store, pricing.total)
        settlement = settle(store, pricing.total, tenders)
        check_settlement(where, store, pricing.total, tenders, settlement)
        assert_only_ints(settlement, where)


def test_a_non_cash_overpayment_or_a_shortfall_is_refused() -> None:
    rng = random.Random(99)
    for _ in range(3_000):
        store = rng.choice(STORES)
        total = rng.randint(1, 10**6)
        kind = rng.choice(NON_CASH)
        with pytest.raises(TenderExceedsDue):
            settle(store, total, [Tender(kind, total + rng.randint(1, 1000), store.currency)])
        short = rng.randint(1, total)
        with pytest.raises(TenderInsufficient):
            settle(store, total, [Tender(kind, total - short, store.currency)] if short < total else [])
        cash_due = round_to_increment(total, store.cash_rounding_minor)
        if cash_due > 1:
            with pytest.raises(TenderInsufficient):
                settle(store, total, [Tender(TenderKind.CASH, cash_due - 1, store.currency)])


# --- returns --------------------------------------------------------------------------------------------------------


def sold_sale(rng: random.Random) -> tuple[Store, Pricing, Settlement] | None:
    store, lines, points, redemption = random_basket(rng)
    if not lines:
        return None
    pricing = price_basket(store, lines, points=points, redemption=redemption)
    return store, pricing, settle(store, pricing.total, pay(rng, store, pricing.total))


def check_everything_came_back(where: str, pricing: Pricing, settlement: Settlement, plans: list[ReturnPlan]) -> None:
    for i, a in enumerate(pricing.lines):
        assert sum(p.lines[i].quantity for p in plans) == a.line.quantity, where
        assert sum(p.lines[i].refund_amount for p in plans) == a.total_amount, where
        assert sum(p.lines[i].tax for p in plans) == a.tax, where
        assert sum(p.lines[i].points_returned for p in plans) == a.points_allocated, where
    assert sum(p.amount_refunded for p in plans) == settlement.amount_paid, where
    assert sum(p.refund_due for p in plans) == pricing.total, where
    assert sum(p.points_returned for p in plans) == pricing.points_redeemed, where
    for kind in TenderKind:
        paid = sum(p.applied for p in settlement.tenders if p.tender.kind is kind)
        refunded = sum(t.amount for p in plans for t in p.tenders if t.kind is kind)
        assert refunded == paid, (where, kind)


def test_returning_everything_at_once_gives_back_exactly_what_was_paid() -> None:
    for seed in SEEDS:
        rng = random.Random(1000 + seed)
        for case in range(CASES_PER_SEED):
            where = f"seed {1000 + seed} case {case}"
            sale = sold_sale(rng)
            if sale is None:
                continue
            _, pricing, settlement = sale
            quantities = [a.line.quantity for a in pricing.lines]
            plan = plan_return(pricing.lines, settlement, [0] * len(quantities), quantities)
            check_everything_came_back(where, pricing, settlement, [plan])
            assert_only_ints(plan, where)


def test_returns_in_any_split_sum_to_the_full_refund_and_never_refund_a_tender_beyond_what_it_paid() -> None:
    for seed in SEEDS:
        rng = random.Random(2000 + seed)
        for case in range(CASES_PER_SEED):
            where = f"seed {2000 + seed} case {case}"
            sale = sold_sale(rng)
            if sale is None:
                continue
            _, pricing, settlement = sale
            returned = [0] * len(pricing.lines)
            plans = []
            while any(r < a.line.quantity for r, a in zip(returned, pricing.lines, strict=True)):
                returning = [
                    0 if rng.random() < 0.5 else rng.randint(0, a.line.quantity - r)
                    for r, a in zip(returned, pricing.lines, strict=True)
                ]
                if rng.random() < 0.1:
                    returning = [a.line.quantity - r for r, a in zip(returned, pricing.lines, strict=True)]
                plan = plan_return(pricing.lines, settlement, returned, returning)
                assert all(t.amount > 0 for t in plan.tenders), where
                kinds = [t.kind is TenderKind.CASH for t in plan.tenders]
                assert kinds == sorted(kinds), where  # non-cash first
                assert plan.amount_refunded == plan.refund_due + plan.cash_rounding, where
                for i, (a, before, now) in enumerate(zip(pricing.lines, returned, returning, strict=True)):
                    exact = Fraction(a.total_amount * (before + now), a.line.quantity)
                    cumulative = sum(p.lines[i].refund_amount for p in [*plans, plan])
                    assert abs(cumulative - exact) <= Fraction(1, 2), where
                    assert 0 <= plan.lines[i].tax <= plan.lines[i].refund_amount, where
                    assert plan.lines[i].quantity == now, where
                assert_only_ints(plan, where)
                plans.append(plan)
                returned = [r + n for r, n in zip(returned, returning, strict=True)]
                for kind in TenderKind:
                    paid = sum(p.applied for p in settlement.tenders if p.tender.kind is kind)
                    assert sum(t.amount for p in plans for t in p.tenders if t.kind is kind) <= paid, where
            check_everything_came_back(where, pricing, settlement, plans)


# --- the code itself ------------------------------------------------------------------------------------------------

ALLOWED_IMPORTS = {
    "__future__",
    "collections.abc",
    "dataclasses",
    "datetime",  # baskets, sales and receipts carry times (never money)
    "enum",
    "math",
    "zoneinfo",  # receipts print the store's local time
    "storeplane_runtime.errors",
    "storeplane_runtime.money",
    "storeplane_runtime.stores",
}


def domain_modules() -> list[Path]:
    """Checkout's domain and the kit's money module it is built on."""
    import storeplane_runtime.money

    modules = [*sorted(DOMAIN.glob("*.py")), Path(storeplane_runtime.money.__file__)]
    assert len(modules) > 1
    return modules


@pytest.mark.parametrize("path", domain_modules(), ids=lambda p: p.name)
def test_money_code_uses_no_float_and_imports_no_framework(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), f"float literal in {path.name}"
        assert not (isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div)), (
            f"true division in {path.name}:{getattr(node, 'lineno', '?')}"
        )
        assert not (isinstance(node, ast.Name) and node.id in {"float", "Decimal", "round"}), (
            f"{node.id} in {path.name}:{node.lineno}"
        )
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name in ALLOWED_IMPORTS, f"{path.name} imports {alias.name}"
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            assert module in ALLOWED_IMPORTS or module.startswith("checkout.domain"), f"{path.name} imports {module}"


def test_line_amounts_hold_only_ints() -> None:
    fields = {f.name: f.type for f in dataclasses.fields(LineAmounts)}
    assert all(kind == "int" for name, kind in fields.items() if name != "line"), fields
