"""Two tills redeeming from one account at once never spend the same points twice (PostgreSQL, real concurrency:
two replicas, several transactions at once in each): 50 concurrent holds of 100 points on an account of 1,000 ->
exactly 10 succeed, 20 times over; and the same with holds re-sized concurrently."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from loyalty_kit import RunningLoyalty, enrolled, hold

from storeplane_runtime.status import details_of

ROUNDS = 20
CALLERS = 50


@pytest.fixture
def replicas(postgres_url: str, make_loyalty: Callable[..., RunningLoyalty]) -> list[RunningLoyalty]:
    """Two replicas on one database, each running up to 8 HoldPoints transactions at once: the account row lock,
    not one process's batching, is what keeps them apart."""
    return [make_loyalty(postgres_url, grpc_workers=64, hold_batch_lanes=8, hold_batch_size=4) for _ in range(2)]


def _watch_available(loyalty: RunningLoyalty, customer_id: str, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        account = loyalty.account(customer_id)
        seen.append(account.available_points)
        seen.append(account.balance - account.held_points)


def test_fifty_concurrent_holds_on_1000_points_exactly_ten_succeed(replicas: list[RunningLoyalty]) -> None:
    loyalty = replicas[0]
    with ThreadPoolExecutor(CALLERS) as pool:
        for round_ in range(ROUNDS):
            customer = f"cust-{round_}"
            enrolled(loyalty, customer, 1_000)
            stop, seen = threading.Event(), list[int]()
            watcher = threading.Thread(target=_watch_available, args=(loyalty, customer, stop, seen))
            watcher.start()
            barrier = threading.Barrier(CALLERS)

            def attempt(i: int, customer: str = customer, barrier: threading.Barrier = barrier) -> bool:
                barrier.wait()
                try:
                    hold(replicas[i % 2].stub, f"basket-{customer}-{i}", customer, 100)
                except grpc.RpcError as exc:
                    refused = details_of(exc)
                else:
                    return True
                assert refused.reason == "INSUFFICIENT_POINTS", refused
                return False

            outcomes = list(pool.map(attempt, range(CALLERS)))
            stop.set()
            watcher.join()
            assert sum(outcomes) == 10, f"round {round_}: {sum(outcomes)} holds succeeded"
            account = loyalty.account(customer)
            assert (account.held_points, account.available_points) == (1_000, 0)
            assert min(seen) >= 0
    loyalty.assert_ledger_sound()


def test_concurrent_resizes_of_holds_never_over_commit(replicas: list[RunningLoyalty]) -> None:
    loyalty = replicas[0]
    rng = random.Random(16)
    with ThreadPoolExecutor(CALLERS) as pool:
        for round_ in range(ROUNDS):
            customer = f"resize-{round_}"
            enrolled(loyalty, customer, 1_000)
            baskets = [f"basket-{customer}-{i}" for i in range(10)]
            for basket in baskets:
                hold(loyalty.stub, basket, customer, 50)  # 500 held
            sizes = [(i, rng.choice(baskets), rng.choice([0, 50, 100, 150, 200, 300])) for i in range(CALLERS)]
            barrier = threading.Barrier(CALLERS)

            def resize(
                job: tuple[int, str, int], customer: str = customer, barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait()
                try:
                    hold(replicas[job[0] % 2].stub, job[1], customer, job[2], request_id=str(uuid.uuid4()))
                except grpc.RpcError as exc:
                    refused = details_of(exc)
                    assert refused.reason == "INSUFFICIENT_POINTS", refused

            list(pool.map(resize, sizes))
            account = loyalty.account(customer)
            assert 0 <= account.held_points <= 1_000 and account.available_points >= 0
            found = loyalty.verification()  # held_points is exactly the sum of the active holds
            assert found.ok, found.problems
