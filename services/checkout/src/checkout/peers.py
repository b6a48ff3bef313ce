"""Checkout's calls to its peers, each with a deadline and a circuit breaker: stock (GetItem on an item cache miss,
Reserve after every basket change), customer (FindCustomer) and loyalty (GetAccount, HoldPoints).

A Reserve never fails a scan: any failure, or an open breaker, is "not confirmed" (the line stays unreserved, and the
next successful Reserve catches every line up, as it is declarative). The other calls turn a peer that is down into
UNAVAILABLE, and a peer's own refusals into checkout's domain errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from checkout.domain.baskets import Item
from checkout.settings import CheckoutSettings
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.breaker import BreakerOpen, CircuitBreaker
from storeplane_runtime.clients import PeerChannels
from storeplane_runtime.errors import FieldViolation, InvalidInput, NotFound, PreconditionFailed, Unavailable
from storeplane_runtime.event_ids import new_event_id
from storeplane_runtime.status import details_of

log = logging.getLogger(__name__)

T = TypeVar("T")

PEER_DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class ItemNotFound(NotFound):
    reason = "ITEM_NOT_FOUND"


class CustomerNotFound(NotFound):
    reason = "CUSTOMER_NOT_FOUND"


class InsufficientPoints(PreconditionFailed):
    reason = "INSUFFICIENT_POINTS"


class PeerUnavailable(Unavailable):
    reason = "PEER_UNAVAILABLE"


def _peer_down(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() in PEER_DOWN


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = exc.code()
    return code


class Peers:
    """Stubs of stock, customer and loyalty on `channels`, one breaker per peer."""

    def __init__(self, settings: CheckoutSettings, channels: PeerChannels) -> None:
        self.settings = settings
        self.channels = channels
        self.stock = stock_pb2_grpc.StockServiceStub(
            channels.channel(settings.stock_addr, service="pos.stock.v1.StockService", idempotent_methods=["GetItem"])
        )
        self.customer = customer_pb2_grpc.CustomerServiceStub(
            channels.channel(
                settings.customer_addr, service="pos.customer.v1.CustomerService", idempotent_methods=["FindCustomer"]
            )
        )
        self.loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(
            channels.channel(
                settings.loyalty_addr,
                service="pos.loyalty.v1.LoyaltyService",
                idempotent_methods=["GetAccount", "HoldPoints"],
            )
        )
        self.breakers = {
            name: CircuitBreaker(
                name,
                failures=settings.breaker_failures,
                reset_seconds=settings.breaker_reset_seconds,
                counts=_peer_down,
            )
            for name in ("stock", "customer", "loyalty")
        }

    def _call(self, peer: str, action: Callable[[], T]) -> T:
        """`action` through the peer's breaker; the peer down (or the breaker open) is UNAVAILABLE."""
        try:
            return self.breakers[peer].call(action)
        except BreakerOpen as exc:
            raise PeerUnavailable(f"{peer} is unavailable", metadata={"peer": peer}) from exc
        except grpc.RpcError as exc:
            if _code(exc) in PEER_DOWN:
                raise PeerUnavailable(f"{peer} is unavailable", metadata={"peer": peer}) from exc
            raise

    # --- stock ----------------------------------------------------------------------------------------------

    def get_item(self, store_id: str, *, sku: str = "", barcode: str = "") -> Item:
        """The item from stock (a miss of checkout's own cache); ItemNotFound when stock does not know it."""
        request = stock_pb2.GetItemRequest(store_id=store_id)
        if barcode:
            request.barcode = barcode
        else:
            request.sku = sku
        try:
            answer = self._call(
                "stock", lambda: self.stock.GetItem(request, timeout=self.settings.get_item_timeout_seconds)
            )
        except grpc.RpcError as exc:
            if _code(exc) == grpc.StatusCode.NOT_FOUND:
                key = ("barcode", barcode) if barcode else ("sku", sku)
                raise ItemNotFound(f"no item with {key[0]} {key[1][:64]!r}", metadata={key[0]: key[1][:64]}) from exc
            raise PeerUnavailable("stock refused GetItem", metadata={"peer": "stock", "code": _code(exc).name}) from exc
        item = answer.item
        return Item(
            sku=item.sku,
            name=item.name,
            tax_class=item.tax_class,
            prices={p.currency_code: p.amount_minor for p in item.prices},
            barcodes=tuple(item.barcodes),
            revision=item.revision,
        )

    def reserve(
        self, basket_id: str, store_id: str, desired: Mapping[str, int], ttl_seconds: float
    ) -> dict[str, int] | None:
        """Reserve exactly `desired` for the basket (reservation id = basket id); what stock holds per SKU, or None
        when stock did not answer within the budget, refused, or is known to be down."""
        request = stock_pb2.ReserveRequest(
            reservation_id=basket_id,
            store_id=store_id,
            lines=[stock_pb2.ReservationLine(sku=sku, quantity=quantity) for sku, quantity in desired.items()],
            ttl=Duration(seconds=int(ttl_seconds)),
            all_or_nothing=False,
            request_id=new_event_id(),
        )
        try:
            answer = self.breakers["stock"].call(
                lambda: self.stock.Reserve(request, timeout=self.settings.reserve_timeout_seconds)
            )
        except BreakerOpen:
            return None
        except grpc.RpcError as exc:
            log.warning("stock.Reserve failed: %s", _code(exc).name, extra={"basket_id": basket_id})
            return None
        return {line.sku: int(line.reserved_quantity) for line in answer.reservation.lines}

    # --- customer and loyalty -------------------------------------------------------------------------------

    def find_customer(self, lookup: str, value: str) -> customer_pb2.Customer:
        """The customer by `lookup` (customer_id, loyalty_card_number, email, phone)."""
        request = customer_pb2.FindCustomerRequest(**{lookup: value})
        try:
            answer = self._call(
                "customer", lambda: self.customer.FindCustomer(request, timeout=self.settings.peer_timeout_seconds)
            )
        except grpc.RpcError as exc:
            code = _code(exc)
            if code == grpc.StatusCode.NOT_FOUND:
                raise CustomerNotFound(f"no customer matches the {lookup}", metadata={"lookup": lookup}) from exc
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                problems = details_of(exc).violations or (FieldViolation(lookup, "is not valid"),)
                raise InvalidInput(
                    f"the {lookup} is not valid", violations=[FieldViolation(lookup, v.description) for v in problems]
                ) from exc
            raise PeerUnavailable(
                "customer refused FindCustomer", metadata={"peer": "customer", "code": code.name}
            ) from exc
        return answer.customer

    def get_account(self, customer_id: str) -> loyalty_pb2.Account | None:
        """The customer's loyalty account; an empty account when there is none; None when loyalty cannot be reached."""
        request = loyalty_pb2.GetAccountRequest(customer_id=customer_id)
        try:
            answer = self.breakers["loyalty"].call(
                lambda: self.loyalty.GetAccount(request, timeout=self.settings.peer_timeout_seconds)
            )
        except BreakerOpen:
            return None
        except grpc.RpcError as exc:
            if _code(exc) == grpc.StatusCode.NOT_FOUND:
                return loyalty_pb2.Account(customer_id=customer_id)
            log.warning("loyalty.GetAccount failed: %s", _code(exc).name)
            return None
        return answer.account

    def hold_points(self, basket_id: str, customer_id: str, store_id: str, points: int, ttl_seconds: float) -> None:
        """Hold exactly `points` for the basket (hold id = basket id; 0 releases); InsufficientPoints when the account
        has fewer available, UNAVAILABLE when loyalty is down."""
        request = loyalty_pb2.HoldPointsRequest(
            hold_id=basket_id,
            customer_id=customer_id,
            points=points,
            ttl=Duration(seconds=int(ttl_seconds)),
            store_id=store_id,
            request_id=new_event_id(),
        )
        try:
            self._call("loyalty", lambda: self.loyalty.HoldPoints(request, timeout=self.settings.peer_timeout_seconds))
        except grpc.RpcError as exc:
            code = _code(exc)
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                details = details_of(exc)
                if details.reason and details.reason != InsufficientPoints.reason:
                    raise PreconditionFailed(
                        f"loyalty refused the hold: {details.message[:200]}",
                        reason=details.reason,
                        preconditions=details.preconditions,
                    ) from exc
                raise InsufficientPoints(
                    f"the customer has not enough points for {points}",
                    metadata={"points": str(points)},
                    preconditions=details.preconditions,
                ) from exc
            raise PeerUnavailable(
                "loyalty refused HoldPoints", metadata={"peer": "loyalty", "code": code.name}
            ) from exc
