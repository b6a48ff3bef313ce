"""Time as every service stores it: aware UTC datetimes (SQLite hands them back naive, which means UTC).

Plain Python: domain modules may use it.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["EPOCH", "as_utc", "timestamp_parts", "utcnow"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime; a naive one is taken as UTC already (what SQLite returns)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def timestamp_parts(value: datetime) -> tuple[int, int]:
    """(seconds, nanos) of a protobuf Timestamp for `value` (naive means UTC), without Timestamp.FromDatetime's
    calendar work: events are built by the thousand in imports."""
    delta = as_utc(value) - EPOCH
    return delta.days * 86_400 + delta.seconds, delta.microseconds * 1000
