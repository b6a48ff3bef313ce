"""Accounts, holds and the loyalty errors: what a balance, a hold and the available points are."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from loyalty.domain.policy import Tier
from storeplane_runtime.errors import NotFound, PreconditionFailed, PreconditionViolation


class AccountNotFound(NotFound):
    """Neither the customer id nor the card names an account."""

    reason = "ACCOUNT_NOT_FOUND"


class InsufficientPoints(PreconditionFailed):
    """The available points (balance minus active holds) do not cover a hold, redemption or debit; also told as a
    google.rpc.PreconditionFailure violation of type POINTS on the customer's account."""

    reason = "INSUFFICIENT_POINTS"

    def __init__(self, customer_id: str, requested: int, available: int) -> None:
        super().__init__(
            f"{requested} points asked, {available} available",
            metadata={"requested": str(requested), "available": str(available)},
            preconditions=[
                PreconditionViolation("POINTS", customer_id, f"requested {requested}, available {available}")
            ],
        )


class AccountAnonymised(PreconditionFailed):
    """The customer was erased: the account is closed to new holds and adjustments."""

    reason = "ACCOUNT_ANONYMISED"


class HoldCaptured(PreconditionFailed):
    """The hold was turned into a redemption by its sale; it can no longer change."""

    reason = "HOLD_CAPTURED"


class HoldOfAnotherCustomer(PreconditionFailed):
    """The hold id (a basket) holds points of another customer."""

    reason = "HOLD_CUSTOMER_MISMATCH"


@dataclass(frozen=True)
class Account:
    """A points account. `balance` may be negative (a debt: clawed-back points that had been spent), which later
    credits repay first; `held_points` are set aside by active holds."""

    account_id: str
    customer_id: str | None
    card_number: str | None
    balance: int
    held_points: int
    tier: Tier
    anonymised: bool
    created_at: datetime

    @property
    def available(self) -> int:
        """Points that can be redeemed now: balance - held, never below 0."""
        return max(0, self.balance - self.held_points)

    @property
    def debt(self) -> int:
        return max(0, -self.balance)


class HoldState(Enum):
    ACTIVE = "ACTIVE"
    RELEASED = "RELEASED"
    CAPTURED = "CAPTURED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class Hold:
    """Points set aside for an open basket (hold id = basket id)."""

    hold_id: str
    account_id: str
    store_id: str
    points: int
    state: HoldState
    expires_at: datetime | None

    @property
    def held(self) -> int:
        """What this hold takes from the account's available points now."""
        return self.points if self.state is HoldState.ACTIVE else 0


def plan_hold(
    account: Account, existing: Hold | None, *, hold_id: str, store_id: str, points: int, expires_at: datetime
) -> Hold:
    """The hold after a declarative HoldPoints: exactly `points` (0 releases it). Raises when the account's
    available points plus what this hold already holds do not cover `points`; lowering a hold always works."""
    if existing is not None:
        if existing.account_id != account.account_id:
            raise HoldOfAnotherCustomer(f"hold {hold_id[:128]!r} belongs to another customer")
        if existing.state is HoldState.CAPTURED:
            raise HoldCaptured(f"hold {hold_id[:128]!r} was captured by its sale")
    current = existing.held if existing is not None else 0
    if points == 0:
        return Hold(hold_id, account.account_id, store_id, 0, HoldState.RELEASED, None)
    if account.anonymised:
        raise AccountAnonymised("the account is anonymised")
    room = account.balance - (account.held_points - current)
    if points > current and points > room:
        raise InsufficientPoints(account.customer_id or "", points, max(0, room))
    return Hold(hold_id, account.account_id, store_id, points, HoldState.ACTIVE, expires_at)


def check_debit(account: Account, points: int) -> None:
    """A manual debit may not take more than the available points (so active holds stay covered)."""
    if points > account.balance - account.held_points:
        raise InsufficientPoints(account.customer_id or "", points, account.available)
