"""Calls that name a resource by id are checked against the store that owns it: a caller restricted to some stores
gets the same PERMISSION_DENIED (STORE_NOT_ALLOWED) for another store's resource as for one that does not exist, so
ids cannot be probed; a caller allowed for all stores learns NOT_FOUND. A service adds its resources in one line."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest

from pos.common.v1 import common_pb2
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.status import ErrorDetails, details_of
from storeplane_runtime.testing import TestAuthority

from .conftest import Stack

STORE_A, STORE_B = "berlin-mitte", "zurich-bahnhofstrasse"
Make = Callable[[grpc.Channel, str, str], None]  # (channel, store, id): a resource of that store with that id
Use = Callable[[grpc.Channel, str, str], None]  # (channel, id, the caller's own store): the call naming it


@dataclass(frozen=True)
class Owned:
    """A kind of resource a call names by id, and how to make one and name it."""

    kind: str
    process: str
    make: Make
    use: Use
    unknown_is_not_found: bool = True  # False where naming an unknown id creates it (a declarative Reserve)


def _stock(channel: grpc.Channel) -> stock_pb2_grpc.StockServiceStub:
    return stock_pb2_grpc.StockServiceStub(channel)


def _reserve(channel: grpc.Channel, store: str, reservation_id: str) -> None:
    request = stock_pb2.ReserveRequest(
        request_id=str(uuid.uuid4()),
        reservation_id=reservation_id,
        store_id=store,
        lines=[stock_pb2.ReservationLine(sku="OWN-1", quantity=1)],
        all_or_nothing=False,
    )
    _stock(channel).Reserve(request, timeout=10)


def _release(channel: grpc.Channel, reservation_id: str, _own_store: str) -> None:
    _stock(channel).Release(
        stock_pb2.ReleaseRequest(request_id=str(uuid.uuid4()), reservation_id=reservation_id), timeout=10
    )


def _loyalty(channel: grpc.Channel) -> loyalty_pb2_grpc.LoyaltyServiceStub:
    return loyalty_pb2_grpc.LoyaltyServiceStub(channel)


def _hold(channel: grpc.Channel, store: str, hold_id: str) -> None:
    # 0 points: the hold is recorded with its store (and the customer's account opened) without needing points.
    request = loyalty_pb2.HoldPointsRequest(
        request_id=str(uuid.uuid4()), hold_id=hold_id, customer_id=f"owner-{hold_id}", points=0, store_id=store
    )
    _loyalty(channel).HoldPoints(request, timeout=10)


def _release_hold(channel: grpc.Channel, hold_id: str, _own_store: str) -> None:
    _loyalty(channel).ReleaseHold(
        loyalty_pb2.ReleaseHoldRequest(request_id=str(uuid.uuid4()), hold_id=hold_id), timeout=10
    )


RESOURCES = [
    Owned("reservation released", "stock", _reserve, _release),
    Owned("reservation reserved again", "stock", _reserve, lambda ch, i, own: _reserve(ch, own, i), False),
    # ReleaseHold of an unknown hold answers RELEASED for a caller of every store (loyalty.proto), so the
    # unknown-id checks do not apply; loyalty's own API tests cover a store-restricted caller naming an unknown hold.
    Owned("hold released", "loyalty", _hold, _release_hold, False),
    Owned("hold held again", "loyalty", _hold, lambda ch, i, own: _hold(ch, own, i), False),
]


@pytest.fixture(scope="module")
def admin(stack: Stack, authority: TestAuthority) -> grpc.Channel:
    # Through the gateway, which routes to every service: the resources are made in stock and loyalty.
    channel = with_bearer(grpc.insecure_channel(stack.address("gateway")), authority.token())
    item = stock_pb2.Item(
        sku="OWN-1",
        name="Owned",
        tax_class="standard",
        prices=[common_pb2.Money(amount_minor=100, currency_code="EUR")],
    )
    _stock(channel).ImportItems(iter([stock_pb2.ImportItemsRequest(request_id="own-items", item=item)]), timeout=30)
    return channel


def _refusal(use: Use, channel: grpc.Channel, resource_id: str, own: str) -> ErrorDetails:
    with pytest.raises(grpc.RpcError) as raised:
        use(channel, resource_id, own)
    return details_of(raised.value)


@pytest.mark.parametrize("resource", RESOURCES, ids=[r.kind for r in RESOURCES])
@pytest.mark.parametrize("route", ["direct", "gateway"])
def test_a_store_restricted_caller_cannot_see_another_stores_resource_or_probe_ids(
    stack: Stack, authority: TestAuthority, admin: grpc.Channel, resource: Owned, route: str
) -> None:
    theirs = f"{resource.process}-{uuid.uuid4().hex[:8]}"
    resource.make(admin, STORE_B, theirs)
    address = stack.address(resource.process if route == "direct" else "gateway")
    denied = (grpc.StatusCode.PERMISSION_DENIED, "STORE_NOT_ALLOWED")
    with with_bearer(grpc.insecure_channel(address), authority.token(stores=[STORE_A])) as store_a:
        got = _refusal(resource.use, store_a, theirs, STORE_A)
        assert (got.code, got.reason) == denied, f"another store's {resource.kind}: {got}"
        if resource.unknown_is_not_found:
            got = _refusal(resource.use, store_a, f"unknown-{uuid.uuid4().hex[:8]}", STORE_A)
            assert (got.code, got.reason) == denied, f"an unknown id must look the same: {got}"
    with with_bearer(grpc.insecure_channel(address), authority.token(stores=[STORE_B])) as store_b:
        resource.use(store_b, theirs, STORE_B)  # its own store's caller may


@pytest.mark.parametrize("resource", [r for r in RESOURCES if r.unknown_is_not_found], ids=lambda r: r.kind)
def test_a_caller_for_all_stores_learns_that_an_id_is_unknown(
    stack: Stack, authority: TestAuthority, admin: grpc.Channel, resource: Owned
) -> None:
    with with_bearer(grpc.insecure_channel(stack.address(resource.process)), authority.token()) as everywhere:
        got = _refusal(resource.use, everywhere, f"unknown-{uuid.uuid4().hex[:8]}", STORE_A)
    assert got.code == grpc.StatusCode.NOT_FOUND
