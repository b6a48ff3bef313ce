"""LoyaltyService over real gRPC, on SQLite and PostgreSQL: every RPC, its answers and its error reasons."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest
from loyalty_kit import (
    BERLIN,
    ZURICH,
    RunningLoyalty,
    adjust,
    enrolled,
    erased,
    hold,
    money,
    registered,
    sale_completed,
    sweep,
)

from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_runtime.status import ErrorDetails, details_of
from storeplane_runtime.testing import test_authority


def _error(call, request) -> ErrorDetails:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return details_of(caught.value)


def _fields(details: ErrorDetails) -> set[str]:
    return {v.field for v in details.violations}


# --- GetAccount -----------------------------------------------------------------------------------------------


def test_an_enrolled_account_starts_at_zero_and_is_found_by_customer_id_or_card(loyalty: RunningLoyalty) -> None:
    loyalty.deliver(registered("cust-1", "card-1"))
    by_id = loyalty.account("cust-1")
    by_card = loyalty.stub.GetAccount(loyalty_pb2.GetAccountRequest(loyalty_card_number="card-1")).account
    assert by_id == by_card
    assert (by_id.balance, by_id.held_points, by_id.available_points) == (0, 0, 0)
    assert by_id.tier == loyalty_pb2.TIER_BRONZE and by_id.loyalty_card_number == "card-1"
    assert by_id.created_at.ToDatetime().year == 2026 and not by_id.anonymised


def test_get_account_of_nobody_is_not_found_and_a_request_without_key_is_invalid(loyalty: RunningLoyalty) -> None:
    for request in (
        loyalty_pb2.GetAccountRequest(customer_id="nobody"),
        loyalty_pb2.GetAccountRequest(loyalty_card_number="no-card"),
    ):
        missing = _error(loyalty.stub.GetAccount, request)
        assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    bad = _error(loyalty.stub.GetAccount, loyalty_pb2.GetAccountRequest())
    assert (bad.code, _fields(bad)) == (grpc.StatusCode.INVALID_ARGUMENT, {"key"})
    bad = _error(loyalty.stub.GetAccount, loyalty_pb2.GetAccountRequest(customer_id="x" * 129))
    assert _fields(bad) == {"customer_id"}


def test_the_account_shows_points_expiring_within_90_days(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 100)
    loyalty.clock.advance(timedelta(days=365))
    adjust(loyalty.stub, "cust-1", 40)
    loyalty.clock.advance(timedelta(days=300))  # the first lot now expires in about 65 days, the second in 430
    account = loyalty.account("cust-1")
    assert [p.points for p in account.expiring_soon] == [100]
    assert account.points_expiring_soon == 100


# --- QuoteRedemption ------------------------------------------------------------------------------------------


def test_quote_prices_points_and_caps_the_maximum_by_available_points_and_basket(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 1_000)
    hold(loyalty.stub, "basket-1", "cust-1", 300)
    reply = loyalty.stub.QuoteRedemption(
        loyalty_pb2.QuoteRedemptionRequest(
            customer_id="cust-1", currency_code="EUR", points=250, basket_amount=money(500)
        )
    )
    assert (reply.points, reply.discount.amount_minor, reply.discount.currency_code) == (250, 250, "EUR")
    assert (reply.max_redeemable_points, reply.max_discount.amount_minor, reply.available_points) == (500, 500, 700)
    yen = loyalty.stub.QuoteRedemption(loyalty_pb2.QuoteRedemptionRequest(customer_id="cust-1", currency_code="JPY"))
    assert (yen.points, yen.max_redeemable_points, yen.max_discount.amount_minor) == (0, 700, 700)


def test_quote_refuses_bad_input_and_unknown_accounts(loyalty: RunningLoyalty) -> None:
    bad = _error(
        loyalty.stub.QuoteRedemption,
        loyalty_pb2.QuoteRedemptionRequest(
            customer_id="", currency_code="XXX", points=-1, basket_amount=money(-5, "CHF")
        ),
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert _fields(bad) == {
        "customer_id",
        "currency_code",
        "points",
        "basket_amount.currency_code",
        "basket_amount.amount_minor",
    }
    missing = _error(
        loyalty.stub.QuoteRedemption, loyalty_pb2.QuoteRedemptionRequest(customer_id="nobody", currency_code="EUR")
    )
    assert missing.reason == "ACCOUNT_NOT_FOUND"


# --- HoldPoints and ReleaseHold -------------------------------------------------------------------------------


def test_hold_is_declarative_and_a_retry_with_its_request_id_is_harmless(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 1_000)
    first = hold(loyalty.stub, "basket-1", "cust-1", 300, request_id="r-1", ttl_seconds=600)
    assert (first.hold.state, first.hold.points, first.hold.store_id) == (loyalty_pb2.HOLD_STATE_ACTIVE, 300, BERLIN)
    assert (first.account.held_points, first.account.available_points) == (300, 700)
    assert first.hold.expires_at.ToDatetime(tzinfo=loyalty.clock().tzinfo) == loyalty.clock() + timedelta(minutes=10)
    assert hold(loyalty.stub, "basket-1", "cust-1", 300, request_id="r-1", ttl_seconds=600) == first
    hold(loyalty.stub, "basket-1", "cust-1", 300)  # the same hold again, new request id: still 300 held
    assert loyalty.account("cust-1").held_points == 300
    resized = hold(loyalty.stub, "basket-1", "cust-1", 1_000)
    assert (resized.account.held_points, resized.account.available_points) == (1_000, 0)
    released = hold(loyalty.stub, "basket-1", "cust-1", 0)
    assert (released.hold.state, released.account.held_points) == (loyalty_pb2.HOLD_STATE_RELEASED, 0)
    reused = _error(
        loyalty.stub.HoldPoints,
        loyalty_pb2.HoldPointsRequest(
            hold_id="basket-9", customer_id="cust-1", points=1, store_id=BERLIN, request_id="r-1"
        ),
    )
    assert (reused.code, reused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")
    loyalty.assert_ledger_sound()


def test_holds_never_exceed_the_available_points(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 500)
    hold(loyalty.stub, "basket-1", "cust-1", 400)
    short = _error(
        loyalty.stub.HoldPoints,
        loyalty_pb2.HoldPointsRequest(
            hold_id="basket-2", customer_id="cust-1", points=101, store_id=BERLIN, request_id="r-2"
        ),
    )
    assert (short.code, short.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS")
    assert short.metadata == {"requested": "101", "available": "100"}
    assert [(p.type, p.subject, p.description) for p in short.preconditions] == [
        ("POINTS", "cust-1", "requested 101, available 100")
    ]
    hold(loyalty.stub, "basket-2", "cust-1", 100)
    assert loyalty.account("cust-1").available_points == 0


def test_a_hold_for_a_customer_not_enrolled_yet_opens_the_account(loyalty: RunningLoyalty) -> None:
    reply = hold(loyalty.stub, "basket-1", "early-bird", 0)
    assert reply.account.customer_id == "early-bird" and reply.hold.state == loyalty_pb2.HOLD_STATE_RELEASED
    short = _error(
        loyalty.stub.HoldPoints,
        loyalty_pb2.HoldPointsRequest(
            hold_id="basket-2", customer_id="early-bird", points=1, store_id=BERLIN, request_id="r-1"
        ),
    )
    assert short.reason == "INSUFFICIENT_POINTS"
    loyalty.deliver(registered("early-bird", "card-early"))
    assert loyalty.account("early-bird").loyalty_card_number == "card-early"


def test_hold_refuses_bad_input(loyalty: RunningLoyalty) -> None:
    request = loyalty_pb2.HoldPointsRequest(hold_id="", customer_id="", points=-1, store_id="mars", request_id="r")
    request.ttl.FromSeconds(25 * 3600)
    bad = _error(loyalty.stub.HoldPoints, request)
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert _fields(bad) >= {"hold_id", "customer_id", "points", "ttl"}
    no_key = _error(
        loyalty.stub.HoldPoints,
        loyalty_pb2.HoldPointsRequest(hold_id="b", customer_id="c", points=1, store_id=BERLIN),
    )
    assert no_key.code == grpc.StatusCode.INVALID_ARGUMENT


def test_captured_and_foreign_holds_cannot_be_changed(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 1_000)
    enrolled(loyalty, "cust-2", 1_000)
    hold(loyalty.stub, "basket-1", "cust-1", 200)
    foreign = _error(
        loyalty.stub.HoldPoints,
        loyalty_pb2.HoldPointsRequest(
            hold_id="basket-1", customer_id="cust-2", points=1, store_id=BERLIN, request_id="r-f"
        ),
    )
    assert (foreign.code, foreign.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_CUSTOMER_MISMATCH")
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", points_redeemed=200, hold_id="basket-1"))
    captured = _error(
        loyalty.stub.HoldPoints,
        loyalty_pb2.HoldPointsRequest(
            hold_id="basket-1", customer_id="cust-1", points=1, store_id=BERLIN, request_id="r-c"
        ),
    )
    assert (captured.code, captured.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_CAPTURED")
    released = loyalty.stub.ReleaseHold(loyalty_pb2.ReleaseHoldRequest(hold_id="basket-1", request_id="r-r"))
    assert (released.hold.state, released.hold.points) == (loyalty_pb2.HOLD_STATE_CAPTURED, 200)


def test_release_gives_the_points_back_once_and_an_unknown_hold_reads_released(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 1_000)
    hold(loyalty.stub, "basket-1", "cust-1", 600)
    reply = loyalty.stub.ReleaseHold(loyalty_pb2.ReleaseHoldRequest(hold_id="basket-1", request_id="r-1"))
    assert (reply.hold.state, reply.hold.customer_id) == (loyalty_pb2.HOLD_STATE_RELEASED, "cust-1")
    again = loyalty.stub.ReleaseHold(loyalty_pb2.ReleaseHoldRequest(hold_id="basket-1", request_id="r-2"))
    assert again.hold.state == loyalty_pb2.HOLD_STATE_RELEASED
    assert loyalty.account("cust-1").held_points == 0
    unknown = loyalty.stub.ReleaseHold(loyalty_pb2.ReleaseHoldRequest(hold_id="never", request_id="r-3"))
    assert (unknown.hold.hold_id, unknown.hold.state, unknown.hold.points) == (
        "never",
        loyalty_pb2.HOLD_STATE_RELEASED,
        0,
    )
    bad = _error(loyalty.stub.ReleaseHold, loyalty_pb2.ReleaseHoldRequest(hold_id="", request_id="r-4"))
    assert _fields(bad) == {"hold_id"}


def test_a_store_restricted_caller_cannot_touch_another_stores_hold_nor_probe_ids(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 1_000)
    hold(loyalty.stub, "basket-z", "cust-1", 100, store=ZURICH)
    token = test_authority().token(stores=[BERLIN])
    with loyalty.channel_as(token) as channel:
        berlin = loyalty_pb2_grpc.LoyaltyServiceStub(channel)
        for hold_id in ("basket-z", "no-such-basket"):
            denied = _error(berlin.ReleaseHold, loyalty_pb2.ReleaseHoldRequest(hold_id=hold_id, request_id="r-1"))
            assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "STORE_NOT_ALLOWED")
        again = _error(
            berlin.HoldPoints,
            loyalty_pb2.HoldPointsRequest(
                hold_id="basket-z", customer_id="cust-1", points=5, store_id=BERLIN, request_id="r-2"
            ),
        )
        assert (again.code, again.reason) == (grpc.StatusCode.PERMISSION_DENIED, "STORE_NOT_ALLOWED")
        other_store = _error(
            berlin.HoldPoints,
            loyalty_pb2.HoldPointsRequest(
                hold_id="basket-n", customer_id="cust-1", points=5, store_id=ZURICH, request_id="r-3"
            ),
        )
        assert other_store.code == grpc.StatusCode.PERMISSION_DENIED
    assert loyalty.account("cust-1").held_points == 100


def test_holds_past_their_ttl_give_their_points_back(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 1_000)
    hold(loyalty.stub, "basket-1", "cust-1", 300)  # default TTL: 30 minutes
    hold(loyalty.stub, "basket-2", "cust-1", 200, ttl_seconds=3600)
    loyalty.clock.advance(timedelta(minutes=31))
    assert sweep(loyalty, "hold-expiry") == 1
    assert loyalty.account("cust-1").held_points == 200
    reply = loyalty.stub.ReleaseHold(loyalty_pb2.ReleaseHoldRequest(hold_id="basket-1", request_id="r"))
    assert reply.hold.state == loyalty_pb2.HOLD_STATE_EXPIRED
    assert sweep(loyalty, "hold-expiry") == 0
    loyalty.assert_ledger_sound()


# --- AdjustPoints ---------------------------------------------------------------------------------------------


def test_adjustments_credit_and_debit_but_never_below_the_available_points(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1")
    credit = adjust(loyalty.stub, "cust-1", 500, note="sorry about the wait")
    assert (credit.entry.kind, credit.entry.points, credit.entry.balance_after) == (
        loyalty_pb2.ENTRY_KIND_ADJUST,
        500,
        500,
    )
    assert credit.entry.adjustment_reason == loyalty_pb2.ADJUSTMENT_REASON_GOODWILL
    assert credit.entry.note == "sorry about the wait" and credit.entry.HasField("expires_at")
    hold(loyalty.stub, "basket-1", "cust-1", 300)
    short = _error(
        loyalty.stub.AdjustPoints,
        loyalty_pb2.AdjustPointsRequest(
            customer_id="cust-1", points=-201, reason=loyalty_pb2.ADJUSTMENT_REASON_FRAUD, request_id="r-1"
        ),
    )
    assert (short.code, short.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS")
    debit = adjust(loyalty.stub, "cust-1", -200)
    assert (debit.entry.points, debit.account.balance, debit.account.available_points) == (-200, 300, 0)
    loyalty.assert_ledger_sound()


def test_adjust_refuses_bad_input_and_unknown_accounts(loyalty: RunningLoyalty) -> None:
    bad = _error(
        loyalty.stub.AdjustPoints,
        loyalty_pb2.AdjustPointsRequest(customer_id="", points=0, note="n" * 501, request_id="r-1"),
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert _fields(bad) == {"customer_id", "points", "reason", "note"}
    missing = _error(
        loyalty.stub.AdjustPoints,
        loyalty_pb2.AdjustPointsRequest(
            customer_id="nobody", points=5, reason=loyalty_pb2.ADJUSTMENT_REASON_OTHER, request_id="r-2"
        ),
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


def test_an_anonymised_account_takes_no_holds_or_adjustments(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 100, card="card-1")
    loyalty.deliver(erased("cust-1", "card-1"))
    for call, request in (
        (
            loyalty.stub.AdjustPoints,
            loyalty_pb2.AdjustPointsRequest(
                customer_id="cust-1", points=5, reason=loyalty_pb2.ADJUSTMENT_REASON_OTHER, request_id="r-1"
            ),
        ),
        (
            loyalty.stub.HoldPoints,
            loyalty_pb2.HoldPointsRequest(
                hold_id="b", customer_id="cust-1", points=5, store_id=BERLIN, request_id="r-2"
            ),
        ),
    ):
        closed = _error(call, request)
        assert (closed.code, closed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_ANONYMISED")


# --- ListTransactions -----------------------------------------------------------------------------------------


def test_transactions_list_newest_first_filter_by_kind_and_page(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1")
    for i in range(5):
        adjust(loyalty.stub, "cust-1", 100 + i)
        loyalty.clock.advance(timedelta(minutes=1))
    hold(loyalty.stub, "basket-1", "cust-1", 50)
    loyalty.deliver(sale_completed("sale-1", customer_id="cust-1", points_redeemed=50, hold_id="basket-1"))
    everything = loyalty.stub.ListTransactions(loyalty_pb2.ListTransactionsRequest(customer_id="cust-1"))
    kinds = [e.kind for e in everything.entries]
    assert kinds[:2] == [loyalty_pb2.ENTRY_KIND_EARN, loyalty_pb2.ENTRY_KIND_REDEEM]  # same moment: entry id order
    assert [e.points for e in everything.entries[2:]] == [104, 103, 102, 101, 100]
    assert everything.next_page_token == ""
    assert everything.entries[0].balance_after == 510 - 50 + 100

    pages, token = [], ""
    while True:
        page = loyalty.stub.ListTransactions(
            loyalty_pb2.ListTransactionsRequest(
                customer_id="cust-1", kinds=[loyalty_pb2.ENTRY_KIND_ADJUST], page_size=2, page_token=token
            )
        )
        pages.append([e.points for e in page.entries])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[104, 103], [102, 101], [100]]


def test_a_page_token_cannot_be_used_for_another_customers_ledger(loyalty: RunningLoyalty) -> None:
    for customer in ("cust-1", "cust-2"):
        enrolled(loyalty, customer)
        adjust(loyalty.stub, customer, 1)
        adjust(loyalty.stub, customer, 2)
    first = loyalty.stub.ListTransactions(loyalty_pb2.ListTransactionsRequest(customer_id="cust-1", page_size=1))
    assert first.next_page_token
    forged = _error(
        loyalty.stub.ListTransactions,
        loyalty_pb2.ListTransactionsRequest(customer_id="cust-2", page_size=1, page_token=first.next_page_token),
    )
    assert (forged.code, _fields(forged)) == (grpc.StatusCode.INVALID_ARGUMENT, {"page_token"})
    tampered = _error(
        loyalty.stub.ListTransactions,
        loyalty_pb2.ListTransactionsRequest(customer_id="cust-1", page_token=first.next_page_token[:-2] + "xx"),
    )
    assert _fields(tampered) == {"page_token"}


def test_list_transactions_refuses_bad_input_and_unknown_accounts(loyalty: RunningLoyalty) -> None:
    bad = _error(
        loyalty.stub.ListTransactions,
        loyalty_pb2.ListTransactionsRequest(customer_id="", kinds=[0, 99], page_size=-1),
    )
    assert _fields(bad) == {"customer_id", "kinds[0]", "kinds[1]"}
    negative = _error(loyalty.stub.ListTransactions, loyalty_pb2.ListTransactionsRequest(customer_id="c", page_size=-1))
    assert _fields(negative) == {"page_size"}
    missing = _error(loyalty.stub.ListTransactions, loyalty_pb2.ListTransactionsRequest(customer_id="nobody"))
    assert missing.reason == "ACCOUNT_NOT_FOUND"


def test_request_ids_are_required_on_every_write(loyalty: RunningLoyalty) -> None:
    enrolled(loyalty, "cust-1", 10)
    for call, request in (
        (loyalty.stub.ReleaseHold, loyalty_pb2.ReleaseHoldRequest(hold_id=str(uuid.uuid4()))),
        (
            loyalty.stub.AdjustPoints,
            loyalty_pb2.AdjustPointsRequest(customer_id="cust-1", points=1, reason=loyalty_pb2.ADJUSTMENT_REASON_OTHER),
        ),
    ):
        assert _error(call, request).code == grpc.StatusCode.INVALID_ARGUMENT
