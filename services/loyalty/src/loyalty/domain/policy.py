"""The configurable part of the loyalty rules (earning, tiers, redemption value, expiry, holds) and its defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from storeplane_runtime.money import DEFAULT_REDEMPTION_VALUES, RedemptionValue

MAX_ID_LENGTH = 128
MAX_CARD_LENGTH = 64
MAX_NOTE_LENGTH = 500
MAX_POINTS = 1_000_000_000  # a hold, a quote or an adjustment, in absolute value


class Tier(Enum):
    """Loyalty tier, from the rolling 12-month spend; ordered by rank."""

    BRONZE = 1
    SILVER = 2
    GOLD = 3


DEFAULT_EARN_MINOR_PER_POINT = {"EUR": 100, "CHF": 100, "USD": 100, "JPY": 100}
DEFAULT_MULTIPLIERS_PPM = {Tier.BRONZE: 1_000_000, Tier.SILVER: 1_250_000, Tier.GOLD: 1_500_000}
# Minor units of 12-month spend a tier needs: Silver 500, Gold 1,500 major units (JPY x100, which has no minor unit).
DEFAULT_SILVER_MINOR = {"EUR": 50_000, "CHF": 50_000, "USD": 50_000, "JPY": 50_000}
DEFAULT_GOLD_MINOR = {"EUR": 150_000, "CHF": 150_000, "USD": 150_000, "JPY": 150_000}
DEFAULT_REDEMPTION = DEFAULT_REDEMPTION_VALUES
DEFAULT_HOLD_TTL = timedelta(minutes=30)
MAX_HOLD_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class LoyaltyPolicy:
    """The loyalty rules' parameters (from LoyaltySettings); all amounts integer minor units, multipliers in ppm."""

    earn_minor_per_point: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_EARN_MINOR_PER_POINT))
    multipliers_ppm: Mapping[Tier, int] = field(default_factory=lambda: dict(DEFAULT_MULTIPLIERS_PPM))
    silver_minor: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_SILVER_MINOR))
    gold_minor: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_GOLD_MINOR))
    redemption: Mapping[str, RedemptionValue] = field(default_factory=lambda: dict(DEFAULT_REDEMPTION))
    expiry_months: int = 24
    expiring_soon: timedelta = timedelta(days=90)
    spend_window_months: int = 12
    default_hold_ttl: timedelta = DEFAULT_HOLD_TTL
    max_hold_ttl: timedelta = MAX_HOLD_TTL

    def multiplier_ppm(self, tier: Tier) -> int:
        return self.multipliers_ppm[tier]
