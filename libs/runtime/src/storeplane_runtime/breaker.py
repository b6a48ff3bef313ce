"""A circuit breaker for calls to a peer that may be down: after `failures` failed calls in a row the breaker opens
and calls fail at once (no waiting out a deadline on every scan while stock is down); after `reset_seconds` one
trial call is let through (half-open): its success closes the breaker, its failure opens it again.

    breaker = CircuitBreaker("stock.Reserve", failures=3, reset_seconds=5, counts=peer_down)
    try:
        reply = breaker.call(lambda: stock.Reserve(request, timeout=0.3))
    except BreakerOpen:
        ...  # the peer is known to be down: carry on without it
    except grpc.RpcError:
        ...  # this call failed (and was counted when `counts` says it is the peer's fault)

Only failures `counts` accepts (e.g. UNAVAILABLE, DEADLINE_EXCEEDED) count; an answer such as NOT_FOUND or
FAILED_PRECONDITION proves the peer is up and counts as a success. Thread-safe; no gRPC import (the caller's
`counts` knows its exceptions).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from storeplane_runtime.errors import Unavailable

__all__ = ["BreakerOpen", "CircuitBreaker"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class BreakerOpen(Unavailable):
    """The peer failed too often lately; the call was not made."""

    reason = "PEER_UNAVAILABLE"


class CircuitBreaker:
    """Fails fast while a peer is down; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        failures: int = 3,
        reset_seconds: float = 5.0,
        counts: Callable[[BaseException], bool] = lambda _exc: True,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        if failures < 1 or reset_seconds <= 0:
            raise ValueError("a breaker needs failures >= 1 and reset_seconds > 0")
        self.name = name
        self._threshold = failures
        self._reset = reset_seconds
        self._counts = counts
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failed = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> str:
        """`closed`, `open` or `half-open` (open whose reset time has come reads as half-open)."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self._reset:
                return HALF_OPEN
            return self._state

    def call(self, action: Callable[[], T]) -> T:
        """Run `action` unless the breaker is open (then raise BreakerOpen at once)."""
        self._admit()
        try:
            result = action()
        except BaseException as exc:
            if self._counts(exc):
                self._failure()
            else:
                self._success()
            raise
        self._success()
        return result

    def _admit(self) -> None:
        with self._lock:
            if self._state == CLOSED:
                return
            if self._state == OPEN and self._clock() - self._opened_at >= self._reset:
                self._set(HALF_OPEN)
            if self._state == HALF_OPEN and not self._trial_running:
                self._trial_running = True  # this call is the trial; others fail fast until it ends
                return
        raise BreakerOpen(f"{self.name}: the peer failed {self._threshold} times in a row; not calling it for now")

    def _success(self) -> None:
        with self._lock:
            self._failed = 0
            self._trial_running = False
            if self._state != CLOSED:
                self._set(CLOSED)

    def _failure(self) -> None:
        with self._lock:
            self._trial_running = False
            self._failed += 1
            if self._state == HALF_OPEN or self._failed >= self._threshold:
                self._opened_at = self._clock()
                if self._state != OPEN:
                    self._set(OPEN)

    def _set(self, state: str) -> None:
        previous, self._state = self._state, state
        log.warning("circuit breaker %s: %s -> %s", self.name, previous, state)
        if self._on_change is not None:
            self._on_change(previous, state)
