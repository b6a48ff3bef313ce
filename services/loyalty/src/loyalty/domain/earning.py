"""Earning on a sale, spreading what it earned over its lines, and clawing it back line by line on returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loyalty.domain.policy import LoyaltyPolicy, Tier
from storeplane_runtime.money import PPM, largest_remainder


@dataclass(frozen=True)
class Earning:
    """Points a paid amount earns at a tier."""

    points: int
    multiplier_ppm: int


def points_earned(amount_paid_minor: int, currency: str, tier: Tier, policy: LoyaltyPolicy) -> Earning:
    """Whole earning units of the paid amount (a major unit; JPY: 100 yen) x the tier multiplier, rounded down.
    A currency without an earning rule earns nothing."""
    ppm = policy.multiplier_ppm(tier)
    per_point = policy.earn_minor_per_point.get(currency)
    if not per_point or amount_paid_minor <= 0:
        return Earning(0, ppm)
    return Earning((amount_paid_minor // per_point) * ppm // PPM, ppm)


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """`total` spread over `weights` in proportion (the kit's largest remainder: the parts sum to `total` exactly,
    ties go to the earlier weight); negative weights count as 0. No weight (or all zero): everything to the first,
    or nothing."""
    if not weights:
        return []
    clean = [max(0, w) for w in weights]
    if sum(clean) == 0:
        return [total if i == 0 else 0 for i in range(len(clean))]
    return list(largest_remainder(total, clean))


@dataclass(frozen=True)
class SaleLine:
    """What loyalty remembers of a sale line: units sold, points it earned, units returned and points taken back."""

    line_id: str
    quantity: int
    points: int
    returned: int = 0
    clawed_back: int = 0


@dataclass(frozen=True)
class LineClawback:
    line: SaleLine  # after the return
    points: int  # taken back by this return


def clawback(line: SaleLine, quantity: int) -> LineClawback:
    """A return of `quantity` units of the line: floor(points x returned so far / sold) minus what was taken back
    before, so that returning every unit, in however many returns, takes back exactly what the line earned."""
    returned = min(line.quantity, line.returned + max(0, quantity))
    due = line.points * returned // line.quantity if line.quantity > 0 else line.points
    points = max(0, due - line.clawed_back)
    after = SaleLine(line.line_id, line.quantity, line.points, returned, line.clawed_back + points)
    return LineClawback(after, points)
