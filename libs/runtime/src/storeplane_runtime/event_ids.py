"""Event ids: one scheme for every event, UUIDv7 (RFC 9562) — time-ordered, so ids made together sort together
and the outbox's unique index grows at its right edge instead of taking inserts at random places."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_event_id", "new_event_ids"]

MAX_AT_ONCE = 0x1000  # the 12-bit counter after the version nibble


def new_event_ids(count: int) -> list[str]:
    """`count` new event ids: the time in milliseconds first, then a counter within this call and 62 random bits,
    from one read of the system's randomness (a read per id would be a system call and an object per id)."""
    if not 0 < count <= MAX_AT_ONCE:
        raise ValueError(f"between 1 and {MAX_AT_ONCE} ids at a time (12-bit counter)")
    millis = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex()
    head = f"{millis[:8]}-{millis[8:]}-7"
    random = os.urandom(8 * count).hex()
    variant = "89ab"  # the two top bits of the variant nibble are 10
    return [
        f"{head}{i:03x}-{variant[int(random[j], 16) & 3]}{random[j + 1 : j + 4]}-{random[j + 4 : j + 16]}"
        for i, j in zip(range(count), range(0, 16 * count, 16), strict=True)
    ]


class _Clock(threading.local):
    """Per thread: the millisecond and counter of the last id made, so a thread's ids sort in the order made."""

    def __init__(self) -> None:
        self.millis = 0
        self.counter = 0


_clock = _Clock()


def new_event_id() -> str:
    """One new event id. Within a millisecond a thread's ids count up; past 4096 of them the millisecond is borrowed
    from the next one (RFC 9562's monotonic counter), so they never sort out of the order they were made."""
    clock = _clock
    millis = time.time_ns() // 1_000_000
    if millis > clock.millis:
        clock.millis, clock.counter = millis, 0
    else:
        clock.counter += 1
        if clock.counter >= MAX_AT_ONCE:
            clock.millis, clock.counter = clock.millis + 1, 0
    hexed = clock.millis.to_bytes(6, "big").hex()
    random = os.urandom(8).hex()
    variant = "89ab"[int(random[0], 16) & 3]
    return f"{hexed[:8]}-{hexed[8:]}-7{clock.counter:03x}-{variant}{random[1:4]}-{random[4:16]}"
