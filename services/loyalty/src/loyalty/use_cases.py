"""The loyalty writes, one function each, inside the caller's unit of work: storage loads and locks the account,
the domain decides, storage writes the entries, lots and account row, and the events go to the same outbox.

Lock order: account rows (by id) first, then the hold rows they own; no write touches balance or holds without
its account's lock, so concurrent holds on one account can never together exceed its points.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from loyalty import events, storage
from loyalty.book import book_credit, book_debit, book_expiry
from loyalty.domain import (
    Account,
    AccountAnonymised,
    AccountNotFound,
    Entry,
    EntryKind,
    Hold,
    HoldState,
    LoyaltyPolicy,
    add_months,
    check_debit,
    debit,
    plan_hold,
    tier_for,
)
from loyalty.erasure import scrub_card
from loyalty.storage import hot
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.erasure import forget_sent_events, forget_sent_events_of
from storeplane_runtime.errors import StoreNotAllowed
from storeplane_runtime.event_ids import new_event_id
from storeplane_runtime.sql import Db, is_postgres

log = logging.getLogger(__name__)


# --- accounts ---------------------------------------------------------------------------------------------------


def resolve_account(
    conn: Db, *, customer_id: str, card_number: str, now: datetime, registered: bool = False
) -> Account:
    """The account of a customer and/or card, locked, made when there is none: from a registration, or from a sale
    or hold that came first (completed when the registration arrives). Never two accounts for one customer or card:
    an account opened from a card alone is merged into the customer's when both turn out to be one."""
    for _ in range(3):  # a concurrent writer may create it between our read and insert: read again
        by_customer, by_card = storage.find_accounts_of(conn, customer_id, card_number)
        if by_customer is None and by_card is None:
            account_id = new_event_id()
            if storage.insert_account(
                conn,
                account_id,
                customer_id=customer_id or None,
                card_number=card_number or None,
                registered=registered,
                now=now,
            ):
                found = storage.find_account(conn, account_id=account_id, lock=True)
                assert found is not None
                return found
            continue
        if by_customer is None:
            assert by_card is not None
            if customer_id and by_card.customer_id is None:  # the card's account now learns its customer
                storage.update_account(conn, by_card.account_id, customer_id=customer_id)
                by_card = replace(by_card, customer_id=customer_id)
            elif customer_id:  # the card is another customer's: this customer gets an account of its own
                card_number = ""
                continue
            if registered:
                storage.update_account(conn, by_card.account_id, registered=True)
            return by_card
        account = by_customer
        if by_card is not None and by_card.account_id != account.account_id:
            if by_card.customer_id is None:  # opened from the card alone: it was this customer's all along
                account = _merge(conn, account, by_card, now)
            else:
                return account  # the card is another customer's; the sale earns on the customer id
        if card_number and account.card_number is None and by_card is None and not account.anonymised:
            storage.update_account(conn, account.account_id, card_number=card_number)
            account = replace(account, card_number=card_number)
        if registered:
            storage.update_account(conn, account.account_id, registered=True)
        return account
    raise RuntimeError("could not create or find the account")  # retried by the caller's consumer or client


MERGE_NOTE_OUT = "moved to the customer's account (card used before the registration arrived)"
MERGE_NOTE_IN = "moved from the card's account (card used before the registration arrived)"


def _merge(conn: Db, keep: Account, gone: Account, now: datetime) -> Account:
    """Fold an account opened from a card alone into its customer's (both locked by the caller). Entries are never
    moved: the card account's balance goes across as a pair of MIGRATION adjustments (out of one, into the
    other), its lots (with their expiry dates), holds, booked sales and spend move over, and the lots are trimmed
    so that they again hold exactly max(balance, 0) (one account's debt is repaid from the other's oldest lots)."""
    moved = gone.balance
    storage.update_account(conn, gone.account_id, card_number=None)
    if moved:
        out = Entry(new_event_id(), gone.account_id, EntryKind.ADJUST, -moved, 0, now, adjustment_reason="MIGRATION")
        storage.insert_entry(conn, replace(out, note=MERGE_NOTE_OUT))
    storage.move_account_rows(conn, keep, gone)
    merged = replace(
        keep,
        held_points=keep.held_points + gone.held_points,
        card_number=keep.card_number or gone.card_number,
    )
    if moved:
        into = Entry(
            new_event_id(),
            keep.account_id,
            EntryKind.ADJUST,
            moved,
            keep.balance + moved,
            now,
            adjustment_reason="MIGRATION",
            note=MERGE_NOTE_IN,
        )
        storage.insert_entry(conn, into)
        merged = replace(merged, balance=keep.balance + moved)
    if keep.card_number is None and gone.card_number:
        storage.update_account(conn, keep.account_id, card_number=gone.card_number)
    lots = storage.open_lots(conn, keep.account_id)
    excess = sum(lot.remaining for lot in lots) - max(0, merged.balance)
    if excess > 0:
        storage.take_from_lots(conn, debit(0, lots, excess).taken)
    return merged


