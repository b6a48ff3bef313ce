"""Stock rules: items and their prices, stock levels, reservations and how changes apply to levels.

Plain Python: no gRPC, no SQL. Storage loads the state, these functions decide, storage writes the result.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from storeplane_runtime.errors import DomainError, FieldViolation, InvalidInput, NotFound, PreconditionFailed

MAX_SKU_LENGTH = 64
MAX_BARCODE_LENGTH = 64
MAX_BARCODES = 20
MAX_NAME_LENGTH = 200
MAX_TAX_CLASS_LENGTH = 32
MAX_NOTE_LENGTH = 500
MAX_RESERVATION_ID_LENGTH = 128
MAX_STORE_ID_LENGTH = 64
MAX_LINE_QUANTITY = 9999
MAX_STOCK_QUANTITY = 1_000_000_000  # on hand, set or adjusted, in absolute value
MAX_PRICE_MINOR = 10**13
MAX_CURRENCY_LENGTH = 3


# --- errors -------------------------------------------------------------------------------------------------


class ItemNotFound(NotFound):
    """No item has that SKU or barcode."""

    reason = "ITEM_NOT_FOUND"


class NoPriceForCurrency(PreconditionFailed):
    """The item exists but is not priced in the store's currency."""

    reason = "NO_PRICE_FOR_CURRENCY"


class InsufficientStock(PreconditionFailed):
    """An all-or-nothing reservation could not be met; `shortfalls` lists every short SKU."""

    reason = "INSUFFICIENT_STOCK"

    def __init__(self, shortfalls: Sequence[Shortfall]) -> None:
        listed = ", ".join(f"{s.sku} (requested {s.requested}, available {s.available})" for s in shortfalls)
        super().__init__(
            f"not enough stock for {len(shortfalls)} SKU(s): {listed}",
            metadata={s.sku: f"requested={s.requested},available={s.available}" for s in shortfalls},
        )
        self.shortfalls = tuple(shortfalls)


class ReservationStoreMismatch(PreconditionFailed):
    """A reservation keeps the store it was created for."""

    reason = "RESERVATION_STORE_MISMATCH"


class ReservationCommitted(PreconditionFailed):
    """The reservation became a sale; it cannot hold stock again."""

    reason = "RESERVATION_COMMITTED"


class WatcherFellBehind(DomainError):
    """A WatchStock client read too slowly and missed changes; it must re-read levels and watch again."""

    reason = "WATCHER_FELL_BEHIND"


# --- validation ---------------------------------------------------------------------------------------------


