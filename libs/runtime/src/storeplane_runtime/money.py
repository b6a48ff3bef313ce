"""Integer arithmetic of money, shared by the services that price things (checkout) and count points (loyalty):
the two roundings, the largest-remainder split every allocation is built from, and what points are worth.

Amounts are `int` minor units (cents, Rappen, yen); nothing here ever produces or accepts a float. Plain Python: a
domain module may import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import gcd

from storeplane_runtime.errors import FieldViolation, InvalidInput

__all__ = [
    "DEFAULT_REDEMPTION_VALUES",
    "MAX_MINOR",
    "PPM",
    "RedemptionValue",
    "check_fits",
    "default_redemption_setting",
    "largest_remainder",
    "redemption_values",
    "round_half_away",
    "round_to_increment",
    "share_of",
]

PPM = 1_000_000  # tax rates are parts per million: 19 % = 190_000
MAX_MINOR = 2**63 - 1  # the most a Money (int64 amount_minor) can hold


def round_half_away(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, exact halves away from zero (2.5 → 3, -2.5 → -3)."""
    if denominator <= 0:
        raise ValueError("the denominator must be positive")
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return quotient if numerator >= 0 else -quotient


def round_to_increment(amount: int, increment: int) -> int:
    """`amount` rounded to a multiple of `increment`, exact halves up: the cash rule (CHF 5 Rappen: .x1/.x2 go down,
    .x3/.x4 up). An increment of 1 leaves the amount as it is."""
    if increment <= 0:
        raise ValueError("the increment must be positive")
    return (2 * amount + increment) // (2 * increment) * increment


def largest_remainder(total: int, weights: Sequence[int]) -> tuple[int, ...]:
    """`total` split in proportion to `weights`, summing exactly to `total`: each part gets the floor of its exact
    share, and the units left over go one each to the largest remainders (ties to the earlier part).

    Each part is within one unit of its exact share, so no part exceeds its weight when total <= sum(weights).
    """
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("total and weights must not be negative")
    weight_sum = sum(weights)
    if weight_sum == 0:
        if total:
            raise ValueError("cannot split a non-zero total over zero weights")
        return tuple(0 for _ in weights)
    floors: list[int] = []
    remainders: list[int] = []
    for weight in weights:
        floor, remainder = divmod(total * weight, weight_sum)
        floors.append(floor)
        remainders.append(remainder)
    left = total - sum(floors)
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        floors[i] += 1
    return tuple(floors)


def share_of(amount: int, units: int, of_units: int) -> int:
    """The share of `amount` that `units` of `of_units` carry, rounded half away from zero; all units carry exactly
    `amount`. Differences of cumulative shares are how a part is refunded: the last unit takes the rest."""
    if of_units <= 0 or not 0 <= units <= of_units:
        raise ValueError("units must be between 0 and a positive of_units")
    return round_half_away(amount * units, of_units)


def check_fits(field_path: str, amount: int) -> None:
    """InvalidInput when `amount` is beyond what a Money can carry (int64 minor units)."""
    if not -MAX_MINOR <= amount <= MAX_MINOR:
        raise InvalidInput(
            "the amounts are too large",
            reason="AMOUNT_TOO_LARGE",
            violations=[FieldViolation(field_path, f"must be at most {MAX_MINOR} minor units")],
        )


@dataclass(frozen=True)
class RedemptionValue:
    """`points` points are worth `minor` minor units of a currency (100 points = 1.00 EUR is (100, 100))."""

    points: int
    minor: int

    def __post_init__(self) -> None:
        if self.points <= 0 or self.minor <= 0:
            raise ValueError("a redemption value needs positive points and minor units")

    @property
    def step(self) -> int:
        """The fewest points worth a whole number of minor units; redeemed points are a multiple of it."""
        return self.points // gcd(self.points, self.minor)

    def worth(self, points: int) -> int:
        """Minor units `points` buy (exact for a multiple of `step`)."""
        return points * self.minor // self.points

    def most_for(self, amount: int) -> int:
        """The most points whose worth fits in `amount` minor units, a multiple of `step`."""
        most = max(0, amount) * self.points // self.minor
        return most - most % self.step


# The design's defaults (100 points = 1.00 in EUR, CHF, USD; 1 point = 1 yen: the same 1 % that earning one point per
# 100 yen gives); loyalty and checkout take the configured values.
DEFAULT_REDEMPTION_VALUES: Mapping[str, RedemptionValue] = {
    "EUR": RedemptionValue(100, 100),
    "CHF": RedemptionValue(100, 100),
    "USD": RedemptionValue(100, 100),
    "JPY": RedemptionValue(1, 1),
}


def redemption_values(raw: Mapping[str, tuple[int, int]]) -> dict[str, RedemptionValue]:
    """`LOYALTY_REDEMPTION` (currency -> [points, minor units they are worth]) as RedemptionValues; ValueError names
    the setting when a value is not two positive numbers. Loyalty and checkout both read it: the discount a till
    shows and the points loyalty takes must agree."""
    try:
        return {currency: RedemptionValue(int(points), int(minor)) for currency, (points, minor) in raw.items()}
    except ValueError as exc:
        raise ValueError("LOYALTY_REDEMPTION values must be two positive numbers [points, minor units]") from exc


def default_redemption_setting() -> dict[str, tuple[int, int]]:
    """DEFAULT_REDEMPTION_VALUES in the shape of the LOYALTY_REDEMPTION setting (a settings field's default)."""
    return {currency: (value.points, value.minor) for currency, value in DEFAULT_REDEMPTION_VALUES.items()}
