"""Settings of the loyalty service: the common process settings plus the loyalty rules' parameters (JSON maps for
the per-currency ones), validated at start."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator

from loyalty.domain import LoyaltyPolicy, Tier
from loyalty.domain.policy import (
    DEFAULT_EARN_MINOR_PER_POINT,
    DEFAULT_GOLD_MINOR,
    DEFAULT_HOLD_TTL,
    DEFAULT_MULTIPLIERS_PPM,
    DEFAULT_SILVER_MINOR,
    MAX_HOLD_TTL,
)
from storeplane_runtime.money import default_redemption_setting, redemption_values
from storeplane_runtime.settings import ServiceSettings


class LoyaltySettings(ServiceSettings):
    """Environment of the loyalty service (docs/conventions.md), plus its own knobs (no prefix, like the rest)."""

    # Minor units paid per point earned, per currency (100: one point per whole EUR; JPY: per 100 yen).
    loyalty_earn_minor_per_point: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_EARN_MINOR_PER_POINT))
    # Tier multipliers in parts per million.
    loyalty_multipliers_ppm: dict[str, int] = Field(
        default_factory=lambda: {t.name: v for t, v in DEFAULT_MULTIPLIERS_PPM.items()}
    )
    # Rolling 12-month spend (minor units) a tier needs, per currency.
    loyalty_silver_minor: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_SILVER_MINOR))
    loyalty_gold_minor: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_GOLD_MINOR))
    # Redemption value per currency: [points, minor units they are worth] (EUR [100, 100] = 100 points per 1.00).
    loyalty_redemption: dict[str, tuple[int, int]] = Field(default_factory=default_redemption_setting)
    loyalty_expiry_months: int = Field(default=24, ge=1, le=240)
    loyalty_expiring_soon_days: int = Field(default=90, ge=1, le=3650)
    loyalty_spend_window_months: int = Field(default=12, ge=1, le=120)
    hold_default_ttl_seconds: float = Field(default=DEFAULT_HOLD_TTL.total_seconds(), gt=0, le=24 * 3600)
    hold_max_ttl_seconds: float = Field(default=MAX_HOLD_TTL.total_seconds(), gt=0, le=7 * 24 * 3600)
    # Sweepers: expired holds and lots (seconds), tiers (each account above Bronze is rechecked once a day; the
    # sweep looks for due ones this often), rows per transaction.
    hold_sweep_seconds: float = Field(default=1.0, gt=0, le=3600)
    lot_sweep_seconds: float = Field(default=60.0, gt=0, le=86400)
    tier_sweep_seconds: float = Field(default=3600.0, gt=0, le=86400)
    # Sent events of erased accounts are deleted this often, for this long after the erasure (events unsent at the
    # erasure go out first; see storeplane_runtime.erasure).
    erasure_sweep_seconds: float = Field(default=2.0, gt=0, le=3600)
    erased_events_window_hours: float = Field(default=168.0, gt=0, le=24 * 365)
    # HoldPoints arriving together are done in one transaction (group commit), at most this many (1: each alone),
    # in at most `lanes` such transactions at once; a batch first waits this long for more while calls keep coming.
    hold_batch_size: int = Field(default=32, ge=1, le=1000)
    hold_batch_lanes: int = Field(default=1, ge=1, le=64)
    hold_batch_linger_seconds: float = Field(default=0.004, ge=0, le=0.1)
    sweep_batch_size: int = Field(default=100, ge=1, le=10_000)

    @model_validator(mode="after")
    def _rules_agree(self) -> LoyaltySettings:
        if set(self.loyalty_multipliers_ppm) != {t.name for t in Tier}:
            raise ValueError(f"LOYALTY_MULTIPLIERS_PPM must name exactly {', '.join(t.name for t in Tier)}")
        if any(v <= 0 for v in self.loyalty_multipliers_ppm.values()):
            raise ValueError("LOYALTY_MULTIPLIERS_PPM values must be positive")
        if any(v <= 0 for v in self.loyalty_earn_minor_per_point.values()):
            raise ValueError("LOYALTY_EARN_MINOR_PER_POINT values must be positive")
        redemption_values(self.loyalty_redemption)
        for currency, gold in self.loyalty_gold_minor.items():
            if gold < self.loyalty_silver_minor.get(currency, 0):
                raise ValueError(f"LOYALTY_GOLD_MINOR[{currency}] is below LOYALTY_SILVER_MINOR")
        if self.hold_default_ttl_seconds > self.hold_max_ttl_seconds:
            raise ValueError("HOLD_DEFAULT_TTL_SECONDS must not exceed HOLD_MAX_TTL_SECONDS")
        return self

    def policy(self) -> LoyaltyPolicy:
        """The loyalty rules' parameters as these settings set them."""
        return LoyaltyPolicy(
            earn_minor_per_point=dict(self.loyalty_earn_minor_per_point),
            multipliers_ppm={Tier[name]: v for name, v in self.loyalty_multipliers_ppm.items()},
            silver_minor=dict(self.loyalty_silver_minor),
            gold_minor=dict(self.loyalty_gold_minor),
            redemption=redemption_values(self.loyalty_redemption),
            expiry_months=self.loyalty_expiry_months,
            expiring_soon=timedelta(days=self.loyalty_expiring_soon_days),
            spend_window_months=self.loyalty_spend_window_months,
            default_hold_ttl=timedelta(seconds=self.hold_default_ttl_seconds),
            max_hold_ttl=timedelta(seconds=self.hold_max_ttl_seconds),
        )
