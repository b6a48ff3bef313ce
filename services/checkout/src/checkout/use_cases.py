"""The checkout writes, one function each, inside the caller's unit of work: storage loads and locks, the domain
decides, storage writes, and the events go to the outbox of the same transaction.

Baskets are locked (their row) for the whole change, including the stock Reserve a scan makes (at most the Reserve
budget): the Reserves of one basket are then sent in the order of its changes. CompleteSale calls no service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from checkout import events, metrics, storage
from checkout.domain import baskets as b
from checkout.domain.baskets import Basket, BasketNotFound, BasketPolicy, BasketState, Customer, Item, Line, VoidReason
from checkout.domain.pricing import Pricing, RedemptionValue, redemption_value, tax_rate
from checkout.domain.receipts import return_receipt, sale_receipt
from checkout.domain.refunds import plan_return
from checkout.domain.sales import (
    ReturnReason,
    Sale,
    SaleNotFound,
    SaleReturn,
    after_return,
    check_currency,
    receipt_number,
    returned_lines,
    sale_of,
)
from checkout.domain.tenders import Tender, settle
from checkout.peers import Peers
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.errors import FieldViolation, NotFound
from storeplane_runtime.event_ids import new_event_id
from storeplane_runtime.stores import Store

MAX_PEER_TTL_SECONDS = 24 * 3600  # the longest reservation or hold stock and loyalty grant


@dataclass(frozen=True)
class Rules:
    """What the basket and money rules need from configuration: the stores, basket policy, redemption values."""

    stores: Mapping[str, Store]
    policy: BasketPolicy
    redemption: Mapping[str, RedemptionValue]

    def value_of(self, currency: str) -> RedemptionValue | None:
        return self.redemption.get(currency)

    def price(self, basket: Basket) -> Pricing:
        return b.price(basket, self.stores[basket.store_id], self.value_of(basket.currency))


def _locked(uow: UnitOfWork, basket_id: str) -> Basket:
    basket = storage.find_basket(uow.connection, basket_id, lock=True)
    if basket is None:
        raise BasketNotFound(f"no basket {basket_id[:64]!r}", metadata={"basket_id": basket_id[:64]})
    return basket


def _reserved(peers: Peers, rules: Rules, basket: Basket, changed_skus: Sequence[str], operation: str) -> Basket:
    """The basket after a declarative Reserve of its desired quantities (unconfirmed lines when stock is down)."""
    # The reservation outlives the basket a little (the basket's expiry releases it by event), within stock's 24 h.
    ttl = min(rules.policy.ttl.total_seconds() + 60, MAX_PEER_TTL_SECONDS)
    held = peers.reserve(basket.basket_id, basket.store_id, basket.desired_quantities(), ttl)
    if held is None:
        metrics.line_unreserved(basket.store_id, operation)
    return b.with_reservation(basket, held, changed_skus)


# --- baskets --------------------------------------------------------------------------------------------------


def open_basket(
    uow: UnitOfWork, rules: Rules, store: Store, terminal_id: str, cashier_id: str, now: datetime
) -> Basket:
    basket = b.open_basket(new_event_id(), store, terminal_id, cashier_id, now, rules.policy)
    storage.insert_basket(uow.connection, basket, now)
    return basket


def cache_item(uow: UnitOfWork, item: Item, now: datetime) -> bool:
    """Keep an item stock told of (ItemUpdated, or a GetItem answer) unless a newer revision is kept already."""
    return storage.save_item(uow.connection, item, now)


def scan(
    uow: UnitOfWork,
    peers: Peers,
    rules: Rules,
    basket_id: str,
    item: Item,
    *,
    barcode: str,
    quantity: int,
    unit_price: int,
    now: datetime,
) -> tuple[Basket, Line]:
    basket = _locked(uow, basket_id)
    store = rules.stores[basket.store_id]
    basket, line = b.add_line(
        basket,
        item,
        barcode=barcode,
        quantity=quantity,
        unit_price=unit_price,
        tax_rate_ppm=tax_rate(store, item.tax_class),
        now=now,
        policy=rules.policy,
    )
    basket = _reserved(peers, rules, basket, [item.sku], "scan")
    basket = b.lowered_redemption(basket, store, rules.value_of(basket.currency))
    rules.price(basket)  # the amounts must fit a Money before the line is kept
    storage.save_basket(uow.connection, basket, now)
    return basket, line


def update_quantity(
    uow: UnitOfWork, peers: Peers, rules: Rules, basket_id: str, line_id: str, quantity: int, now: datetime
) -> Basket:
    basket = _locked(uow, basket_id)
    store = rules.stores[basket.store_id]
    sku = basket.line(line_id).sku if basket.state is BasketState.OPEN else ""
    basket = b.set_quantity(basket, line_id, quantity, now=now, policy=rules.policy)
    basket = _reserved(peers, rules, basket, [sku], "quantity")
    basket = b.lowered_redemption(basket, store, rules.value_of(basket.currency))
    rules.price(basket)
    storage.save_basket(uow.connection, basket, now)
    return basket


def attach_customer(
    uow: UnitOfWork, peers: Peers, rules: Rules, basket_id: str, customer: Customer, now: datetime
) -> Basket:
    """Attach `customer` (found by the caller); a redemption held for another customer is released first."""
    basket = _locked(uow, basket_id)
    basket.require_open()
    previous = basket.customer
    if previous is not None and previous.customer_id != customer.customer_id and basket.points_redeemed:
        peers.hold_points(basket.basket_id, previous.customer_id, basket.store_id, 0, rules.policy.ttl.total_seconds())
    basket = b.attach_customer(basket, customer, now=now, policy=rules.policy)
    storage.save_basket(uow.connection, basket, now)
    return basket


def redeem_points(uow: UnitOfWork, peers: Peers, rules: Rules, basket_id: str, points: int, now: datetime) -> Basket:
    """Hold the points the basket can absorb (declarative); loyalty refusing or down leaves the basket unchanged."""
    basket = _locked(uow, basket_id)
    store = rules.stores[basket.store_id]
    value = rules.value_of(basket.currency)
    if value is None:
        value = redemption_value(basket.currency, rules.redemption)  # raises PointsNotRedeemable
    applicable = b.redeemable_points(basket, store, points, value)
    assert basket.customer is not None  # redeemable_points checked it
    if applicable or basket.hold_tried:
        peers.hold_points(
            basket.basket_id, basket.customer.customer_id, basket.store_id, applicable, rules.policy.ttl.total_seconds()
        )
    basket = b.redeem(basket, applicable, now=now, policy=rules.policy)
    storage.save_basket(uow.connection, basket, now)
    return basket


def void_basket(uow: UnitOfWork, basket_id: str, reason: VoidReason, now: datetime) -> Basket:
    """Void an open basket (BasketVoided tells stock and loyalty to release); a voided one is returned as it is."""
    basket = _locked(uow, basket_id)
    if basket.state is BasketState.VOIDED:
        return basket
    basket = b.end(basket, BasketState.VOIDED, now)
    storage.save_basket(uow.connection, basket, now)
    uow.publish(events.basket_voided(basket, reason, now), store_id=basket.store_id)
    return basket


def expire_due(uow: UnitOfWork, *, now: datetime, limit: int) -> int:
    """Expire up to `limit` open baskets past their time, each once (locked rows are another replica's)."""
    claimed = storage.claim_expired(uow.connection, now, limit)
    for basket in claimed:
        ended = b.end(basket, BasketState.EXPIRED, now)
        storage.save_basket(uow.connection, ended, now)
        uow.publish(events.basket_voided(ended, VoidReason.EXPIRED, now), store_id=ended.store_id)
    return len(claimed)


# --- sales ----------------------------------------------------------------------------------------------------


def complete_sale(
    uow: UnitOfWork, rules: Rules, basket_id: str, tenders: Sequence[Tender], now: datetime
) -> tuple[Sale, str]:
    """The sale of an open basket, its basket COMPLETED and SaleCompleted, all in this transaction; returns the sale
    and the loyalty card it was made with (for the answer and the event only: it is not stored)."""
    basket = _locked(uow, basket_id)
    basket.require_open()
    if not basket.lines:
        raise b.BasketEmpty(f"basket {basket_id} has no lines", metadata={"basket_id": basket_id})
    store = rules.stores[basket.store_id]
    pricing = rules.price(basket)
    settlement = settle(store, pricing.total, tenders)
    number = storage.next_receipt_number(uow.connection, basket.store_id, basket.terminal_id, "S")
    customer = basket.customer
    sale = sale_of(
        sale_id=new_event_id(),
        basket_id=basket.basket_id,
        client_sale_id="",
        store_id=basket.store_id,
        terminal_id=basket.terminal_id,
        cashier_id=basket.cashier_id,
        customer_id=customer.customer_id if customer is not None else "",
        lines=[(line.line_id, line.barcode, line.name) for line in basket.lines],
        pricing=pricing,
        settlement=settlement,
        completed_at=now,
        offline=False,
        receipt_number=receipt_number(basket.store_id, basket.terminal_id, number),
    )
    sale = replace(sale, receipt_lines=sale_receipt(sale, store))
    storage.insert_sale(uow.connection, sale)
    storage.save_basket(uow.connection, b.end(basket, BasketState.COMPLETED, now, sale_id=sale.sale_id), now)
    card = customer.loyalty_card_number if customer is not None else ""
    event = events.sale_completed(
        sale, loyalty_card_number=card, hold=basket.hold_tried, reservation=basket.reserve_tried
    )
    uow.publish(event, subject=sale.customer_id, store_id=sale.store_id)
    metrics.basket_completed(basket.store_id, basket.opened_at, now)
    return sale, card


@dataclass(frozen=True)
class ReturnRequest:
    """What a till asks to take back: (line id, quantity, restock) per line, where and why."""

    original_sale_id: str
    store_id: str
    terminal_id: str
    cashier_id: str
    lines: Sequence[tuple[str, int, bool]]
    reason: ReturnReason
    note: str


def return_items(uow: UnitOfWork, rules: Rules, request: ReturnRequest, now: datetime) -> SaleReturn:
    """Take goods of a sale back (in any store of its currency): refunds to the original tenders, quantities returned
    tracked on the sale under its row's lock, so concurrent returns never exceed what was sold."""
    sale = storage.find_sale(uow.connection, request.original_sale_id, lock=True)
    if sale is None:
        raise SaleNotFound(
            f"no sale {request.original_sale_id[:64]!r}", metadata={"sale_id": request.original_sale_id[:64]}
        )
    store = rules.stores[request.store_id]
    check_currency(sale, store.currency)
    index = {line.line_id: i for i, line in enumerate(sale.lines)}
    returning = [0] * len(sale.lines)
    restock = [False] * len(sale.lines)
    for n, (line_id, quantity, back_on_shelf) in enumerate(request.lines):
        if line_id not in index:
            raise NotFound(
                f"sale {sale.sale_id} has no line {line_id[:64]!r}",
                reason="LINE_NOT_FOUND",
                metadata={"line_id": line_id[:64]},
                violations=[FieldViolation(f"lines[{n}].line_id", "no such line in the sale")],
            )
        returning[index[line_id]] += quantity
        restock[index[line_id]] = restock[index[line_id]] or back_on_shelf
    plan = plan_return(
        sale.line_amounts(), sale.settlement(), [line.returned_quantity for line in sale.lines], returning
    )
    number = storage.next_receipt_number(uow.connection, request.store_id, request.terminal_id, "R")
    sale_return = SaleReturn(
        return_id=new_event_id(),
        original_sale_id=sale.sale_id,
        original_store_id=sale.store_id,
        store_id=request.store_id,
        terminal_id=request.terminal_id,
        cashier_id=request.cashier_id,
        customer_id=sale.customer_id,
        currency=sale.currency,
        lines=returned_lines(sale, plan, returning, restock),
        refund_tenders=plan.tenders,
        amount_refunded=plan.amount_refunded,
        cash_rounding=plan.cash_rounding,
        points_returned=plan.points_returned,
        reason=request.reason,
        note=request.note,
        returned_at=now,
        receipt_number=f"{request.store_id}-{request.terminal_id}-R{number}",
    )
    sale_return = replace(sale_return, receipt_lines=return_receipt(sale_return, store))
    storage.insert_return(uow.connection, sale_return)
    storage.save_returned_quantities(uow.connection, after_return(sale, returning))
    uow.publish(events.sale_returned(sale_return), subject=sale_return.customer_id, store_id=sale_return.store_id)
    return sale_return
