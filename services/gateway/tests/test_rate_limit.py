"""The edge's rate limits (Envoy's local_ratelimit, counted by each Envoy process on its own): a token subject past its
burst is refused with RESOURCE_EXHAUSTED and RetryInfo while others go on, and calls without any token spend their
client address's budget. One budget shared by the replicas through Redis is gone on purpose: the setting is refused."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from concurrent import futures

import grpc
import pytest
from gateway_kit import GET_ITEM, WAIT, FakeBackend, RunningGateway, get_item, uu
from pydantic import ValidationError

from gateway.settings import Settings
from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.settings import SettingsError, load_settings
from storeplane_runtime.status import ErrorDetails, details_of
from storeplane_runtime.testing import wait_until

Gateways = Callable[..., RunningGateway]
# A bucket of 20 refilled by 1 a second: 20 calls in a row pass, then about one a second. Shared by the tests here,
# each with subjects of its own (every subject has a bucket of its own).
LIMITED = {"rate_limit_per_second": 1, "rate_limit_burst": 20}


def _subject(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _outcome(channel: grpc.Channel, token: str | None) -> ErrorDetails | None:
    """None when the call went through, else what refused it."""
    try:
        get_item(channel, token)
    except grpc.RpcError as error:
        return details_of(error)
    return None


def _is_rate_limited(refusal: ErrorDetails | None) -> bool:
    return refusal is not None and (refusal.code, refusal.reason, refusal.domain) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        "gateway.storeplane",
    )


def _stat(gateway: RunningGateway, name: str) -> int:
    envoy = gateway.app.envoy  # type: ignore[attr-defined]
    found = re.search(rf"^{re.escape(name)}: (\d+)$", envoy.admin(f"/stats?filter={name}").decode(), re.MULTILINE)
    return int(found.group(1)) if found else 0


def test_a_subject_past_its_burst_is_refused_with_retry_info_while_another_goes_on(
    gateway_with: Gateways, backend: FakeBackend, issuer: DevIssuer
) -> None:
    gateway = gateway_with(**LIMITED)
    greedy, other = issuer.mint(subject=_subject("till-greedy")), issuer.mint(subject=_subject("till-other"))
    limited_before = _stat(gateway, "subject_rate_limit.http_local_rate_limit.rate_limited")

    def calls(token: str, count: int) -> list[ErrorDetails | None]:
        channel = gateway.channel()
        return [_outcome(channel, token) for _ in range(count)]

    with futures.ThreadPoolExecutor(2) as pool:  # both subjects at the same time
        greedy_calls, other_calls = pool.submit(calls, greedy, 26), pool.submit(calls, other, 20)
        greedy_outcomes, other_outcomes = greedy_calls.result(), other_calls.result()

    assert greedy_outcomes[:20] == [None] * 20
    assert other_outcomes == [None] * 20
    refusals = [r for r in greedy_outcomes[20:] if r is not None]
    assert len(refusals) >= 5  # one of the six may have found the token of the refill of a second
    assert backend.calls == 46 - len(refusals)  # refused calls never reach the backend
    for refusal in refusals:
        assert _is_rate_limited(refusal), refusal
        assert refusal.retry_delay_seconds == 1.0
    assert _stat(gateway, "subject_rate_limit.http_local_rate_limit.rate_limited") == limited_before + len(refusals)


def test_a_passing_call_says_what_is_left_of_the_budget(gateway_with: Gateways, issuer: DevIssuer) -> None:
    channel, token = gateway_with(**LIMITED).channel(), issuer.mint(subject=_subject("till-counting"))
    _, call = uu(channel, GET_ITEM).with_call(b"", timeout=WAIT, metadata=(("authorization", f"Bearer {token}"),))
    headers = dict(call.initial_metadata())
    assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("20", "19")


def test_a_refused_subject_may_call_again_within_the_retry_delay(gateway_with: Gateways, issuer: DevIssuer) -> None:
    channel, token = gateway_with(**LIMITED).channel(), issuer.mint(subject=_subject("till-patient"))
    assert [_outcome(channel, token) for _ in range(20)] == [None] * 20
    refused = _outcome(channel, token)
    assert _is_rate_limited(refused)
    assert refused is not None and refused.retry_delay_seconds is not None
    # Refused calls spend nothing: asking again and again does not push the moment back.
    wait_until(lambda: _outcome(channel, token) is None, timeout=refused.retry_delay_seconds + 1, what="a call passes")


def test_with_no_rate_every_call_passes(gateway_with: Gateways, issuer: DevIssuer) -> None:
    channel, token = gateway_with(rate_limit_per_second=0, rate_limit_burst=1).channel(), issuer.mint()
    assert [_outcome(channel, token) for _ in range(5)] == [None] * 5  # past the burst of 1, were it counted


def test_a_flood_without_a_token_from_one_address_is_limited(
    make_gateway: Gateways, backend: FakeBackend, issuer: DevIssuer
) -> None:
    """Before the token check: probes without any authorization header spend their client address's budget."""
    gateway = make_gateway(anonymous_rate_limit_per_second=1, anonymous_rate_limit_burst=5)
    channel = gateway.channel()
    outcomes = [_outcome(channel, None) for _ in range(12)]
    assert [o.reason if o else None for o in outcomes[:5]] == ["TOKEN_MISSING"] * 5
    assert sum(_is_rate_limited(o) for o in outcomes[5:]) >= 6  # one may have found the refill of a second
    assert _is_rate_limited(outcomes[-1])
    assert _outcome(channel, issuer.mint(subject=_subject("till-with-token"))) is None  # tokens are not anonymous
    assert backend.calls == 1


def test_a_burst_below_the_rate_stops_the_start() -> None:
    with pytest.raises(ValidationError, match="RATE_LIMIT_BURST"):
        Settings(rate_limit_per_second=10, rate_limit_burst=5)


def test_a_shared_storage_stops_the_start_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATE_LIMIT_STORAGE_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(SettingsError) as stopped:
        load_settings(Settings, "gateway")
    message = str(stopped.value.code)
    assert "\n" not in message
    assert "RATE_LIMIT_STORAGE_URL" in message
    assert "no longer read" in message
