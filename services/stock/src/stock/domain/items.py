"""Items and the rules of their data: prices per currency, what an imported item must look like."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from stock.domain.policy import (
    MAX_BARCODE_LENGTH,
    MAX_BARCODES,
    MAX_CURRENCY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PRICE_MINOR,
    MAX_STOCK_QUANTITY,
    MAX_TAX_CLASS_LENGTH,
    check_sku,
)
from storeplane_runtime.errors import FieldViolation, NotFound, PreconditionFailed, Violations


class ItemNotFound(NotFound):
    """No item has that SKU or barcode."""

    reason = "ITEM_NOT_FOUND"

    @classmethod
    def of(cls, kind: str, key: str) -> ItemNotFound:
        """No item has this `kind` ("sku" or "barcode") of key."""
        return cls(f"no item with {'barcode' if kind == 'barcode' else 'SKU'} {key}", metadata={kind: key})


def require_items(skus: Iterable[str], items: Container[str]) -> None:
    """ItemNotFound naming every SKU (sorted) that is not among `items`."""
    unknown = [sku for sku in skus if sku not in items]
    if unknown:
        unknown = sorted(set(unknown))
        raise ItemNotFound(f"unknown SKU(s): {', '.join(unknown[:20])}", metadata={"skus": ",".join(unknown[:50])})


class NoPriceForCurrency(PreconditionFailed):
    """The item exists but is not priced in the store's currency."""

    reason = "NO_PRICE_FOR_CURRENCY"


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
    check_sku(v, "item.sku", sku)
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
