"""AttachCustomer and RedeemPoints through the real gRPC API on SQLite and PostgreSQL, against small real gRPC servers
for customer and loyalty (peer_servers.py): display-safe customer data, loyalty or customer down, holds lowered to
what the basket absorbs, NO_CUSTOMER, INSUFFICIENT_POINTS, re-allocation when the basket shrinks, and no personal
data in checkout's tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from checkout_kit import Till, cash, error_of, rid
from peer_servers import Customers, Loyalty, PeerServer
from sqlalchemy import text

from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc, events_pb2
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.customer.v1 import events_pb2 as customer_events
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_runtime.testing import RunningService, deliver, published, unsent_events, wait_until

CARD = "4006381333931"


@pytest.fixture
def customer_server() -> Iterator[PeerServer]:
    customers = Customers()
    customers.customers.append(
        customer_pb2.Customer(
            customer_id="cust-1",
            given_name="Anna",
            family_name="Musterfrau",
            email="anna@example.com",
            phone="+4915123456789",
            loyalty_card_number=CARD,
        )
    )
    server = PeerServer(customer_pb2_grpc.add_CustomerServiceServicer_to_server, customers)
    yield server
    server.stop()


@pytest.fixture
def loyalty_server() -> Iterator[PeerServer]:
    loyalty = Loyalty(balances={"cust-1": 1000}, tiers={"cust-1": loyalty_pb2.TIER_GOLD})
    server = PeerServer(loyalty_pb2_grpc.add_LoyaltyServiceServicer_to_server, loyalty)
    yield server
    server.stop()


@pytest.fixture
def shop(
    make_checkout: Callable[..., RunningService],
    stock: RunningService,
    checkout: RunningService,
    customer_server: PeerServer,
    loyalty_server: PeerServer,
) -> tuple[Till, RunningService]:
    running = make_checkout(
        stock.port, customer_port=customer_server.port, loyalty_port=loyalty_server.port, breaker_reset_seconds=0.2
    )
    return Till(running.stub_of(checkout_pb2_grpc.CheckoutServiceStub)), running


def attach(till: Till, basket_id: str, **lookup: str) -> checkout_pb2.Basket:
    request = checkout_pb2.AttachCustomerRequest(basket_id=basket_id, request_id=rid(), **lookup)
    return till.stub.AttachCustomer(request, timeout=10).basket


def redeem(till: Till, basket_id: str, points: int) -> checkout_pb2.Basket:
    request = checkout_pb2.RedeemPointsRequest(basket_id=basket_id, points=points, request_id=rid())
    return till.stub.RedeemPoints(request, timeout=10).basket


def test_attach_customer_shows_only_display_safe_fields(shop: tuple[Till, RunningService]) -> None:
    till, _ = shop
    basket = till.open()
    for lookup in ({"loyalty_card_number": CARD}, {"email": "anna@example.com"}, {"customer_id": "cust-1"}):
        customer = attach(till, basket.basket_id, **lookup).customer
        assert (customer.customer_id, customer.display_name, customer.loyalty_card_number) == (
            "cust-1",
            "Anna M.",
            CARD,
        )
        assert customer.tier == checkout_pb2.CUSTOMER_TIER_GOLD and customer.points_available == 1000
        assert not customer.loyalty_unavailable
    assert error_of(lambda: attach(till, basket.basket_id, phone="+41000000000")) == (
        grpc.StatusCode.NOT_FOUND,
        "CUSTOMER_NOT_FOUND",
    )
    assert error_of(lambda: attach(till, basket.basket_id, email="nonsense"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = error_of(
        lambda: till.stub.AttachCustomer(
            checkout_pb2.AttachCustomerRequest(basket_id=basket.basket_id, request_id=rid())
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_loyalty_down_still_attaches_the_customer_and_customer_down_is_unavailable(
    shop: tuple[Till, RunningService], loyalty_server: PeerServer, customer_server: PeerServer
) -> None:
    till, _ = shop
    basket = till.open()
    loyalty_server.stop()
    customer = attach(till, basket.basket_id, customer_id="cust-1").customer
    assert customer.customer_id == "cust-1" and customer.loyalty_unavailable
    assert customer.tier == checkout_pb2.CUSTOMER_TIER_UNSPECIFIED and customer.points_available == 0
    customer_server.stop()
    assert error_of(lambda: attach(till, basket.basket_id, customer_id="cust-1"))[0] == grpc.StatusCode.UNAVAILABLE


def test_redeem_points_holds_what_the_basket_absorbs_and_shrinks_with_it(
    shop: tuple[Till, RunningService], loyalty_server: PeerServer
) -> None:
    till, running = shop
    loyalty: Loyalty = loyalty_server.servicer  # type: ignore[assignment]
    basket = till.open()
    assert error_of(lambda: redeem(till, basket.basket_id, 100)) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_CUSTOMER")
    first = till.scan(basket.basket_id, "SKU-1").line_id  # 10.00
    till.scan(basket.basket_id, "SKU-2", quantity=2)  # 5.00
    attach(till, basket.basket_id, customer_id="cust-1")
    assert error_of(lambda: redeem(till, basket.basket_id, 1200)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_POINTS",
    )
    redeemed = redeem(till, basket.basket_id, 300)  # 3.00 spread 2.00 / 1.00 by gross amount
    assert redeemed.points_redeemed == 300 and redeemed.redemption_discount.amount_minor == 300
    assert [line.discount.amount_minor for line in redeemed.lines] == [200, 100]
    assert redeemed.total.amount_minor == 1200 and loyalty.holds[basket.basket_id] == ("cust-1", 300)
    shrunk = till.stub.UpdateLineQuantity(
        checkout_pb2.UpdateLineQuantityRequest(basket_id=basket.basket_id, line_id=first, quantity=0, request_id=rid())
    ).basket
    assert (
        shrunk.points_redeemed == 300
        and shrunk.lines[0].discount.amount_minor == 300
        and shrunk.total.amount_minor == 200
    )
    lowered = till.stub.UpdateLineQuantity(
        checkout_pb2.UpdateLineQuantityRequest(
            basket_id=basket.basket_id, line_id=shrunk.lines[0].line_id, quantity=1, request_id=rid()
        )
    ).basket
    assert lowered.points_redeemed == 250 and lowered.total.amount_minor == 0  # lowered to what the basket absorbs
    loyalty_server.stop()
    assert error_of(lambda: redeem(till, basket.basket_id, 100))[0] == grpc.StatusCode.UNAVAILABLE
    assert till.stub.GetBasket(checkout_pb2.GetBasketRequest(basket_id=basket.basket_id)).basket.points_redeemed == 250
    loyalty_server.start()
    sale = till.complete(basket.basket_id)  # fully paid with points: no tender needed
    assert sale.points_redeemed == 250 and sale.total.amount_minor == 0 and sale.lines[0].points_allocated == 250
    [event] = published(running.database, events_pb2.SaleCompleted)
    assert (event.hold_id, event.customer_id, event.loyalty_card_number) == (basket.basket_id, "cust-1", CARD)
    assert sale.loyalty_card_number == CARD
    read = till.stub.GetSale(checkout_pb2.GetSaleRequest(sale_id=sale.sale_id)).sale
    assert read.customer_id == "cust-1" and read.loyalty_card_number == ""


def test_no_personal_data_stays_in_checkout_tables(shop: tuple[Till, RunningService]) -> None:
    till, running = shop
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1")
    attach(till, basket.basket_id, loyalty_card_number=CARD)
    till.complete(basket.basket_id, cash(1000))
    voided = till.open()
    attach(till, voided.basket_id, email="anna@example.com")
    till.stub.VoidBasket(checkout_pb2.VoidBasketRequest(basket_id=voided.basket_id, request_id=rid()))
    with running.database.engine.connect() as conn:
        for table in ("baskets", "sales"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):  # noqa: S608 (our own table names)
                dumped = repr(tuple(row))
                assert CARD not in dumped and "Anna" not in dumped and "anna@" not in dumped
                assert "cust-1" in dumped


def test_void_after_redeeming_releases_the_hold_by_event(shop: tuple[Till, RunningService]) -> None:
    till, running = shop
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1")
    attach(till, basket.basket_id, customer_id="cust-1")
    redeem(till, basket.basket_id, 100)
    till.stub.VoidBasket(checkout_pb2.VoidBasketRequest(basket_id=basket.basket_id, request_id=rid()))
    [event] = published(running.database, events_pb2.BasketVoided)
    assert event.hold_id == basket.basket_id and event.reservation_id == basket.basket_id


def test_customer_erased_drops_checkouts_copies_of_their_personal_data(shop: tuple[Till, RunningService]) -> None:
    till, running = shop
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1")
    attach(till, basket.basket_id, customer_id="cust-1")
    key = rid()
    request = checkout_pb2.CompleteSaleRequest(basket_id=basket.basket_id, tenders=[cash(1000)], request_id=key)
    assert till.stub.CompleteSale(request).sale.loyalty_card_number == CARD
    still_open = till.open()
    attached_key = rid()
    attached = checkout_pb2.AttachCustomerRequest(
        basket_id=still_open.basket_id, request_id=attached_key, loyalty_card_number=CARD
    )
    shown = till.stub.AttachCustomer(attached).basket.customer
    assert shown.display_name and shown.loyalty_card_number == CARD
    wait_until(lambda: unsent_events(running.database) == 0, what="the sale's event sent")
    erased = customer_events.CustomerErased(customer_id="cust-1", loyalty_card_number=CARD)
    assert deliver(running.app, erased) == "applied"
    assert till.stub.CompleteSale(request).sale.loyalty_card_number == ""  # the kept answer, scrubbed
    again = till.stub.AttachCustomer(attached).basket.customer  # kept answers lose the display name too
    assert again.customer_id == "cust-1" and again.display_name == "" and again.loyalty_card_number == ""
    customer = till.stub.GetBasket(checkout_pb2.GetBasketRequest(basket_id=still_open.basket_id)).basket.customer
    assert customer.customer_id == "cust-1" and customer.display_name == "" and customer.loyalty_card_number == ""
    assert published(running.database, events_pb2.SaleCompleted) == []  # sent rows about the customer are gone
