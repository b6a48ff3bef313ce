"""Datetimes to and from `google.protobuf.Timestamp` (for messages and events; domain code uses `clock`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from storeplane_runtime.clock import EPOCH, timestamp_parts

__all__ = ["from_timestamp", "to_timestamp"]


def to_timestamp(value: datetime | None) -> Timestamp | None:
    """The Timestamp of `value` (naive means UTC); None stays None, so an optional field stays unset."""
    if value is None:
        return None
    seconds, nanos = timestamp_parts(value)
    return Timestamp(seconds=seconds, nanos=nanos)


def from_timestamp(stamp: Timestamp) -> datetime:
    """An aware UTC datetime (microseconds: Python's resolution)."""
    return EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
