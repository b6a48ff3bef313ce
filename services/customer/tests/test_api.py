"""CustomerService over real gRPC, on SQLite and PostgreSQL: every RPC and every error reason."""

from __future__ import annotations

import grpc
from customer_kit import BERLIN, NEW_YORK, RunningCustomer, card, error, person, register

from customer.domain import luhn_valid
from pos.customer.v1 import customer_pb2 as pb
from pos.customer.v1 import events_pb2
from storeplane_runtime.testing import published

INVALID, NOT_FOUND, EXISTS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
)


def _update(customer_id: str, paths: list[str], request_id: str, **fields: object) -> pb.UpdateCustomerRequest:
    return pb.UpdateCustomerRequest(
        request_id=request_id,
        customer=pb.Customer(customer_id=customer_id, **fields),  # type: ignore[arg-type]
        update_mask={"paths": paths},
    )


# --- RegisterCustomer ---------------------------------------------------------------------------------------------


def test_register_normalises_keys_assigns_a_card_and_stamps_consents(customer: RunningCustomer) -> None:
    registered = register(
        customer.stub,
        email="Lukas.Weber@Example.COM",
        phone="030 5550001",
        marketing_email=pb.Consent(granted=True),
    )
    assert (registered.email, registered.phone) == ("lukas.weber@example.com", "+49305550001")
    assert len(registered.loyalty_card_number) == 13 and luhn_valid(registered.loyalty_card_number)
    assert registered.loyalty_card_number.startswith("299")
    assert registered.marketing_email.granted and registered.marketing_email.HasField("updated_at")
    assert not registered.marketing_sms.HasField("updated_at")
    assert registered.created_at == registered.updated_at and not registered.erased
    [event] = published(customer.database, events_pb2.CustomerRegistered)
    assert (event.customer_id, event.loyalty_card_number, event.home_store_id) == (
        registered.customer_id,
        registered.loyalty_card_number,
        BERLIN,
    )
    assert event.meta.store_id == BERLIN


def test_register_keeps_a_given_card_and_a_retry_returns_the_first_answer(customer: RunningCustomer) -> None:
    request = pb.RegisterCustomerRequest(request_id="same", customer=person(loyalty_card_number=card(1)))
    first = customer.stub.RegisterCustomer(request, timeout=10)
    assert first.customer.loyalty_card_number == card(1)
    assert customer.stub.RegisterCustomer(request, timeout=10) == first
    other = pb.RegisterCustomerRequest(request_id="same", customer=person(loyalty_card_number=card(2)))
    reused = error(customer.stub.RegisterCustomer, other)
    assert (reused.code, reused.reason) == (INVALID, "IDEMPOTENCY_KEY_REUSED")
    assert len(published(customer.database, events_pb2.CustomerRegistered)) == 1


def test_register_refuses_bad_fields_each_by_its_path(customer: RunningCustomer) -> None:
    bad = pb.Customer(
        given_name="",
        family_name="Tab\there",
        email="not-an-email",
        phone="12",
        loyalty_card_number=card(3)[:-1] + "0" if card(3)[-1] != "0" else card(3)[:-1] + "1",
        home_store_id="atlantis",
    )
    details = error(customer.stub.RegisterCustomer, pb.RegisterCustomerRequest(request_id="bad", customer=bad))
    assert details.code == INVALID
    assert {v.field for v in details.violations} == {
        "customer.given_name",
        "customer.family_name",
        "customer.email",
        "customer.phone",
        "customer.loyalty_card_number",
        "customer.home_store_id",
    }
    assert "not-an-email" not in details.message + "".join(v.description for v in details.violations)
    no_key = pb.Customer(given_name="Anna", home_store_id=BERLIN)
    details = error(customer.stub.RegisterCustomer, pb.RegisterCustomerRequest(request_id="nokey", customer=no_key))
    assert [v.field for v in details.violations] == ["customer"]
    no_id = error(customer.stub.RegisterCustomer, pb.RegisterCustomerRequest(customer=person()))
    assert (no_id.code, [v.field for v in no_id.violations]) == (INVALID, ["request_id"])


