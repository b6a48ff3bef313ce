"""Settings of the checkout service: the common process settings plus basket timings, peer budgets and limits."""

from __future__ import annotations

from pydantic import Field, model_validator

from checkout.domain.baskets import DEFAULT_BASKET_TTL
from storeplane_runtime.money import default_redemption_setting, redemption_values
from storeplane_runtime.settings import ServiceSettings


class CheckoutSettings(ServiceSettings):
    """Environment of the checkout service (docs/conventions.md), plus its own knobs (no prefix, like the rest)."""

    # An open basket expires after this long without a change; the sweeper looks this often, this many per transaction.
    basket_ttl_seconds: float = Field(default=DEFAULT_BASKET_TTL.total_seconds(), gt=0, le=24 * 3600)
    expiry_sweep_seconds: float = Field(default=5.0, gt=0, le=3600)
    expiry_batch_size: int = Field(default=100, ge=1, le=10_000)
    max_basket_lines: int = Field(default=200, ge=1, le=1000)
    # A scan waits at most this long for stock.Reserve (the till never stops selling), and for GetItem on a cache miss.
    reserve_timeout_seconds: float = Field(default=0.3, gt=0, le=0.3)
    get_item_timeout_seconds: float = Field(default=0.5, gt=0, le=5)
    # Customer and loyalty calls (AttachCustomer, RedeemPoints).
    peer_timeout_seconds: float = Field(default=1.0, gt=0, le=10)
    # A peer that failed this many calls in a row (UNAVAILABLE, DEADLINE_EXCEEDED) is not called again for this long.
    breaker_failures: int = Field(default=3, ge=1, le=100)
    breaker_reset_seconds: float = Field(default=5.0, gt=0, le=600)
    # What points are worth per currency, read from loyalty's own setting (LOYALTY_REDEMPTION): the discount a till
    # shows and the points loyalty takes must agree, so both services are given the same value.
    loyalty_redemption: dict[str, tuple[int, int]] = Field(default_factory=default_redemption_setting)
    # Offline sales recorded per transaction (bounded memory whatever the stream length).
    offline_chunk_rows: int = Field(default=200, ge=1, le=10_000)

    @model_validator(mode="after")
    def _redemption_valid(self) -> CheckoutSettings:
        redemption_values(self.loyalty_redemption)
        return self
