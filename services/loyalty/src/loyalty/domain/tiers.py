"""Tiers from the rolling 12-month spend, per currency: the best tier any one currency's spend reaches."""

from __future__ import annotations

from collections.abc import Mapping

from loyalty.domain.policy import LoyaltyPolicy, Tier


def tier_for(spend: Mapping[str, int], policy: LoyaltyPolicy) -> Tier:
    """The tier a rolling spend (currency -> minor units) earns."""
    best = Tier.BRONZE
    for currency, amount in spend.items():
        gold = policy.gold_minor.get(currency)
        silver = policy.silver_minor.get(currency)
        if gold is not None and amount >= gold:
            return Tier.GOLD
        if silver is not None and amount >= silver:
            best = Tier.SILVER
    return best
