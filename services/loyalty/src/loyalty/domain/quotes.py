"""What points are worth when redeemed, per currency, and the most that can be redeemed against a basket."""

from __future__ import annotations

from dataclasses import dataclass

from loyalty.domain.policy import LoyaltyPolicy
from storeplane_runtime.errors import FieldViolation, InvalidInput


@dataclass(frozen=True)
class Quote:
    points: int  # the requested points, lowered to a multiple that buys whole minor units
    discount_minor: int
    max_points: int
    max_discount_minor: int
    available: int


def quote(policy: LoyaltyPolicy, *, currency: str, points: int, available: int, basket_minor: int | None) -> Quote:
    """Price `points` in `currency`, and the most redeemable now (available points, capped by the basket amount),
    both lowered to whole minor units. Changes nothing."""
    value = policy.redemption.get(currency)
    if value is None:
        raise InvalidInput(
            "no redemption value for this currency",
            violations=[FieldViolation("currency_code", f"points are not redeemable in {currency[:8]!r}")],
        )
    asked = points - points % value.step  # lowered to a multiple that buys whole minor units
    most = max(0, available)
    if basket_minor is not None:
        most = min(most, value.most_for(basket_minor))
    most -= most % value.step
    return Quote(asked, value.worth(asked), most, value.worth(most), max(0, available))


def points_worth(policy: LoyaltyPolicy, currency: str, points: int) -> int:
    """Minor units `points` buy in `currency` (0 for a currency without a redemption value)."""
    value = policy.redemption.get(currency)
    return 0 if value is None else value.worth(points)
