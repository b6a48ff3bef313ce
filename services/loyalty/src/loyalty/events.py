"""The events loyalty publishes, built from domain values (their meta is filled by the unit of work)."""

from __future__ import annotations

from collections.abc import Mapping

from loyalty.domain import Account, Earning, Entry, Tier
from pos.common.v1 import common_pb2
from pos.loyalty.v1 import events_pb2, loyalty_pb2
from storeplane_runtime.timestamps import to_timestamp

POINTS_EARNED = events_pb2.PointsEarned.DESCRIPTOR.full_name
POINTS_REDEEMED = events_pb2.PointsRedeemed.DESCRIPTOR.full_name
TIER_CHANGED = events_pb2.TierChanged.DESCRIPTOR.full_name


def subject_of(account: Account) -> str:
    """The outbox subject of an account's events: its customer id, else its account id (never the card number), so
    that erasure can find and delete them (storeplane_runtime.erasure)."""
    return account.customer_id or account.account_id


def tier_value(tier: Tier) -> loyalty_pb2.Tier.ValueType:
    return loyalty_pb2.Tier.Value(f"TIER_{tier.name}")


def spend_messages(spend: Mapping[str, int]) -> list[common_pb2.Money]:
    return [common_pb2.Money(amount_minor=amount, currency_code=code) for code, amount in sorted(spend.items())]


def points_earned(
    account: Account, entry: Entry, earning: Earning, amount_paid: int, currency: str
) -> events_pb2.PointsEarned:
    event = events_pb2.PointsEarned(
        customer_id=account.customer_id or "",
        loyalty_card_number=account.card_number or "",
        sale_id=entry.sale_id,
        entry_id=entry.entry_id,
        points=entry.points,
        earned_on=common_pb2.Money(amount_minor=amount_paid, currency_code=currency),
        tier=tier_value(account.tier),
        multiplier_ppm=earning.multiplier_ppm,
        balance_after=entry.balance_after,
    )
    if entry.expires_at is not None:
        event.expires_at.CopyFrom(to_timestamp(entry.expires_at))
    return event


def points_redeemed(
    account: Account, entry: Entry, hold_id: str, worth_minor: int, currency: str
) -> events_pb2.PointsRedeemed:
    return events_pb2.PointsRedeemed(
        customer_id=account.customer_id or "",
        loyalty_card_number=account.card_number or "",
        sale_id=entry.sale_id,
        hold_id=hold_id,
        entry_id=entry.entry_id,
        points=-entry.points,
        discount=common_pb2.Money(amount_minor=worth_minor, currency_code=currency),
        balance_after=entry.balance_after,
    )


def tier_changed(account: Account, previous: Tier, tier: Tier, spend: Mapping[str, int]) -> events_pb2.TierChanged:
    return events_pb2.TierChanged(
        customer_id=account.customer_id or "",
        loyalty_card_number=account.card_number or "",
        previous_tier=tier_value(previous),
        tier=tier_value(tier),
        rolling_12m_spend=spend_messages(spend),
    )
