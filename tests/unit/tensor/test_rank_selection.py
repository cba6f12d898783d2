"""Rank selection: unfoldings, the energy rule, EVBMF on planted low-rank matrices, the per-layer dispatcher and the
multiple-choice knapsack that spreads a parameter budget over layers."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from harness.tensor import spectra as rank_selection
from harness.tensor.spectra import (
    allocate_budget,
    energy_options,
    energy_rank,
    evbmf,
    evbmf_tau_threshold,
    selected_ranks,
    singular_values,
    unfolding,
    vbmf_rank,
)
from harness.tensor.structures import svd_params


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0]


def planted_matrix(rows: int, cols: int, rank: int, noise_std: float, seed: int) -> torch.Tensor:
    """A rank-``rank`` signal whose weakest singular value is ~4x the largest noise singular value, plus noise."""
    gen = generator(seed)
    scale = noise_std * (math.sqrt(rows) + math.sqrt(cols)) * 4
    strengths = torch.linspace(3, 1, rank, dtype=torch.float64) * scale
    signal = orthonormal(rows, rank, gen) @ torch.diag(strengths) @ orthonormal(cols, rank, gen).T
    return signal + noise_std * torch.randn(rows, cols, generator=gen, dtype=torch.float64)


def with_spectrum(spectrum: torch.Tensor, seed: int) -> torch.Tensor:
    """A square matrix with the given singular values and random singular vectors."""
    gen = generator(seed)
    n = spectrum.numel()
    return orthonormal(n, n, gen) @ torch.diag(spectrum) @ orthonormal(n, n, gen).T


@pytest.fixture(params=["scipy", "numpy"])
def minimiser(request, monkeypatch):
    """Run EVBMF tests with scipy's bounded minimiser and with the golden-section fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(rank_selection, "minimize_scalar", None)
    elif rank_selection.minimize_scalar is None:
        pytest.skip("scipy is not installed")
    return request.param


# ----------------------------------------------------------------------------- unfolding and spectra


def test_unfolding_shapes_and_element_mapping():
    tensor = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    assert unfolding(tensor, 0).shape == (2, 60)
    assert unfolding(tensor, 1).shape == (3, 2 * 4 * 5)
    assert torch.equal(unfolding(tensor, 1), tensor.movedim(1, 0).reshape(3, -1))
    # Row i of the mode-1 unfolding lists tensor[:, i] with the remaining modes in order, the last fastest.
    a, b, c, d = 1, 2, 3, 4
    assert unfolding(tensor, 1)[b, a * 20 + c * 5 + d] == tensor[a, b, c, d]
    with pytest.raises(ValueError, match="out of range"):
        unfolding(tensor, 4)


def test_singular_values_are_float64_and_descending():
    weight = torch.randn(6, 4, 3, 3, generator=generator(0))
    values = singular_values(weight, 1)
    assert values.dtype == torch.float64 and values.shape == (4,)
    assert torch.all(values[:-1] >= values[1:])
    assert torch.allclose(values, torch.linalg.svdvals(unfolding(weight.double(), 1)))


# ----------------------------------------------------------------------------- energy rule


def test_energy_rank_on_a_known_spectrum():
    s = [3.0, 2.0, 1.0, 0.5]  # energies 9, 4, 1, 0.25 of 14.25
    assert energy_rank(s, 0.9) == 2  # 13 / 14.25 = 0.912
    assert energy_rank(s, 13 / 14.25) == 2  # exactly met counts
    assert energy_rank(s, 0.92) == 3
    assert energy_rank(s, 1.0) == 4
    assert energy_rank(s, 1e-9) == 1
    assert energy_rank(torch.tensor(s), 0.5) == 1  # 9 / 14.25 = 0.63
    assert energy_rank([2.0, 1.0, 0.0, 0.0], 1.0) == 2  # zero values hold no energy
    assert energy_rank([0.0, 0.0], 0.5) == 0


@pytest.mark.parametrize("share", [0.0, -0.1, 1.01, float("nan")])
def test_energy_rank_rejects_a_bad_share(share):
    with pytest.raises(ValueError, match="share"):
        energy_rank([3.0, 1.0], share)


@pytest.mark.parametrize(("values", "message"), [([], "non-empty"), ([1.0, -1.0], "non-negative"),
                                                 ([1.0, 2.0], "descending"), ([[1.0]], "1-D")])
def test_energy_rank_rejects_bad_singular_values(values, message):
    with pytest.raises(ValueError, match=message):
        energy_rank(values, 0.5)


# ----------------------------------------------------------------------------- EVBMF


def test_tau_threshold_matches_the_published_approximation():
    assert evbmf_tau_threshold(1.0) == pytest.approx(2.5129, abs=1e-4)
    for alpha in (0.8, 0.5, 0.25):
        # The approximation drifts from the exact root as alpha shrinks (1.3 % at alpha = 1/4).
        assert evbmf_tau_threshold(alpha) == pytest.approx(2.5129 * math.sqrt(alpha), rel=0.02)


