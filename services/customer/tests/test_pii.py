"""No personal data in logs, error messages or left behind by erasure: a full register/find/update/erase run logs
methods, codes and ids only; an erased row has nothing in any column PII_COLUMNS lists; unique violations that
reach the database (not caught by the pre-checks) still become the right ALREADY_EXISTS."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import grpc
import pytest
from customer_kit import BERLIN, RunningCustomer, card, error, person

from customer import storage
from customer.domain import Consent, Customer, EmailTaken, PhoneTaken, Profile
from pos.customer.v1 import customer_pb2 as pb
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.tables import idempotency_table
from storeplane_runtime.testing import wait_until

SECRETS = {
    "given": "Wilhelmina",
    "family": "Zwetschgenbaum",
    "email": "wilhelmina.zwetschgenbaum@example.org",
    "phone_in": "+49 151 7654 3210",
    "phone": "+4915176543210",
    "new_family": "Quittenstrauch",
    "new_email": "w.quitten@example.org",
    "card": card(777_000_001),
}


def _everything_logged(records: list[logging.LogRecord]) -> str:
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.extend(str(value) for value in record.__dict__.values())
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def test_a_full_run_logs_no_name_email_phone_or_card(
    customer: RunningCustomer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stub = customer.stub
    registered = stub.RegisterCustomer(
        pb.RegisterCustomerRequest(
            request_id="pii-1",
            customer=pb.Customer(
                given_name=SECRETS["given"],
                family_name=SECRETS["family"],
                email=SECRETS["email"],
                phone=SECRETS["phone_in"],
                loyalty_card_number=SECRETS["card"],
                home_store_id=BERLIN,
            ),
        ),
        timeout=10,
    ).customer
    stub.FindCustomer(pb.FindCustomerRequest(email=SECRETS["email"].upper()), timeout=10)
    stub.FindCustomer(pb.FindCustomerRequest(phone=SECRETS["phone_in"]), timeout=10)
    stub.FindCustomer(pb.FindCustomerRequest(loyalty_card_number=SECRETS["card"]), timeout=10)
    stub.UpdateCustomer(
        pb.UpdateCustomerRequest(
            request_id="pii-2",
            customer=pb.Customer(
                customer_id=registered.customer_id, family_name=SECRETS["new_family"], email=SECRETS["new_email"]
            ),
            update_mask={"paths": ["family_name", "email"]},
        ),
        timeout=10,
    )
    refusals = [
        error(
            stub.RegisterCustomer,
            pb.RegisterCustomerRequest(request_id="pii-3", customer=person(email=SECRETS["new_email"])),
        ),
        error(
            stub.RegisterCustomer,
            pb.RegisterCustomerRequest(request_id="pii-4", customer=person(phone=SECRETS["phone"])),
        ),
        error(
            stub.RegisterCustomer,
            pb.RegisterCustomerRequest(
                request_id="pii-5",
                customer=person(
                    given_name=SECRETS["given"] + "\x07", email=SECRETS["given"] + "@", phone=SECRETS["family"]
                ),
            ),
        ),
        error(stub.FindCustomer, pb.FindCustomerRequest(email="nobody." + SECRETS["email"])),
        error(stub.FindCustomer, pb.FindCustomerRequest(phone=SECRETS["phone"][:-1])),
    ]
    stub.EraseCustomer(pb.EraseCustomerRequest(request_id="pii-6", customer_id=registered.customer_id), timeout=10)
    error(stub.FindCustomer, pb.FindCustomerRequest(email=SECRETS["new_email"]))

    logged = _everything_logged(caplog.records)
    methods = {getattr(r, "grpc_method", "").rsplit("/", 1)[-1] for r in caplog.records}
    assert {"RegisterCustomer", "FindCustomer", "UpdateCustomer", "EraseCustomer"} <= methods  # the run was logged
    told = "\n".join(
        r.message + "".join(f"{v.field}{v.description}" for v in r.violations) + str(r.metadata) for r in refusals
    )
    for name, secret in SECRETS.items():
        if name == "phone_in":
            continue
        assert secret.lower() not in logged.lower(), f"{name} reached the logs"
        assert secret.lower() not in told.lower(), f"{name} reached an error"
    assert SECRETS["phone"][1:] not in logged


def _row(customer: RunningCustomer, customer_id: str) -> dict[str, object]:
    with customer.database.engine.connect() as conn:
        row = conn.execute(storage.customers.select().where(storage.customers.c.customer_id == customer_id)).one()
    return dict(row._mapping)


def test_erasure_nulls_every_pii_column_and_scrubs_stored_answers(customer: RunningCustomer) -> None:
    who = person(phone="+41 44 668 18 00", family_name=SECRETS["family"], marketing_email=pb.Consent(granted=True))
    request = pb.RegisterCustomerRequest(request_id="scrub", customer=who)
    registered = customer.stub.RegisterCustomer(request, timeout=10).customer
    customer.stub.EraseCustomer(pb.EraseCustomerRequest(request_id="scrub-e", customer_id=registered.customer_id))
    row = _row(customer, registered.customer_id)
    assert all(row[column] is None for column in storage.PII_COLUMNS["customers"])
    assert row["marketing_email"] is False and row["erased_at"] is not None
    with customer.database.engine.connect() as conn:
        answers = conn.execute(idempotency_table.select()).fetchall()
    assert answers and not any(
        SECRETS["family"].encode() in a.response or b"+41446681800" in a.response for a in answers
    )


def test_unique_violations_the_pre_checks_miss_still_name_the_field(customer: RunningCustomer) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)

    def profile(email: str, phone: str, number: str) -> Profile:
        return Profile("A", "", email, phone, number, Consent(), Consent(), BERLIN)

    with UnitOfWork(customer.database, source="test") as uow:
        first = Customer("c1", profile("a@example.com", "+4915100000001", card(1)), now, now)
        assert storage.create_customer(uow.connection, first, request=("t", "1"), now=now)
        uow.commit()
    for taken, clash in (
        (EmailTaken, profile("a@example.com", "", card(2))),
        (PhoneTaken, profile("b@example.com", "+4915100000001", card(3))),
    ):
        with UnitOfWork(customer.database, source="test") as uow, pytest.raises(taken):
            storage.create_customer(uow.connection, Customer("c2", clash, now, now), request=("t", "2"), now=now)
    with UnitOfWork(customer.database, source="test") as uow:
        storage.create_customer(
            uow.connection, Customer("c3", profile("c@example.com", "", card(4)), now, now), request=("t", "3"), now=now
        )
        uow.commit()
    with UnitOfWork(customer.database, source="test") as uow, pytest.raises(EmailTaken) as caught:
        storage.save_profile(uow.connection, Customer("c3", profile("a@example.com", "", card(4)), now, now))
    assert "a@example.com" not in str(caught.value) and caught.value.__cause__ is None
    # Any other failed statement's error (logged as INTERNAL) shows no parameters either.
    assert customer.database.engine.hide_parameters and customer.database.read_engine.hide_parameters
    assert not isinstance(caught.value, grpc.RpcError)


def test_after_erasure_no_table_holds_the_customers_data_once_the_events_went_out(
    database_url: str, make_customer
) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import MetaData, select

    customer = make_customer(database_url, erasure_sweep_seconds=0.05)
    who = person(given_name="Ottilie", family_name="Holunderbusch", email="ottilie@example.org", phone="+4915122223333")
    registered = customer.stub.RegisterCustomer(pb.RegisterCustomerRequest(request_id="all-1", customer=who)).customer
    update = pb.UpdateCustomerRequest(
        request_id="all-2",
        customer=pb.Customer(customer_id=registered.customer_id, phone="+4930 901820"),
        update_mask={"paths": ["phone"]},
    )
    customer.stub.UpdateCustomer(update, timeout=10)
    customer.stub.EraseCustomer(pb.EraseCustomerRequest(request_id="all-3", customer_id=registered.customer_id))
    needles = [b"Ottilie", b"Holunderbusch", b"ottilie@example.org", b"4915122223333", b"4930901820"]
    needles.append(registered.loyalty_card_number.encode())

    def left() -> list[str]:
        found = []
        tables = MetaData()
        with customer.database.engine.connect() as conn:
            tables.reflect(conn)
            for table in tables.sorted_tables:
                for row in conn.execute(select(table)):
                    for column, value in row._mapping.items():
                        data = value if isinstance(value, bytes) else str(value).encode()
                        found += [f"{table.name}.{column}" for needle in needles if needle in data]
        return found

    wait_until(lambda: not left(), timeout=10, what="no personal data left")
    with customer.database.engine.connect() as conn:
        assert conn.execute(storage.pending_erasures.select()).first() is None
    replay = customer.stub.RegisterCustomer(pb.RegisterCustomerRequest(request_id="all-1", customer=who)).customer
    assert replay.erased and replay.customer_id == registered.customer_id
