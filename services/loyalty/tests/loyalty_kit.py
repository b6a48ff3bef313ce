"""Helpers of the loyalty tests: a clock tests can move, the real service (gRPC over a socket), events as checkout
and customer publish them, and the ledger check."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from loyalty.main import create_app
from loyalty.settings import LoyaltySettings
from loyalty.verify import Verification, verify
from pos.checkout.v1 import events_pb2 as checkout_events
from pos.common.v1 import common_pb2
from pos.customer.v1 import events_pb2 as customer_events
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_runtime.sweeps import Sweeper
from storeplane_runtime.testing import RunningService, deliver, service_settings, start_service

BERLIN, ZURICH, NEW_YORK, TOKYO = "berlin-mitte", "zurich-bahnhofstrasse", "new-york-5th-ave", "tokyo-shibuya"
START = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


class Clock:
    """The one time source of a service under test; tests move it (by years if they like)."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment


class RunningLoyalty(RunningService):
    """The loyalty service on a free port with its stub and clock at hand."""

    clock: Clock

    @property
    def stub(self) -> loyalty_pb2_grpc.LoyaltyServiceStub:
        return self.stub_of(loyalty_pb2_grpc.LoyaltyServiceStub)

    def deliver(self, event: Any, event_id: str = "") -> str:
        return deliver(self.app, event, event_id=event_id)

    def account(self, customer_id: str) -> loyalty_pb2.Account:
        return self.stub.GetAccount(loyalty_pb2.GetAccountRequest(customer_id=customer_id), timeout=10).account

    def verification(self) -> Verification:
        with self.database.engine.connect() as conn:
            return verify(conn)

    def assert_ledger_sound(self) -> None:
        found = self.verification()
        assert found.ok, found.problems


def start_loyalty(url: str, clock: Clock | None = None, **overrides: Any) -> RunningLoyalty:
    # The sweepers run only when a test asks (long intervals); tests call the steps on their own clock.
    values: dict[str, Any] = {
        "grpc_workers": 64,
        "hold_sweep_seconds": 3600,
        "lot_sweep_seconds": 3600,
        "tier_sweep_seconds": 3600,
        **overrides,
    }
    settings = service_settings(LoyaltySettings, "loyalty", url, **values)
    clock = clock or Clock()
    running = start_service(lambda s: create_app(s, clock), settings)
    loyal = RunningLoyalty(running.app, running.port, running.channel)
    loyal.clock = clock
    return loyal


def money(amount: int, currency: str = "EUR") -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency_code=currency)


def sale_completed(
    sale_id: str,
    *,
    customer_id: str = "",
    card: str = "",
    lines: Sequence[tuple[str, int, int]] = (("l1", 1, 10_000),),  # (line id, quantity, total paid)
    currency: str = "EUR",
    store: str = BERLIN,
    points_redeemed: int = 0,
    hold_id: str = "",
    amount_paid: int | None = None,
    completed_at: datetime | None = None,
) -> checkout_events.SaleCompleted:
    paid = sum(total for _, _, total in lines) if amount_paid is None else amount_paid
    event = checkout_events.SaleCompleted(
        sale_id=sale_id,
        basket_id=hold_id or sale_id,
        store_id=store,
        terminal_id="till-1",
        customer_id=customer_id,
        loyalty_card_number=card,
        currency_code=currency,
        lines=[
            checkout_events.SaleCompleted.Line(
                line_id=line_id,
                sku=f"SKU-{line_id}",
                quantity=quantity,
                total_amount=money(total, currency),
            )
            for line_id, quantity, total in lines
        ],
        amount_paid=money(paid, currency),
        points_redeemed=points_redeemed,
        hold_id=hold_id,
    )
    if completed_at is not None:
        event.completed_at.FromDatetime(completed_at)
    return event


def sale_returned(
    return_id: str,
    sale_id: str,
    *,
    customer_id: str = "",
    card: str = "",
    lines: Sequence[tuple[str, int, int]] = (("l1", 1, 0),),  # (line id, quantity, points returned)
    refunded: int = 0,
    currency: str = "EUR",
    store: str = BERLIN,
    returned_at: datetime | None = None,
) -> checkout_events.SaleReturned:
    event = checkout_events.SaleReturned(
        return_id=return_id,
        original_sale_id=sale_id,
        store_id=store,
        original_store_id=store,
        customer_id=customer_id,
        loyalty_card_number=card,
        lines=[
            checkout_events.SaleReturned.Line(line_id=line_id, sku=f"SKU-{line_id}", quantity=q, points_returned=p)
            for line_id, q, p in lines
        ],
        currency_code=currency,
        amount_refunded=money(refunded, currency),
        points_returned=sum(p for _, _, p in lines),
    )
    if returned_at is not None:
        event.returned_at.FromDatetime(returned_at)
    return event


def registered(customer_id: str, card: str, store: str = BERLIN) -> customer_events.CustomerRegistered:
    return customer_events.CustomerRegistered(customer_id=customer_id, loyalty_card_number=card, home_store_id=store)


def erased(customer_id: str, card: str) -> customer_events.CustomerErased:
    return customer_events.CustomerErased(customer_id=customer_id, loyalty_card_number=card)


def voided(basket_id: str, store: str = BERLIN) -> checkout_events.BasketVoided:
    return checkout_events.BasketVoided(basket_id=basket_id, store_id=store, hold_id=basket_id)


def adjust(
    stub: loyalty_pb2_grpc.LoyaltyServiceStub, customer_id: str, points: int, *, note: str = ""
) -> loyalty_pb2.AdjustPointsResponse:
    return stub.AdjustPoints(
        loyalty_pb2.AdjustPointsRequest(
            customer_id=customer_id,
            points=points,
            reason=loyalty_pb2.ADJUSTMENT_REASON_GOODWILL,
            note=note,
            request_id=str(uuid.uuid4()),
        ),
        timeout=10,
    )


def hold(
    stub: loyalty_pb2_grpc.LoyaltyServiceStub,
    hold_id: str,
    customer_id: str,
    points: int,
    *,
    store: str = BERLIN,
    request_id: str = "",
    ttl_seconds: int = 0,
) -> loyalty_pb2.HoldPointsResponse:
    request = loyalty_pb2.HoldPointsRequest(
        hold_id=hold_id,
        customer_id=customer_id,
        points=points,
        store_id=store,
        request_id=request_id or str(uuid.uuid4()),
    )
    if ttl_seconds:
        request.ttl.FromSeconds(ttl_seconds)
    return stub.HoldPoints(request, timeout=10)


def enrolled(running: RunningLoyalty, customer_id: str, points: int = 0, card: str = "") -> None:
    """An account registered with `points` (a goodwill adjustment)."""
    running.deliver(registered(customer_id, card or f"card-{customer_id}"))
    if points:
        adjust(running.stub, customer_id, points)


def sweep(running: RunningLoyalty, name: str) -> int:
    """Run one of the service's sweepers now, on the service's clock ("hold-expiry", "lot-expiry", "tiers",
    "erased-events")."""
    [sweeper] = [w for w in running.app.workers if isinstance(w, Sweeper) and w.thread_name == f"loyalty-{name}"]
    return sweeper.sweep()