@pytest.mark.parametrize(("rows", "cols"), [(100, 80), (80, 100), (40, 150)])
@pytest.mark.parametrize("seed", [0, 1])
def test_vbmf_recovers_a_planted_rank_and_the_noise_variance(rows, cols, seed, minimiser):
    noise_std = 0.05
    result = evbmf(planted_matrix(rows, cols, 7, noise_std, seed))
    assert result.rank == 7
    assert result.noise_variance == pytest.approx(noise_std**2, rel=0.2)
    assert vbmf_rank(planted_matrix(rows, cols, 7, noise_std, seed).float()) == 7


@pytest.mark.parametrize(("rows", "cols"), [(100, 80), (30, 90)])
def test_vbmf_finds_nothing_in_pure_noise(rows, cols, minimiser):
    noise = 0.3 * torch.randn(rows, cols, generator=generator(3), dtype=torch.float64)
    result = evbmf(noise)
    assert result.rank <= 1
    assert result.noise_variance == pytest.approx(0.09, rel=0.2)


def test_vbmf_degenerate_inputs():
    assert evbmf(torch.zeros(5, 7)).rank == 0
    gen = generator(0)
    exact = torch.randn(30, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 20, generator=gen, dtype=torch.float64)
    # No noise: every non-zero component is signal, and the rounding-level rest is not.
    assert vbmf_rank(exact) == 3
    with pytest.raises(ValueError, match="matrix"):
        evbmf(torch.zeros(3, 4, 5))


# ----------------------------------------------------------------------------- per-layer dispatch


def planted_tucker_kernel(seed: int) -> torch.Tensor:
    """A (32, 24, 3, 3) kernel with multilinear ranks (4, 3) on its channel modes, plus 1e-3 noise."""
    gen = generator(seed)
    core = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    kernel = torch.einsum("rskl,or,is->oikl", core, orthonormal(32, 4, gen), orthonormal(24, 3, gen))
    return kernel + 1e-3 * torch.randn(kernel.shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("rule", ["vbmf", "energy:0.99"])
@pytest.mark.parametrize("seed", [0, 1])
def test_tucker2_ranks_of_a_planted_kernel(rule, seed):
    assert selected_ranks(planted_tucker_kernel(seed).float(), "conv2d", "tucker2", rule) == (4, 3)


def test_svd_ranks_for_linear_and_flattened_conv():
    weight = planted_matrix(48, 64, 5, 0.01, seed=2)
    assert selected_ranks(weight, "linear", "svd", "vbmf") == 5
    assert selected_ranks(weight, "linear", "svd", "energy:1") == 48
    assert selected_ranks(planted_tucker_kernel(0), "conv2d", "svd", "vbmf") == 4  # (C_out, C_in kh kw) has rank 4
    assert selected_ranks(weight, "linear", "svd", lambda matrix: 0) == 1  # a layer keeps at least one rank
    assert selected_ranks(weight, "linear", "svd", lambda matrix: 1000) == 48  # and at most the smaller side
    noise = torch.randn(20, 30, generator=generator(1))
    assert selected_ranks(noise, "linear", "svd", "vbmf") == 1


@pytest.mark.parametrize(("kind", "method", "rule", "message"), [
    ("conv2d", "cp", "vbmf", "not defined for method cp"),
    ("linear", "tucker2", "vbmf", "not defined for method tucker2"),
    ("conv2d", "tucker2", "energy", "unknown rank rule"),
    ("conv2d", "tucker2", "energy:x", "is not a number"),
    ("conv2d", "tucker2", "energy:1.5", r"in \(0, 1\]"),
    ("conv3d", "tucker2", "vbmf", "unknown layer kind"),
])
def test_selected_ranks_rejects_what_it_cannot_rank(kind, method, rule, message):
    shape = (4, 6) if kind == "linear" else (4, 3, 3, 3)
    with pytest.raises(ValueError, match=message):
        selected_ranks(torch.randn(shape), kind, method, rule)


def test_energy_options_for_svd_and_tucker2():
    spectrum = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)  # energies 16, 4, 1, 1 of 22
    options = energy_options(with_spectrum(spectrum, 0), "linear", "svd", lambda r: svd_params(4, 4, r, False),
                             [1, 2, 4])
    assert [p for p, _ in options] == [8, 16, 32]
    assert [v for _, v in options] == pytest.approx([16 / 22, 20 / 22, 1.0])

    kernel = planted_tucker_kernel(0)
    pairs = [(1, 1), (2, 3), (4, 3), (32, 24)]
    shares = [v for _, v in energy_options(kernel, "conv2d", "tucker2", lambda rr: rr[0] * rr[1], pairs)]
    assert shares[0] < shares[1] < shares[2] and shares[2] == pytest.approx(1.0, abs=1e-4)  # noise: 6e-5
    assert shares[3] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=">= 1"):
        energy_options(kernel, "conv2d", "tucker2", lambda rr: 0, [(0, 3)])
    # The share is the truncated HOSVD's: 1 - relative error², here built by hand for (2, 3).
    u_out = torch.linalg.svd(unfolding(kernel, 0))[0][:, :2]
    u_in = torch.linalg.svd(unfolding(kernel, 1))[0][:, :3]
    approx = torch.einsum("oikl,op,iq,Pp,Qq->PQkl", kernel, u_out, u_in, u_out, u_in)
    assert shares[1] == pytest.approx(1 - float(((kernel - approx) ** 2).sum() / (kernel**2).sum()))


