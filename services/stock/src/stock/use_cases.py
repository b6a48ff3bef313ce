"""The stock writes, one function each, inside the caller's unit of work: storage loads and locks, the domain
decides, storage writes, and the events the domain decided on go to the outbox of the same transaction."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from stock import events, storage
from stock.domain import (
    ChangeReason,
    Level,
    LevelChange,
    Reservation,
    ReservationState,
    StockEvent,
    StockPolicy,
    adjustment,
    events_of,
    give_back,
    held_at,
    plan_reserve,
    require_items,
    return_changes,
    sale_changes,
    sale_discrepancies,
    summed,
)
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.errors import DomainError

# Giving units back only raises available, so it never causes StockLow: no item needs to be read for it.
_NO_REORDER_POINTS: Mapping[str, int | None] = {}


def _publish(uow: UnitOfWork, decided: Iterable[StockEvent], correlation_id: str) -> None:
    for event in decided:
        uow.publish(events.event_message(event, correlation_id), subject=event.change.after.sku)


# --- reservations -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReserveCommand:
    """Set reservation `reservation_id` at `store_id` to exactly `desired` (SKU -> quantity)."""

    reservation_id: str
    store_id: str
    desired: Mapping[str, int]
    ttl: timedelta | None = None
    all_or_nothing: bool = True
    allowed_stores: frozenset[str] | None = None  # the caller's stores (None: all); checked against an existing one


def reserve_many(
    uow: UnitOfWork,
    policy: StockPolicy,
    commands: Sequence[ReserveCommand],
    *,
    now: datetime,
    trace_headers: Sequence[dict[str, str] | None] = (),
) -> list[Reservation | DomainError]:
    """Reserves of distinct reservations in one transaction, each as if alone, in order: a later one sees what the
    earlier ones hold. Returns per command the reservation, or the domain error it ended with (it changed nothing).

    Lock order: the reservation rows by id, then the levels by (store, SKU); one read for the reservations, one
    for the levels and items, one write for all. `trace_headers`: per command, the caller's trace context for the
    events it causes."""
    conn = uow.connection
    existing = storage.lock_reservations(conn, [(c.reservation_id, c.store_id) for c in commands], now)
    held = {c.reservation_id: held_at(existing[c.reservation_id], c.store_id) for c in commands}
    keys = {(c.store_id, sku) for c in commands for sku in (*c.desired, *held[c.reservation_id])}
    levels, reorder_points = storage.lock_levels_of_items(conn, keys)
    outcomes: list[Reservation | DomainError] = []
    saved: list[Reservation] = []
    moved: dict[tuple[str, str], Level] = {}
    dropped: list[str] = []
    for i, command in enumerate(commands):
        before = existing[command.reservation_id]
        store_id = command.store_id
        # The levels as the earlier commands of the batch left them.
        own = {
            sku: levels[(store_id, sku)]
            for sku in {*command.desired, *held[command.reservation_id]}
            if (store_id, sku) in levels
        }
        try:
            require_items(command.desired, reorder_points)
            plan = plan_reserve(
                before,
                reservation_id=command.reservation_id,
                store_id=store_id,
                desired=command.desired,
                levels=own,
                all_or_nothing=command.all_or_nothing,
                expires_at=now + (command.ttl or policy.default_ttl),
                allowed_stores=command.allowed_stores,
            )
        except DomainError as error:
            outcomes.append(error)
            if before is None:
                dropped.append(command.reservation_id)
            continue
        changes = plan.changes(own, now)
        for change in changes:
            levels[(store_id, change.after.sku)] = moved[(store_id, change.after.sku)] = change.after
        headers = trace_headers[i] if i < len(trace_headers) else None
        if headers is not None:
            uow.trace_headers = headers
        _publish(uow, events_of(changes, reorder_points, policy), command.reservation_id)
        saved.append(plan.reservation)
        outcomes.append(plan.reservation)
    storage.save_reservations(conn, saved, now, list(moved.values()), dropped)
    return outcomes


def _give_back_held(
    uow: UnitOfWork, policy: StockPolicy, reservations: Sequence[Reservation], reason: ChangeReason, now: datetime
) -> None:
    """Give back what the reservations (moved out of ACTIVE by this transaction) held; levels locked in key order."""
    conn = uow.connection
    keys = {(r.store_id, sku) for r in reservations for sku in r.held()}
    changes = give_back(reservations, storage.lock_level_keys(conn, keys), reason, now)
    storage.write_levels(conn, list({(c.after.store_id, c.after.sku): c.after for c in changes}.values()))
    for reservation in reservations:
        mine = [c for c in changes if c.reference_id == reservation.reservation_id]
        _publish(uow, events_of(mine, _NO_REORDER_POINTS, policy), reservation.reservation_id)


def end_reservation(
    uow: UnitOfWork,
    policy: StockPolicy,
    reservation_id: str,
    *,
    to: ReservationState,
    now: datetime,
) -> Reservation:
    """Release (or expire) a reservation: whoever moves it out of ACTIVE gives its units back, once."""
    conn = uow.connection
    active = storage.end_reservation(conn, reservation_id, to, now)
    if active is None:
        found = storage.find_reservation(conn, reservation_id)
        return found or Reservation(reservation_id, "", ReservationState.RELEASED)
    reason = ChangeReason.EXPIRY if to is ReservationState.EXPIRED else ChangeReason.RELEASE
    _give_back_held(uow, policy, [active], reason, now)
    return Reservation(reservation_id, active.store_id, to, active.lines, active.expires_at)


def expire_due(uow: UnitOfWork, policy: StockPolicy, *, now: datetime, limit: int) -> int:
    """Expire up to `limit` reservations past their time; returns how many. Levels are locked in (store, sku)
    order across the whole batch."""
    claimed = storage.claim_expired(uow.connection, now, limit)
    if claimed:
        _give_back_held(uow, policy, claimed, ChangeReason.EXPIRY, now)
    return len(claimed)


# --- adjustments, sales, returns ----------------------------------------------------------------------------


def adjust(
    uow: UnitOfWork,
    policy: StockPolicy,
    *,
    store_id: str,
    sku: str,
    delta: int | None,
    set_on_hand: int | None,
    reason: str,
    note: str,
    request_id: str,
    caller: str,
    now: datetime,
) -> LevelChange:
    """Change on_hand by hand (by `delta`, or a count setting it); returns the change, recorded with who made it."""
    conn = uow.connection
    reorder_points = storage.known_skus(conn, [sku])
    require_items([sku], reorder_points)
    before = storage.lock_or_create_levels(conn, store_id, [sku], now)[sku]
    change = adjustment(before, delta=delta, set_on_hand=set_on_hand, reason=reason, request_id=request_id, now=now)
    storage.write_levels(conn, [change.after])
    storage.record_adjustment(conn, change, note=note, caller=caller, now=now)
    _publish(uow, events_of([change], reorder_points, policy), request_id)
    return change


def lock_for_events(
    uow: UnitOfWork, *, reservation_ids: Collection[str], level_keys: Collection[tuple[str, str]]
) -> None:
    """Before a batch of events is applied in one transaction: take the locks all of them need, reservations then
    levels, each in key order, as Reserve takes them (see storage.lock_for_batch)."""
    storage.lock_for_batch(uow.connection, reservation_ids, level_keys)


def commit_sale(
    uow: UnitOfWork,
    policy: StockPolicy,
    *,
    sale_id: str,
    store_id: str,
    reservation_id: str,
    lines: Sequence[tuple[str, int]],
    now: datetime,
) -> list[LevelChange]:
    """A sale happened: goods leave the shelf, its reservation is consumed. Never refused: stock may go below
    zero and unknown SKUs are booked anyway; both are recorded as discrepancies."""
    conn = uow.connection
    if not storage.first_application(conn, "SALE", sale_id, now):
        return []
    active = storage.end_reservation(conn, reservation_id, ReservationState.COMMITTED, now) if reservation_id else None
    held = held_at(active, store_id)
    if active is not None and active.store_id != store_id:  # what it held in the other store goes back there
        _give_back_held(uow, policy, [active], ChangeReason.RELEASE, now)
    sold = summed(lines)
    levels = storage.lock_or_create_levels(conn, store_id, held.keys() | sold.keys(), now)
    changes = sale_changes(levels, held, sold, sale_id, now)
    storage.write_levels(conn, [c.after for c in changes])
    reorder_points = storage.known_skus(conn, list(levels))
    storage.record_discrepancies(conn, sale_discrepancies(changes, sold, reorder_points), now)
    _publish(uow, events_of(changes, reorder_points, policy), reservation_id or sale_id)
    return changes


def restock_return(
    uow: UnitOfWork,
    policy: StockPolicy,
    *,
    return_id: str,
    store_id: str,
    lines: Sequence[tuple[str, int]],
    now: datetime,
) -> list[LevelChange]:
    """Returned goods marked for restock go back on the shelf of the returning store (once per return)."""
    conn = uow.connection
    if not storage.first_application(conn, "RETURN", return_id, now):
        return []
    returned = summed(lines)
    changes = return_changes(storage.lock_or_create_levels(conn, store_id, returned, now), returned, return_id, now)
    storage.write_levels(conn, [c.after for c in changes])
    _publish(uow, events_of(changes, storage.known_skus(conn, list(returned)), policy), return_id)
    return changes
