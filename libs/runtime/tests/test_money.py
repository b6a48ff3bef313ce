"""The kit's integer money arithmetic: roundings (negative values too), the largest-remainder split, redemption
values. The services' golden tests (checkout's amounts, loyalty's clawback) cover them in use."""

from __future__ import annotations

import random

import pytest

from storeplane_runtime.money import (
    DEFAULT_REDEMPTION_VALUES,
    RedemptionValue,
    largest_remainder,
    round_half_away,
    round_to_increment,
    share_of,
)


@pytest.mark.parametrize(
    ("n", "d", "expected"), [(5, 2, 3), (-5, 2, -3), (7, 3, 2), (-7, 3, -2), (8, 3, 3), (-8, 3, -3), (0, 7, 0)]
)
def test_round_half_away_from_zero(n: int, d: int, expected: int) -> None:
    assert round_half_away(n, d) == expected


def test_cash_rounding_to_five_rappen_halves_up() -> None:
    assert [round_to_increment(a, 5) for a in (1001, 1002, 1003, 1004, 1005, 1007, 1008)] == [
        1000,
        1000,
        1005,
        1005,
        1005,
        1005,
        1010,
    ]


def test_largest_remainder_sums_exactly_and_ties_go_to_the_earlier_part() -> None:
    assert largest_remainder(10, [1, 1, 1]) == (4, 3, 3)
    assert largest_remainder(7, [333, 333, 334]) == (2, 2, 3)
    rng = random.Random(7)
    for _ in range(500):
        weights = [rng.randint(0, 10_000) for _ in range(rng.randint(1, 12))]
        total = rng.randint(0, sum(weights)) if sum(weights) else 0
        parts = largest_remainder(total, weights)
        assert sum(parts) == total
        assert all(abs(p * sum(weights) - total * w) < sum(weights) or not sum(weights) for p, w in zip(parts, weights))


def test_shares_of_all_units_are_the_whole_amount() -> None:
    assert [share_of(1000, u, 3) for u in range(4)] == [0, 333, 667, 1000]


def test_redemption_values_buy_whole_minor_units() -> None:
    eur, odd = DEFAULT_REDEMPTION_VALUES["EUR"], RedemptionValue(3, 2)
    assert (eur.step, eur.worth(250), eur.most_for(1234)) == (1, 250, 1234)
    assert DEFAULT_REDEMPTION_VALUES["JPY"].worth(500) == 500
    assert (odd.step, odd.worth(9), odd.most_for(7)) == (3, 6, 9)
    with pytest.raises(ValueError):
        RedemptionValue(0, 1)