# ----------------------------------------------------------------------------- budget allocation


def brute_force(options, budget):
    """The best total value of one option per layer within ``budget`` (None when nothing fits)."""
    best = None
    for pick in itertools.product(*(range(len(layer)) for layer in options)):
        if sum(options[i][j][0] for i, j in enumerate(pick)) <= budget:
            value = sum(options[i][j][1] for i, j in enumerate(pick))
            best = value if best is None else max(best, value)
    return best


def spent(options, pick):
    return sum(options[i][j][0] for i, j in enumerate(pick)), sum(options[i][j][1] for i, j in enumerate(pick))


def test_allocate_budget_is_optimal_and_within_budget_on_random_instances():
    rng = random.Random(0)
    for _ in range(300):
        options = [[(rng.randint(0, 60), rng.uniform(-1, 1)) for _ in range(rng.randint(1, 5))]
                   for _ in range(rng.randint(1, 4))]
        cheapest = sum(min(p for p, _ in layer) for layer in options)
        budget = cheapest + rng.randint(0, 120)
        params, value = spent(options, allocate_budget(options, budget))
        assert params <= budget
        assert value == pytest.approx(brute_force(options, budget))  # slack <= buckets: exact


def test_allocate_budget_with_coarse_buckets_stays_within_budget_and_near_optimal():
    rng = random.Random(1)
    for _ in range(300):
        options = [[(rng.randint(0, 500), rng.uniform(0, 1)) for _ in range(rng.randint(1, 5))]
                   for _ in range(rng.randint(1, 4))]
        cheapest = sum(min(p for p, _ in layer) for layer in options)
        budget = cheapest + rng.randint(0, 1000)
        buckets = rng.choice([1, 3, 8, 20])
        params, value = spent(options, allocate_budget(options, budget, buckets=buckets))
        assert params <= budget
        # The documented guarantee: at least as good as the exact optimum with one unit per layer held back.
        unit = max(1, math.ceil((budget - cheapest) / buckets))
        reduced = brute_force(options, budget - len(options) * unit)
        if reduced is not None:
            assert value >= reduced - 1e-12
        assert value <= brute_force(options, budget) + 1e-12


def test_allocate_budget_rejects_infeasible_and_malformed_input():
    with pytest.raises(ValueError, match="over the budget of 9"):
        allocate_budget([[(5, 1.0), (8, 2.0)], [(5, 0.5)]], 9)
    with pytest.raises(ValueError, match="no options"):
        allocate_budget([[(1, 1.0)], []], 10)
    with pytest.raises(ValueError, match="non-negative"):
        allocate_budget([[(-1, 1.0)]], 10)
    assert allocate_budget([], 0) == []
    assert allocate_budget([[(5, 1.0), (6, 1.0), (4, 0.0)]], 10) == [0]  # equal values: the cheaper option


def test_allocate_budget_beats_uniform_on_a_fast_and_a_flat_spectrum():
    # Two 64x64 linear layers: one holds its energy in a few ranks (s_k = 2^-k), the other is flat.
    n = 64
    fast = with_spectrum(0.5 ** torch.arange(n, dtype=torch.float64), seed=0)
    flat = with_spectrum(torch.ones(n, dtype=torch.float64), seed=1)
    ranks = list(range(1, n + 1))
    options = [energy_options(w, "linear", "svd", lambda r: svd_params(n, n, r, False), ranks) for w in (fast, flat)]

    # Ratio 4 on both layers: each gets n² / 4 parameters, i.e. rank 8 each.
    per_layer = n * n // 4
    uniform_rank = max(r for r in ranks if svd_params(n, n, r, False) <= per_layer)
    assert uniform_rank == 8
    pick = allocate_budget(options, 2 * per_layer)
    chosen = [ranks[j] for j in pick]

    # A fast-layer rank r adds 3/4 * 4^-(r-1) of energy, a flat one 1/64: the 4th fast rank (0.012) loses to flat ones.
    assert chosen == [3, 13]
    params, energy = spent(options, pick)
    uniform_params, uniform_energy = spent(options, [uniform_rank - 1, uniform_rank - 1])
    assert params <= 2 * per_layer and uniform_params <= 2 * per_layer
    assert energy == pytest.approx((1 - 4.0**-3) + 13 / 64)
    assert energy > uniform_energy + 0.05
