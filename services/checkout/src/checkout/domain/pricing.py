"""Pricing a basket: line amounts, the points discount and its allocation, tax per line, totals and tax breakdown.

The rules of the checkout.proto file comment. A line's `gross_amount` = quantity x unit_price; its `discount` is its
share of the points redemption (largest remainder over the gross amounts, before tax); `line_total` = gross_amount -
discount, at price level (tax included in tax-inclusive stores, excluded in tax-exclusive ones); `tax` comes from
line_total, rounded half away from zero to the minor unit. Totals are sums of the rounded lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from storeplane_runtime.errors import FieldViolation, InvalidInput, PreconditionFailed, Violations
from storeplane_runtime.money import (
    DEFAULT_REDEMPTION_VALUES,
    PPM,
    RedemptionValue,
    check_fits,
    largest_remainder,
    round_half_away,
)
from storeplane_runtime.stores import Store


class UnknownTaxClass(PreconditionFailed):
    """The store has no rate for the item's tax class."""

    reason = "UNKNOWN_TAX_CLASS"


class PointsNotRedeemable(PreconditionFailed):
    """Points have no redemption value in this currency."""

    reason = "POINTS_NOT_REDEEMABLE"


def redemption_value(currency: str, configured: Mapping[str, RedemptionValue] | None = None) -> RedemptionValue:
    """What points are worth in `currency` (the configured values, else the defaults); PointsNotRedeemable if none."""
    values = DEFAULT_REDEMPTION_VALUES if configured is None else configured
    value = values.get(currency)
    if value is None:
        raise PointsNotRedeemable(f"points cannot be redeemed in {currency[:8]!r}", metadata={"currency": currency[:8]})
    return value


def tax_rate(store: Store, tax_class: str) -> int:
    """The store's rate for a tax class, in ppm; UnknownTaxClass when it has none."""
    rate = store.tax_rates_ppm.get(tax_class)
    if rate is None:
        raise UnknownTaxClass(
            f"store {store.store_id} has no rate for tax class {tax_class[:32]!r}",
            metadata={"store_id": store.store_id, "tax_class": tax_class[:32]},
        )
    return rate


@dataclass(frozen=True)
class PricedLine:
    """A line as scanned: quantity x unit price at price level (tax included in tax-inclusive stores), with its tax
    class and the rate in force when it was scanned. Amounts in minor units."""

    sku: str
    quantity: int
    unit_price: int
    tax_class: str
    tax_rate_ppm: int

    @property
    def gross_amount(self) -> int:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class LineAmounts:
    """Every amount of one line, in minor units. `line_total` is at price level; `net_amount` is without tax and
    `total_amount` with it (what the customer paid in money for the line): net_amount + tax = total_amount."""

    line: PricedLine
    gross_amount: int  # quantity x unit_price
    discount: int  # share of the points redemption (positive)
    points_allocated: int  # points of the redemption behind `discount`
    line_total: int  # gross_amount - discount
    tax: int
    net_amount: int
    total_amount: int


def line_tax(line_total: int, rate_ppm: int, *, tax_inclusive: bool) -> int:
    """Tax of one line, rounded half away from zero: contained in line_total when prices include tax
    (line_total x r / (1 + r)), on top of it otherwise (line_total x r)."""
    if tax_inclusive:
        return round_half_away(line_total * rate_ppm, PPM + rate_ppm)
    return round_half_away(line_total * rate_ppm, PPM)


def line_amounts(line: PricedLine, *, tax_inclusive: bool, discount: int = 0, points_allocated: int = 0) -> LineAmounts:
    """The amounts of one line after its share of the points discount."""
    gross = line.gross_amount
    line_total = gross - discount
    tax = line_tax(line_total, line.tax_rate_ppm, tax_inclusive=tax_inclusive)
    net = line_total - tax if tax_inclusive else line_total
    return LineAmounts(line, gross, discount, points_allocated, line_total, tax, net, net + tax)


@dataclass(frozen=True)
class TaxBreakdown:
    """Net, tax and gross (net + tax, after the discount) of the lines of one rate, as a fiscal receipt shows them.
    `tax_class` names the class when one class alone has this rate in the sale, and is empty otherwise."""

    tax_class: str
    rate_ppm: int
    net: int
    tax: int
    gross: int


