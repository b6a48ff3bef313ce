"""The LoyaltyService servicer: checks requests, calls the use cases and queries, answers with the messages of
messages.py. Domain errors become statuses through ERROR_TABLE (in the server's interceptor)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from loyalty import messages, use_cases
from loyalty.domain import (
    MAX_CARD_LENGTH,
    MAX_ID_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_POINTS,
    AccountAnonymised,
    AccountNotFound,
    HoldCaptured,
    HoldOfAnotherCustomer,
    InsufficientPoints,
    LoyaltyPolicy,
    quote,
)
from loyalty.queries import AccountView, LoyaltyQueries, account_view
from pos.common.v1 import common_pb2
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_runtime.batching import Batcher
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import DomainError, Violations
from storeplane_runtime.idempotency import Call, IdempotentCalls
from storeplane_runtime.identity import allowed_stores, caller_of, check_owner
from storeplane_runtime.paging import PageTokens
from storeplane_runtime.status import BASE_ERROR_TABLE
from storeplane_runtime.stores import MINOR_UNITS, Store

NAME = "loyalty"
SERVICE_DESCRIPTOR = loyalty_pb2.DESCRIPTOR.services_by_name["LoyaltyService"]

# Most specific class wins; every loyalty error is listed so the mapping can be read in one place.
ERROR_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    **BASE_ERROR_TABLE,
    AccountNotFound: grpc.StatusCode.NOT_FOUND,
    InsufficientPoints: grpc.StatusCode.FAILED_PRECONDITION,
    AccountAnonymised: grpc.StatusCode.FAILED_PRECONDITION,
    HoldCaptured: grpc.StatusCode.FAILED_PRECONDITION,
    HoldOfAnotherCustomer: grpc.StatusCode.FAILED_PRECONDITION,
}

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class HoldBatching:
    """How HoldPoints calls arriving together share transactions (see storeplane_runtime.batching)."""

    size: int = 32
    lanes: int = 1
    linger_seconds: float = 0.004


def _check_currency(v: Violations, field_path: str, code: str) -> None:
    if code not in MINOR_UNITS:
        v.add(field_path, "a supported ISO-4217 code (EUR, CHF, USD, JPY...)")


class LoyaltyServicer(loyalty_pb2_grpc.LoyaltyServiceServicer):
    """pos.loyalty.v1.LoyaltyService."""

    def __init__(
        self,
        database: Database,
        policy: LoyaltyPolicy,
        queries: LoyaltyQueries,
        stores: Mapping[str, Store],
        *,
        page_token_key: str,
        clock: Clock,
        batching: HoldBatching,
    ) -> None:
        self.database = database
        self.policy = policy
        self.queries = queries
        self.stores = stores
        self.clock = clock
        self.calls = IdempotentCalls(database, SERVICE_DESCRIPTOR, source=NAME)
        self.pages = PageTokens(page_token_key, NAME)
        # Concurrent HoldPoints share transactions (group commit): the hot write of every basket paying with points.
        self._holds = Batcher(
            database,
            source=NAME,
            method=self.calls.method_of(loyalty_pb2.HoldPointsResponse),
            response_type=loyalty_pb2.HoldPointsResponse,
            work=self._hold_batch,
            max_batch=batching.size,
            lanes=batching.lanes,
            linger=batching.linger_seconds,
        )

    # --- reads ------------------------------------------------------------------------------------------------

    def GetAccount(
        self, request: loyalty_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> loyalty_pb2.GetAccountResponse:
        key = request.WhichOneof("key")
        v = Violations()
        if key is None:
            v.add("key", "give customer_id or loyalty_card_number")
        elif key == "customer_id":
            v.text("customer_id", request.customer_id, MAX_ID_LENGTH)
        else:
            v.text("loyalty_card_number", request.loyalty_card_number, MAX_CARD_LENGTH)
        v.raise_if_any()
        view = self.queries.account(
            customer_id=request.customer_id if key == "customer_id" else "",
            card_number=request.loyalty_card_number if key == "loyalty_card_number" else "",
            now=self.clock(),
        )
        return loyalty_pb2.GetAccountResponse(account=messages.account_message(view))

    def QuoteRedemption(
        self, request: loyalty_pb2.QuoteRedemptionRequest, context: grpc.ServicerContext
    ) -> loyalty_pb2.QuoteRedemptionResponse:
        v = Violations()
        v.text("customer_id", request.customer_id, MAX_ID_LENGTH)
        _check_currency(v, "currency_code", request.currency_code)
        v.within("points", request.points, 0, MAX_POINTS)
        basket: int | None = None
        if request.HasField("basket_amount"):
            basket = request.basket_amount.amount_minor
            if request.basket_amount.currency_code != request.currency_code:
                v.add("basket_amount.currency_code", "must be currency_code")
            if basket < 0:
                v.add("basket_amount.amount_minor", "must not be negative")
        v.raise_if_any()
        view = self.queries.account(customer_id=request.customer_id, now=self.clock())
        priced = quote(
            self.policy,
            currency=request.currency_code,
            points=request.points,
            available=view.account.available,
            basket_minor=basket,
        )
        code = request.currency_code
        return loyalty_pb2.QuoteRedemptionResponse(
            points=priced.points,
            discount=common_pb2.Money(amount_minor=priced.discount_minor, currency_code=code),
            max_redeemable_points=priced.max_points,
            max_discount=common_pb2.Money(amount_minor=priced.max_discount_minor, currency_code=code),
            available_points=priced.available,
        )

    def ListTransactions(
        self, request: loyalty_pb2.ListTransactionsRequest, context: grpc.ServicerContext
    ) -> loyalty_pb2.ListTransactionsResponse:
        v = Violations()
        v.text("customer_id", request.customer_id, MAX_ID_LENGTH)
        for i, kind in enumerate(request.kinds):
            if kind == loyalty_pb2.ENTRY_KIND_UNSPECIFIED or kind not in loyalty_pb2.EntryKind.values():
                v.add(f"kinds[{i}]", "a known entry kind")
        v.raise_if_any()
        page = self.pages.read(request)  # the token is bound to customer_id and kinds: no other ledger's cursor
        after: tuple[datetime, str] | None = None
        if page.cursor is not None:
            micros, entry_id = page.cursor
            after = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros)), str(entry_id))
        kinds = sorted({messages.entry_kind_of(k) for k in request.kinds}, key=lambda k: k.value)
        found = self.queries.entries(request.customer_id, kinds, after, page.size + 1)
        token = ""
        if len(found) > page.size:
            last = found[page.size - 1]
            micros = (last.occurred_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
            token = self.pages.next_token(request, (micros, last.entry_id))
        return loyalty_pb2.ListTransactionsResponse(
            entries=[messages.entry_message(e) for e in found[: page.size]], next_page_token=token
        )

    # --- writes -----------------------------------------------------------------------------------------------

    def HoldPoints(
        self, request: loyalty_pb2.HoldPointsRequest, context: grpc.ServicerContext
    ) -> loyalty_pb2.HoldPointsResponse:
        v = Violations()
        v.text("hold_id", request.hold_id, MAX_ID_LENGTH)
        v.text("customer_id", request.customer_id, MAX_ID_LENGTH)
        v.store("store_id", request.store_id, self.stores)
        v.within("points", request.points, 0, MAX_POINTS)
        ttl: timedelta | None = None
        if request.HasField("ttl"):
            ttl = request.ttl.ToTimedelta()
            if ttl < timedelta(0) or ttl > self.policy.max_hold_ttl:
                v.add("ttl", f"must be between 0 and {int(self.policy.max_hold_ttl.total_seconds())} seconds")
            ttl = ttl or None
        v.raise_if_any()
        # Batched calls run on another caller's thread: the caller's stores travel with the command.
        command = use_cases.HoldCommand(
            request.hold_id, request.customer_id, request.store_id, request.points, ttl, allowed_stores()
        )
        return self._holds.call(
            caller=caller_of(context),
            request=request,
            request_id=request.request_id,
            payload=command,
            conflict=request.customer_id,  # one account's holds never share a batch
        )

    def _hold_batch(
        self, uow: UnitOfWork, calls: Sequence[Call[use_cases.HoldCommand]]
    ) -> list[loyalty_pb2.HoldPointsResponse | DomainError]:
        """HoldPoints of distinct accounts in one transaction, each as if alone; a call's domain error is raised
        before it writes its hold, so it leaves the others' work standing."""
        now = self.clock()
        outcomes: list[loyalty_pb2.HoldPointsResponse | DomainError] = []
        for call in calls:
            command = call.payload
            if call.trace_headers is not None:
                uow.trace_headers = call.trace_headers
            try:
                done = use_cases.hold_points(uow, self.policy, command, now=now)
            except DomainError as error:
                outcomes.append(error)
                continue
            if done.shown is not None:
                view = AccountView(done.account, done.shown.spend, done.shown.expiring)
            else:
                view = account_view(uow.connection, self.policy, done.account, now)
            outcomes.append(
                loyalty_pb2.HoldPointsResponse(
                    hold=messages.hold_message(done.hold, command.customer_id),
                    account=messages.account_message(view),
                )
            )
        return outcomes

    def ReleaseHold(
        self, request: loyalty_pb2.ReleaseHoldRequest, context: grpc.ServicerContext
    ) -> loyalty_pb2.ReleaseHoldResponse:
        v = Violations()
        v.text("hold_id", request.hold_id, MAX_ID_LENGTH)
        v.raise_if_any()
        owner = self.queries.hold_store(request.hold_id)
        # An unknown hold is not an error (the contract: RELEASED, 0 points) for a caller of every store; a caller
        # restricted to some stores gets the same refusal for it as for another store's hold, so ids cannot be probed.
        if owner is not None or allowed_stores() is not None:
            check_owner(owner, kind="hold", resource_id=request.hold_id)

        def work(uow: UnitOfWork) -> loyalty_pb2.ReleaseHoldResponse:
            hold = use_cases.release_hold(uow, request.hold_id, now=self.clock())
            customer_id = use_cases.customer_of_hold(uow.connection, hold)
            return loyalty_pb2.ReleaseHoldResponse(hold=messages.hold_message(hold, customer_id, request.hold_id))

        return self.calls.once(context, request, loyalty_pb2.ReleaseHoldResponse, work)

    def AdjustPoints(
        self, request: loyalty_pb2.AdjustPointsRequest, context: grpc.ServicerContext
    ) -> loyalty_pb2.AdjustPointsResponse:
        v = Violations()
        v.text("customer_id", request.customer_id, MAX_ID_LENGTH)
        if request.points == 0:
            v.add("points", "must not be 0")
        v.within("points", request.points, -MAX_POINTS, MAX_POINTS)
        if request.reason == loyalty_pb2.ADJUSTMENT_REASON_UNSPECIFIED:
            v.add("reason", "must be set")
        elif request.reason not in loyalty_pb2.AdjustmentReason.values():
            v.add("reason", "unknown reason")
        if len(request.note) > MAX_NOTE_LENGTH:
            v.add("note", f"at most {MAX_NOTE_LENGTH} characters")
        v.raise_if_any()
        reason = loyalty_pb2.AdjustmentReason.Name(request.reason).removeprefix("ADJUSTMENT_REASON_")

        def work(uow: UnitOfWork) -> loyalty_pb2.AdjustPointsResponse:
            now = self.clock()
            entry, account = use_cases.adjust(
                uow,
                self.policy,
                customer_id=request.customer_id,
                points=request.points,
                reason=reason,
                note=request.note,
                now=now,
            )
            view = account_view(uow.connection, self.policy, account, now)
            return loyalty_pb2.AdjustPointsResponse(
                entry=messages.entry_message(entry), account=messages.account_message(view)
            )

        return self.calls.once(context, request, loyalty_pb2.AdjustPointsResponse, work)
