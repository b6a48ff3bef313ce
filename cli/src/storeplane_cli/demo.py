"""`storeplane demo`: ring up one sale through the gateway, as a till would, and print its receipt.

Open a basket at a store, scan three demo items by barcode, attach a demo customer by their loyalty card, redeem
some of their points (a new demo account gets a welcome bonus first, so there is something to redeem), pay the rest
by card. Needs the demo data (`storeplane seed`) and a token with the till's and loyalty's scopes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TextIO

import grpc

from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from pos.common.v1 import common_pb2
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_cli import demo_data
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.stores import DEFAULT_STORES

WELCOME_BONUS = 500
REDEEM = 300


@dataclass
class DemoSale:
    """What the demo did, step by step, and the receipt it got."""

    steps: list[str] = field(default_factory=list)
    receipt: list[str] = field(default_factory=list)
    sale_id: str = ""


def _request_id() -> str:
    return str(uuid.uuid4())


def ring_up(gateway: str, token: str, store_id: str = "berlin-mitte", timeout: float = 10.0) -> DemoSale:
    """One sale at `store_id` through `gateway`; raises grpc.RpcError when a step fails."""
    store = next(s for s in DEFAULT_STORES if s.store_id == store_id)
    items = [item for item in demo_data.catalogue() if store.currency in item.prices_minor][:3]
    person = next(p for p in demo_data.customers() if p.home_store_id == store_id)
    done = DemoSale()
    with with_bearer(grpc.insecure_channel(gateway), token) as channel:
        checkout = checkout_pb2_grpc.CheckoutServiceStub(channel)
        loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(channel)
        basket = checkout.OpenBasket(
            checkout_pb2.OpenBasketRequest(
                store_id=store_id, terminal_id="demo-till", cashier_id="demo", request_id=_request_id()
            ),
            timeout=timeout,
        ).basket
        basket_id = basket.basket_id
        done.steps.append(f"opened basket {basket_id} at {store.name}")
        for item in items:
            basket = checkout.ScanItem(
                checkout_pb2.ScanItemRequest(basket_id=basket_id, barcode=item.barcode, request_id=_request_id()),
                timeout=timeout,
            ).basket
            line = basket.lines[-1]
            reserved = "reserved" if line.reserved else "not reserved"
            done.steps.append(f"scanned {item.barcode} {item.name} ({reserved})")
        basket = checkout.AttachCustomer(
            checkout_pb2.AttachCustomerRequest(
                basket_id=basket_id, loyalty_card_number=person.loyalty_card_number, request_id=_request_id()
            ),
            timeout=timeout,
        ).basket
        done.steps.append(f"customer {basket.customer.display_name}: {basket.customer.points_available} points")
        if basket.customer.points_available < REDEEM:
            loyalty.AdjustPoints(
                loyalty_pb2.AdjustPointsRequest(
                    customer_id=basket.customer.customer_id,
                    points=WELCOME_BONUS,
                    reason=loyalty_pb2.ADJUSTMENT_REASON_PROMOTION,
                    note="storeplane demo welcome bonus",
                    request_id=_request_id(),
                ),
                timeout=timeout,
            )
            done.steps.append(f"welcome bonus: {WELCOME_BONUS} points")
        basket = checkout.RedeemPoints(
            checkout_pb2.RedeemPointsRequest(basket_id=basket_id, points=REDEEM, request_id=_request_id()),
            timeout=timeout,
        ).basket
        done.steps.append(f"redeemed {basket.points_redeemed} points")
        card = checkout_pb2.Tender(
            type=checkout_pb2.TENDER_TYPE_CARD,
            amount=common_pb2.Money(amount_minor=basket.total.amount_minor, currency_code=basket.currency_code),
            reference="demo-auth-0001",
        )
        sale = checkout.CompleteSale(
            checkout_pb2.CompleteSaleRequest(basket_id=basket_id, tenders=[card], request_id=_request_id()),
            timeout=timeout,
        ).sale
        done.steps.append(f"paid by card; sale {sale.sale_id}, receipt {sale.receipt.receipt_number}")
        done.sale_id = sale.sale_id
        done.receipt = list(sale.receipt.lines)
    return done


def run(gateway: str, token: str, store_id: str, out: TextIO) -> int:
    """`storeplane demo`: the sale's steps and receipt on `out`; 1 when a step failed."""
    try:
        sale = ring_up(gateway, token, store_id)
    except grpc.RpcError as exc:
        print(f"storeplane demo: {exc.code().name}: {exc.details()}", file=out)
        return 1
    for step in sale.steps:
        print(f"- {step}", file=out)
    print("", file=out)
    for line in sale.receipt:
        print(line, file=out)
    return 0