def tax_breakdown(lines: Sequence[LineAmounts]) -> tuple[TaxBreakdown, ...]:
    """One entry per rate present in the lines, highest rate first; sums of the rounded lines."""
    by_rate: dict[int, list[LineAmounts]] = {}
    for amounts in lines:
        by_rate.setdefault(amounts.line.tax_rate_ppm, []).append(amounts)
    entries = []
    for rate in sorted(by_rate, reverse=True):
        group = by_rate[rate]
        classes = {a.line.tax_class for a in group}
        net = sum(a.net_amount for a in group)
        tax = sum(a.tax for a in group)
        entries.append(TaxBreakdown(classes.pop() if len(classes) == 1 else "", rate, net, tax, net + tax))
    return tuple(entries)


@dataclass(frozen=True)
class Redemption:
    """Points applied to a basket: `points` (the requested points lowered to whole minor units and to what the basket
    absorbs), the `discount` they buy, and its allocation over the lines (`line_discounts`, `line_points`)."""

    requested: int
    points: int
    discount: int
    line_discounts: tuple[int, ...]
    line_points: tuple[int, ...]


def apply_points(lines: Sequence[PricedLine], points: int, value: RedemptionValue) -> Redemption:
    """The points applicable to these lines and their allocation.

    Points are lowered to a multiple of `value.step` (whole minor units) and to what the subtotal absorbs (the total
    never goes negative), so a redemption shrinks with the basket. The discount is split over the lines by largest
    remainder in proportion to their gross amounts (ties to the earlier line), before tax; the points follow the
    discounts the same way, so a line's points are worth exactly its discount whenever a minor unit is a whole
    number of points (every default: 1 point = 1 cent, Rappen or yen), and within a point of it otherwise.
    """
    if points < 0:
        raise InvalidInput("points must not be negative", violations=[FieldViolation("points", "must not be negative")])
    grosses = [line.gross_amount for line in lines]
    applicable = min(points - points % value.step, value.most_for(sum(grosses)))
    discount = value.worth(applicable)
    discounts = largest_remainder(discount, grosses)
    return Redemption(points, applicable, discount, discounts, largest_remainder(applicable, discounts))


@dataclass(frozen=True)
class Pricing:
    """A priced basket: its lines and totals in minor units of `currency` (see the module docstring).

    total = sum(line_total) (+ tax_total when prices exclude tax) = sum(total_amount); cash rounding comes later,
    at settlement."""

    currency: str
    tax_inclusive: bool
    lines: tuple[LineAmounts, ...]
    points_requested: int
    points_redeemed: int
    redemption_discount: int
    subtotal: int
    discount_total: int
    tax_total: int
    total: int
    tax_breakdown: tuple[TaxBreakdown, ...]


def check_lines(lines: Sequence[PricedLine]) -> None:
    """InvalidInput naming every line with a quantity below 1, a negative price or a negative rate."""
    v = Violations()
    for i, line in enumerate(lines):
        if line.quantity < 1:
            v.add(f"lines[{i}].quantity", "must be at least 1")
        if line.unit_price < 0:
            v.add(f"lines[{i}].unit_price", "must not be negative")
        if line.tax_rate_ppm < 0:
            v.add(f"lines[{i}].tax_rate_ppm", "must not be negative")
    v.raise_if_any("the basket lines are invalid")


def price_basket(
    store: Store,
    lines: Sequence[PricedLine],
    *,
    points: int = 0,
    redemption: RedemptionValue | None = None,
) -> Pricing:
    """Every amount of a basket in `store`: lines, the points discount (lowered to what the basket absorbs; see
    `apply_points`), taxes, totals and breakdown. `redemption` defaults to the currency's default value.
    InvalidInput for bad lines or amounts a Money cannot hold."""
    check_lines(lines)
    if points == 0 and redemption is None:
        applied = Redemption(0, 0, 0, tuple(0 for _ in lines), tuple(0 for _ in lines))
    else:
        applied = apply_points(lines, points, redemption or redemption_value(store.currency))
    priced = tuple(
        line_amounts(line, tax_inclusive=store.tax_inclusive, discount=discount, points_allocated=share)
        for line, discount, share in zip(lines, applied.line_discounts, applied.line_points, strict=True)
    )
    tax_total = sum(a.tax for a in priced)
    total = sum(a.total_amount for a in priced)
    for i, a in enumerate(priced):
        check_fits(f"lines[{i}]", a.gross_amount)
        check_fits(f"lines[{i}]", a.total_amount)
    check_fits("total", max(total, sum(a.gross_amount for a in priced)))
    return Pricing(
        currency=store.currency,
        tax_inclusive=store.tax_inclusive,
        lines=priced,
        points_requested=points,
        points_redeemed=applied.points,
        redemption_discount=applied.discount,
        subtotal=sum(a.gross_amount for a in priced),
        discount_total=sum(a.discount for a in priced),
        tax_total=tax_total,
        total=total,
        tax_breakdown=tax_breakdown(priced),
    )
