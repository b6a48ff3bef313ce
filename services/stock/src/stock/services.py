"""The stock use cases, each inside one unit of work: lock what it changes, let the domain decide, write the
result and put the events it causes into the outbox of the same transaction. Used by the API, the event
consumers and the expiry sweeper alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from stock import events, storage
from stock.domain import (
    ChangeReason,
    ItemNotFound,
    Level,
    LevelChange,
    Reservation,
    ReservationState,
    adjustment_delta,
    low_stock_reached,
    plan_reserve,
    sale_movements,
    summed,
)
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.errors import DomainError


@dataclass(frozen=True)
class StockPolicy:
    """The configurable part of the rules (from StockSettings)."""

    default_ttl: timedelta = timedelta(minutes=15)
    max_ttl: timedelta = timedelta(hours=24)
    default_reorder_point: int = 0  # -1: no StockLow for items without their own reorder point


def publish_changes(
    uow: UnitOfWork,
    changes: Sequence[LevelChange],
    reorder_points: Mapping[str, int | None],
    policy: StockPolicy,
    correlation_id: str,
) -> None:
    """StockLevelChanged for every real change; StockLow when available reached the SKU's reorder point.

    `reorder_points` holds the items among the SKUs (None: the item has none, the default applies).
    """
    for change in changes:
        if change.is_noop:
            continue
        uow.publish(events.level_changed(change, correlation_id), subject=change.after.sku)
        sku = change.after.sku
        if sku not in reorder_points:
            continue
        own = reorder_points[sku]
        point = own if own is not None else policy.default_reorder_point
        if low_stock_reached(change, point):
            uow.publish(events.stock_low(change, point, correlation_id), subject=sku)


def _require_items(uow: UnitOfWork, skus: Sequence[str] | set[str]) -> dict[str, int | None]:
    known = storage.known_skus(uow.connection, skus)
    unknown = sorted(set(skus) - set(known))
    if unknown:
        raise ItemNotFound(f"unknown SKU(s): {', '.join(unknown[:20])}", metadata={"skus": ",".join(unknown[:50])})
    return known


# --- reservations -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReserveCommand:
    """Set reservation `reservation_id` at `store_id` to exactly `desired` (SKU -> quantity)."""

    reservation_id: str
    store_id: str
    desired: Mapping[str, int]
    ttl: timedelta | None = None
    all_or_nothing: bool = True


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
    held = {c.reservation_id: _held_at(existing[c.reservation_id], c.store_id) for c in commands}
    keys = {(c.store_id, sku) for c in commands for sku in (*c.desired, *held[c.reservation_id])}
    levels, reorder_points = storage.lock_levels_of_items(conn, keys)
    outcomes: list[Reservation | DomainError] = []
    saved: list[Reservation] = []
    moved: dict[tuple[str, str], Level] = {}
    dropped: list[str] = []
    for i, command in enumerate(commands):
        before = existing[command.reservation_id]
        skus = set(command.desired) | set(held[command.reservation_id])
        try:
            unknown = sorted(set(command.desired) - set(reorder_points))
            if unknown:
                raise ItemNotFound(
                    f"unknown SKU(s): {', '.join(unknown[:20])}", metadata={"skus": ",".join(unknown[:50])}
                )
            plan = plan_reserve(
                before,
                reservation_id=command.reservation_id,
                store_id=command.store_id,
                desired=command.desired,
                levels={sku: levels[(command.store_id, sku)] for sku in skus if (command.store_id, sku) in levels},
                all_or_nothing=command.all_or_nothing,
                expires_at=now + (command.ttl or policy.default_ttl),
            )
        except DomainError as error:
            outcomes.append(error)
            if before is None:
                dropped.append(command.reservation_id)
            continue
        changes = []
        for sku in sorted(plan.reserved_deltas):
            delta = plan.reserved_deltas[sku]
            level = levels[(command.store_id, sku)]  # a SKU whose reservation changes has a level: held, or available
            reason = ChangeReason.RESERVATION if delta > 0 else ChangeReason.RELEASE
            change = LevelChange(level, level.moved(0, delta, now), reason, command.reservation_id)
            changes.append(change)
            levels[(command.store_id, sku)] = moved[(command.store_id, sku)] = change.after
        headers = trace_headers[i] if i < len(trace_headers) else None
        if headers is not None:
            uow.trace_headers = headers
        publish_changes(uow, changes, reorder_points, policy, command.reservation_id)
        saved.append(plan.reservation)
        outcomes.append(plan.reservation)
    storage.save_reservations(conn, saved, now, list(moved.values()), dropped)
    return outcomes


def _held_at(reservation: Reservation | None, store_id: str) -> dict[str, int]:
    """What the reservation holds, if it is at this store (one at another store is refused by the plan)."""
    return reservation.held() if reservation is not None and reservation.store_id == store_id else {}


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
    moves = {sku: (0, -held) for sku, held in active.held().items()}
    changes = storage.move_levels(conn, active.store_id, moves, reason=reason, reference_id=reservation_id, now=now)
    publish_changes(uow, changes, {}, policy, reservation_id)
    return Reservation(reservation_id, active.store_id, to, active.lines, active.expires_at)


def expire_due(uow: UnitOfWork, policy: StockPolicy, *, now: datetime, limit: int) -> int:
    """Expire up to `limit` reservations past their time; returns how many. Levels are locked in (store, sku)
    order across the whole batch."""
    conn = uow.connection
    claimed = storage.claim_expired(conn, now, limit)
    if not claimed:
        return 0
    keys = {(r.store_id, sku) for r in claimed for sku in r.held()}
    current: dict[tuple[str, str], Level] = dict(storage.lock_level_keys(conn, keys))
    changes = []
    for r in claimed:
        for sku, held in sorted(r.held().items()):
            before = current.get((r.store_id, sku), Level(r.store_id, sku, updated_at=now))
            after = before.moved(0, -held, now)
            current[(r.store_id, sku)] = after
            changes.append(LevelChange(before, after, ChangeReason.EXPIRY, r.reservation_id))
    touched = {(c.after.store_id, c.after.sku) for c in changes}
    storage.write_levels(conn, [current[k] for k in sorted(touched)])
    for r in claimed:
        publish_changes(uow, [c for c in changes if c.reference_id == r.reservation_id], {}, policy, r.reservation_id)
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
) -> tuple[Level, int]:
    """Change on_hand by hand; returns the level after it and the delta applied."""
    conn = uow.connection
    reorder_points = _require_items(uow, [sku])
    levels = storage.lock_levels(conn, store_id, [sku])
    if sku not in levels:
        storage.create_levels(conn, [(store_id, sku)], now)
        levels = storage.lock_levels(conn, store_id, [sku])
    before = levels[sku]
    applied = adjustment_delta(before.on_hand, delta=delta, set_on_hand=set_on_hand)
    change = LevelChange(before, before.moved(applied, 0, now), ChangeReason.ADJUSTMENT, request_id, reason)
    storage.write_levels(conn, [change.after])
    storage.record_adjustment(conn, change, reason=reason, note=note, request_id=request_id, caller=caller, now=now)
    publish_changes(uow, [change], reorder_points, policy, request_id)
    return change.after, applied


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
    held: dict[str, int] = {}
    if reservation_id:
        active = storage.end_reservation(conn, reservation_id, ReservationState.COMMITTED, now)
        if active is not None and active.store_id == store_id:
            held = active.held()
        elif active is not None:  # reserved in another store than it was sold in: give those units back there
            moves = {sku: (0, -q) for sku, q in active.held().items()}
            released = storage.move_levels(
                conn, active.store_id, moves, reason=ChangeReason.RELEASE, reference_id=reservation_id, now=now
            )
            publish_changes(uow, released, {}, policy, reservation_id)
    sold = summed(lines)
    moves = sale_movements(held, sold)
    reasons = {sku: ChangeReason.SALE if sku in sold else ChangeReason.RELEASE for sku in moves}
    changes = storage.move_levels(conn, store_id, moves, reason=reasons, reference_id=sale_id, now=now)
    reorder_points = storage.known_skus(conn, list(moves))
    odd: list[tuple[str, LevelChange, int]] = []
    for change in changes:
        quantity = sold.get(change.after.sku, 0)
        if change.after.sku not in reorder_points and quantity:
            odd.append(("UNKNOWN_SKU", change, quantity))
        if change.went_negative and change.on_hand_delta < 0:
            odd.append(("NEGATIVE_ON_HAND", change, quantity))
    storage.record_discrepancies(conn, odd, now)
    publish_changes(uow, changes, reorder_points, policy, reservation_id or sale_id)
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
    moves = {sku: (quantity, 0) for sku, quantity in summed(lines).items()}
    changes = storage.move_levels(conn, store_id, moves, reason=ChangeReason.RETURN, reference_id=return_id, now=now)
    publish_changes(uow, changes, storage.known_skus(conn, list(moves)), policy, return_id)
    return changes
