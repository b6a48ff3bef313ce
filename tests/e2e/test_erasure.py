"""GDPR erasure, provably, across the distributed stack: a customer registers, is enrolled by loyalty, buys at a
till (attached by card through checkout: the sale reaches stock, loyalty and customer over RabbitMQ), buys once
more on a sale event of its own, changes their phone, and is erased. Then no service's database
holds their email, phone, names or loyalty card number anywhere: not in a service's tables, not in the outbox or
the stored answers of idempotent calls. Every text, binary and JSON column of every table is searched."""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import create_engine, text

from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from pos.checkout.v1 import events_pb2 as checkout_events
from pos.common.v1 import common_pb2
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_runtime import outbox
from storeplane_runtime.messaging.amqp_publisher import AmqpPublisher
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.testing import wait_until

from .conftest import Stack

SEARCHED_TYPES = ("text", "character varying", "character", "bytea", "json", "jsonb")


def _letters(n: int) -> str:
    return "".join(random.choice(string.ascii_lowercase) for _ in range(n))


def _account(loyalty: loyalty_pb2_grpc.LoyaltyServiceStub, **key: str) -> loyalty_pb2.Account | None:
    try:
        return loyalty.GetAccount(loyalty_pb2.GetAccountRequest(**key), timeout=5).account
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _publish_sale(amqp_url: str, customer_id: str, card: str) -> None:
    """A SaleCompleted as checkout publishes it (checkout itself is not needed to prove erasure)."""
    sale = checkout_events.SaleCompleted(
        sale_id=str(uuid.uuid4()),
        basket_id=str(uuid.uuid4()),
        store_id="berlin-mitte",
        terminal_id="till-1",
        customer_id=customer_id,
        loyalty_card_number=card,
        currency_code="EUR",
        lines=[
            checkout_events.SaleCompleted.Line(
                line_id="l1",
                sku="SHO-RUN-01-BLA-40",
                quantity=1,
                unit_price=common_pb2.Money(amount_minor=12345, currency_code="EUR"),
                total_amount=common_pb2.Money(amount_minor=12345, currency_code="EUR"),
            )
        ],
        total=common_pb2.Money(amount_minor=12345, currency_code="EUR"),
        amount_paid=common_pb2.Money(amount_minor=12345, currency_code="EUR"),
    )
    sale.completed_at.FromDatetime(datetime.now(UTC))
    pending = outbox.prepare(sale, source="checkout", subject=customer_id, store_id="berlin-mitte")
    publisher = AmqpPublisher(amqp_url, app_id="checkout")
    try:
        envelope = Envelope(
            event_id=pending.event_id,
            event_type=pending.event_type,
            source=pending.source,
            payload=pending.payload,
            occurred_at=pending.occurred_at,
            subject=pending.subject,
            store_id=pending.store_id,
        )
        assert publisher.publish([envelope]) == ["ok"]
    finally:
        publisher.close()


def _stats(customers: customer_pb2_grpc.CustomerServiceStub, customer_id: str) -> customer_pb2.PurchaseStats:
    return customers.GetCustomer(customer_pb2.GetCustomerRequest(customer_id=customer_id), timeout=5).customer.stats


def _sale_at_the_till(channel: grpc.Channel, card: str) -> int:
    """A sale through checkout with the customer attached by card (an item checkout's cache may not know: the
    fallback to stock's GetItem answers NOT_FOUND, so the item is imported first); returns the amount paid."""
    from pos.stock.v1 import stock_pb2, stock_pb2_grpc

    stock_pb2_grpc.StockServiceStub(channel).ImportItems(
        iter(
            [
                stock_pb2.ImportItemsRequest(
                    request_id=str(uuid.uuid4()),
                    item=stock_pb2.Item(
                        sku="GDPR-1",
                        name="Erasure socks",
                        tax_class="standard",
                        prices=[common_pb2.Money(amount_minor=1999, currency_code="EUR")],
                    ),
                )
            ]
        ),
        timeout=10,
    )
    till = checkout_pb2_grpc.CheckoutServiceStub(channel)

    def rid() -> str:
        return str(uuid.uuid4())

    basket = till.OpenBasket(
        checkout_pb2.OpenBasketRequest(store_id="berlin-mitte", terminal_id="t-1", cashier_id="c-1", request_id=rid()),
        timeout=10,
    ).basket
    till.ScanItem(checkout_pb2.ScanItemRequest(basket_id=basket.basket_id, sku="GDPR-1", request_id=rid()), timeout=10)
    basket = till.AttachCustomer(
        checkout_pb2.AttachCustomerRequest(basket_id=basket.basket_id, loyalty_card_number=card, request_id=rid()),
        timeout=10,
    ).basket
    assert basket.customer.display_name
    sale = till.CompleteSale(
        checkout_pb2.CompleteSaleRequest(
            basket_id=basket.basket_id,
            tenders=[checkout_pb2.Tender(type=checkout_pb2.TENDER_TYPE_CARD, amount=basket.total)],
            request_id=rid(),
        ),
        timeout=10,
    ).sale
    assert sale.loyalty_card_number == card
    return sale.amount_paid.amount_minor


