"""The gateway's rate limit per token subject: a subject past its burst is refused with RESOURCE_EXHAUSTED and
RetryInfo while others go on; Redis makes the replicas share one budget, and a Redis that is down lets calls pass."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc
import pytest
import redis
from gateway_kit import GET_ITEM, WAIT, FrontedBackend, RunningGateway, get_item
from prometheus_client import REGISTRY
from pydantic import ValidationError

from gateway.rate_limit import SubjectBudget
from gateway.settings import Settings
from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.status import ErrorDetails, details_of
from storeplane_runtime.testing import wait_until

Gateways = Callable[..., RunningGateway]


def _outcome(channel: grpc.Channel, token: str) -> ErrorDetails | None:
    """None when the call went through, else what refused it."""
    try:
        get_item(channel, token)
    except grpc.RpcError as error:
        return details_of(error)
    return None


def _refused(gateway: RunningGateway, token: str) -> ErrorDetails:
    outcome = _outcome(gateway.channel(), token)
    assert outcome is not None, "the call went through"
    return outcome


def _refused_count() -> float:
    labels = {"method": GET_ITEM, "reason": "RATE_LIMITED"}
    return REGISTRY.get_sample_value("storeplane_auth_refused_total", labels) or 0.0


def test_a_subject_past_its_burst_is_refused_with_retry_info_while_another_goes_on(
    make_gateway: Gateways, fronted: tuple[FrontedBackend, int], issuer: DevIssuer
) -> None:
    # 20 calls in a window of 20 s: wide enough that no call of the burst leaves it while the test runs.
    gateway = make_gateway(rate_limit_per_second=1, rate_limit_burst=20)
    greedy, other = issuer.mint(subject="till-greedy"), issuer.mint(subject="till-other")

    def calls(token: str, count: int) -> list[ErrorDetails | None]:
        channel = gateway.channel()
        return [_outcome(channel, token) for _ in range(count)]

    with futures.ThreadPoolExecutor(2) as pool:  # both subjects at the same time
        greedy_calls, other_calls = pool.submit(calls, greedy, 26), pool.submit(calls, other, 20)
        greedy_outcomes, other_outcomes = greedy_calls.result(), other_calls.result()

    assert greedy_outcomes[:20] == [None] * 20
    assert other_outcomes == [None] * 20
    assert fronted[0].calls == 40  # refused calls never reach the backend
    refusals = greedy_outcomes[20:]
    assert all(r is not None for r in refusals)
    for refusal in refusals:
        assert refusal is not None
        assert (refusal.code, refusal.reason, refusal.domain) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            "gateway.storeplane",
        )
        assert refusal.metadata == {"limit": "20", "window_seconds": "20"}
        assert refusal.retry_delay_seconds is not None
        assert 0 < refusal.retry_delay_seconds <= 20


def test_retry_info_says_when_the_subject_may_call_again(make_gateway: Gateways, issuer: DevIssuer) -> None:
    gateway = make_gateway(rate_limit_per_second=1, rate_limit_burst=2)  # 2 calls per 2 s
    channel, token = gateway.channel(), issuer.mint(subject="till-1")
    assert [_outcome(channel, token) for _ in range(2)] == [None, None]
    refused = _refused(gateway, token)
    refused_at = time.monotonic()
    assert refused.retry_delay_seconds is not None
    assert 0 < refused.retry_delay_seconds <= 2.0
    # Refused calls spend nothing: asking again and again does not push the moment back.
    wait_until(lambda: _outcome(channel, token) is None, timeout=refused.retry_delay_seconds + 2, what="a call passes")
    assert time.monotonic() - refused_at >= refused.retry_delay_seconds - 0.05


def test_refusals_are_counted_and_audited_by_subject_and_method_without_the_token(
    make_gateway: Gateways, issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(rate_limit_per_second=1, rate_limit_burst=10)
    channel, token = gateway.channel(), issuer.mint(subject="till-audited")
    before = _refused_count()
    assert [_outcome(channel, token) for _ in range(10)] == [None] * 10
    with caplog.at_level(logging.WARNING, logger="storeplane.audit"):
        for _ in range(3):
            _refused(gateway, token)
    assert _refused_count() == before + 3
    records = [r for r in caplog.records if r.name == "storeplane.audit" and getattr(r, "reason", "") == "RATE_LIMITED"]
    # One line per subject a second at most: a till hammering the gateway must not flood the log.
    assert len(records) == 1
    assert (records[0].subject, records[0].grpc_method) == ("till-audited", GET_ITEM)  # type: ignore[attr-defined]
    for record in caplog.records:
        assert token not in record.getMessage()
        assert all(token not in str(value) for value in vars(record).values())


def test_with_no_rate_every_call_passes(make_gateway: Gateways, issuer: DevIssuer) -> None:
    gateway = make_gateway(rate_limit_per_second=0, rate_limit_burst=1)
    channel, token = gateway.channel(), issuer.mint()
    assert [_outcome(channel, token) for _ in range(5)] == [None] * 5


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(3, 5), (10, 5)],
    ids=["burst not a whole multiple of the rate", "burst below the rate"],
)
def test_a_burst_that_is_not_a_whole_multiple_of_the_rate_stops_the_start(rate: int, burst: int) -> None:
    with pytest.raises(ValidationError, match="RATE_LIMIT_BURST"):
        Settings(rate_limit_per_second=rate, rate_limit_burst=burst)


def test_a_storage_that_is_not_redis_stops_the_start() -> None:
    with pytest.raises(ValidationError, match="Redis URL"):
        Settings(rate_limit_storage_url="memcached://127.0.0.1:11211")


def _timers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if isinstance(t, threading.Timer)}


def test_counting_in_memory_starts_no_thread_on_the_call_path() -> None:
    """`limits`' own memory storage starts a Timer thread from the call every 10 ms, at a cost to that call."""
    budget = SubjectBudget(100, 100)
    try:
        for _ in range(5):
            wait_until(lambda: not _timers(), timeout=WAIT, what="no timer thread left running")
            assert budget.take("till-1") is None
            assert not _timers()
    finally:
        budget.close()


