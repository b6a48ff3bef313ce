"""Customer rules without database or gRPC: names, emails, phones, card numbers (Luhn), masks, erasure, stats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from customer.domain import (
    CARD_NUMBER_LENGTH,
    Consent,
    ContactProblem,
    Customer,
    CustomerNotFound,
    Profile,
    ProfileDraft,
    Purchase,
    PurchaseStats,
    Refund,
    card_number_problem,
    changed_fields,
    check_mask,
    check_registration,
    check_update,
    erased,
    luhn_check_digit,
    luhn_valid,
    new_card_number,
    normalise_email,
    normalise_phone,
    register,
    taken_error,
    update,
)
from customer.settings import COUNTRY_OF_TIME_ZONE, CustomerSettings, store_countries
from storeplane_runtime.errors import InvalidInput
from storeplane_runtime.stores import DEFAULT_STORES

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
COUNTRIES = {"berlin-mitte": "DE", "new-york-5th-ave": "US", "nowhere": None}


def _violations(draft: ProfileDraft) -> dict[str, str]:
    with pytest.raises(InvalidInput) as caught:
        check_registration(draft, COUNTRIES, now=NOW)
    return {v.field: v.description for v in caught.value.violations}


def _profile(**changes: object) -> Profile:
    draft = ProfileDraft(given_name="Anna", email="anna@example.com", home_store_id="berlin-mitte")
    profile = check_registration(draft, COUNTRIES, now=NOW)
    return Profile(**{**profile.__dict__, "loyalty_card_number": "2990000000000", **changes})  # type: ignore[arg-type]


# --- card numbers -------------------------------------------------------------------------------------------------


def test_luhn_check_digit_matches_the_textbook_example() -> None:
    assert luhn_check_digit("7992739871") == "3"
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_luhn_catches_a_wrong_digit_and_swapped_neighbours() -> None:
    number = "2990000012342"
    number = number[:-1] + luhn_check_digit(number[:-1])
    assert luhn_valid(number)
    wrong_digit = number[:5] + str((int(number[5]) + 1) % 10) + number[6:]
    swapped = number[:3] + number[4] + number[3] + number[5:]
    assert not luhn_valid(wrong_digit)
    assert number[3] == number[4] or not luhn_valid(swapped)


def test_new_card_numbers_have_the_fixed_length_prefix_and_a_valid_check_digit() -> None:
    numbers = {new_card_number("299") for _ in range(200)}
    assert len(numbers) > 190  # random, not counted
    assert all(len(n) == CARD_NUMBER_LENGTH and n.startswith("299") and luhn_valid(n) for n in numbers)


@pytest.mark.parametrize(
    ("number", "problem"),
    [
        ("", "must not be empty"),
        ("12345", "must be 13 digits"),
        ("299000000000A", "must be 13 digits"),
        ("２９９００００００００００３", "must be 13 digits"),  # full-width digits are digits to Python, not to us
        ("2990000000001", "check digit does not match (Luhn)"),
    ],
)
def test_card_number_problems(number: str, problem: str) -> None:
    assert card_number_problem(number) == problem


# --- email and phone ----------------------------------------------------------------------------------------------


def test_email_is_normalised_to_lower_case() -> None:
    assert normalise_email("  Anna.Schmidt@Example.COM ") == "anna.schmidt@example.com"


@pytest.mark.parametrize(
    "raw", ["anna", "anna@", "@example.com", "anna@@example.com", "anna@exa mple.com", "a" * 250 + "@x.de"]
)
def test_bad_emails_are_refused_without_repeating_them(raw: str) -> None:
    with pytest.raises(ContactProblem) as caught:
        normalise_email(raw)
    assert raw not in str(caught.value)


@pytest.mark.parametrize("raw", ["+49 151 2345 6789", "+4915123456789", "0049 151 23456789", "+49 (0)151-2345-6789"])
def test_every_international_format_of_a_number_gives_one_e164(raw: str) -> None:
    assert normalise_phone(raw, None) == "+4915123456789"
    assert normalise_phone(raw, "US") == "+4915123456789"


def test_a_national_number_is_read_with_the_country_given() -> None:
    assert normalise_phone("0151 23456789", "DE") == "+4915123456789"
    assert normalise_phone("(415) 555-0123", "US") == "+14155550123"
    with pytest.raises(ContactProblem, match="international format"):
        normalise_phone("0151 23456789", None)


@pytest.mark.parametrize("raw", ["+49 1", "+999 123456789", "hello", "+49 151 2345 6789 1234 5678 9012 3456 7890 12"])
def test_impossible_numbers_are_refused(raw: str) -> None:
    with pytest.raises(ContactProblem) as caught:
        normalise_phone(raw, "DE")
    assert raw not in str(caught.value)


# --- registration ---------------------------------------------------------------------------------------------------


def test_registration_normalises_every_key_and_stamps_the_consents_given() -> None:
    draft = ProfileDraft(
        given_name=" Anna ",
        family_name="Schmidt",
        email="Anna@Example.com",
        phone="0151 23456789",
        loyalty_card_number="2990 0000 0000 0",
        marketing_email=True,
        home_store_id="berlin-mitte",
    )
    profile = check_registration(draft, COUNTRIES, now=NOW)
    assert (profile.given_name, profile.email, profile.phone) == ("Anna", "anna@example.com", "+4915123456789")
    assert profile.loyalty_card_number == "2990000000000"
    assert profile.marketing_email == Consent(True, NOW)
    assert profile.marketing_sms == Consent(False, None)  # never set


def test_registration_names_every_bad_field_by_its_path_and_never_echoes_it() -> None:
    draft = ProfileDraft(
        given_name="An\nna",
        family_name="x" * 101,
        email="anna-at-example",
        phone="12",
        loyalty_card_number="2990000000001",
        home_store_id="atlantis",
    )
    violations = _violations(draft)
    assert set(violations) == {
        "customer.given_name",
        "customer.family_name",
        "customer.email",
        "customer.phone",
        "customer.loyalty_card_number",
        "customer.home_store_id",
    }
    assert not any(secret in text for text in violations.values() for secret in ("anna-at-example", "An\nna"))


def test_registration_needs_a_given_name_a_home_store_and_one_key() -> None:
    violations = _violations(ProfileDraft(given_name="   "))
    assert set(violations) == {"customer", "customer.given_name", "customer.home_store_id"}


def test_a_store_without_a_country_reads_international_numbers_only() -> None:
    draft = ProfileDraft(given_name="A", phone="0151 23456789", home_store_id="nowhere")
    assert "customer.phone" in _violations(draft)
    ok = check_registration(
        ProfileDraft(given_name="A", phone="+4915123456789", home_store_id="nowhere"), COUNTRIES, now=NOW
    )
    assert ok.phone == "+4915123456789"


def test_store_countries_come_from_settings_or_else_the_time_zone() -> None:
    stores = {s.store_id: s for s in DEFAULT_STORES}
    countries = store_countries(stores, CustomerSettings(store_countries={"tokyo-shibuya": "jp"}))
    assert countries == {
        "berlin-mitte": "DE",
        "zurich-bahnhofstrasse": "CH",
        "new-york-5th-ave": "US",
        "tokyo-shibuya": "JP",
    }
    assert COUNTRY_OF_TIME_ZONE["Europe/Zurich"] == "CH"
    with pytest.raises(ValueError, match="XX"):
        CustomerSettings(store_countries={"berlin-mitte": "XX"})


# --- field masks and updates ------------------------------------------------------------------------------------------


def test_mask_paths_come_back_once_in_the_contract_order() -> None:
    assert check_mask(["phone", "given_name", "phone", "marketing_sms.granted"]) == (
        "given_name",
        "phone",
        "marketing_sms",
    )


def test_unknown_and_output_only_paths_and_an_empty_mask_are_refused_by_index() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_mask(["email", "stats", "nickname", "marketing_email.updated_at", "erased"])
    assert {v.field: v.description for v in caught.value.violations} == {
        "update_mask.paths[1]": "output only: cannot be changed",
        "update_mask.paths[2]": "unknown field",
        "update_mask.paths[3]": "output only: cannot be changed",
        "update_mask.paths[4]": "output only: cannot be changed",
    }
    with pytest.raises(InvalidInput):
        check_mask([])


def test_an_update_changes_only_the_masked_fields() -> None:
    before = _profile()
    draft = ProfileDraft(given_name="Anne", family_name="Other", email="new@example.com")
    after = check_update(before, draft, ["given_name"], COUNTRIES, now=NOW)
    assert (after.given_name, after.family_name, after.email) == ("Anne", before.family_name, before.email)
    assert changed_fields(before, after) == ("given_name",)


def test_a_consent_change_stamps_its_own_time_and_setting_it_again_does_not() -> None:
    before = _profile()
    later = NOW + timedelta(hours=1)
    granted = check_update(before, ProfileDraft(marketing_sms=True), ["marketing_sms"], COUNTRIES, now=later)
    assert granted.marketing_sms == Consent(True, later)
    again = check_update(
        granted, ProfileDraft(marketing_sms=True), ["marketing_sms"], COUNTRIES, now=later + timedelta(1)
    )
    assert again.marketing_sms == Consent(True, later)
    assert changed_fields(granted, again) == ()


def test_a_national_phone_in_an_update_is_read_with_the_new_home_store() -> None:
    before = _profile()
    draft = ProfileDraft(phone="(415) 555-0123", home_store_id="new-york-5th-ave")
    after = check_update(before, draft, ["phone", "home_store_id"], COUNTRIES, now=NOW)
    assert after.phone == "+14155550123"


def test_an_update_without_changes_causes_no_event() -> None:
    customer, _ = register("c1", _profile(), now=NOW)
    same, event = update(customer, customer.profile, now=NOW + timedelta(1))  # type: ignore[arg-type]
    assert event is None and same.updated_at == NOW


def test_update_names_the_changed_fields_in_its_event() -> None:
    customer, registered = register("c1", _profile(), now=NOW)
    assert (registered.customer_id, registered.loyalty_card_number) == ("c1", "2990000000000")
    after, event = update(customer, _profile(email="", given_name="Anne"), now=NOW + timedelta(1))
    assert event is not None and event.changed == ("given_name", "email")
    assert after.updated_at == NOW + timedelta(1)


# --- erasure ---------------------------------------------------------------------------------------------------------


def test_erasure_keeps_id_times_and_stats_and_a_second_one_changes_nothing() -> None:
    stats = PurchaseStats(sale_count=2)
    customer = Customer("c1", _profile(), created_at=NOW, updated_at=NOW, stats=stats)
    tombstone, event = erased(customer, now=NOW + timedelta(1))
    assert tombstone.profile is None and tombstone.erased and tombstone.stats == stats
    assert tombstone.erased_at == NOW + timedelta(1)
    assert event is not None and (event.customer_id, event.loyalty_card_number) == ("c1", "2990000000000")
    again, second = erased(tombstone, now=NOW + timedelta(2))
    assert again == tombstone and second is None
    with pytest.raises(CustomerNotFound):
        update(tombstone, _profile(), now=NOW)


def test_taken_errors_name_the_request_field_and_reason() -> None:
    error = taken_error("phone")
    assert (error.reason, error.metadata, error.violations[0].field) == (
        "PHONE_TAKEN",
        {"field": "customer.phone"},
        "customer.phone",
    )
    assert taken_error("loyalty_card_number").reason == "CARD_TAKEN"
    assert taken_error("email").reason == "EMAIL_TAKEN"


# --- statistics ------------------------------------------------------------------------------------------------------


def _sale(
    n: int, *, amount: int = 1000, hours: int = 0, store: str = "berlin-mitte", currency: str = "EUR"
) -> Purchase:
    return Purchase("c1", f"s{n}", store, currency, amount, NOW + timedelta(hours=hours))


def _return(n: int, amount: int = 300, currency: str = "EUR") -> Refund:
    return Refund("c1", f"r{n}", currency, amount, NOW)


def test_stats_end_the_same_in_any_order() -> None:
    changes = [
        lambda s: s.after_purchase(_sale(1, hours=1, store="berlin-mitte")),
        lambda s: s.after_purchase(_sale(2, amount=5000, hours=3, store="zurich-bahnhofstrasse", currency="CHF")),
        lambda s: s.after_refund(_return(1)),
        lambda s: s.after_purchase(_sale(3, hours=2)),
    ]
    results = set()
    for order in ([0, 1, 2, 3], [2, 3, 1, 0], [1, 2, 0, 3], [3, 2, 1, 0]):
        stats = PurchaseStats()
        for i in order:
            stats = changes[i](stats)
        results.add(
            (
                stats.sale_count,
                stats.return_count,
                tuple(sorted(stats.spend.items())),
                stats.last_purchase_at,
                stats.last_purchase_store_id,
            )
        )
    assert results == {(3, 1, (("CHF", 5000), ("EUR", 1700)), NOW + timedelta(hours=3), "zurich-bahnhofstrasse")}


def test_a_return_before_its_sale_goes_negative_then_right() -> None:
    stats = PurchaseStats().after_refund(_return(1, amount=400))
    assert stats.spend == {"EUR": -400} and stats.last_purchase_at is None
    stats = stats.after_purchase(_sale(1, amount=1000))
    assert stats.spend == {"EUR": 600} and stats.last_purchase_at == NOW


def test_two_sales_at_the_same_time_give_one_last_store_in_any_order() -> None:
    berlin, zurich = _sale(1, store="berlin-mitte"), _sale(2, store="zurich-bahnhofstrasse")
    one = PurchaseStats().after_purchase(berlin).after_purchase(zurich)
    other = PurchaseStats().after_purchase(zurich).after_purchase(berlin)
    assert one == other and one.last_purchase_store_id == "zurich-bahnhofstrasse"
