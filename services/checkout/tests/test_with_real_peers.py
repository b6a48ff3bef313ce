"""The sale with the real customer, loyalty and stock services (gRPC over sockets, events over the process's bus), on
SQLite and PostgreSQL: a registered customer is attached by email, redeems points held in loyalty, and the completed
sale captures the hold and earns points there, and commits the reservation in stock."""

from __future__ import annotations

from collections.abc import Callable

from checkout_kit import BERLIN, Till, cash, load_demo_stock, reserved, rid

from customer.main import Settings as CustomerSettings
from customer.main import create_app as create_customer_app
from loyalty.main import Settings as LoyaltySettings
from loyalty.main import create_app as create_loyalty_app
from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_runtime.testing import RunningService, service_settings, start_service, wait_until


def test_a_sale_with_points_through_customer_loyalty_and_stock(
    peer_url: Callable[[str], str],
    services: list[RunningService],
    stock: RunningService,
    make_checkout: Callable[..., RunningService],
) -> None:
    customers = start_service(create_customer_app, service_settings(CustomerSettings, "customer", peer_url("customer")))
    services.append(customers)
    loyalty = start_service(create_loyalty_app, service_settings(LoyaltySettings, "loyalty", peer_url("loyalty")))
    services.append(loyalty)
    checkout = make_checkout(stock.port, customer_port=customers.port, loyalty_port=loyalty.port)
    load_demo_stock(stock)
    registered = customers.stub_of(customer_pb2_grpc.CustomerServiceStub).RegisterCustomer(
        customer_pb2.RegisterCustomerRequest(
            customer=customer_pb2.Customer(
                given_name="Anna", family_name="Muster", email="anna@example.com", home_store_id=BERLIN
            ),
            request_id=rid(),
        ),
        timeout=10,
    )
    customer_id = registered.customer.customer_id
    points = loyalty.stub_of(loyalty_pb2_grpc.LoyaltyServiceStub)

    def account() -> loyalty_pb2.Account | None:
        try:
            return points.GetAccount(loyalty_pb2.GetAccountRequest(customer_id=customer_id), timeout=5).account
        except Exception:
            return None

    wait_until(lambda: account() is not None, timeout=15, what="loyalty enrolling the new customer")
    points.AdjustPoints(
        loyalty_pb2.AdjustPointsRequest(
            customer_id=customer_id, points=500, reason=loyalty_pb2.ADJUSTMENT_REASON_GOODWILL, request_id=rid()
        ),
        timeout=10,
    )
    till = Till(checkout.stub_of(checkout_pb2_grpc.CheckoutServiceStub))
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1")  # 10.00
    attached = till.stub.AttachCustomer(
        checkout_pb2.AttachCustomerRequest(basket_id=basket.basket_id, email="anna@example.com", request_id=rid()),
        timeout=10,
    ).basket.customer
    assert attached.display_name == "Anna M." and attached.points_available == 500
    assert attached.loyalty_card_number == registered.customer.loyalty_card_number
    redeemed = till.stub.RedeemPoints(
        checkout_pb2.RedeemPointsRequest(basket_id=basket.basket_id, points=200, request_id=rid()), timeout=10
    ).basket
    assert redeemed.points_redeemed == 200 and redeemed.total.amount_minor == 800
    held = account()
    assert held is not None and held.held_points == 200
    sale = till.complete(basket.basket_id, cash(800))
    assert sale.points_redeemed == 200 and sale.customer_id == customer_id

    def settled() -> bool:
        now = account()
        return now is not None and now.held_points == 0 and now.balance == 500 - 200 + 8  # 8.00 paid earns 8 points

    wait_until(settled, timeout=15, what="loyalty capturing the hold and earning on the sale")
    wait_until(lambda: reserved(stock, "SKU-1") == 0, timeout=15, what="stock committing the reservation")
