"""The StockService servicer: checks requests, calls the use cases and queries, answers with the messages of
messages.py. Domain errors become statuses through ERROR_TABLE (in the server's interceptor)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta

import grpc

from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from stock import imports, messages, use_cases
from stock.domain import (
    MAX_BARCODE_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_RESERVATION_ID_LENGTH,
    MAX_STOCK_QUANTITY,
    InsufficientStock,
    ItemNotFound,
    NoPriceForCurrency,
    ReservationCommitted,
    ReservationState,
    ReservationStoreMismatch,
    StockPolicy,
    WatcherFellBehind,
    check_sku,
    desired_quantities,
)
from stock.queries import StockQueries
from stock.settings import StockSettings
from stock.use_cases import ReserveCommand
from stock.watch import StockWatch
from storeplane_runtime.batching import Batcher
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import DomainError, InvalidInput, Violations
from storeplane_runtime.idempotency import Call, IdempotentCalls
from storeplane_runtime.identity import allowed_stores, caller_of, check_owner
from storeplane_runtime.status import BASE_ERROR_TABLE
from storeplane_runtime.stores import Store

NAME = "stock"
SERVICE_DESCRIPTOR = stock_pb2.DESCRIPTOR.services_by_name["StockService"]

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


class StockServicer(stock_pb2_grpc.StockServiceServicer):
    """pos.stock.v1.StockService."""

    def __init__(
        self,
        database: Database,
        settings: StockSettings,
        stores: Mapping[str, Store],
        watch: StockWatch,
        policy: StockPolicy,
        queries: StockQueries,
    ) -> None:
        self.database = database
        self.settings = settings
        self.stores = stores
        self.watch = watch
        self.policy = policy
        self.queries = queries
        self.calls = IdempotentCalls(database, SERVICE_DESCRIPTOR, source=NAME)
        # Concurrent Reserves share transactions (group commit): the hot path of every basket.
        self._reserves = Batcher(
            database,
            source=NAME,
            method=self.calls.method_of(stock_pb2.ReserveResponse),
            response_type=stock_pb2.ReserveResponse,
            work=self._reserve_batch,
            max_batch=settings.reserve_batch_size,
            lanes=settings.reserve_batch_lanes,
            linger=settings.reserve_batch_linger_seconds,
        )

    # --- reads ----------------------------------------------------------------------------------------------

    def GetItem(self, request: stock_pb2.GetItemRequest, context: grpc.ServicerContext) -> stock_pb2.GetItemResponse:
        key = request.WhichOneof("key")
        asked = (request.store_id, key or "", request.barcode if key == "barcode" else request.sku)
        answer = self.queries.kept_item(asked)  # kept answers are of valid requests: checked already
        if answer is None:
            v = Violations()
            v.store("store_id", request.store_id, self.stores)
            if key is None:
                v.add("key", "give sku or barcode")
            elif key == "sku":
                check_sku(v, "sku", request.sku)
            else:
                v.text("barcode", request.barcode, MAX_BARCODE_LENGTH)
            v.raise_if_any()
            answer = self.queries.get_item(asked)
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
                check_sku(v, f"skus[{i}]", sku)
        v.raise_if_any()
        return self.queries.availability(request.store_id, request.skus)

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
            v.extend(exc.violations)
            desired = {}
        v.raise_if_any()
        # Batched calls run on another caller's thread: the caller's stores travel with the command.
        command = ReserveCommand(
            request.reservation_id,
            request.store_id,
            desired,
            ttl,
            all_or_nothing=request.all_or_nothing,
            allowed_stores=allowed_stores(),
        )
        return self._reserves.call(
            caller=caller_of(context),
            request=request,
            request_id=request.request_id,
            payload=command,
            conflict=request.reservation_id,  # one reservation's Reserves never share a batch
        )

    def _reserve_batch(
        self, uow: UnitOfWork, calls: Sequence[Call[ReserveCommand]]
    ) -> list[stock_pb2.ReserveResponse | DomainError]:
        outcomes = use_cases.reserve_many(
            uow,
            self.policy,
            [call.payload for call in calls],
            now=utcnow(),
            trace_headers=[call.trace_headers for call in calls],
        )
        return [
            o if isinstance(o, DomainError) else stock_pb2.ReserveResponse(reservation=messages.reservation_message(o))
            for o in outcomes
        ]

    def Release(self, request: stock_pb2.ReleaseRequest, context: grpc.ServicerContext) -> stock_pb2.ReleaseResponse:
        v = Violations()
        v.text("reservation_id", request.reservation_id, MAX_RESERVATION_ID_LENGTH)
        v.raise_if_any()
        owner = self.queries.reservation_store(request.reservation_id)
        check_owner(owner, kind="reservation", resource_id=request.reservation_id)

        def work(uow: UnitOfWork) -> stock_pb2.ReleaseResponse:
            reservation = use_cases.end_reservation(
                uow, self.policy, request.reservation_id, to=ReservationState.RELEASED, now=utcnow()
            )
            return stock_pb2.ReleaseResponse(reservation=messages.reservation_message(reservation))

        return self.calls.once(context, request, stock_pb2.ReleaseResponse, work)

    # --- adjustments and imports ----------------------------------------------------------------------------

    def AdjustStock(
        self, request: stock_pb2.AdjustStockRequest, context: grpc.ServicerContext
    ) -> stock_pb2.AdjustStockResponse:
        v = Violations()
        v.store("store_id", request.store_id, self.stores)
        check_sku(v, "sku", request.sku)
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
            adjusted = use_cases.adjust(
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
            return stock_pb2.AdjustStockResponse(
                level=messages.level_message(adjusted.after), applied_delta=adjusted.on_hand_delta
            )

        return self.calls.once(context, request, stock_pb2.AdjustStockResponse, work)

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
        limit = self.settings.max_availability_skus
        if len(request.skus) > limit:
            v.add("skus", f"at most {limit} SKUs")
        for i, sku in enumerate(request.skus[:limit]):
            check_sku(v, f"skus[{i}]", sku)
        v.raise_if_any()
        subscription = self.watch.subscribe(request.store_id, request.skus)
        context.add_callback(subscription.close)
        try:
            # Initial metadata tells the client the subscription is live: changes committed after it are seen.
            context.send_initial_metadata(())
            for change in subscription.changes(context.is_active, WATCH_POLL_SECONDS):
                yield stock_pb2.WatchStockResponse(change=change)
        finally:
            subscription.close()
