"""The shared budget helpers every backend uses to turn a ratio into ranks."""

from __future__ import annotations

import math

import pytest
from torch import nn

from harness import DecomposeRequest, Unsupported, fill_ranks, largest_fitting
from harness.contract.backend import count_params
from harness.tensor.shapes import balanced_factors, tensorized_shapes


def test_largest_fitting_is_the_largest_rank_within_budget():
    cost = lambda r: 10 * r + 3  # noqa: E731
    assert largest_fitting(cost, budget=100, upper=50) == 9
    assert largest_fitting(cost, budget=13, upper=50) == 1
    assert largest_fitting(cost, budget=10_000, upper=50) == 50  # capped
    with pytest.raises(Unsupported, match="over the budget of 12"):
        largest_fitting(cost, budget=12, upper=50)


def tt_cost(ranks, cores=(40, 30, 30, 40)):
    bonds = [1, *ranks, 1]
    return sum(bonds[i] * cores[i] * bonds[i + 1] for i in range(len(cores)))


@pytest.mark.parametrize("budget", [500, 1234, 5000, 20_000])
def test_fill_ranks_never_exceeds_and_beats_uniform(budget):
    caps = [40, 60, 40]
    ranks = fill_ranks(caps, tt_cost, budget)
    assert tt_cost(ranks) <= budget
    assert all(1 <= r <= c for r, c in zip(ranks, caps))
    uniform = largest_fitting(lambda r: tt_cost([min(r, c) for c in caps]), budget, max(caps))
    assert tt_cost(ranks) >= tt_cost([min(uniform, c) for c in caps])
    # No single bond can be raised any further.
    for i in range(len(ranks)):
        if ranks[i] < caps[i]:
            assert tt_cost(ranks[:i] + [ranks[i] + 1] + ranks[i + 1:]) > budget


def test_max_params_is_floor_of_dense_over_ratio():
    layer = nn.Linear(10, 7)
    request = DecomposeRequest(backend="x", method="svd", layer_path="l", kind="linear", ratio=3.0,
                               dense_params=count_params(layer))
    assert request.max_params == math.floor(77 / 3)


@pytest.mark.parametrize("n, d", [(784, 3), (400, 3), (120, 3), (84, 2), (10, 3), (97, 2), (1, 3)])
def test_balanced_factors_multiply_out(n, d):
    factors = balanced_factors(n, d)
    assert len(factors) == d and math.prod(factors) == n
    assert factors == tuple(sorted(factors, reverse=True))


def test_tensorized_shapes_default_explicit_and_invalid():
    assert tensorized_shapes(400, 120, {}) == (balanced_factors(400, 3), balanced_factors(120, 3))
    assert tensorized_shapes(400, 120, {"tt_d": 2}) == (balanced_factors(400, 2), balanced_factors(120, 2))
    assert tensorized_shapes(400, 120, {"in_shape": [20, 20], "out_shape": [10, 12]}) == ((20, 20), (10, 12))
    with pytest.raises(ValueError, match="does not tensorize"):
        tensorized_shapes(400, 120, {"in_shape": [20, 21], "out_shape": [10, 12]})
