"""Response messages of the LoyaltyService, built from domain values and query views."""

from __future__ import annotations

from loyalty.domain import Entry, EntryKind, Hold, HoldState
from loyalty.events import spend_messages, tier_value
from loyalty.queries import AccountView
from pos.loyalty.v1 import loyalty_pb2
from storeplane_runtime.timestamps import to_timestamp


def account_message(view: AccountView) -> loyalty_pb2.Account:
    account = view.account
    soon = sum(points for _, points in view.expiring)
    return loyalty_pb2.Account(
        customer_id=account.customer_id or "",
        loyalty_card_number=account.card_number or "",
        balance=account.balance,
        held_points=account.held_points,
        available_points=account.available,
        tier=tier_value(account.tier),
        rolling_12m_spend=spend_messages(view.spend),
        expiring_soon=[loyalty_pb2.PointsExpiry(points=p, expires_at=to_timestamp(at)) for at, p in view.expiring],
        points_expiring_soon=soon,
        created_at=to_timestamp(account.created_at),
        anonymised=account.anonymised,
    )


def entry_kind_value(kind: EntryKind) -> loyalty_pb2.EntryKind.ValueType:
    return loyalty_pb2.EntryKind.Value(f"ENTRY_KIND_{kind.name}")


def entry_kind_of(value: int) -> EntryKind:
    return EntryKind[loyalty_pb2.EntryKind.Name(value).removeprefix("ENTRY_KIND_")]


def entry_message(entry: Entry) -> loyalty_pb2.LedgerEntry:
    reason = (
        loyalty_pb2.AdjustmentReason.Value(f"ADJUSTMENT_REASON_{entry.adjustment_reason}")
        if entry.adjustment_reason
        else loyalty_pb2.ADJUSTMENT_REASON_UNSPECIFIED
    )
    return loyalty_pb2.LedgerEntry(
        entry_id=entry.entry_id,
        kind=entry_kind_value(entry.kind),
        points=entry.points,
        balance_after=entry.balance_after,
        sale_id=entry.sale_id,
        return_id=entry.return_id,
        store_id=entry.store_id,
        occurred_at=to_timestamp(entry.occurred_at),
        expires_at=to_timestamp(entry.expires_at),
        adjustment_reason=reason,
        note=entry.note,
    )


def hold_message(hold: Hold | None, customer_id: str, hold_id: str = "") -> loyalty_pb2.Hold:
    """A hold as the API shows it; no hold: RELEASED with 0 points."""
    if hold is None:
        return loyalty_pb2.Hold(hold_id=hold_id, state=loyalty_pb2.HOLD_STATE_RELEASED)
    return loyalty_pb2.Hold(
        hold_id=hold.hold_id,
        customer_id=customer_id,
        points=hold.points,
        store_id=hold.store_id,
        state=loyalty_pb2.HoldState.Value(f"HOLD_STATE_{hold.state.name}"),
        expires_at=to_timestamp(hold.expires_at) if hold.state is HoldState.ACTIVE else None,
    )
