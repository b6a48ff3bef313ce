"""The CheckoutService servicer: checks requests, checks who owns a basket or sale named by id, calls the use cases
and queries, answers with the messages of messages.py. Domain errors become statuses through ERROR_TABLE."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta

import grpc

from checkout import messages, offline, use_cases
from checkout.domain.baskets import (
    MAX_BARCODE_LENGTH,
    MAX_ID_LENGTH,
    MAX_QUANTITY,
    MAX_SKU_LENGTH,
    Basket,
    BasketEmpty,
    BasketFull,
    BasketNotFound,
    BasketNotOpen,
    Customer,
    Item,
    LineNotFound,
    NoCustomer,
    VoidReason,
    display_name,
)
from checkout.domain.pricing import PointsNotRedeemable, UnknownTaxClass
from checkout.domain.refunds import ReturnExceedsSold
from checkout.domain.sales import MAX_NOTE_LENGTH, CurrencyMismatch, ReturnReason, SaleNotFound
from checkout.domain.tenders import Tender, TenderExceedsDue, TenderInsufficient, TenderKind
from checkout.peers import CustomerNotFound, InsufficientPoints, ItemNotFound, Peers, PeerUnavailable
from checkout.queries import CheckoutQueries
from checkout.settings import CheckoutSettings
from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from storeplane_runtime.clock import EPOCH, as_utc, utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import PreconditionFailed, Violations
from storeplane_runtime.idempotency import IdempotentCalls
from storeplane_runtime.identity import caller_of, check_owner
from storeplane_runtime.imports import run_import
from storeplane_runtime.paging import PageTokens
from storeplane_runtime.status import BASE_ERROR_TABLE
from storeplane_runtime.stores import Store
from storeplane_runtime.timestamps import from_timestamp

NAME = "checkout"
SERVICE_DESCRIPTOR = checkout_pb2.DESCRIPTOR.services_by_name["CheckoutService"]

MAX_TENDERS = 20
MAX_REFERENCE_LENGTH = 64
MAX_LOOKUP_LENGTH = 254  # the longest email address
MAX_POINTS = 10**12
MAX_RETURN_LINES = 1000
# 13 to 19 digits in a row, spaces or dashes between them allowed: a payment card number, which a receipt never shows.
FULL_CARD_NUMBER = re.compile(r"(?:\d[ -]?){12,18}\d")


class NoPriceForCurrency(PreconditionFailed):
    """The item has no price in the store's currency."""

    reason = "NO_PRICE_FOR_CURRENCY"


# Most specific class wins; every checkout error is listed so the mapping can be read in one place.
ERROR_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    **BASE_ERROR_TABLE,
    BasketNotFound: grpc.StatusCode.NOT_FOUND,
    LineNotFound: grpc.StatusCode.NOT_FOUND,
    SaleNotFound: grpc.StatusCode.NOT_FOUND,
    ItemNotFound: grpc.StatusCode.NOT_FOUND,
    CustomerNotFound: grpc.StatusCode.NOT_FOUND,
    BasketNotOpen: grpc.StatusCode.FAILED_PRECONDITION,
    BasketEmpty: grpc.StatusCode.FAILED_PRECONDITION,
    BasketFull: grpc.StatusCode.FAILED_PRECONDITION,
    NoCustomer: grpc.StatusCode.FAILED_PRECONDITION,
    InsufficientPoints: grpc.StatusCode.FAILED_PRECONDITION,
    PointsNotRedeemable: grpc.StatusCode.FAILED_PRECONDITION,
    UnknownTaxClass: grpc.StatusCode.FAILED_PRECONDITION,
    NoPriceForCurrency: grpc.StatusCode.FAILED_PRECONDITION,
    TenderExceedsDue: grpc.StatusCode.FAILED_PRECONDITION,
    TenderInsufficient: grpc.StatusCode.FAILED_PRECONDITION,
    ReturnExceedsSold: grpc.StatusCode.FAILED_PRECONDITION,
    CurrencyMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    PeerUnavailable: grpc.StatusCode.UNAVAILABLE,
}

TENDER_KINDS = {checkout_pb2.TenderType.Value(f"TENDER_TYPE_{kind.value}"): kind for kind in TenderKind}
VOID_REASONS = {
    checkout_pb2.VoidReason.Value(f"VOID_REASON_{reason.value}"): reason
    for reason in VoidReason
    if reason is not VoidReason.EXPIRED
}
RETURN_REASONS = {checkout_pb2.ReturnReason.Value(f"RETURN_REASON_{r.value}"): r for r in ReturnReason}
TIERS = {1: "BRONZE", 2: "SILVER", 3: "GOLD"}  # pos.loyalty.v1.Tier


class _NotCached(Exception):
    """A scanned item checkout's cache does not have (its transaction rolls back; stock is asked, then it reruns)."""