class Violations:
    """Collects every bad field of one request, so the caller learns about all of them at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def text(self, field_path: str, value: str, max_length: int, *, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field_path, "must not be empty")
        elif len(value) > max_length:
            self.add(field_path, f"at most {max_length} characters")
        elif not value.isprintable() or " " in value:  # isprintable() refuses all whitespace but the space
            self.add(field_path, "must not contain spaces or control characters")

    def store(self, field_path: str, store_id: str, known: Mapping[str, object]) -> None:
        if not store_id:
            self.add(field_path, "must not be empty")
        elif store_id not in known:
            self.add(field_path, f"unknown store {store_id[:MAX_STORE_ID_LENGTH]!r}")

    def within(self, field_path: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            self.add(field_path, f"must be between {low} and {high}")

    def raise_if_any(self, message: str = "the request is invalid") -> None:
        if self.items:
            raise InvalidInput(message, violations=self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


# --- items --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """A sellable item: global, priced per currency (minor units)."""

    sku: str
    name: str
    tax_class: str
    barcodes: tuple[str, ...] = ()
    prices: Mapping[str, int] = field(default_factory=dict)
    reorder_point: int | None = None
    revision: int = 0
    updated_at: datetime | None = None

    def price_in(self, currency: str) -> int:
        if currency not in self.prices:
            raise NoPriceForCurrency(
                f"item {self.sku} has no price in {currency}", metadata={"sku": self.sku, "currency": currency}
            )
        return self.prices[currency]

    def same_content(self, other: Item) -> bool:
        """Equal in everything an import sets (revision and time are bookkeeping)."""
        return (
            self.name == other.name
            and self.tax_class == other.tax_class
            and sorted(self.barcodes) == sorted(other.barcodes)
            and dict(self.prices) == dict(other.prices)
            and self.reorder_point == other.reorder_point
        )


def item_violations(
    sku: str,
    name: str,
    tax_class: str,
    barcodes: Sequence[str],
    prices: Sequence[tuple[str, int]],
    reorder_point: int | None,
    currencies: Iterable[str],
) -> list[FieldViolation]:
    """Everything wrong with an item as sent for import (empty list: acceptable)."""
    v = Violations()
    v.text("item.sku", sku, MAX_SKU_LENGTH)
    if not name.strip():
        v.add("item.name", "must not be empty")
    elif len(name) > MAX_NAME_LENGTH:
        v.add("item.name", f"at most {MAX_NAME_LENGTH} characters")
    v.text("item.tax_class", tax_class, MAX_TAX_CLASS_LENGTH)
    if len(barcodes) > MAX_BARCODES:
        v.add("item.barcodes", f"at most {MAX_BARCODES}")
    if len(set(barcodes)) != len(barcodes):
        v.add("item.barcodes", "duplicate barcode")
    for i, barcode in enumerate(barcodes[:MAX_BARCODES]):
        v.text(f"item.barcodes[{i}]", barcode, MAX_BARCODE_LENGTH)
    known = set(currencies)
    seen: set[str] = set()
    for i, (currency, amount) in enumerate(prices):
        if currency not in known:
            v.add(f"item.prices[{i}].currency_code", f"unknown currency {currency[: MAX_CURRENCY_LENGTH + 5]!r}")
        elif currency in seen:
            v.add(f"item.prices[{i}].currency_code", f"second price in {currency}")
        seen.add(currency)
        v.within(f"item.prices[{i}].amount_minor", amount, 0, MAX_PRICE_MINOR)
    if reorder_point is not None:
        v.within("item.reorder_point", reorder_point, 0, MAX_STOCK_QUANTITY)
    return v.items


# --- levels -------------------------------------------------------------------------------------------------


class ChangeReason(enum.Enum):
    """Why a level changed (names match pos.stock.v1.StockChangeReason)."""

    SALE = "SALE"
    RETURN = "RETURN"
    RESERVATION = "RESERVATION"
    RELEASE = "RELEASE"
    ADJUSTMENT = "ADJUSTMENT"
    IMPORT = "IMPORT"
    EXPIRY = "EXPIRY"


@dataclass(frozen=True)
class Level:
    """Stock of one SKU in one store. on_hand may be negative (sales of stock the system did not know about)."""

    store_id: str
    sku: str
    on_hand: int = 0
    reserved: int = 0
    updated_at: datetime | None = None

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def moved(self, on_hand_delta: int, reserved_delta: int, at: datetime) -> Level:
        return Level(self.store_id, self.sku, self.on_hand + on_hand_delta, self.reserved + reserved_delta, at)


@dataclass(frozen=True)
class LevelChange:
    """One applied change of one level, with what caused it."""

    before: Level
    after: Level
    reason: ChangeReason
    reference_id: str
    adjustment_reason: str = ""  # AdjustmentReason name without prefix, for ADJUSTMENT

    @property
    def on_hand_delta(self) -> int:
        return self.after.on_hand - self.before.on_hand

    @property
    def reserved_delta(self) -> int:
        return self.after.reserved - self.before.reserved

    @property
    def went_negative(self) -> bool:
        return self.after.on_hand < 0

    @property
    def is_noop(self) -> bool:
        return self.on_hand_delta == 0 and self.reserved_delta == 0


def low_stock_reached(change: LevelChange, reorder_point: int | None) -> bool:
    """True when available crossed down to or below the reorder point with this change (once per crossing)."""
    return reorder_point_crossed(change.before.available, change.after.available, reorder_point)


def reorder_point_crossed(available_before: int, available_after: int, reorder_point: int | None) -> bool:
    """`low_stock_reached` on bare quantities (bulk paths that build no LevelChange per row)."""
    if reorder_point is None or reorder_point < 0:
        return False
    return available_before > reorder_point >= available_after


# --- reservations -------------------------------------------------------------------------------------------


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


def desired_quantities(lines: Sequence[tuple[str, int]], max_lines: int) -> dict[str, int]:
    """The requested total per SKU (lines of one SKU are summed); InvalidInput naming every bad line."""
    v = Violations()
    if len(lines) > max_lines:
        v.add("lines", f"at most {max_lines} lines")
        v.raise_if_any()
    wanted: dict[str, int] = {}
    for i, (sku, quantity) in enumerate(lines):
        v.text(f"lines[{i}].sku", sku, MAX_SKU_LENGTH)
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
) -> ReservePlan:
    """Set the reservation to exactly `desired`, holding what is available (all or nothing if asked).

    `levels` are the current levels (locked by the caller) of every SKU in `desired` and in the reservation;
    a SKU missing from it has nothing on hand. Units the reservation already holds count as its own.
    """
    if existing is not None:
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


# --- sales and returns --------------------------------------------------------------------------------------


def sale_movements(held: Mapping[str, int], sold: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """(on_hand delta, reserved delta) per SKU when a sale commits: the goods leave the shelf and whatever the
    reservation held is no longer held (also lines held but not sold in the end)."""
    moves: dict[str, tuple[int, int]] = {}
    for sku in sorted(set(held) | set(sold)):
        moves[sku] = (-sold.get(sku, 0), -held.get(sku, 0))
    return moves


def summed(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Quantities per SKU; non-positive quantities are ignored (an event is a fact, not a request to check)."""
    total: dict[str, int] = {}
    for sku, quantity in lines:
        if quantity > 0:
            total[sku] = total.get(sku, 0) + quantity
    return total


def adjustment_delta(on_hand: int, *, delta: int | None, set_on_hand: int | None) -> int:
    """The change of on_hand an AdjustStock asks for."""
    if set_on_hand is not None:
        return set_on_hand - on_hand
    return delta or 0
