"""The limits and configurable defaults of the stock rules, and the one SKU rule of every request and import row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from storeplane_runtime.errors import Violations, identifier_problem

MAX_SKU_LENGTH = 64
MAX_BARCODE_LENGTH = 64
MAX_BARCODES = 20
MAX_NAME_LENGTH = 200
MAX_TAX_CLASS_LENGTH = 32
MAX_NOTE_LENGTH = 500
MAX_RESERVATION_ID_LENGTH = 128
MAX_LINE_QUANTITY = 9999
MAX_STOCK_QUANTITY = 1_000_000_000  # on hand, set or adjusted, in absolute value
MAX_PRICE_MINOR = 10**13
MAX_CURRENCY_LENGTH = 3

DEFAULT_RESERVATION_TTL = timedelta(minutes=15)
MAX_RESERVATION_TTL = timedelta(hours=24)
DEFAULT_REORDER_POINT = 0  # for items without their own; -1: StockLow never fires for them


@dataclass(frozen=True)
class StockPolicy:
    """The configurable part of the stock rules (from StockSettings)."""

    default_ttl: timedelta = DEFAULT_RESERVATION_TTL
    max_ttl: timedelta = MAX_RESERVATION_TTL
    default_reorder_point: int = DEFAULT_REORDER_POINT

    def reorder_point_of(self, own: int | None) -> int:
        """The reorder point that applies to an item: its own, else the default (-1: StockLow never fires)."""
        return own if own is not None else self.default_reorder_point


def sku_problem(sku: str) -> str | None:
    """What is wrong with a SKU as sent (None: nothing)."""
    return identifier_problem(sku, MAX_SKU_LENGTH)


def check_sku(v: Violations, field_path: str, sku: str) -> None:
    """Adds to `v` what `sku_problem` finds wrong with the SKU at `field_path`."""
    problem = sku_problem(sku)
    if problem:
        v.add(field_path, problem)