def test_duplicate_email_phone_or_card_is_already_exists_naming_the_field(customer: RunningCustomer) -> None:
    register(customer.stub, email="mia@example.com", phone="+41 44 668 18 00", loyalty_card_number=card(4))
    cases = {
        "EMAIL_TAKEN": person(email="MIA@example.com"),
        "PHONE_TAKEN": person(phone="0041 44 668 18 00"),
        "CARD_TAKEN": person(loyalty_card_number=card(4)),
    }
    for reason, duplicate in cases.items():
        request = pb.RegisterCustomerRequest(request_id=f"dup-{reason}", customer=duplicate)
        details = error(customer.stub.RegisterCustomer, request)
        field = {"EMAIL_TAKEN": "email", "PHONE_TAKEN": "phone", "CARD_TAKEN": "loyalty_card_number"}[reason]
        assert (details.code, details.reason, details.metadata) == (EXISTS, reason, {"field": f"customer.{field}"})
        assert [v.field for v in details.violations] == [f"customer.{field}"]


# --- GetCustomer and FindCustomer ---------------------------------------------------------------------------------


def test_get_and_find_by_every_key(customer: RunningCustomer) -> None:
    anna = register(customer.stub, email="anna.find@example.com", phone="+49 151 2345 6789")
    assert customer.stub.GetCustomer(pb.GetCustomerRequest(customer_id=anna.customer_id), timeout=10).customer == anna
    lookups = [
        pb.FindCustomerRequest(customer_id=anna.customer_id),
        pb.FindCustomerRequest(loyalty_card_number=anna.loyalty_card_number),
        pb.FindCustomerRequest(loyalty_card_number=f"{anna.loyalty_card_number[:4]} {anna.loyalty_card_number[4:]}"),
        pb.FindCustomerRequest(email="Anna.Find@EXAMPLE.com"),
        pb.FindCustomerRequest(phone="+49 151 2345 6789"),
        pb.FindCustomerRequest(phone="+4915123456789"),
        pb.FindCustomerRequest(phone="0049 151 23456789"),
    ]
    for lookup in lookups:
        assert customer.stub.FindCustomer(lookup, timeout=10).customer.customer_id == anna.customer_id


def test_unknown_customers_are_not_found_and_bad_lookups_invalid(customer: RunningCustomer) -> None:
    missing = error(customer.stub.GetCustomer, pb.GetCustomerRequest(customer_id="nobody"))
    assert (missing.code, missing.reason) == (NOT_FOUND, "CUSTOMER_NOT_FOUND")
    for lookup in (
        pb.FindCustomerRequest(email="ghost@example.com"),
        pb.FindCustomerRequest(loyalty_card_number=card(99)),
    ):
        details = error(customer.stub.FindCustomer, lookup)
        assert (details.code, details.reason) == (NOT_FOUND, "CUSTOMER_NOT_FOUND")
        assert "ghost" not in details.message and card(99) not in details.message
    bad = {
        "lookup": pb.FindCustomerRequest(),
        "email": pb.FindCustomerRequest(email="nope"),
        "phone": pb.FindCustomerRequest(phone="0151 23456789"),  # national: no store gives the country here
        "loyalty_card_number": pb.FindCustomerRequest(loyalty_card_number="1234"),
        "customer_id": pb.FindCustomerRequest(customer_id="has space"),
    }
    for field, lookup in bad.items():
        details = error(customer.stub.FindCustomer, lookup)
        assert (details.code, [v.field for v in details.violations]) == (INVALID, [field])
    empty_id = error(customer.stub.GetCustomer, pb.GetCustomerRequest())
    assert (empty_id.code, [v.field for v in empty_id.violations]) == (INVALID, ["customer_id"])


# --- UpdateCustomer -------------------------------------------------------------------------------------------------


