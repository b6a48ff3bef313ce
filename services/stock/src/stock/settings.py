"""Settings of the stock service: the common process settings plus the limits and timings of stock rules."""

from __future__ import annotations

from pydantic import Field, model_validator

from stock.domain import DEFAULT_REORDER_POINT, DEFAULT_RESERVATION_TTL, MAX_RESERVATION_TTL
from storeplane_runtime.settings import ServiceSettings


class StockSettings(ServiceSettings):
    """Environment of the stock service (docs/conventions.md), plus its own knobs (no prefix, like the rest)."""

    # A reservation lives this long after its last Reserve when the call names no TTL.
    reservation_default_ttl_seconds: float = Field(default=DEFAULT_RESERVATION_TTL.total_seconds(), gt=0, le=24 * 3600)
    # Longest TTL a caller may ask for.
    reservation_max_ttl_seconds: float = Field(default=MAX_RESERVATION_TTL.total_seconds(), gt=0, le=7 * 24 * 3600)
    max_reservation_lines: int = Field(default=200, ge=1, le=10_000)
    max_availability_skus: int = Field(default=500, ge=1, le=10_000)
    # Available quantity at or below which StockLow fires for items without their own reorder point; -1 = never.
    default_reorder_point: int = Field(default=DEFAULT_REORDER_POINT, ge=-1, le=1_000_000)
    # How often the sweeper looks for expired reservations, and how many it expires per transaction.
    expiry_sweep_seconds: float = Field(default=1.0, gt=0, le=3600)
    expiry_batch_size: int = Field(default=100, ge=1, le=10_000)
    # Rows applied per transaction by the imports (bounded memory whatever the stream length).
    import_chunk_rows: int = Field(default=1000, ge=1, le=50_000)
    # Writers of one stock level import on PostgreSQL, each with its own transactions (the rows of one level always go
    # to the same one, in stream order); SQLite always uses one.
    import_level_writers: int = Field(default=2, ge=1, le=16)
    # GetItem answers kept in memory (0: none), and how long one may be served at most; any change of the item or
    # its level drops it at once (through the committed-events feed on PostgreSQL, so the feed always listens).
    get_item_cache_size: int = Field(default=100_000, ge=0, le=10_000_000)
    get_item_cache_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Reserves arriving together are done in one transaction (group commit), at most this many (1: each alone), in
    # at most `lanes` such transactions at once (docs/conventions.md says why one lane is the default).
    reserve_batch_size: int = Field(default=32, ge=1, le=1000)
    reserve_batch_lanes: int = Field(default=1, ge=1, le=64)
    # While Reserves arrive together, a batch first waits this long for more to join (0: never).
    reserve_batch_linger_seconds: float = Field(default=0.004, ge=0, le=0.1)
    # Changes buffered per WatchStock subscriber; a subscriber that falls this far behind is cut off.
    watch_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _ttls_agree(self) -> StockSettings:
        if self.reservation_default_ttl_seconds > self.reservation_max_ttl_seconds:
            raise ValueError("RESERVATION_DEFAULT_TTL_SECONDS must not exceed RESERVATION_MAX_TTL_SECONDS")
        return self
