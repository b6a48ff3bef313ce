"""Deterministic demo data: a sports catalogue with barcodes and prices in four currencies, stock for the
four stores, and a handful of customers. The same call always gives the same data."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from customer.domain import luhn_check_digit
from storeplane_runtime.stores import DEFAULT_STORES

# Prices are set in EUR cents; other currencies follow by a factor in thousandths, minor unit to minor unit
# (JPY has no minor unit: 1 EUR cent = 1.65 yen).
_PER_MILLE_OF_EUR = {"EUR": 1000, "CHF": 1050, "USD": 1100, "JPY": 1650}

_COLOURS = ["Black", "Blue", "Red"]

_RANGES = [
    # (family, models, sizes, EUR price range in cents, tax class)
    (
        "SHO-RUN",
        ["Pegasus", "Glide", "Tempo", "Trail Pro", "Cloud"],
        ["40", "41", "42", "43", "44", "45"],
        (7999, 17999),
        "standard",
    ),
    ("SHO-FTB", ["Striker FG", "Striker AG", "Keeper"], ["39", "41", "43", "45"], (4999, 22999), "standard"),
    ("SHO-TEN", ["Court Ace", "Clay Master"], ["38", "40", "42", "44"], (5999, 13999), "standard"),
    ("APP-TEE", ["Dry Tee", "Merino Tee", "Training Tee"], ["XS", "S", "M", "L", "XL"], (1499, 4999), "standard"),
    ("APP-JKT", ["Rain Shell", "Down Puffer", "Softshell"], ["S", "M", "L", "XL"], (5999, 24999), "standard"),
    ("APP-SHO", ["Run Short", "Football Short"], ["S", "M", "L", "XL"], (1999, 3999), "standard"),
    ("ACC-SOC", ["Run Sock 3-pack", "Ski Sock"], ["S", "M", "L"], (999, 2499), "standard"),
    ("ACC-BAL", ["Match Ball", "Training Ball", "Basketball"], ["4", "5"], (1999, 14999), "standard"),
    ("NUT-BAR", ["Energy Bar Oat", "Protein Bar Choc", "Gel Citrus"], ["1", "12"], (199, 3499), "reduced"),
]


@dataclass(frozen=True)
class DemoItem:
    sku: str
    barcode: str
    name: str
    tax_class: str
    prices_minor: dict[str, int]
    reorder_point: int


@dataclass(frozen=True)
class DemoCustomer:
    given_name: str
    family_name: str
    email: str
    phone: str
    loyalty_card_number: str
    home_store_id: str


def ean13(stem12: str) -> str:
    """Append the EAN-13 check digit to 12 digits."""
    digits = [int(c) for c in stem12]
    total = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return stem12 + str((10 - total % 10) % 10)


def loyalty_card(stem12: str) -> str:
    """Append the Luhn check digit to 12 digits: a card number the customer service accepts (13 digits)."""
    return stem12 + luhn_check_digit(stem12)


def _price(eur_cents: int, currency: str) -> int:
    """Convert with integer arithmetic only, then round to a shop price (x.99, or ¥x,x90)."""
    per_mille = _PER_MILLE_OF_EUR[currency]
    minor = eur_cents * per_mille // 1000  # in the target currency's minor units
    if currency == "JPY":
        return max(100, (minor + 50) // 100 * 100 - 10)
    return max(99, (minor + 50) // 100 * 100 - 1)


def catalogue() -> list[DemoItem]:
    rng = random.Random(20261127)
    items: list[DemoItem] = []
    serial = 0
    for family, models, sizes, (low, high), tax_class in _RANGES:
        for m_index, model in enumerate(models):
            eur = rng.randrange(low, high, 100) + 99 if high - low > 200 else low
            for colour in [""] if family.startswith("NUT") else _COLOURS:
                for size in sizes:
                    serial += 1
                    items.append(
                        DemoItem(
                            sku="-".join(p for p in (family, f"{m_index + 1:02d}", colour[:3].upper(), size) if p),
                            barcode=ean13(f"400{serial:09d}"),
                            name=" ".join(p for p in (model, colour, size) if p),
                            tax_class=tax_class,
                            prices_minor={c: _price(eur, c) for c in _PER_MILLE_OF_EUR},
                            reorder_point=5,
                        )
                    )
    return items


def stock_levels() -> Iterator[tuple[str, str, int]]:
    """(store_id, sku, on_hand) for every store and item."""
    rng = random.Random(11)
    for store in DEFAULT_STORES:
        for item in catalogue():
            yield store.store_id, item.sku, rng.randint(0, 40)


def customers() -> list[DemoCustomer]:
    people = [
        ("Anna", "Schmidt", "berlin-mitte"),
        ("Lukas", "Weber", "berlin-mitte"),
        ("Mia", "Keller", "zurich-bahnhofstrasse"),
        ("Noah", "Meier", "zurich-bahnhofstrasse"),
        ("Emma", "Johnson", "new-york-5th-ave"),
        ("Liam", "Garcia", "new-york-5th-ave"),
        ("Yui", "Tanaka", "tokyo-shibuya"),
        ("Haruto", "Sato", "tokyo-shibuya"),
    ]
    return [
        DemoCustomer(
            given_name=g,
            family_name=f,
            email=f"{g.lower()}.{f.lower()}@example.com",
            phone=f"+4930555{i:04d}",
            loyalty_card_number=loyalty_card(f"299{i:09d}"),
            home_store_id=store,
        )
        for i, (g, f, store) in enumerate(people, start=1)
    ]