def test_update_changes_only_masked_fields_and_names_them_in_its_event(customer: RunningCustomer) -> None:
    anna = register(customer.stub, family_name="Schmidt")
    request = _update(
        anna.customer_id,
        ["given_name", "phone", "home_store_id", "marketing_sms"],
        "u1",
        given_name="Anne",
        family_name="ignored",
        phone="(212) 555-0147",  # national, read with the new home store's country
        home_store_id=NEW_YORK,
        marketing_sms=pb.Consent(granted=True),
    )
    updated = customer.stub.UpdateCustomer(request, timeout=10).customer
    assert (updated.given_name, updated.family_name, updated.phone) == ("Anne", "Schmidt", "+12125550147")
    assert updated.home_store_id == NEW_YORK and updated.email == anna.email
    assert (
        updated.marketing_sms.granted and updated.marketing_sms.updated_at.ToDatetime() > anna.created_at.ToDatetime()
    )
    assert updated.updated_at.ToDatetime() > anna.updated_at.ToDatetime()
    assert customer.stub.UpdateCustomer(request, timeout=10).customer == updated  # a retry
    [event] = published(customer.database, events_pb2.CustomerUpdated)
    assert list(event.update_mask.paths) == ["given_name", "phone", "marketing_sms", "home_store_id"]
    assert (event.customer_id, event.loyalty_card_number, event.home_store_id) == (
        anna.customer_id,
        anna.loyalty_card_number,
        NEW_YORK,
    )
    again = customer.stub.UpdateCustomer(_update(anna.customer_id, ["given_name"], "u2", given_name="Anne"), timeout=10)
    assert again.customer.updated_at == updated.updated_at  # nothing changed: no new time, no event
    assert len(published(customer.database, events_pb2.CustomerUpdated)) == 1


def test_update_refuses_bad_masks_bad_values_and_taken_keys(customer: RunningCustomer) -> None:
    register(customer.stub, email="taken@example.com", phone="+81 3-1234-5678", loyalty_card_number=card(5))
    anna = register(customer.stub)
    bad_mask = error(customer.stub.UpdateCustomer, _update(anna.customer_id, ["nickname", "stats", "email"], "m"))
    assert (bad_mask.code, [v.field for v in bad_mask.violations]) == (
        INVALID,
        ["update_mask.paths[0]", "update_mask.paths[1]"],
    )
    empty = error(customer.stub.UpdateCustomer, _update(anna.customer_id, [], "e"))
    assert (empty.code, [v.field for v in empty.violations]) == (INVALID, ["update_mask"])
    bad_value = error(customer.stub.UpdateCustomer, _update(anna.customer_id, ["given_name"], "v", given_name=""))
    assert (bad_value.code, [v.field for v in bad_value.violations]) == (INVALID, ["customer.given_name"])
    cases = {
        "EMAIL_TAKEN": ("email", {"email": "Taken@Example.com"}),
        "PHONE_TAKEN": ("phone", {"phone": "+81312345678"}),
        "CARD_TAKEN": ("loyalty_card_number", {"loyalty_card_number": card(5)}),
    }
    for reason, (path, fields) in cases.items():
        details = error(customer.stub.UpdateCustomer, _update(anna.customer_id, [path], f"t-{reason}", **fields))
        assert (details.code, details.reason, details.metadata) == (EXISTS, reason, {"field": f"customer.{path}"})
    unknown = error(customer.stub.UpdateCustomer, _update("nobody", ["given_name"], "n", given_name="X"))
    assert (unknown.code, unknown.reason) == (NOT_FOUND, "CUSTOMER_NOT_FOUND")


def test_an_update_may_keep_its_own_keys_and_replace_a_lost_card(customer: RunningCustomer) -> None:
    anna = register(customer.stub, phone="+4915111111111")
    same = _update(anna.customer_id, ["email", "phone"], "own", email=anna.email.upper(), phone="0049 151 11111111")
    assert customer.stub.UpdateCustomer(same, timeout=10).customer.email == anna.email
    replaced = customer.stub.UpdateCustomer(_update(anna.customer_id, ["loyalty_card_number"], "lost"), timeout=10)
    new_card = replaced.customer.loyalty_card_number
    assert new_card != anna.loyalty_card_number and luhn_valid(new_card)
    old_card = error(customer.stub.FindCustomer, pb.FindCustomerRequest(loyalty_card_number=anna.loyalty_card_number))
    assert old_card.code == NOT_FOUND
    reuse = error(
        customer.stub.RegisterCustomer,
        pb.RegisterCustomerRequest(request_id="reuse", customer=person(loyalty_card_number=anna.loyalty_card_number)),
    )
    assert (reuse.code, reuse.reason) == (EXISTS, "CARD_TAKEN")  # a replaced card is never given out again