def _found(databases: dict[str, str], needles: dict[str, str]) -> list[str]:
    """Where any needle occurs: 'service table.column: what' for each hit."""
    hits = []
    for service, url in databases.items():
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                columns = conn.execute(
                    text(
                        "SELECT table_name, column_name, data_type FROM information_schema.columns"
                        " WHERE table_schema = 'public' AND data_type = ANY(:types)"
                    ),
                    {"types": list(SEARCHED_TYPES)},
                ).all()
                for table, column, data_type in columns:
                    if data_type == "bytea":
                        where = f"position(convert_to(:needle, 'UTF8') in \"{column}\") > 0"
                    else:
                        where = f'position(:needle in "{column}"::text) > 0'
                    for what, needle in needles.items():
                        count = conn.execute(
                            text(f'SELECT count(*) FROM "{table}" WHERE {where}'), {"needle": needle}
                        ).scalar_one()
                        if count:
                            hits.append(f"{service} {table}.{column}: {what}")
        finally:
            engine.dispose()
    return hits


def _needles(person: customer_pb2.Customer, phones: Iterable[str]) -> dict[str, str]:
    needles = {
        "email": person.email,
        "given name": person.given_name,
        "family name": person.family_name,
        "card number": person.loyalty_card_number,
    }
    for i, phone in enumerate(phones):
        needles[f"phone {i}"] = phone
        needles[f"phone {i} without +"] = phone.lstrip("+")
    return needles


def test_an_erased_customer_leaves_no_personal_data_in_any_service_database(distributed_with_events: Stack) -> None:
    stack = distributed_with_events
    tag = _letters(10)
    first_phone, second_phone = (
        f"+49151{random.randint(10_000_000, 99_999_999)}",
        f"+4930{random.randint(1_000_000, 9_999_999)}",
    )
    with stack.gateway() as channel:
        customers = customer_pb2_grpc.CustomerServiceStub(channel)
        loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(channel)
        registered = customers.RegisterCustomer(
            customer_pb2.RegisterCustomerRequest(
                request_id=str(uuid.uuid4()),
                customer=customer_pb2.Customer(
                    given_name=f"Gdpr{tag.capitalize()}",
                    family_name=f"Forgotten{tag.capitalize()}",
                    email=f"erase.{tag}@example.org",
                    phone=first_phone,
                    home_store_id="berlin-mitte",
                    marketing_email=customer_pb2.Consent(granted=True),
                ),
            ),
            timeout=10,
        ).customer
        customer_id, card = registered.customer_id, registered.loyalty_card_number
        assert card
        wait_until(lambda: _account(loyalty, loyalty_card_number=card) is not None, 30, "loyalty enrolled the card")

        paid = _sale_at_the_till(channel, card)
        _publish_sale(stack.amqp_url, customer_id, card)
        earned = 123 + paid // 100  # Bronze: a point per whole euro of each sale
        wait_until(lambda: _account(loyalty, customer_id=customer_id).balance == earned, 30, "points earned")  # type: ignore[union-attr]
        wait_until(lambda: _stats(customers, customer_id).sale_count == 2, 30, "customer stats updated")
        customers.UpdateCustomer(
            customer_pb2.UpdateCustomerRequest(
                request_id=str(uuid.uuid4()),
                customer=customer_pb2.Customer(customer_id=customer_id, phone=second_phone),
                update_mask={"paths": ["phone"]},
            ),
            timeout=10,
        )
        # The personal data is there before the erasure (the search below can find it).
        assert _found(stack.databases, _needles(registered, [first_phone]))

        erased = customers.EraseCustomer(
            customer_pb2.EraseCustomerRequest(request_id=str(uuid.uuid4()), customer_id=customer_id), timeout=10
        ).customer
        assert erased.erased and erased.customer_id == customer_id and erased.stats.sale_count == 2
        wait_until(lambda: _account(loyalty, customer_id=customer_id).anonymised, 30, "loyalty anonymised")  # type: ignore[union-attr]
        assert _account(loyalty, loyalty_card_number=card) is None
        for lookup in ({"email": registered.email}, {"phone": second_phone}, {"loyalty_card_number": card}):
            with pytest.raises(grpc.RpcError) as caught:
                customers.FindCustomer(customer_pb2.FindCustomerRequest(**lookup), timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    needles = _needles(registered, [first_phone, second_phone])
    left: list[str] = []

    def nothing_left() -> bool:
        left[:] = _found(stack.databases, needles)
        return not left

    # Events sent before the erasure are deleted from the outboxes with it; the erasure's own events once sent.
    wait_until(nothing_left, 30, "no personal data left")
    assert left == []
