"""Baskets at the till: their state machine (OPEN → COMPLETED / VOIDED / EXPIRED), lines as scanned (price frozen at
scan time), the attached customer, the points redemption, and the limits a basket is held to. Plain Python."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from checkout.domain.pricing import PricedLine, Pricing, RedemptionValue, price_basket
from storeplane_runtime.errors import NotFound, PreconditionFailed
from storeplane_runtime.stores import Store

MAX_QUANTITY = 9999
MAX_ID_LENGTH = 64  # terminal, cashier, basket and line ids
MAX_SKU_LENGTH = 64
MAX_BARCODE_LENGTH = 64
MAX_NAME_LENGTH = 200
DEFAULT_BASKET_TTL = timedelta(minutes=30)


class BasketState(enum.Enum):
    """Lifecycle of a basket (names match pos.checkout.v1.BasketState)."""

    OPEN = "OPEN"
    COMPLETED = "COMPLETED"
    VOIDED = "VOIDED"
    EXPIRED = "EXPIRED"


class VoidReason(enum.Enum):
    """Why a basket was voided (names match pos.checkout.v1.VoidReason)."""

    CASHIER_CANCELLED = "CASHIER_CANCELLED"
    CUSTOMER_ABANDONED = "CUSTOMER_ABANDONED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    EXPIRED = "EXPIRED"
    OTHER = "OTHER"


class BasketNotFound(NotFound):
    reason = "BASKET_NOT_FOUND"


class BasketNotOpen(PreconditionFailed):
    """The basket was completed, voided or expired: it takes no more changes."""

    reason = "BASKET_NOT_OPEN"


class BasketEmpty(PreconditionFailed):
    reason = "BASKET_EMPTY"


class BasketFull(PreconditionFailed):
    """The basket has as many lines as allowed."""

    reason = "BASKET_FULL"


class LineNotFound(NotFound):
    reason = "LINE_NOT_FOUND"


class NoCustomer(PreconditionFailed):
    """Points need a customer attached to the basket."""

    reason = "NO_CUSTOMER"


@dataclass(frozen=True)
class BasketPolicy:
    """The configurable part of the basket rules."""

    ttl: timedelta = DEFAULT_BASKET_TTL  # an open basket expires after this long without a change
    max_lines: int = 200


@dataclass(frozen=True)
class Item:
    """An item as checkout knows it (its own cache of stock's items): prices per currency at price level."""

    sku: str
    name: str
    tax_class: str
    prices: Mapping[str, int]
    barcodes: tuple[str, ...] = ()
    revision: int = 0


@dataclass(frozen=True)
class Line:
    """A basket line: the item as scanned (name, price and rate frozen at scan time) and whether stock confirmed a
    reservation for it."""

    line_id: str
    sku: str
    barcode: str
    name: str
    quantity: int
    unit_price: int
    tax_class: str
    tax_rate_ppm: int
    reserved: bool = False

    def priced(self) -> PricedLine:
        return PricedLine(self.sku, self.quantity, self.unit_price, self.tax_class, self.tax_rate_ppm)


@dataclass(frozen=True)
class Customer:
    """The customer on a basket, only what a till may show. `loyalty_unavailable`: loyalty did not answer when the
    customer was attached (tier and points unknown)."""

    customer_id: str
    loyalty_card_number: str = ""
    display_name: str = ""
    tier: str = ""  # BRONZE, SILVER, GOLD; empty: unknown
    points_available: int = 0
    loyalty_unavailable: bool = False


@dataclass(frozen=True)
class Basket:
    """A basket and everything on it. `points_redeemed` are the points held in loyalty for it (already lowered to
    what the basket absorbs); `reserve_tried` / `hold_tried` say whether stock / loyalty may hold something for it."""

    basket_id: str
    store_id: str
    terminal_id: str
    cashier_id: str
    currency: str
    tax_inclusive: bool
    opened_at: datetime
    expires_at: datetime
    state: BasketState = BasketState.OPEN
    lines: tuple[Line, ...] = ()
    next_line: int = 1
    customer: Customer | None = None
    points_redeemed: int = 0
    sale_id: str = ""
    reserve_tried: bool = False
    hold_tried: bool = False
    revision: int = 0
    changes: list[str] = field(default_factory=list, compare=False)

    def require_open(self) -> None:
        if self.state is not BasketState.OPEN:
            raise BasketNotOpen(
                f"basket {self.basket_id} is {self.state.value.lower()}",
                metadata={"basket_id": self.basket_id, "state": self.state.value},
            )

    def line(self, line_id: str) -> Line:
        for line in self.lines:
            if line.line_id == line_id:
                return line
        raise LineNotFound(f"no line {line_id[:64]!r} in basket {self.basket_id}", metadata={"line_id": line_id[:64]})

    def desired_quantities(self) -> dict[str, int]:
        """SKU -> total quantity of its lines: what the stock reservation should hold (declarative)."""
        desired: dict[str, int] = {}
        for line in self.lines:
            desired[line.sku] = desired.get(line.sku, 0) + line.quantity
        return desired


def display_name(given: str, family: str) -> str:
    """Given name and the initial of the family name ("Anna M."): all a till shows of a customer's name."""
    given = given.strip()
    family = family.strip()
    return f"{given} {family[0]}." if family else given


def open_basket(
    basket_id: str, store: Store, terminal_id: str, cashier_id: str, now: datetime, policy: BasketPolicy
) -> Basket:
    return Basket(
        basket_id=basket_id,
        store_id=store.store_id,
        terminal_id=terminal_id,
        cashier_id=cashier_id,
        currency=store.currency,
        tax_inclusive=store.tax_inclusive,
        opened_at=now,
        expires_at=now + policy.ttl,
    )


def _touched(basket: Basket, now: datetime, policy: BasketPolicy, **changes: object) -> Basket:
    return replace(basket, expires_at=now + policy.ttl, revision=basket.revision + 1, **changes)  # type: ignore[arg-type]


def add_line(
    basket: Basket,
    item: Item,
    *,
    barcode: str,
    quantity: int,
    unit_price: int,
    tax_rate_ppm: int,
    now: datetime,
    policy: BasketPolicy,
) -> tuple[Basket, Line]:
    """The basket with a new line for `quantity` of `item` at its price now (frozen on the line)."""
    basket.require_open()
    if len(basket.lines) >= policy.max_lines:
        raise BasketFull(
            f"a basket has at most {policy.max_lines} lines", metadata={"max_lines": str(policy.max_lines)}
        )
    line = Line(
        line_id=str(basket.next_line),
        sku=item.sku,
        barcode=barcode,
        name=item.name[:MAX_NAME_LENGTH],
        quantity=quantity,
        unit_price=unit_price,
        tax_class=item.tax_class,
        tax_rate_ppm=tax_rate_ppm,
    )
    return _touched(basket, now, policy, lines=(*basket.lines, line), next_line=basket.next_line + 1), line


def set_quantity(basket: Basket, line_id: str, quantity: int, *, now: datetime, policy: BasketPolicy) -> Basket:
    """The basket with the line's quantity changed; 0 removes the line."""
    basket.require_open()
    basket.line(line_id)
    if quantity == 0:
        lines = tuple(line for line in basket.lines if line.line_id != line_id)
    else:
        lines = tuple(replace(line, quantity=quantity) if line.line_id == line_id else line for line in basket.lines)
    return _touched(basket, now, policy, lines=lines)


def with_reservation(basket: Basket, reserved: Mapping[str, int] | None, changed_skus: Sequence[str] = ()) -> Basket:
    """The lines' `reserved` flags after a Reserve of the basket's desired quantities: `reserved` is what stock holds
    per SKU (None: the call failed; then the SKUs just changed are unconfirmed and the others keep their flags, since
    a declarative Reserve that failed never holds less than the last one that succeeded)."""
    desired = basket.desired_quantities()
    if reserved is None:
        lines = tuple(replace(line, reserved=False) if line.sku in changed_skus else line for line in basket.lines)
    else:
        lines = tuple(replace(line, reserved=reserved.get(line.sku, 0) >= desired[line.sku]) for line in basket.lines)
    return replace(basket, lines=lines, reserve_tried=True)


def attach_customer(basket: Basket, customer: Customer, *, now: datetime, policy: BasketPolicy) -> Basket:
    """The basket with `customer` attached (replacing any other); a redemption of another customer is dropped (its
    hold released first by the caller)."""
    basket.require_open()
    same = basket.customer is not None and basket.customer.customer_id == customer.customer_id
    return _touched(basket, now, policy, customer=customer, points_redeemed=basket.points_redeemed if same else 0)


def redeemable_points(basket: Basket, store: Store, points: int, value: RedemptionValue) -> int:
    """`points` lowered to whole minor units and to what the basket absorbs (NoCustomer without a customer)."""
    basket.require_open()
    if basket.customer is None:
        raise NoCustomer(f"basket {basket.basket_id} has no customer", metadata={"basket_id": basket.basket_id})
    if points == 0:
        return 0
    return price_basket(
        store, [line.priced() for line in basket.lines], points=points, redemption=value
    ).points_redeemed


def redeem(basket: Basket, points: int, *, now: datetime, policy: BasketPolicy) -> Basket:
    basket.require_open()
    return _touched(basket, now, policy, points_redeemed=points, hold_tried=basket.hold_tried or points > 0)


def price(basket: Basket, store: Store, value: RedemptionValue | None) -> Pricing:
    """The basket's amounts: its lines and its redemption (lowered when the basket shrank below it)."""
    lines = [line.priced() for line in basket.lines]
    if basket.points_redeemed and value is not None:
        return price_basket(store, lines, points=basket.points_redeemed, redemption=value)
    return price_basket(store, lines)


def lowered_redemption(basket: Basket, store: Store, value: RedemptionValue | None) -> Basket:
    """After a change of lines: the redemption lowered to what the basket still absorbs (it never grows back)."""
    if not basket.points_redeemed:
        return basket
    absorbed = price(basket, store, value).points_redeemed
    return replace(basket, points_redeemed=absorbed) if absorbed != basket.points_redeemed else basket


def end(basket: Basket, state: BasketState, now: datetime, *, sale_id: str = "") -> Basket:
    """The basket completed, voided or expired: no customer data stays on it (only the customer id)."""
    basket.require_open()
    customer = basket.customer
    kept = Customer(customer.customer_id) if customer is not None else None
    return replace(basket, state=state, sale_id=sale_id, customer=kept, expires_at=now, revision=basket.revision + 1)