def test_calls_that_left_the_window_are_forgotten() -> None:
    budget = SubjectBudget(5, 5)  # 5 calls in 1 s
    try:
        assert [budget.take("till-1") for _ in range(5)] == [None] * 5
        assert budget.take("till-1") is not None
        events = budget.storage.events  # type: ignore[attr-defined]
        assert events[budget.item.key_for("till-1")]
        wait_until(lambda: not events.get(budget.item.key_for("till-1")), timeout=WAIT, what="the calls forgotten")
        assert budget.take("till-1") is None
    finally:
        budget.close()


# --- shared through Redis ------------------------------------------------------------------------------------------


def test_two_gateways_on_one_redis_share_one_budget_per_subject(
    make_gateway: Gateways, issuer: DevIssuer, redis_url: str, redis_prefix: str
) -> None:
    shared = {
        "rate_limit_per_second": 1,
        "rate_limit_burst": 10,
        "rate_limit_storage_url": redis_url,
        "rate_limit_key_prefix": redis_prefix,
    }
    first, second = make_gateway(**shared), make_gateway(**shared)
    token, other = issuer.mint(subject="till-shared"), issuer.mint(subject="till-other")
    channels = [first.channel(), second.channel()]
    # Alternately: 5 calls through each gateway spend the one budget of 10; in memory each would allow 10.
    assert [_outcome(channels[i % 2], token) for i in range(10)] == [None] * 10
    for gateway in (first, second):
        refused = _refused(gateway, token)
        assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert refused.retry_delay_seconds is not None
        assert 0 < refused.retry_delay_seconds <= 10
    assert _outcome(channels[1], other) is None  # another subject's budget is its own
    client = redis.Redis.from_url(redis_url)
    try:
        assert any(b"till-shared" in key for key in client.scan_iter(match=f"{redis_prefix}:*"))
    finally:
        client.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_with_redis_down_calls_pass_with_a_warning(
    make_gateway: Gateways, fronted: tuple[FrontedBackend, int], issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(
        rate_limit_per_second=1,
        rate_limit_burst=2,
        rate_limit_storage_url=f"redis://127.0.0.1:{_closed_port()}/0",
    )
    channel, token = gateway.channel(), issuer.mint(subject="till-keeps-selling")
    with caplog.at_level(logging.WARNING, logger="gateway.rate_limit"):
        assert [_outcome(channel, token) for _ in range(6)] == [None] * 6  # three times the burst
    assert fronted[0].calls == 6
    warnings = [r for r in caplog.records if r.name == "gateway.rate_limit" and "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # once when it goes down, not once per call
