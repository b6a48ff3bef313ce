"""Stores are configuration: currency, time zone, tax mode and the rate of each tax class.

The four stores of the design are the default; STORES_FILE (JSON, a list of stores) replaces them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = ["DEFAULT_STORES", "MINOR_UNITS", "Store", "load_stores"]

# Decimal places of each currency's minor unit (ISO 4217).
MINOR_UNITS = {"EUR": 2, "CHF": 2, "USD": 2, "JPY": 0, "GBP": 2, "SEK": 2, "DKK": 2}


@dataclass(frozen=True)
class Store:
    """A shop: where it is, what it charges in, and how it taxes."""

    store_id: str
    name: str
    currency: str
    time_zone: str
    tax_inclusive: bool
    tax_rates_ppm: Mapping[str, int] = field(default_factory=dict)
    cash_rounding_minor: int = 1  # CHF cash rounds to 5 Rappen

    @property
    def minor_units(self) -> int:
        return MINOR_UNITS[self.currency]


DEFAULT_STORES = (
    Store("berlin-mitte", "Berlin Mitte", "EUR", "Europe/Berlin", True, {"standard": 190_000, "reduced": 70_000}),
    Store(
        "zurich-bahnhofstrasse",
        "Zürich Bahnhofstrasse",
        "CHF",
        "Europe/Zurich",
        True,
        {"standard": 81_000, "reduced": 26_000},
        cash_rounding_minor=5,
    ),
    Store(
        "new-york-5th-ave",
        "New York Fifth Avenue",
        "USD",
        "America/New_York",
        False,
        {"standard": 88_750, "reduced": 88_750},
    ),
    Store("tokyo-shibuya", "Tokyo Shibuya", "JPY", "Asia/Tokyo", True, {"standard": 100_000, "reduced": 80_000}),
)


@cache
def load_stores(path: str | None = None) -> Mapping[str, Store]:
    """The configured stores by id (STORES_FILE or the defaults)."""
    source = path or os.environ.get("STORES_FILE")
    if not source:
        return {s.store_id: s for s in DEFAULT_STORES}
    raw = json.loads(Path(source).read_text())
    stores = {}
    for entry in raw:
        store = Store(
            store_id=entry["store_id"],
            name=entry.get("name", entry["store_id"]),
            currency=entry["currency"],
            time_zone=entry["time_zone"],
            tax_inclusive=bool(entry["tax_inclusive"]),
            tax_rates_ppm={k: int(v) for k, v in entry["tax_rates_ppm"].items()},
            cash_rounding_minor=int(entry.get("cash_rounding_minor", 1)),
        )
        if store.currency not in MINOR_UNITS:
            raise ValueError(f"store {store.store_id}: unknown currency {store.currency}")
        stores[store.store_id] = store
    return stores
