"""The StockService servicer: checks requests, turns protos into domain calls and back. Domain errors become
statuses through ERROR_TABLE (in the server's interceptor); nothing here knows SQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from stock import events, imports, services, storage
from stock.answers import GetItemAnswers
from stock.domain import (
    MAX_BARCODE_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_RESERVATION_ID_LENGTH,
    MAX_SKU_LENGTH,
    MAX_STOCK_QUANTITY,
    InsufficientStock,
    ItemNotFound,
    Level,
    NoPriceForCurrency,
    ReservationCommitted,
    ReservationState,
    ReservationStoreMismatch,
    Violations,
    WatcherFellBehind,
    desired_quantities,
)
from stock.item_cache import ItemCache
from stock.services import StockPolicy
from stock.settings import StockSettings
from stock.watch import StockWatch
from storeplane_runtime.batching import Batcher
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import BASE_ERROR_TABLE, DomainError, InvalidInput, Unavailable
from storeplane_runtime.idempotency import Call, run_once
from storeplane_runtime.outbox import utcnow
from storeplane_runtime.stores import Store

NAME = "stock"
METHOD = "/pos.stock.v1.StockService/"

# Most specific class wins; every stock error is listed so the mapping can be read in one place.
ERROR_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    **BASE_ERROR_TABLE,
    ItemNotFound: grpc.StatusCode.NOT_FOUND,
    NoPriceForCurrency: grpc.StatusCode.FAILED_PRECONDITION,
    InsufficientStock: grpc.StatusCode.FAILED_PRECONDITION,
    ReservationStoreMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    ReservationCommitted: grpc.StatusCode.FAILED_PRECONDITION,
    WatcherFellBehind: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

WATCH_POLL_SECONDS = 0.5
R = TypeVar("R", bound=Message)


def caller_of(context: grpc.ServicerContext) -> str:
    """Who is calling, for scoping request ids. Until tokens land: the `x-caller` metadata, else "anonymous"."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-caller" and isinstance(value, str) and value:
            return value[:200]
    return "anonymous"


