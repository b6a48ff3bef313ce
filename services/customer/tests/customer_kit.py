"""Helpers of the customer tests: start the real service (gRPC over a socket), register customers, read errors."""

from __future__ import annotations

import itertools
from typing import Any

import grpc
import pytest

from customer.api import CustomerServicer
from customer.domain import luhn_check_digit
from customer.main import create_app
from customer.settings import CustomerSettings
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from storeplane_runtime.status import ErrorDetails, details_of
from storeplane_runtime.testing import RunningService, service_settings, start_service

BERLIN, ZURICH, NEW_YORK, TOKYO = "berlin-mitte", "zurich-bahnhofstrasse", "new-york-5th-ave", "tokyo-shibuya"
_ids = itertools.count(1)


class RunningCustomer(RunningService):
    """The customer service on a free port (the kit's `RunningService`) with its stub and servicer at hand."""

    @property
    def stub(self) -> customer_pb2_grpc.CustomerServiceStub:
        return self.stub_of(customer_pb2_grpc.CustomerServiceStub)

    @property
    def servicer(self) -> CustomerServicer:
        return self.app.servicer(CustomerServicer)


def start_customer(url: str, **overrides: Any) -> RunningCustomer:
    settings = service_settings(CustomerSettings, "customer", url, **{"grpc_workers": 32, **overrides})
    running = start_service(create_app, settings)
    return RunningCustomer(running.app, running.port, running.channel)


def card(serial: int, prefix: str = "777") -> str:
    """A valid 13-digit card number (Luhn) from a serial."""
    body = f"{prefix}{serial:09d}"
    return body + luhn_check_digit(body)


def person(**fields: Any) -> customer_pb2.Customer:
    """A valid customer to register (a unique email unless given)."""
    n = next(_ids)
    values: dict[str, Any] = {
        "given_name": "Anna",
        "family_name": "Schmidt",
        "email": f"anna.{n}@example.com",
        "home_store_id": BERLIN,
    }
    values.update(fields)
    return customer_pb2.Customer(**values)


def register(stub: customer_pb2_grpc.CustomerServiceStub, **fields: Any) -> customer_pb2.Customer:
    request = customer_pb2.RegisterCustomerRequest(request_id=f"reg-{next(_ids)}", customer=person(**fields))
    return stub.RegisterCustomer(request, timeout=10).customer


def error(call: Any, request: Any) -> ErrorDetails:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return details_of(caught.value)


def bulk_customers(database: Any, count: int, *, start: Any, same_time: int = 1, erased_every: int = 0) -> None:
    """Insert `count` customers straight into the service's table (quick: for the export's volume), with
    `updated_at` advancing by a millisecond every `same_time` rows (several customers then share one time), every
    `erased_every`-th one a tombstone."""
    from datetime import timedelta

    from customer.storage import customers

    rows = []
    for i in range(count):
        at = start + timedelta(milliseconds=i // same_time)
        erased = bool(erased_every) and i % erased_every == 0
        rows.append(
            {
                "customer_id": f"bulk-{i:08d}",
                "given_name": None if erased else f"Given{i}",
                "family_name": None if erased else "Bulk",
                "email": None if erased else f"bulk{i}@example.com",
                "phone": None,
                "loyalty_card_number": None if erased else card(i, prefix="555"),
                "home_store_id": None if erased else BERLIN,
                "marketing_email": False,
                "marketing_sms": False,
                "created_at": at,
                "updated_at": at,
                "erased_at": at if erased else None,
                "sale_count": 0,
                "return_count": 0,
            }
        )
    with database.engine.begin() as conn:
        for chunk in range(0, count, 5000):
            conn.execute(customers.insert(), rows[chunk : chunk + 5000])
