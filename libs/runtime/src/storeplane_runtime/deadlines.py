"""The deadline of the call being served, so calls to peers made on its behalf never outlive it."""

from __future__ import annotations

import contextvars
import time

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("storeplane_deadline", default=None)


def set_deadline(seconds_from_now: float) -> contextvars.Token[float | None]:
    return _deadline.set(time.monotonic() + seconds_from_now)


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def remaining(default: float) -> float:
    """Seconds left for the current call, or `default` outside a call; never negative."""
    deadline = _deadline.get()
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic()))


def current() -> float | None:
    """The current call's deadline (`time.monotonic()` clock), None outside a call."""
    return _deadline.get()