class CheckoutServicer(checkout_pb2_grpc.CheckoutServiceServicer):
    """pos.checkout.v1.CheckoutService."""

    def __init__(
        self,
        database: Database,
        settings: CheckoutSettings,
        rules: use_cases.Rules,
        peers: Peers,
        queries: CheckoutQueries,
    ) -> None:
        self.database = database
        self.settings = settings
        self.rules = rules
        self.stores: Mapping[str, Store] = rules.stores
        self.peers = peers
        self.queries = queries
        self.calls = IdempotentCalls(database, SERVICE_DESCRIPTOR, source=NAME)
        self.pages = PageTokens(settings.page_token_key, NAME)

    # --- helpers --------------------------------------------------------------------------------------------

    def _own_basket(self, v: Violations, basket_id: str) -> str:
        """Check the request (raising every violation), then that the caller may act for the basket's store; returns
        that store."""
        v.text("basket_id", basket_id, MAX_ID_LENGTH)
        v.raise_if_any()
        store_id = self.queries.basket_store(basket_id)
        check_owner(store_id, kind="basket", resource_id=basket_id)
        assert store_id is not None  # check_owner refuses an unknown basket
        return store_id

    def _basket_answer(self, basket: Basket) -> checkout_pb2.Basket:
        return messages.basket_message(basket, self.rules.price(basket))

    # --- baskets --------------------------------------------------------------------------------------------

    def OpenBasket(
        self, request: checkout_pb2.OpenBasketRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.OpenBasketResponse:
        v = Violations()
        v.store("store_id", request.store_id, self.stores)
        v.text("terminal_id", request.terminal_id, MAX_ID_LENGTH)
        v.text("cashier_id", request.cashier_id, MAX_ID_LENGTH)
        v.raise_if_any()
        store = self.stores[request.store_id]

        def work(uow: UnitOfWork) -> checkout_pb2.OpenBasketResponse:
            basket = use_cases.open_basket(uow, self.rules, store, request.terminal_id, request.cashier_id, utcnow())
            return checkout_pb2.OpenBasketResponse(basket=self._basket_answer(basket))

        answer = self.calls.once(context, request, checkout_pb2.OpenBasketResponse, work)
        self.queries.opened(answer.basket.basket_id, answer.basket.store_id)
        return answer

    def GetBasket(
        self, request: checkout_pb2.GetBasketRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.GetBasketResponse:
        self._own_basket(Violations(), request.basket_id)
        return checkout_pb2.GetBasketResponse(basket=self._basket_answer(self.queries.basket(request.basket_id)))

    def ScanItem(
        self, request: checkout_pb2.ScanItemRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.ScanItemResponse:
        v = Violations()
        key = request.WhichOneof("item")
        if key is None:
            v.add("item", "give sku or barcode")
        elif key == "sku":
            v.text("sku", request.sku, MAX_SKU_LENGTH)
        else:
            v.text("barcode", request.barcode, MAX_BARCODE_LENGTH)
        v.within("quantity", request.quantity, 0, MAX_QUANTITY)
        # The basket's open state is checked in the unit of work (a repeated request gets its first answer).
        store = self.stores[self._own_basket(v, request.basket_id)]
        barcode = request.barcode if key == "barcode" else ""
        sku = request.sku if key == "sku" else ""

        fetched: list[Item] = []  # from stock, when checkout's cache did not have it

        def work(uow: UnitOfWork) -> checkout_pb2.ScanItemResponse:
            # The cache is read in the scan's own transaction: one round trip, no connection of its own.
            item = fetched[0] if fetched else self.queries.cached_item(uow.connection, sku=sku, barcode=barcode)
            if item is None:
                raise _NotCached
            price = item.prices.get(store.currency)
            if price is None:
                raise NoPriceForCurrency(
                    f"item {item.sku} has no price in {store.currency}",
                    metadata={"sku": item.sku, "currency": store.currency},
                )
            scanned, line = use_cases.scan(
                uow,
                self.peers,
                self.rules,
                request.basket_id,
                item,
                barcode=barcode,
                quantity=request.quantity or 1,
                unit_price=price,
                now=utcnow(),
            )
            return checkout_pb2.ScanItemResponse(basket=self._basket_answer(scanned), line_id=line.line_id)

        try:
            return self.calls.once(context, request, checkout_pb2.ScanItemResponse, work)
        except _NotCached:
            # Asked of stock (and cached) outside the scan's transaction: SQLite has one writer at a time.
            fetched.append(self.queries.item(store.store_id, sku=sku, barcode=barcode))
            return self.calls.once(context, request, checkout_pb2.ScanItemResponse, work)

    def UpdateLineQuantity(
        self, request: checkout_pb2.UpdateLineQuantityRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.UpdateLineQuantityResponse:
        v = Violations()
        v.text("line_id", request.line_id, MAX_ID_LENGTH)
        v.within("quantity", request.quantity, 0, MAX_QUANTITY)
        self._own_basket(v, request.basket_id)

        def work(uow: UnitOfWork) -> checkout_pb2.UpdateLineQuantityResponse:
            basket = use_cases.update_quantity(
                uow, self.peers, self.rules, request.basket_id, request.line_id, request.quantity, utcnow()
            )
            return checkout_pb2.UpdateLineQuantityResponse(basket=self._basket_answer(basket))

        return self.calls.once(context, request, checkout_pb2.UpdateLineQuantityResponse, work)

    def AttachCustomer(
        self, request: checkout_pb2.AttachCustomerRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.AttachCustomerResponse:
        v = Violations()
        lookup = request.WhichOneof("lookup")
        value = getattr(request, lookup) if lookup else ""
        if lookup is None:
            v.add("lookup", "give customer_id, loyalty_card_number, email or phone")
        elif not value.strip():
            v.add(lookup, "must not be empty")
        elif len(value) > MAX_LOOKUP_LENGTH:
            v.add(lookup, f"at most {MAX_LOOKUP_LENGTH} characters")
        self._own_basket(v, request.basket_id)
        assert lookup is not None
        found = self.peers.find_customer(lookup, value)
        account = self.peers.get_account(found.customer_id)
        customer = Customer(
            customer_id=found.customer_id,
            loyalty_card_number=found.loyalty_card_number or (account.loyalty_card_number if account else ""),
            display_name=display_name(found.given_name, found.family_name),
            tier=TIERS.get(int(account.tier), "") if account is not None else "",
            points_available=int(account.available_points) if account is not None else 0,
            loyalty_unavailable=account is None,
        )

        def work(uow: UnitOfWork) -> checkout_pb2.AttachCustomerResponse:
            basket = use_cases.attach_customer(uow, self.peers, self.rules, request.basket_id, customer, utcnow())
            return checkout_pb2.AttachCustomerResponse(basket=self._basket_answer(basket))

        return self.calls.once(context, request, checkout_pb2.AttachCustomerResponse, work)

    def RedeemPoints(
        self, request: checkout_pb2.RedeemPointsRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.RedeemPointsResponse:
        v = Violations()
        v.within("points", request.points, 0, MAX_POINTS)
        self._own_basket(v, request.basket_id)

        def work(uow: UnitOfWork) -> checkout_pb2.RedeemPointsResponse:
            basket = use_cases.redeem_points(uow, self.peers, self.rules, request.basket_id, request.points, utcnow())
            return checkout_pb2.RedeemPointsResponse(basket=self._basket_answer(basket))

        return self.calls.once(context, request, checkout_pb2.RedeemPointsResponse, work)

    def VoidBasket(
        self, request: checkout_pb2.VoidBasketRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.VoidBasketResponse:
        v = Violations()
        reason = VOID_REASONS.get(request.reason or checkout_pb2.VOID_REASON_OTHER)
        if reason is None:
            v.add("reason", "EXPIRED is set by the system; give another reason")
        self._own_basket(v, request.basket_id)
        assert reason is not None

        def work(uow: UnitOfWork) -> checkout_pb2.VoidBasketResponse:
            basket = use_cases.void_basket(uow, request.basket_id, reason, utcnow())
            return checkout_pb2.VoidBasketResponse(basket=self._basket_answer(basket))

        return self.calls.once(context, request, checkout_pb2.VoidBasketResponse, work)

    # --- sales ----------------------------------------------------------------------------------------------

    def CompleteSale(
        self, request: checkout_pb2.CompleteSaleRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.CompleteSaleResponse:
        v = Violations()
        if len(request.tenders) > MAX_TENDERS:
            v.add("tenders", f"at most {MAX_TENDERS} tenders")
        tenders = []
        for i, tender in enumerate(request.tenders[:MAX_TENDERS]):
            kind = TENDER_KINDS.get(tender.type)
            if kind is None:
                v.add(f"tenders[{i}].type", "must be CASH, CARD, GIFT_CARD, VOUCHER or MOBILE")
            if len(tender.reference) > MAX_REFERENCE_LENGTH or not tender.reference.isprintable():
                v.add(f"tenders[{i}].reference", f"at most {MAX_REFERENCE_LENGTH} printable characters")
            elif FULL_CARD_NUMBER.search(tender.reference):
                v.add(f"tenders[{i}].reference", "must not be a full card number: mask it (e.g. ****1234)")
            if tender.amount.amount_minor <= 0:
                v.add(f"tenders[{i}].amount.amount_minor", "must be positive")
            if kind is not None:
                tenders.append(Tender(kind, tender.amount.amount_minor, tender.amount.currency_code, tender.reference))
        self._own_basket(v, request.basket_id)

        def work(uow: UnitOfWork) -> checkout_pb2.CompleteSaleResponse:
            sale, card = use_cases.complete_sale(uow, self.rules, request.basket_id, tenders, utcnow())
            return checkout_pb2.CompleteSaleResponse(sale=messages.sale_message(sale, loyalty_card_number=card))

        return self.calls.once(context, request, checkout_pb2.CompleteSaleResponse, work)

    def ReturnItems(
        self, request: checkout_pb2.ReturnItemsRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.ReturnItemsResponse:
        v = Violations()
        v.text("original_sale_id", request.original_sale_id, MAX_ID_LENGTH)
        v.store("store_id", request.store_id, self.stores)
        v.text("terminal_id", request.terminal_id, MAX_ID_LENGTH)
        v.text("cashier_id", request.cashier_id, MAX_ID_LENGTH)
        if not request.lines:
            v.add("lines", "name at least one line")
        elif len(request.lines) > MAX_RETURN_LINES:
            v.add("lines", f"at most {MAX_RETURN_LINES} lines")
        for i, line in enumerate(request.lines[:MAX_RETURN_LINES]):
            v.text(f"lines[{i}].line_id", line.line_id, MAX_ID_LENGTH)
            v.within(f"lines[{i}].quantity", line.quantity, 1, MAX_QUANTITY)
        reason = RETURN_REASONS.get(request.reason)
        if reason is None:
            v.add("reason", "must be set")
        if len(request.note) > MAX_NOTE_LENGTH:
            v.add("note", f"at most {MAX_NOTE_LENGTH} characters")
        v.raise_if_any()
        assert reason is not None
        # The returning store is the caller's (checked by the interceptor); the sale may be of any store: goods bought
        # in Berlin may come back in Munich. An unknown sale is NOT_FOUND.
        command = use_cases.ReturnRequest(
            original_sale_id=request.original_sale_id,
            store_id=request.store_id,
            terminal_id=request.terminal_id,
            cashier_id=request.cashier_id,
            lines=[(line.line_id, line.quantity, line.restock) for line in request.lines],
            reason=reason,
            note=request.note,
        )

        def work(uow: UnitOfWork) -> checkout_pb2.ReturnItemsResponse:
            sale_return = use_cases.return_items(uow, self.rules, command, utcnow())
            return checkout_pb2.ReturnItemsResponse(sale_return=messages.return_message(sale_return))

        return self.calls.once(context, request, checkout_pb2.ReturnItemsResponse, work)

    def GetSale(
        self, request: checkout_pb2.GetSaleRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.GetSaleResponse:
        v = Violations()
        v.text("sale_id", request.sale_id, MAX_ID_LENGTH)
        v.raise_if_any()
        check_owner(self.queries.sale_store(request.sale_id), kind="sale", resource_id=request.sale_id)
        return checkout_pb2.GetSaleResponse(sale=messages.sale_message(self.queries.sale(request.sale_id)))

    def ListSales(
        self, request: checkout_pb2.ListSalesRequest, context: grpc.ServicerContext
    ) -> checkout_pb2.ListSalesResponse:
        v = Violations()
        v.store("store_id", request.store_id, self.stores)
        v.text("customer_id", request.customer_id, MAX_ID_LENGTH, required=False)
        start = from_timestamp(request.start_time) if request.HasField("start_time") else None
        end = from_timestamp(request.end_time) if request.HasField("end_time") else None
        if start is not None and end is not None and end < start:
            v.add("end_time", "must not be before start_time")
        v.raise_if_any()
        page = self.pages.read(request)
        after = None
        if page.cursor is not None:
            micros, sale_id = page.cursor
            after = (EPOCH + timedelta(microseconds=int(micros)), str(sale_id))
        sales = self.queries.sales(
            request.store_id, start=start, end=end, customer_id=request.customer_id, after=after, limit=page.size + 1
        )
        token = ""
        if len(sales) > page.size:
            last = sales[page.size - 1]
            token = self.pages.next_token(request, (_micros_of(last.completed_at), last.sale_id))
        return checkout_pb2.ListSalesResponse(
            sales=[messages.sale_message(sale) for sale in sales[: page.size]], next_page_token=token
        )

    # --- offline uploads ------------------------------------------------------------------------------------

    def UploadOfflineSales(
        self, request_iterator: Iterator[checkout_pb2.UploadOfflineSalesRequest], context: grpc.ServicerContext
    ) -> checkout_pb2.UploadOfflineSalesResponse:
        caller = caller_of(context)
        return run_import(
            self.database,
            offline.upload_kind(self.rules, caller),
            request_iterator,
            source=NAME,
            caller=caller,
            chunk_rows=self.settings.offline_chunk_rows,
        )


def _micros_of(moment: datetime) -> int:
    delta = as_utc(moment) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