class StockServicer(stock_pb2_grpc.StockServiceServicer):
    """pos.stock.v1.StockService."""

    def __init__(
        self,
        database: Database | None,
        settings: StockSettings,
        stores: Mapping[str, Store],
        watch: StockWatch,
        policy: StockPolicy,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.watch = watch
        self.policy = policy
        self.items = ItemCache()
        self.answers = GetItemAnswers(settings.get_item_cache_size, settings.get_item_cache_seconds)
        self._database: Database | None = None
        self._reserves: Batcher[services.ReserveCommand, stock_pb2.ReserveResponse] | None = None
        if database is not None:
            self.database = database

    @property
    def database(self) -> Database:
        assert self._database is not None, "the app binds the database before serving"
        return self._database

    @database.setter
    def database(self, database: Database) -> None:
        self._database = database
        # Concurrent Reserves share transactions (group commit): the hot path of every basket.
        self._reserves = Batcher(
            database,
            source=NAME,
            method=METHOD + "Reserve",
            response_type=stock_pb2.ReserveResponse,
            work=self._reserve_batch,
            max_batch=self.settings.reserve_batch_size,
            lanes=self.settings.reserve_batch_lanes,
            linger=self.settings.reserve_batch_linger_seconds,
        )

    # --- reads ----------------------------------------------------------------------------------------------

    def GetItem(self, request: stock_pb2.GetItemRequest, context: grpc.ServicerContext) -> stock_pb2.GetItemResponse:
        key = request.WhichOneof("key")
        # Only answers to valid requests are kept, so a kept answer needs no checks (stores never change at runtime).
        asked = (request.store_id, key or "", request.barcode if key == "barcode" else request.sku)
        answer = self.answers.get(asked)
        if answer is not None:
            return answer
        ticket = self.answers.ticket()  # before reading: a change committed after it means the read is not kept
        v = Violations()
        v.store("store_id", request.store_id, self.stores)
        if key is None:
            v.add("key", "give sku or barcode")
        elif key == "sku":
            v.text("sku", request.sku, MAX_SKU_LENGTH)
        else:
            v.text("barcode", request.barcode, MAX_BARCODE_LENGTH)
        v.raise_if_any()
        store = self.stores[request.store_id]
        # One statement reads the level and the item's current revision; the item itself comes from the cache
        # when it is at that revision.
        with self.database.read_engine.connect() as conn:
            shelf = storage.find_on_shelf(conn, store.store_id, sku=request.sku, barcode=request.barcode)
            if shelf is None:
                what = f"barcode {request.barcode}" if key == "barcode" else f"SKU {request.sku}"
                raise ItemNotFound(f"no item with {what}", metadata={key or "key": request.sku or request.barcode})
            cached = self.items.get(shelf.sku, shelf.revision)
            if cached is None:
                item = storage.find_item(conn, sku=shelf.sku)
                if item is None:  # cannot happen: items are never deleted
                    raise ItemNotFound(f"no item with SKU {shelf.sku}", metadata={"sku": shelf.sku})
                cached = self.items.put(item)
        item = cached.item
        price = item.price_in(store.currency)
        answer = stock_pb2.GetItemResponse(
            item=cached.message,
            price=common_pb2.Money(amount_minor=price, currency_code=store.currency),
            tax_class=item.tax_class,
            level=events.level_message(shelf.level),
        )
        self.answers.put(ticket, asked, item.sku, answer)
        return answer

    def GetAvailability(
        self, request: stock_pb2.GetAvailabilityRequest, context: grpc.ServicerContext
    ) -> stock_pb2.GetAvailabilityResponse:
        v = Violations()
        v.store("store_id", request.store_id, self.stores)
        limit = self.settings.max_availability_skus
        if not request.skus:
            v.add("skus", "name at least one SKU")
        elif len(request.skus) > limit:
            v.add("skus", f"at most {limit} SKUs")
        else:
            for i, sku in enumerate(request.skus):
                v.text(f"skus[{i}]", sku, MAX_SKU_LENGTH)
        v.raise_if_any()
        skus = list(dict.fromkeys(request.skus))
        with self.database.read_engine.connect() as conn:
            known = storage.known_skus(conn, skus)
            levels = storage.read_levels(conn, request.store_id, skus)
        return stock_pb2.GetAvailabilityResponse(
            levels=[
                events.level_message(levels.get(sku) or Level(request.store_id, sku)) for sku in skus if sku in known
            ],
            unknown_skus=[sku for sku in skus if sku not in known],
        )

    # --- reservations ---------------------------------------------------------------------------------------

    def Reserve(self, request: stock_pb2.ReserveRequest, context: grpc.ServicerContext) -> stock_pb2.ReserveResponse:
        v = Violations()
        v.text("reservation_id", request.reservation_id, MAX_RESERVATION_ID_LENGTH)
        v.store("store_id", request.store_id, self.stores)
        ttl: timedelta | None = None
        if request.HasField("ttl"):
            ttl = request.ttl.ToTimedelta()
            if ttl < timedelta(0) or ttl > self.policy.max_ttl:
                v.add("ttl", f"must be between 0 and {int(self.policy.max_ttl.total_seconds())} seconds")
            ttl = ttl or None
        try:
            desired = desired_quantities(
                [(line.sku, line.quantity) for line in request.lines], self.settings.max_reservation_lines
            )
        except InvalidInput as exc:
            v.items.extend(exc.violations)
            desired = {}
        v.raise_if_any()

        command = services.ReserveCommand(
            request.reservation_id, request.store_id, desired, ttl, all_or_nothing=request.all_or_nothing
        )
        assert self._reserves is not None, "the app binds the database before serving"
        return self._reserves.call(
            caller=caller_of(context),
            request=request,
            request_id=request.request_id,
            payload=command,
            conflict=request.reservation_id,
        )

    def _reserve_batch(
        self, uow: UnitOfWork, calls: Sequence[Call[services.ReserveCommand]]
    ) -> list[stock_pb2.ReserveResponse | DomainError]:
        outcomes = services.reserve_many(
            uow,
            self.policy,
            [call.payload for call in calls],
            now=utcnow(),
            trace_headers=[call.trace_headers for call in calls],
        )
        return [
            o if isinstance(o, DomainError) else stock_pb2.ReserveResponse(reservation=events.reservation_message(o))
            for o in outcomes
        ]

    def Release(self, request: stock_pb2.ReleaseRequest, context: grpc.ServicerContext) -> stock_pb2.ReleaseResponse:
        v = Violations()
        v.text("reservation_id", request.reservation_id, MAX_RESERVATION_ID_LENGTH)
        v.raise_if_any()

        def work(uow: UnitOfWork) -> stock_pb2.ReleaseResponse:
            reservation = services.end_reservation(
                uow, self.policy, request.reservation_id, to=ReservationState.RELEASED, now=utcnow()
            )
            return stock_pb2.ReleaseResponse(reservation=events.reservation_message(reservation))

        return self._once(context, "Release", request, request.request_id, stock_pb2.ReleaseResponse, work)

    # --- adjustments and imports ----------------------------------------------------------------------------

    def AdjustStock(
        self, request: stock_pb2.AdjustStockRequest, context: grpc.ServicerContext
    ) -> stock_pb2.AdjustStockResponse:
        v = Violations()
        v.store("store_id", request.store_id, self.stores)
        v.text("sku", request.sku, MAX_SKU_LENGTH)
        change = request.WhichOneof("change")
        if change is None:
            v.add("change", "give delta or set_on_hand")
        elif change == "delta":
            if request.delta == 0:
                v.add("delta", "must not be 0")
            v.within("delta", request.delta, -MAX_STOCK_QUANTITY, MAX_STOCK_QUANTITY)
        else:
            v.within("set_on_hand", request.set_on_hand, 0, MAX_STOCK_QUANTITY)
        if request.reason == stock_pb2.ADJUSTMENT_REASON_UNSPECIFIED:
            v.add("reason", "must be set")
        elif request.reason not in stock_pb2.AdjustmentReason.values():
            v.add("reason", "unknown reason")
        if len(request.note) > MAX_NOTE_LENGTH:
            v.add("note", f"at most {MAX_NOTE_LENGTH} characters")
        v.raise_if_any()
        caller = caller_of(context)

        def work(uow: UnitOfWork) -> stock_pb2.AdjustStockResponse:
            level, applied = services.adjust(
                uow,
                self.policy,
                store_id=request.store_id,
                sku=request.sku,
                delta=request.delta if change == "delta" else None,
                set_on_hand=request.set_on_hand if change == "set_on_hand" else None,
                reason=stock_pb2.AdjustmentReason.Name(request.reason).removeprefix("ADJUSTMENT_REASON_"),
                note=request.note,
                request_id=request.request_id,
                caller=caller,
                now=utcnow(),
            )
            return stock_pb2.AdjustStockResponse(level=events.level_message(level), applied_delta=applied)

        return self._once(context, "AdjustStock", request, request.request_id, stock_pb2.AdjustStockResponse, work)

    def ImportItems(
        self, request_iterator: Iterator[stock_pb2.ImportItemsRequest], context: grpc.ServicerContext
    ) -> stock_pb2.ImportItemsResponse:
        summary = imports.run_import(
            self.database,
            imports.item_import(),
            request_iterator,
            source=NAME,
            caller=caller_of(context),
            chunk_rows=self.settings.import_chunk_rows,
        )
        return stock_pb2.ImportItemsResponse(summary=summary)

    def ImportStockLevels(
        self, request_iterator: Iterator[stock_pb2.ImportStockLevelsRequest], context: grpc.ServicerContext
    ) -> stock_pb2.ImportStockLevelsResponse:
        summary = imports.run_import(
            self.database,
            imports.stock_level_import(self.stores, self.policy),
            request_iterator,
            source=NAME,
            caller=caller_of(context),
            chunk_rows=self.settings.import_chunk_rows,
            lanes=self.settings.import_level_writers,
        )
        return stock_pb2.ImportStockLevelsResponse(summary=summary)

    # --- live stock -----------------------------------------------------------------------------------------

    def WatchStock(
        self, request: stock_pb2.WatchStockRequest, context: grpc.ServicerContext
    ) -> Iterator[stock_pb2.WatchStockResponse]:
        v = Violations()
        v.store("store_id", request.store_id, self.stores)
        if len(request.skus) > self.settings.max_availability_skus:
            v.add("skus", f"at most {self.settings.max_availability_skus} SKUs")
        for i, sku in enumerate(request.skus[: self.settings.max_availability_skus]):
            v.text(f"skus[{i}]", sku, MAX_SKU_LENGTH)
        v.raise_if_any()
        subscription = self.watch.subscribe(request.store_id, request.skus)
        context.add_callback(subscription.close)
        try:
            # Initial metadata tells the client the subscription is live: changes committed after it are seen.
            context.send_initial_metadata(())
            while context.is_active() and not subscription.closed:
                change = subscription.next_change(WATCH_POLL_SECONDS)
                if change is not None:
                    yield stock_pb2.WatchStockResponse(change=change)
            if subscription.overflowed:
                raise WatcherFellBehind("the watcher read too slowly and missed changes; re-read levels, watch again")
            if subscription.missed:
                raise Unavailable("live stock changes were interrupted on this server; re-read levels, watch again")
        finally:
            subscription.close()

    # --- helpers --------------------------------------------------------------------------------------------

    def _once(
        self,
        context: grpc.ServicerContext,
        method: str,
        request: Message,
        request_id: str,
        response_type: type[R],
        work: Callable[[UnitOfWork], R],
    ) -> R:
        """Run a mutating call once per (caller, request_id); a repeat gets the first answer."""
        return run_once(
            self.database,
            source=NAME,
            caller=caller_of(context),
            method=METHOD + method,
            request=request,
            request_id=request_id,
            response_type=response_type,
            work=work,
        )