def require_account(conn: Db, customer_id: str, *, lock: bool = False) -> Account:
    account = storage.find_account(conn, customer_id=customer_id, lock=lock)
    if account is None:
        raise AccountNotFound(f"no account for customer {customer_id[:128]!r}")
    return account


def retier(
    uow: UnitOfWork,
    policy: LoyaltyPolicy,
    account: Account,
    now: datetime,
    spend: Mapping[str, int] | None = None,
) -> Account:
    """Work out the tier from the rolling spend (read unless given); a change is saved and told (TierChanged)."""
    if spend is None:
        spend = storage.spend_since(uow.connection, account.account_id, add_months(now, -policy.spend_window_months))
    tier = tier_for(spend, policy)
    if tier is account.tier:
        return account
    storage.update_account(uow.connection, account.account_id, tier=tier)
    uow.publish(events.tier_changed(account, account.tier, tier, spend), subject=events.subject_of(account))
    return replace(account, tier=tier)


def enrol(uow: UnitOfWork, policy: LoyaltyPolicy, *, customer_id: str, card_number: str, now: datetime) -> Account:
    """CustomerRegistered: the customer's account, opened or completed (an earlier sale may have opened it)."""
    return resolve_account(uow.connection, customer_id=customer_id, card_number=card_number, now=now, registered=True)


def replace_card(
    uow: UnitOfWork, policy: LoyaltyPolicy, *, customer_id: str, card_number: str, now: datetime
) -> Account | None:
    """CustomerUpdated with a card number: the account follows a card replacement. A card-only account of the
    new card (a sale made with it before the update arrived) is merged in."""
    conn = uow.connection
    account = storage.find_account(conn, customer_id=customer_id, lock=True)
    if account is None or not card_number:
        return (
            account
            if account is not None
            else enrol(uow, policy, customer_id=customer_id, card_number=card_number, now=now)
        )
    if account.card_number == card_number or account.anonymised:
        return account
    other = storage.find_account(conn, card_number=card_number, lock=True)
    if other is not None and other.customer_id is not None:
        log.warning("card replacement refused: the new card belongs to another account")
        return account
    if other is not None:
        account = _merge(conn, account, other, now)
    storage.update_account(conn, account.account_id, card_number=card_number)
    return replace(account, card_number=card_number)


def erase(uow: UnitOfWork, *, customer_id: str, card_number: str, now: datetime) -> list[Account]:
    """CustomerErased: the account keeps its ledger amounts under the customer id (an anonymous tombstone key) but
    loses its card number, is closed (anonymised), and its open holds are released. Copies of the card number in
    the kit's tables go too: sent events of the account now, unsent ones once sent (`forget_erased_events`), and
    stored answers and held events (loyalty.erasure)."""
    conn = uow.connection
    found: dict[str, Account] = {}
    for account in (
        storage.find_account(conn, customer_id=customer_id) if customer_id else None,
        storage.find_account(conn, card_number=card_number) if card_number else None,
    ):
        if account is not None:
            found[account.account_id] = account
    locked = storage.lock_accounts(conn, list(found))
    erased: list[Account] = []
    for account in locked.values():
        for hold in storage.active_holds(conn, account.account_id):
            storage.end_hold(conn, hold.hold_id, HoldState.RELEASED, now)
        storage.update_account(
            conn, account.account_id, card_number=None, anonymised=True, held_points=0, erased_at=now
        )
        for subject in {account.account_id, account.customer_id or account.account_id}:
            forget_sent_events(conn, subject)  # unsent ones go out first: `forget_erased_events` deletes them then
        erased.append(replace(account, card_number=None, anonymised=True, held_points=0))
    cards = {c for c in [card_number, *(a.card_number for a in locked.values())] if c}
    for card in cards:
        scrub_card(conn, card)
    return erased


def forget_erased_events(uow: UnitOfWork, *, now: datetime, limit: int, window: timedelta) -> int:
    """Sweeper step: sent outbox rows of accounts erased within `window` (events still unsent at the erasure went
    out since)."""
    return forget_sent_events_of(uow.connection, storage.erased_subjects(now - window), limit)


# --- holds ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldCommand:
    hold_id: str
    customer_id: str
    store_id: str
    points: int
    ttl: timedelta | None
    allowed_stores: frozenset[str] | None  # the caller's stores (None: all), checked against an existing hold


@dataclass(frozen=True)
class HoldOutcome:
    """The hold and account after HoldPoints; on PostgreSQL also the account's spend and lots expiring soon, read
    in the same statement as the hold (None: read them for the answer)."""

    hold: Hold
    account: Account
    shown: hot.LockedForHold | None = None


