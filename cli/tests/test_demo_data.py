"""The demo data is deterministic, well-formed, and priced in whole minor units for every store currency."""

from __future__ import annotations

from customer.domain import ProfileDraft, card_number_problem, check_registration
from storeplane_cli import demo_data
from storeplane_runtime.clock import utcnow
from storeplane_runtime.stores import DEFAULT_STORES


def _ean_valid(code: str) -> bool:
    digits = [int(c) for c in code]
    return len(code) == 13 and sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0


def test_catalogue_is_the_same_every_time_and_a_few_hundred_items_long() -> None:
    first, second = demo_data.catalogue(), demo_data.catalogue()
    assert first == second
    assert 200 <= len(first) <= 1000
    assert len({i.sku for i in first}) == len(first)
    assert len({i.barcode for i in first}) == len(first)


def test_every_barcode_is_a_valid_ean13() -> None:
    assert all(_ean_valid(i.barcode) for i in demo_data.catalogue())
    assert demo_data.ean13("400638133393") == "4006381333931"  # a real EAN-13


def test_every_item_has_a_positive_integer_price_in_every_store_currency() -> None:
    currencies = {s.currency for s in DEFAULT_STORES}
    for item in demo_data.catalogue():
        assert currencies <= set(item.prices_minor)
        assert all(isinstance(v, int) and v > 0 for v in item.prices_minor.values())
        assert item.prices_minor["JPY"] % 10 == 0


def test_stock_levels_cover_every_store_and_item_once() -> None:
    rows = list(demo_data.stock_levels())
    assert len(rows) == len(DEFAULT_STORES) * len(demo_data.catalogue())
    assert len({(store, sku) for store, sku, _ in rows}) == len(rows)
    assert all(on_hand >= 0 for _, _, on_hand in rows)


def test_customers_have_unique_cards_and_known_home_stores() -> None:
    people = demo_data.customers()
    stores = {s.store_id for s in DEFAULT_STORES}
    assert len({p.loyalty_card_number for p in people}) == len(people)
    assert all(p.home_store_id in stores and card_number_problem(p.loyalty_card_number) is None for p in people)


def test_customers_pass_the_customer_services_checks() -> None:
    countries = {s.store_id: None for s in DEFAULT_STORES}  # international formats only: valid anywhere
    for p in demo_data.customers():
        draft = ProfileDraft(
            p.given_name, p.family_name, p.email, p.phone, p.loyalty_card_number, None, None, p.home_store_id
        )
        profile = check_registration(draft, countries, now=utcnow())
        assert (profile.email, profile.phone, profile.loyalty_card_number) == (p.email, p.phone, p.loyalty_card_number)
