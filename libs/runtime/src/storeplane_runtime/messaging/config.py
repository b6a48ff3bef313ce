"""Tuning of the event backbone and its housekeeping, read from the environment (EVENTS_*, OUTBOX_*, INBOX_*,
PRUNE_*), with defaults for production."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class MessagingSettings(BaseSettings):
    """How the relay polls, how consumers retry and park, and how long the shared tables keep their rows."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Delays (seconds) before the 2nd, 3rd, ... attempt of a failing handler; one retry queue per delay.
    events_retry_delays: Annotated[tuple[float, ...], NoDecode] = (1.0, 10.0, 60.0)
    # Redeliveries (crashes, nacks) a quorum queue allows before it dead-letters to the parking queue.
    events_delivery_limit: int = Field(default=10, ge=1, le=1000)
    events_prefetch: int = Field(default=200, ge=1, le=10_000)
    # Slow start after a crash: each connection begins with one message in flight and takes the full prefetch only
    # after this many first-time deliveries in a row were applied and acknowledged (0: full prefetch at once).
    # A quorum queue raises the delivery count of every unacknowledged message when a consumer dies, so a process
    # that crashes on a redelivered (suspect) message must not hold innocent ones at that moment.
    events_slow_start_deliveries: int = Field(default=10, ge=0, le=10_000)
    events_batch_size: int = Field(default=100, ge=1, le=10_000)
    outbox_batch_size: int = Field(default=500, ge=1, le=10_000)
    outbox_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Shortest time between two relay passes woken by commits: under load, each pass then takes what a few
    # milliseconds of commits wrote (one SELECT and one UPDATE for many rows) instead of one transaction's events.
    # A lone commit is relayed at once; a busy outbox adds at most this much to each event's lag.
    outbox_coalesce_seconds: float = Field(default=0.005, ge=0, le=1)
    outbox_coalesce_factor: float = Field(default=3.0, ge=0, le=100)
    outbox_coalesce_max_seconds: float = Field(default=0.025, ge=0, le=1)
    outbox_retention_hours: float = Field(default=72.0, ge=0)
    # PostgreSQL: the relay vacuums the outbox itself once it has marked this many rows sent (0: never), at most
    # every `outbox_vacuum_min_seconds`. Marking a row sent leaves a dead row version and a dead entry in the
    # unsent-rows index; on a busy queue table they pile up faster than autovacuum's defaults clean them (or
    # forever where autovacuum is off), and every relay pass then wades through them.
    outbox_vacuum_rows: int = Field(default=20_000, ge=0)
    outbox_vacuum_min_seconds: float = Field(default=10.0, ge=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0, le=600)
    amqp_heartbeat_seconds: int = Field(default=30, ge=0, le=600)
    # Housekeeping, at start and then every `prune_interval_seconds`: the relay deletes sent outbox rows, the pruner
    # idempotency keys (`idempotency.RETENTION`) and inbox rows, at most `prune_batch_size` rows per transaction (so
    # that no delete holds locks for long), until none past its retention is left.
    prune_interval_seconds: float = Field(default=600.0, gt=0, le=86_400)
    prune_batch_size: int = Field(default=1000, ge=1, le=100_000)
    # How long a consumer remembers that it applied an event: a copy delivered after that is applied again. Longer
    # than any redelivery of the broker (`longest_retry_path_seconds`, checked), with days to spare for an operator
    # who replays parked events.
    inbox_retention_hours: float = Field(default=168.0, gt=0)

    @field_validator("events_retry_delays", mode="before")
    @classmethod
    def _delays(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(float(part) for part in value.replace(" ", "").split(",") if part)
        if isinstance(value, list | tuple) and any(float(v) <= 0 for v in value):
            raise ValueError("every retry delay must be > 0 seconds")
        return value

    @field_validator("inbox_retention_hours")
    @classmethod
    def _outlasts_redeliveries(cls, value: float, info: ValidationInfo) -> float:
        fields = ("events_retry_delays", "events_delivery_limit", "reconnect_max_seconds")
        if not all(name in info.data for name in fields):
            return value  # one of them is wrong itself, and reported so
        needed = _retry_path(*(info.data[name] for name in fields))
        if value * 3600 <= needed:
            raise ValueError(
                f"must be longer than the longest retry path of an event ({needed:g} s, {needed / 3600:.3g} h)"
            )
        return value

    @property
    def longest_retry_path_seconds(self) -> float:
        """How long after its first delivery the broker may still redeliver an event, short of an operator's replay."""
        return _retry_path(self.events_retry_delays, self.events_delivery_limit, self.reconnect_max_seconds)

    @property
    def max_attempts(self) -> int:
        """Handler attempts before a message is parked: the first one plus one per retry delay."""
        return len(self.events_retry_delays) + 1


def _retry_path(retry_delays: tuple[float, ...], delivery_limit: int, reconnect_max_seconds: float) -> float:
    # Every retry delay, plus a reconnect backoff for each redelivery a queue allows (a consumer died and came back).
    return float(sum(retry_delays)) + delivery_limit * reconnect_max_seconds
