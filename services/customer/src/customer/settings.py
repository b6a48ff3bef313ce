"""Settings of the customer service: the common process settings, the loyalty card numbers it issues, the country
each store reads national phone numbers with, and the export's page size."""

from __future__ import annotations

from collections.abc import Mapping

import phonenumbers
from pydantic import Field, field_validator

from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.stores import Store

# A store's country, when STORE_COUNTRIES does not name it, from its time zone. The zones of the configured stores
# and a few neighbours; a store in none of them reads international phone formats only until STORE_COUNTRIES says.
COUNTRY_OF_TIME_ZONE: Mapping[str, str] = {
    "Europe/Berlin": "DE",
    "Europe/Zurich": "CH",
    "Europe/Vienna": "AT",
    "Europe/Paris": "FR",
    "Europe/Amsterdam": "NL",
    "Europe/London": "GB",
    "Europe/Stockholm": "SE",
    "Europe/Copenhagen": "DK",
    "America/New_York": "US",
    "America/Chicago": "US",
    "America/Denver": "US",
    "America/Los_Angeles": "US",
    "Asia/Tokyo": "JP",
}


class CustomerSettings(ServiceSettings):
    """Environment of the customer service (docs/conventions.md), plus its own knobs (no prefix, like the rest)."""

    # Leading digits of the loyalty card numbers the service assigns (13 digits with a Luhn check digit in all).
    card_prefix: str = Field(default="299", pattern=r"^[0-9]{0,6}$")
    # Store id -> ISO 3166 country whose national phone format the store's customers may use (JSON), for stores
    # whose time zone is not in COUNTRY_OF_TIME_ZONE or where it says the wrong thing.
    store_countries: dict[str, str] = Field(default_factory=dict)
    # Customers ExportCustomers reads per statement (keyset pages: memory stays bounded by this).
    export_page_size: int = Field(default=500, ge=1, le=10_000)
    # RegisterCustomer calls arriving together are done in one transaction (group commit, as stock's Reserve), at
    # most this many (1: each alone), in at most `lanes` such transactions at once; while they arrive together a
    # batch first waits up to `linger` seconds for more (0: never).
    register_batch_size: int = Field(default=32, ge=1, le=1000)
    register_batch_lanes: int = Field(default=1, ge=1, le=64)
    register_batch_linger_seconds: float = Field(default=0.004, ge=0, le=0.1)
    # How often the erasure sweeper deletes the events of erased customers that went out since (they carry the card
    # number), and how many outbox rows per transaction.
    erasure_sweep_seconds: float = Field(default=2.0, gt=0, le=3600)
    erasure_sweep_batch: int = Field(default=500, ge=1, le=100_000)

    @field_validator("store_countries")
    @classmethod
    def _known_countries(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(c for c in value.values() if c.upper() not in phonenumbers.SUPPORTED_REGIONS)
        if unknown:
            raise ValueError(f"STORE_COUNTRIES names countries without phone numbering plans: {', '.join(unknown)}")
        return {store: country.upper() for store, country in value.items()}


def store_countries(stores: Mapping[str, Store], settings: CustomerSettings) -> dict[str, str | None]:
    """Every configured store -> the country its national phone numbers belong to (None: international only)."""
    return {
        store_id: settings.store_countries.get(store_id) or COUNTRY_OF_TIME_ZONE.get(store.time_zone)
        for store_id, store in stores.items()
    }
