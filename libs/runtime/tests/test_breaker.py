"""The circuit breaker: opens after N counted failures in a row, fails fast while open, lets one trial through
after the reset time, closes on its success and opens again on its failure. Time is injected."""

from __future__ import annotations

import threading
from contextlib import nullcontext

import pytest

from storeplane_runtime.breaker import BreakerOpen, CircuitBreaker


class Down(Exception):
    pass


class Refused(Exception):
    """An answer from a live peer (NOT_FOUND, say): proves it is up."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail() -> None:
    raise Down


def breaker(clock: Clock, changes: list[tuple[str, str]] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        "peer",
        failures=3,
        reset_seconds=5,
        counts=lambda exc: isinstance(exc, Down),
        clock=clock,
        on_change=(lambda a, b: changes.append((a, b))) if changes is not None else None,
    )


def test_it_opens_after_the_threshold_of_failures_in_a_row_and_then_fails_fast() -> None:
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    for _ in range(2):
        with pytest.raises(Down):
            b.call(fail)
    assert b.state == "closed"
    with pytest.raises(Down):
        b.call(fail)
    assert b.state == "open" and changes == [("closed", "open")]
    called = []
    with pytest.raises(BreakerOpen) as caught:
        b.call(lambda: called.append(1))
    assert called == [] and caught.value.reason == "PEER_UNAVAILABLE"


def test_a_success_or_an_answer_of_a_live_peer_resets_the_count() -> None:
    b = breaker(Clock())
    for outcome in (fail, fail, lambda: "ok", fail, fail):
        with pytest.raises(Down) if outcome is fail else nullcontext():
            b.call(outcome)
    with pytest.raises(Refused):
        b.call(_raise(Refused()))
    with pytest.raises(Down):
        b.call(fail)
    assert b.state == "closed"  # never three counted failures in a row


def test_after_the_reset_time_one_trial_goes_through_and_decides() -> None:
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    for _ in range(3):
        with pytest.raises(Down):
            b.call(fail)
    clock.now += 5
    assert b.state == "half-open"
    with pytest.raises(Down):
        b.call(fail)  # the trial fails: open again, for another full reset time
    assert b.state == "open"
    clock.now += 4.9
    with pytest.raises(BreakerOpen):
        b.call(lambda: "not called")
    clock.now += 0.1
    assert b.call(lambda: "up again") == "up again"
    assert b.state == "closed"
    assert changes == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


def test_while_the_trial_runs_other_calls_fail_fast() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        with pytest.raises(Down):
            b.call(fail)
    clock.now += 5
    inside, release = threading.Event(), threading.Event()

    def slow_trial() -> str:
        inside.set()
        release.wait(5)
        return "ok"

    worker = threading.Thread(target=b.call, args=(slow_trial,))
    worker.start()
    assert inside.wait(5)
    with pytest.raises(BreakerOpen):
        b.call(lambda: "second caller")
    release.set()
    worker.join(5)
    assert b.state == "closed"


def _raise(exc: BaseException):  # type: ignore[no-untyped-def]
    def action() -> None:
        raise exc

    return action
