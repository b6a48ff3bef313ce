"""Reservations: stock held for open baskets, how Reserve plans them and how they give their units back."""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from stock.domain.levels import ChangeReason, Level, LevelChange
from stock.domain.policy import MAX_LINE_QUANTITY, check_sku
from storeplane_runtime.errors import PreconditionFailed, PreconditionViolation, StoreNotAllowed, Violations


class InsufficientStock(PreconditionFailed):
    """An all-or-nothing reservation could not be met; `shortfalls` lists every short SKU."""

    reason = "INSUFFICIENT_STOCK"

    def __init__(self, shortfalls: Sequence[Shortfall]) -> None:
        listed = ", ".join(f"{s.sku} (requested {s.requested}, available {s.available})" for s in shortfalls)
        super().__init__(
            f"not enough stock for {len(shortfalls)} SKU(s): {listed}",
            metadata={s.sku: f"requested={s.requested},available={s.available}" for s in shortfalls},
            preconditions=[
                PreconditionViolation("STOCK", s.sku, f"requested {s.requested}, available {s.available}")
                for s in shortfalls
            ],
        )
        self.shortfalls = tuple(shortfalls)


class ReservationStoreMismatch(PreconditionFailed):
    """A reservation keeps the store it was created for."""

    reason = "RESERVATION_STORE_MISMATCH"


class ReservationCommitted(PreconditionFailed):
    """The reservation became a sale; it cannot hold stock again."""

    reason = "RESERVATION_COMMITTED"


class ReservationState(enum.Enum):
    ACTIVE = "ACTIVE"
    RELEASED = "RELEASED"
    COMMITTED = "COMMITTED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class ReservedLine:
    sku: str
    requested: int
    reserved: int


@dataclass(frozen=True)
class Reservation:
    """Stock held for an open basket until `expires_at`."""

    reservation_id: str
    store_id: str
    state: ReservationState
    lines: tuple[ReservedLine, ...] = ()
    expires_at: datetime | None = None

    def held(self) -> dict[str, int]:
        """What this reservation holds right now (nothing unless active)."""
        if self.state is not ReservationState.ACTIVE:
            return {}
        return {line.sku: line.reserved for line in self.lines if line.reserved}


def held_at(reservation: Reservation | None, store_id: str) -> dict[str, int]:
    """What the reservation holds, if there is one and it is at this store (one at another store holds nothing here)."""
    return reservation.held() if reservation is not None and reservation.store_id == store_id else {}


@dataclass(frozen=True)
class Shortfall:
    sku: str
    requested: int
    available: int  # the most this reservation could hold of the SKU


@dataclass(frozen=True)
class ReservePlan:
    """What Reserve will do: the reservation after the call and the change of `reserved` per SKU."""

    reservation: Reservation
    reserved_deltas: dict[str, int]
    shortfalls: tuple[Shortfall, ...]

    def changes(self, levels: Mapping[str, Level], now: datetime) -> list[LevelChange]:
        """The level changes of the plan, from the levels it was planned on: holding more of a SKU is a
        RESERVATION, holding less a RELEASE."""
        reservation_id = self.reservation.reservation_id
        changes = []
        for sku in sorted(self.reserved_deltas):
            delta = self.reserved_deltas[sku]
            level = levels[sku]  # a SKU whose reservation changes has a level: held, or available
            reason = ChangeReason.RESERVATION if delta > 0 else ChangeReason.RELEASE
            changes.append(LevelChange(level, level.moved(0, delta, now), reason, reservation_id))
        return changes


def desired_quantities(lines: Sequence[tuple[str, int]], max_lines: int) -> dict[str, int]:
    """The requested total per SKU (lines of one SKU are summed); InvalidInput naming every bad line."""
    v = Violations()
    if len(lines) > max_lines:
        v.add("lines", f"at most {max_lines} lines")
        v.raise_if_any()
    wanted: dict[str, int] = {}
    for i, (sku, quantity) in enumerate(lines):
        check_sku(v, f"lines[{i}].sku", sku)
        v.within(f"lines[{i}].quantity", quantity, 1, MAX_LINE_QUANTITY)
        if sku and 1 <= quantity <= MAX_LINE_QUANTITY:
            wanted[sku] = wanted.get(sku, 0) + quantity
    for sku, total in wanted.items():
        if total > MAX_LINE_QUANTITY:
            v.add("lines", f"total quantity of {sku} is above {MAX_LINE_QUANTITY}")
    v.raise_if_any()
    return wanted


def plan_reserve(
    existing: Reservation | None,
    *,
    reservation_id: str,
    store_id: str,
    desired: Mapping[str, int],
    levels: Mapping[str, Level],
    all_or_nothing: bool,
    expires_at: datetime,
    allowed_stores: Collection[str] | None = None,
) -> ReservePlan:
    """Set the reservation to exactly `desired`, holding what is available (all or nothing if asked).

    `levels` are the current levels (locked by the caller) of every SKU in `desired` and in the reservation;
    a SKU missing from it has nothing on hand. Units the reservation already holds count as its own.
    `allowed_stores`: the stores the caller may act for (None: all); another store's reservation is then not theirs
    to see, let alone change.
    """
    if existing is not None:
        if allowed_stores is not None and existing.store_id not in allowed_stores:
            raise StoreNotAllowed(
                f"not allowed for reservation {reservation_id!r}", metadata={"reservation_id": reservation_id}
            )
        if existing.store_id != store_id:
            raise ReservationStoreMismatch(
                f"reservation {reservation_id} is for store {existing.store_id}",
                metadata={"reservation_id": reservation_id, "store_id": existing.store_id},
            )
        if existing.state is ReservationState.COMMITTED:
            raise ReservationCommitted(
                f"reservation {reservation_id} was turned into a sale", metadata={"reservation_id": reservation_id}
            )
    held = existing.held() if existing is not None else {}
    deltas: dict[str, int] = {}
    lines: list[ReservedLine] = []
    shortfalls: list[Shortfall] = []
    for sku in sorted(desired):
        want, have = desired[sku], held.get(sku, 0)
        if want <= have:
            hold = want
        else:
            level = levels.get(sku)
            free = max(0, level.available) if level is not None else 0
            hold = have + min(want - have, free)
            if hold < want:
                shortfalls.append(Shortfall(sku, want, have + free))
        lines.append(ReservedLine(sku, want, hold))
        if hold != have:
            deltas[sku] = hold - have
    for sku, have in held.items():
        if sku not in desired:
            deltas[sku] = -have
    if shortfalls and all_or_nothing:
        raise InsufficientStock(shortfalls)
    state = ReservationState.ACTIVE if desired else ReservationState.RELEASED
    reservation = Reservation(reservation_id, store_id, state, tuple(lines), expires_at)
    return ReservePlan(reservation, deltas, tuple(shortfalls))


def give_back(
    reservations: Iterable[Reservation],
    levels: Mapping[tuple[str, str], Level],
    reason: ChangeReason,
    now: datetime,
) -> list[LevelChange]:
    """The changes that give back what each (active) reservation holds, in order: a level held by several starts
    each change where the one before left it. `levels` by (store, SKU); a missing one had nothing."""
    current = dict(levels)
    changes = []
    for reservation in reservations:
        store_id = reservation.store_id
        for sku, held in sorted(reservation.held().items()):
            before = current.get((store_id, sku)) or Level(store_id, sku, updated_at=now)
            change = LevelChange(before, before.moved(0, -held, now), reason, reservation.reservation_id)
            current[(store_id, sku)] = change.after
            changes.append(change)
    return changes
