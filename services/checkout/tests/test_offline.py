"""UploadOfflineSales through the real gRPC API on SQLite and PostgreSQL: amounts recomputed from the store's rules,
deduplication by client_sale_id (within a stream and across uploads), rejected sales kept in quarantine and submitted
again, the stream's request id, and 10,000 sales in one stream."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import grpc
from checkout_kit import BERLIN, ZURICH, Till, card, cash, error_of, money, rid
from google.protobuf.timestamp_pb2 import Timestamp

from checkout import offline
from checkout.main import rules_of
from checkout.settings import CheckoutSettings
from pos.checkout.v1 import checkout_pb2, events_pb2
from storeplane_runtime.clock import utcnow
from storeplane_runtime.testing import RunningService, published

SOLD_AT = Timestamp(seconds=1_780_000_000)


def offline_sale(
    client_sale_id: str = "",
    *,
    store: str = BERLIN,
    price: int = 1000,
    quantity: int = 1,
    tenders: list[checkout_pb2.Tender] | None = None,
    currency: str = "EUR",
) -> checkout_pb2.OfflineSale:
    return checkout_pb2.OfflineSale(
        client_sale_id=client_sale_id or rid(),
        store_id=store,
        terminal_id="till-off",
        cashier_id="c1",
        lines=[
            checkout_pb2.OfflineSaleLine(sku="SKU-1", name="Item", quantity=quantity, unit_price=money(price, currency))
        ],
        tenders=tenders if tenders is not None else [cash(price * quantity, currency)],
        customer_id="cust-1",
        loyalty_card_number="4006381333931",
        sold_at=SOLD_AT,
        currency_code=currency,
    )


def upload(
    till: Till, sales: list[checkout_pb2.OfflineSale], request_id: str = ""
) -> checkout_pb2.UploadOfflineSalesResponse:
    key = request_id or rid()
    return till.stub.UploadOfflineSales(
        iter([checkout_pb2.UploadOfflineSalesRequest(request_id=key, sale=sale) for sale in sales]), timeout=120
    )


def test_offline_sales_are_recorded_with_recomputed_amounts(till: Till, checkout: RunningService) -> None:
    sale = offline_sale(quantity=2, price=1000, tenders=[card(500), cash(2000)])
    answer = upload(till, [sale])
    assert (answer.accepted, answer.duplicates, answer.rejected) == (1, 0, 0)
    [result] = answer.results
    assert result.outcome == checkout_pb2.OFFLINE_SALE_OUTCOME_ACCEPTED and result.client_sale_id == sale.client_sale_id
    recorded = till.stub.GetSale(checkout_pb2.GetSaleRequest(sale_id=result.sale_id)).sale
    assert recorded.offline and recorded.client_sale_id == sale.client_sale_id and recorded.basket_id == ""
    assert recorded.total.amount_minor == 2000 and recorded.tax_total.amount_minor == 319
    assert recorded.change_due.amount_minor == 500 and recorded.completed_at == SOLD_AT
    [event] = published(checkout.database, events_pb2.SaleCompleted)
    assert event.offline and event.reservation_id == "" and event.client_sale_id == sale.client_sale_id
    assert event.loyalty_card_number == "4006381333931" and event.customer_id == "cust-1"


def test_a_sale_uploaded_twice_or_twice_in_one_stream_is_a_duplicate(till: Till, checkout: RunningService) -> None:
    sale = offline_sale()
    answer = upload(till, [sale, offline_sale(), sale])
    assert [r.outcome for r in answer.results] == [
        checkout_pb2.OFFLINE_SALE_OUTCOME_ACCEPTED,
        checkout_pb2.OFFLINE_SALE_OUTCOME_ACCEPTED,
        checkout_pb2.OFFLINE_SALE_OUTCOME_DUPLICATE,
    ]
    assert answer.results[2].sale_id == answer.results[0].sale_id
    again = upload(till, [sale])
    assert (again.accepted, again.duplicates) == (0, 1) and again.results[0].sale_id == answer.results[0].sale_id
    assert len(published(checkout.database, events_pb2.SaleCompleted)) == 2


def test_the_same_upload_repeated_with_its_request_id_returns_the_first_answer(till: Till) -> None:
    sales = [offline_sale(), offline_sale()]
    key = rid()
    first = upload(till, sales, key)
    assert upload(till, sales, key) == first
    assert error_of(lambda: upload(till, [offline_sale()], key)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "IDEMPOTENCY_KEY_REUSED",
    )


def test_unrecordable_sales_are_rejected_kept_in_quarantine_and_can_be_submitted_again(
    till: Till, checkout: RunningService
) -> None:
    short = offline_sale(tenders=[cash(999)])
    wrong_currency = offline_sale(currency="CHF")
    unknown_store = offline_sale(store="atlantis")
    over_card = offline_sale(tenders=[card(1001)])
    answer = upload(till, [short, offline_sale(), wrong_currency, unknown_store, over_card])
    assert (answer.accepted, answer.rejected) == (1, 4)
    reasons = [r.reason for r in answer.results if r.outcome == checkout_pb2.OFFLINE_SALE_OUTCOME_REJECTED]
    assert reasons[0].startswith("TENDER_INSUFFICIENT") and reasons[1].startswith("CURRENCY_MISMATCH")
    assert reasons[2].startswith("UNKNOWN_STORE") and reasons[3].startswith("TENDER_EXCEEDS_DUE")
    waiting = offline.list_quarantined(checkout.database)
    assert [q.client_sale_id for q in waiting] == [
        short.client_sale_id,
        wrong_currency.client_sale_id,
        unknown_store.client_sale_id,
        over_card.client_sale_id,
    ]
    assert waiting[0].sale == short  # kept exactly as sent
    upload(till, [short])  # sent again unchanged: still one entry waiting
    assert len(offline.list_quarantined(checkout.database)) == 4
    rules = rules_of(CheckoutSettings())
    still = offline.resubmit(checkout.database, rules, waiting[0].quarantine_id, utcnow())
    assert still.outcome == checkout_pb2.OFFLINE_SALE_OUTCOME_REJECTED
    fixed = checkout_pb2.OfflineSale()
    fixed.CopyFrom(short)
    del fixed.tenders[:]
    fixed.tenders.append(cash(1000))
    done = offline.resubmit(checkout.database, rules, waiting[0].quarantine_id, utcnow(), sale=fixed)
    assert done.outcome == checkout_pb2.OFFLINE_SALE_OUTCOME_ACCEPTED
    assert len(offline.list_quarantined(checkout.database)) == 3
    assert (
        till.stub.GetSale(checkout_pb2.GetSaleRequest(sale_id=done.sale_id)).sale.client_sale_id == short.client_sale_id
    )


def test_accepted_sales_take_consecutive_receipt_numbers_per_terminal_in_the_order_sent(till: Till) -> None:
    """A chunk takes its numbers a block per terminal: interleaved terminals each count on without a gap, and a
    rejected sale or a duplicate takes no number."""
    first = offline_sale()
    sales = [first, offline_sale(), offline_sale(tenders=[cash(1)]), offline_sale(), first, offline_sale()]
    sales[1].terminal_id = sales[5].terminal_id = "till-other"
    answer = upload(till, sales)
    outcomes = [r.outcome for r in answer.results]
    assert outcomes.count(checkout_pb2.OFFLINE_SALE_OUTCOME_ACCEPTED) == 4
    assert outcomes[2] == checkout_pb2.OFFLINE_SALE_OUTCOME_REJECTED
    assert outcomes[4] == checkout_pb2.OFFLINE_SALE_OUTCOME_DUPLICATE
    numbers = [
        till.stub.GetSale(checkout_pb2.GetSaleRequest(sale_id=answer.results[i].sale_id)).sale.receipt.receipt_number
        for i in (0, 1, 3, 5)
    ]
    assert numbers == [
        f"{BERLIN}-till-off-1",
        f"{BERLIN}-till-other-1",
        f"{BERLIN}-till-off-2",
        f"{BERLIN}-till-other-2",
    ]
    later = upload(till, [offline_sale()])
    number = till.stub.GetSale(
        checkout_pb2.GetSaleRequest(sale_id=later.results[0].sale_id)
    ).sale.receipt.receipt_number
    assert number == f"{BERLIN}-till-off-3"


def test_ten_thousand_sales_in_one_stream_in_bounded_memory(till: Till, checkout: RunningService) -> None:
    count = 10_000
    key = rid()

    def stream() -> Iterator[checkout_pb2.UploadOfflineSalesRequest]:
        for n in range(count):
            yield checkout_pb2.UploadOfflineSalesRequest(
                request_id=key,
                sale=offline_sale(
                    f"bulk-{n:05d}",
                    store=ZURICH if n % 2 else BERLIN,
                    price=1995 if n % 2 else 1000,
                    currency="CHF" if n % 2 else "EUR",
                ),
            )

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; client and server share this process
    answer = till.stub.UploadOfflineSales(stream(), timeout=600)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert (answer.accepted, answer.rejected, len(answer.results)) == (count, 0, count)
    assert [r.client_sale_id for r in answer.results[:2]] == ["bulk-00000", "bulk-00001"]
    assert grown < 150 * 1024, f"peak memory grew by {grown / 1024:.0f} MiB"