# --- EraseCustomer --------------------------------------------------------------------------------------------------


def test_erase_leaves_a_tombstone_everywhere_and_frees_email_and_phone(customer: RunningCustomer) -> None:
    anna = register(customer.stub, email="erase.me@example.com", phone="+49 151 9999 0000")
    erase = pb.EraseCustomerRequest(request_id="erase-1", customer_id=anna.customer_id)
    tombstone = customer.stub.EraseCustomer(erase, timeout=10).customer
    assert tombstone.erased and tombstone.HasField("erased_at") and tombstone.customer_id == anna.customer_id
    assert (tombstone.given_name, tombstone.email, tombstone.phone, tombstone.loyalty_card_number) == ("", "", "", "")
    assert tombstone.home_store_id == "" and tombstone.created_at == anna.created_at
    assert (
        customer.stub.GetCustomer(pb.GetCustomerRequest(customer_id=anna.customer_id), timeout=10).customer == tombstone
    )
    again = pb.EraseCustomerRequest(request_id="erase-2", customer_id=anna.customer_id)
    assert customer.stub.EraseCustomer(again, timeout=10).customer == tombstone  # erasing twice is fine
    [event] = published(customer.database, events_pb2.CustomerErased)
    assert (event.customer_id, event.loyalty_card_number) == (anna.customer_id, anna.loyalty_card_number)
    assert event.meta.store_id == ""
    for lookup in (
        pb.FindCustomerRequest(customer_id=anna.customer_id),
        pb.FindCustomerRequest(email="erase.me@example.com"),
        pb.FindCustomerRequest(phone="+4915199990000"),
        pb.FindCustomerRequest(loyalty_card_number=anna.loyalty_card_number),
    ):
        details = error(customer.stub.FindCustomer, lookup)
        assert (details.code, details.reason) == (NOT_FOUND, "CUSTOMER_NOT_FOUND")
    gone = error(customer.stub.UpdateCustomer, _update(anna.customer_id, ["given_name"], "after", given_name="X"))
    assert gone.code == NOT_FOUND
    unknown = error(customer.stub.EraseCustomer, pb.EraseCustomerRequest(request_id="e3", customer_id="nobody"))
    assert (unknown.code, unknown.reason) == (NOT_FOUND, "CUSTOMER_NOT_FOUND")
    # The email and phone are free again; the card number is not (never reused).
    again_anna = register(customer.stub, email="erase.me@example.com", phone="+49 151 9999 0000")
    assert again_anna.customer_id != anna.customer_id
    reuse = error(
        customer.stub.RegisterCustomer,
        pb.RegisterCustomerRequest(
            request_id="card-again", customer=person(loyalty_card_number=anna.loyalty_card_number)
        ),
    )
    assert (reuse.code, reuse.reason) == (EXISTS, "CARD_TAKEN")


def test_a_retried_registration_after_erasure_answers_the_tombstone(customer: RunningCustomer) -> None:
    request = pb.RegisterCustomerRequest(request_id="before-erase", customer=person(email="retry@example.com"))
    anna = customer.stub.RegisterCustomer(request, timeout=10).customer
    update = _update(anna.customer_id, ["family_name"], "upd-before-erase", family_name="Secret")
    customer.stub.UpdateCustomer(update, timeout=10)
    customer.stub.EraseCustomer(pb.EraseCustomerRequest(request_id="er", customer_id=anna.customer_id), timeout=10)
    replay = customer.stub.RegisterCustomer(request, timeout=10).customer
    assert replay.erased and replay.customer_id == anna.customer_id and replay.email == ""
    assert customer.stub.UpdateCustomer(update, timeout=10).customer.family_name == ""
