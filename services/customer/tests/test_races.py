"""Uniqueness under races on PostgreSQL: of 20 concurrent registrations of one email, phone (in 20 formats) or card,
exactly one succeeds and the others are ALREADY_EXISTS naming the field; never a 500 from a unique index."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable

import grpc
import pytest
from customer_kit import RunningCustomer, card, person

from customer.domain import normalise_phone
from pos.customer.v1 import customer_pb2 as pb
from storeplane_runtime.status import details_of

pytestmark = pytest.mark.postgres

# One number, written 20 ways (national ones read with the Berlin home store's country).
PHONE_FORMATS = [
    "+49 151 2345 6789",
    "+4915123456789",
    "0049 151 23456789",
    "0151 23456789",
    "+49 (0)151 23456789",
    "+49-151-2345-6789",
    "0049-151-2345-6789",
    "(0151) 23456789",
    "0151/23456789",
    "+49 1512 3456789",
    "+49 15 1234 56789",
    "0049 (151) 23456789",
    "01512 3456789",
    "0 151 234 567 89",
    "+49.151.2345.6789",
    "004915123456789",
    "+49 151-23456789",
    "0151-234-567-89",
    "+49 (151) 2345 6789",
    "0151 2345 6789",
]


@pytest.fixture
def racing(postgres_url: str, make_customer: Callable[..., RunningCustomer]) -> RunningCustomer:
    return make_customer(postgres_url, grpc_workers=32)


def _race(customer: RunningCustomer | list[RunningCustomer], customers: list[pb.Customer]) -> Counter[str]:
    replicas = customer if isinstance(customer, list) else [customer]
    barrier = threading.Barrier(len(customers))
    run = uuid.uuid4().hex
    outcomes: list[str] = []

    def one(i: int, who: pb.Customer) -> None:
        request = pb.RegisterCustomerRequest(request_id=f"race-{run}-{i}", customer=who)
        barrier.wait()
        try:
            replicas[i % len(replicas)].stub.RegisterCustomer(request, timeout=30)
            outcomes.append("OK")
        except grpc.RpcError as error:
            details = details_of(error)
            outcomes.append(f"{details.code.name}:{details.reason}")

    threads = [threading.Thread(target=one, args=(i, who)) for i, who in enumerate(customers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Counter(outcomes)


def test_twenty_registrations_of_one_email_one_wins(racing: RunningCustomer) -> None:
    outcomes = _race(racing, [person(email="Race@Example.com" if i % 2 else "race@example.com") for i in range(20)])
    assert outcomes == Counter({"OK": 1, "ALREADY_EXISTS:EMAIL_TAKEN": 19})


def test_twenty_registrations_of_one_phone_in_twenty_formats_one_wins(racing: RunningCustomer) -> None:
    assert {normalise_phone(p, "DE") for p in PHONE_FORMATS} == {"+4915123456789"}
    outcomes = _race(racing, [person(phone=p) for p in PHONE_FORMATS])
    assert outcomes == Counter({"OK": 1, "ALREADY_EXISTS:PHONE_TAKEN": 19})


def test_twenty_registrations_of_one_card_one_wins(racing: RunningCustomer) -> None:
    outcomes = _race(racing, [person(loyalty_card_number=card(4242)) for _ in range(20)])
    assert outcomes == Counter({"OK": 1, "ALREADY_EXISTS:CARD_TAKEN": 19})


def test_twenty_registrations_over_two_replicas_one_wins(
    postgres_url: str, make_customer: Callable[..., RunningCustomer]
) -> None:
    # Each replica batches its own calls; between the two, the unique index decides (and spoils a batch's
    # transaction, which is then run call by call).
    replicas = [make_customer(postgres_url), make_customer(postgres_url)]
    for attempt in range(3):
        outcomes = _race(replicas, [person(email=f"twice{attempt}@example.com") for _ in range(20)])
        assert outcomes == Counter({"OK": 1, "ALREADY_EXISTS:EMAIL_TAKEN": 19})
    outcomes = _race(replicas, [person(phone=p) for p in PHONE_FORMATS])
    assert outcomes == Counter({"OK": 1, "ALREADY_EXISTS:PHONE_TAKEN": 19})
