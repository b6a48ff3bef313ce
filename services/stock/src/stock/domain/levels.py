"""Stock levels: how sales, returns, adjustments and releases change them, and which events a change causes."""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from stock.domain.policy import StockPolicy
from storeplane_runtime.errors import DomainError


class WatcherFellBehind(DomainError):
    """A WatchStock client read too slowly and missed changes; it must re-read levels and watch again."""

    reason = "WATCHER_FELL_BEHIND"


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


@dataclass(frozen=True, slots=True)
class LevelChanged:
    """Event: a level really changed (StockLevelChanged)."""

    change: LevelChange


@dataclass(frozen=True, slots=True)
class StockLow:
    """Event: with this change, available fell to or below the item's reorder point (StockLow)."""

    change: LevelChange
    reorder_point: int


StockEvent = LevelChanged | StockLow


def events_of(
    changes: Iterable[LevelChange], reorder_points: Mapping[str, int | None], policy: StockPolicy
) -> list[StockEvent]:
    """The events changes cause, in order: LevelChanged for every change that is not a no-op, followed by StockLow
    when it took available down to the reorder point. `reorder_points`: SKU -> the item's own point (None: the
    policy's default) of the items among the changes; a SKU not in it gets no StockLow."""
    decided: list[StockEvent] = []
    for change in changes:
        if change.is_noop:
            continue
        decided.append(LevelChanged(change))
        sku = change.after.sku
        if sku in reorder_points:
            point = policy.reorder_point_of(reorder_points[sku])
            if low_stock_reached(change, point):
                decided.append(StockLow(change, point))
    return decided


def low_stock_reached(change: LevelChange, reorder_point: int | None) -> bool:
    """True when available crossed down to or below the reorder point with this change (once per crossing)."""
    return reorder_point_crossed(change.before.available, change.after.available, reorder_point)


def reorder_point_crossed(available_before: int, available_after: int, reorder_point: int | None) -> bool:
    """`low_stock_reached` on bare quantities (bulk paths that build no LevelChange per row); a point below 0 or
    None never fires."""
    if reorder_point is None or reorder_point < 0:
        return False
    return available_before > reorder_point >= available_after


def adjustment(
    level: Level, *, delta: int | None, set_on_hand: int | None, reason: str, request_id: str, now: datetime
) -> LevelChange:
    """An AdjustStock of `level`: on_hand moved by `delta`, or set to `set_on_hand` (a count)."""
    applied = set_on_hand - level.on_hand if set_on_hand is not None else delta or 0
    return LevelChange(level, level.moved(applied, 0, now), ChangeReason.ADJUSTMENT, request_id, reason)


# --- sales and returns --------------------------------------------------------------------------------------


def summed(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Quantities per SKU; non-positive quantities are ignored (an event is a fact, not a request to check)."""
    total: dict[str, int] = {}
    for sku, quantity in lines:
        if quantity > 0:
            total[sku] = total.get(sku, 0) + quantity
    return total


def sale_movements(held: Mapping[str, int], sold: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """(on_hand delta, reserved delta) per SKU when a sale commits: the goods leave the shelf and whatever the
    reservation held is no longer held (also lines held but not sold in the end)."""
    moves: dict[str, tuple[int, int]] = {}
    for sku in sorted(set(held) | set(sold)):
        moves[sku] = (-sold.get(sku, 0), -held.get(sku, 0))
    return moves


def sale_changes(
    levels: Mapping[str, Level], held: Mapping[str, int], sold: Mapping[str, int], sale_id: str, now: datetime
) -> list[LevelChange]:
    """A sale's changes of the levels of its store (every SKU held or sold): a SKU sold is a SALE, one only held
    a RELEASE. Never refused: on_hand may go below zero."""
    changes = []
    for sku, (on_hand_delta, reserved_delta) in sale_movements(held, sold).items():
        reason = ChangeReason.SALE if sku in sold else ChangeReason.RELEASE
        before = levels[sku]
        changes.append(LevelChange(before, before.moved(on_hand_delta, reserved_delta, now), reason, sale_id))
    return changes


def return_changes(
    levels: Mapping[str, Level], returned: Mapping[str, int], return_id: str, now: datetime
) -> list[LevelChange]:
    """Returned goods marked for restock back on the shelf (every SKU of `returned` has its level)."""
    changes = []
    for sku in sorted(returned):
        before = levels[sku]
        changes.append(LevelChange(before, before.moved(returned[sku], 0, now), ChangeReason.RETURN, return_id))
    return changes


class DiscrepancyKind(enum.Enum):
    """Why a fact stock accepted looked wrong."""

    UNKNOWN_SKU = "UNKNOWN_SKU"  # a sale of a SKU that is no item
    NEGATIVE_ON_HAND = "NEGATIVE_ON_HAND"  # a sale took on_hand below zero


@dataclass(frozen=True)
class Discrepancy:
    """A fact accepted although it looked wrong, kept for whoever counts the stock."""

    kind: DiscrepancyKind
    change: LevelChange
    quantity: int


def sale_discrepancies(
    changes: Iterable[LevelChange], sold: Mapping[str, int], items: Container[str]
) -> list[Discrepancy]:
    """What looked wrong about a sale's changes: SKUs sold that are not among `items`, on_hand taken below zero."""
    found = []
    for change in changes:
        quantity = sold.get(change.after.sku, 0)
        if quantity and change.after.sku not in items:
            found.append(Discrepancy(DiscrepancyKind.UNKNOWN_SKU, change, quantity))
        if change.went_negative and change.on_hand_delta < 0:
            found.append(Discrepancy(DiscrepancyKind.NEGATIVE_ON_HAND, change, quantity))
    return found
