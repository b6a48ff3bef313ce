"""Open baskets expire after inactivity: the sweeper sets EXPIRED and publishes BasketVoided (reason EXPIRED) exactly
once per basket, also with two replicas sweeping the same database."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from checkout_kit import Till, error_of

from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc, events_pb2
from storeplane_runtime.testing import RunningService, published, wait_until


def test_idle_baskets_expire_once_with_two_replicas(
    make_checkout: Callable[..., RunningService], stock: RunningService, checkout: RunningService
) -> None:
    quick = {"basket_ttl_seconds": 1, "expiry_sweep_seconds": 0.05, "expiry_batch_size": 3}
    first = make_checkout(stock.port, **quick)
    make_checkout(stock.port, **quick)  # a second replica on the same database
    till = Till(first.stub_of(checkout_pb2_grpc.CheckoutServiceStub))
    baskets = [till.open() for _ in range(7)]
    till.scan(baskets[0].basket_id, "SKU-1")

    def expired() -> bool:
        states = [
            till.stub.GetBasket(checkout_pb2.GetBasketRequest(basket_id=b.basket_id)).basket.state for b in baskets
        ]
        return all(state == checkout_pb2.BASKET_STATE_EXPIRED for state in states)

    wait_until(expired, timeout=15, what="every idle basket expiring")
    events = [e for e in published(first.database, events_pb2.BasketVoided)]
    assert sorted(e.basket_id for e in events) == sorted(b.basket_id for b in baskets)
    assert all(e.reason == checkout_pb2.VOID_REASON_EXPIRED for e in events)
    [scanned] = [e for e in events if e.basket_id == baskets[0].basket_id]
    assert scanned.reservation_id == baskets[0].basket_id
    assert error_of(lambda: till.scan(baskets[0].basket_id, "SKU-1")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BASKET_NOT_OPEN",
    )