def hold_points(uow: UnitOfWork, policy: LoyaltyPolicy, command: HoldCommand, *, now: datetime) -> HoldOutcome:
    """HoldPoints: the hold becomes exactly `points` (0 releases it) under the account's lock (made if the
    customer has none yet)."""
    conn = uow.connection
    postgres = is_postgres(conn)
    since, horizon = add_months(now, -policy.spend_window_months), now + policy.expiring_soon
    for _ in range(3):
        locked = (
            hot.lock_for_hold(conn, command.customer_id, command.hold_id, since=since, now=now, horizon=horizon)
            if postgres
            else None
        )
        if locked is None:
            account = resolve_account(conn, customer_id=command.customer_id, card_number="", now=now)
            existing = storage.find_hold(conn, command.hold_id)
        else:
            account, existing = locked.account, locked.hold
        if existing is not None:
            allowed = command.allowed_stores
            if allowed is not None and existing.store_id not in allowed:
                raise StoreNotAllowed(
                    f"not allowed for hold {command.hold_id[:128]!r}", metadata={"hold_id": command.hold_id[:128]}
                )
        hold = plan_hold(
            account,
            existing,
            hold_id=command.hold_id,
            store_id=existing.store_id if existing is not None else command.store_id,
            points=command.points,
            expires_at=now + (command.ttl or policy.default_hold_ttl),
        )
        delta = hold.held - (existing.held if existing is not None else 0)
        if postgres:
            if not hot.save_hold(conn, hold, existed=existing is not None, delta=delta, now=now):
                continue  # another call made this hold meanwhile: plan again against it
        elif existing is None:
            if not storage.insert_hold(conn, hold, now):
                continue
            storage.add_held(conn, account.account_id, delta)
        else:
            storage.save_hold(conn, hold, now)
            storage.add_held(conn, account.account_id, delta)
        return HoldOutcome(hold, replace(account, held_points=account.held_points + delta), locked)
    raise RuntimeError("the hold changed while being set")


def release_hold(uow: UnitOfWork, hold_id: str, *, now: datetime, to: HoldState = HoldState.RELEASED) -> Hold | None:
    """ReleaseHold / BasketVoided: an active hold gives its points back, once; returns the hold after (None: no
    such hold)."""
    conn = uow.connection
    hold = storage.find_hold(conn, hold_id)
    if hold is None:
        return None
    if hold.state is not HoldState.ACTIVE:
        return hold
    storage.lock_accounts(conn, [hold.account_id])
    ended = storage.end_hold(conn, hold_id, to, now)
    if ended is None:
        return storage.find_hold(conn, hold_id)
    storage.add_held(conn, ended.account_id, -ended.points)
    return replace(ended, state=to)


def customer_of_hold(conn: Db, hold: Hold | None) -> str:
    """The customer id of a hold's account ("" when none, or the account has only a card)."""
    if hold is None:
        return ""
    account = storage.find_account(conn, account_id=hold.account_id)
    return "" if account is None or account.customer_id is None else account.customer_id


def expire_holds(uow: UnitOfWork, *, now: datetime, limit: int) -> int:
    """Holds past their TTL give their points back (sweeper step; guarded, so safe beside other replicas)."""
    conn = uow.connection
    due = storage.due_holds(conn, now, limit)
    if not due:
        return 0
    storage.lock_accounts(conn, [h.account_id for h in due])
    for hold in due:
        ended = storage.end_hold(conn, hold.hold_id, HoldState.EXPIRED, now, due_by=now)
        if ended is not None:
            storage.add_held(conn, ended.account_id, -ended.points)
    return len(due)


# --- manual adjustments, expiry, tiers --------------------------------------------------------------------------


def adjust(
    uow: UnitOfWork,
    policy: LoyaltyPolicy,
    *,
    customer_id: str,
    points: int,
    reason: str,
    note: str,
    now: datetime,
) -> tuple[Entry, Account]:
    """AdjustPoints: an ADJUST entry; a debit may not exceed the available points (holds stay covered)."""
    conn = uow.connection
    account = require_account(conn, customer_id, lock=True)
    if account.anonymised:
        raise AccountAnonymised("the account is anonymised")
    if points > 0:
        account, entry = book_credit(conn, policy, account, EntryKind.ADJUST, points, now, reason=reason, note=note)
    else:
        check_debit(account, -points)
        account, entry = book_debit(conn, account, EntryKind.ADJUST, -points, now, reason=reason, note=note)
    return entry, account


def expire_lots(uow: UnitOfWork, *, now: datetime, limit: int) -> int:
    """Lots past their date: EXPIRE entries for what is left of them (sweeper step). Each account is locked while
    its lots are claimed, so two replicas never expire one lot twice (and the unique lot id on EXPIRE entries would
    refuse it)."""
    conn = uow.connection
    account_ids = storage.due_lot_accounts(conn, now, limit)
    for account in storage.lock_accounts(conn, account_ids).values():
        book_expiry(conn, account, now)
    return len(account_ids)


def recheck_tiers(uow: UnitOfWork, policy: LoyaltyPolicy, *, now: datetime, limit: int) -> int:
    """Daily: spend leaving the 12-month window can lower a tier. Accounts above Bronze not checked for a day."""
    conn = uow.connection
    ids = storage.accounts_to_recheck(conn, now - timedelta(days=1), limit)
    if not ids:
        return 0
    locked = storage.lock_accounts(conn, ids)
    spends = storage.spend_of_accounts(conn, ids, add_months(now, -policy.spend_window_months))
    for account_id, account in locked.items():
        retier(uow, policy, account, now, spends.get(account_id, {}))
        storage.update_account(conn, account_id, tier_checked_at=now)  # not again for a day
    return len(ids)
