"""Rank selection from a trained layer's weight: how many ranks a decomposition should keep, chosen from the spectrum
of the weight rather than from a uniform compression ratio. Four tools live here, all pure functions of dense tensors
that know nothing about backends or modules: the energy rule (the fewest leading singular values that hold a given
share of the squared Frobenius norm), the analytic empirical variational Bayesian matrix factorisation (EVBMF) of
Nakajima, Sugiyama, Babacan & Tomioka (JMLR 2013), which Kim et al. (ICLR 2016) apply to the mode-0 and mode-1
unfoldings of a conv kernel to pick Tucker-2 ranks, and a multiple-choice knapsack that spreads one parameter budget
over many layers so as to maximise a per-layer value (e.g. retained energy or, with :func:`truncation`'s
reconstructions, the training loss a layer keeps at each rank). Conventions follow
:mod:`harness.tensor.structures`: an ``nn.Linear`` weight is ``(out, in)`` and truncated SVD factors it whole (a conv kernel
``(C_out, C_in, kh, kw)`` flattened to ``(C_out, C_in kh kw)``), Tucker-2 factors a conv kernel on its two channel
modes and its ranks are the pair ``(R_out, R_in)``. Everything is computed in float64; scipy's bounded scalar
minimiser refines the EVBMF noise variance when scipy is importable, and a golden-section search does otherwise, so
scipy is never a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

try:  # optional: the harness does not depend on scipy, so a numpy fallback refines the minimum without it
    from scipy.optimize import minimize_scalar
except ImportError:  # pragma: no cover - depends on the environment
    minimize_scalar = None

__all__ = [
    "VBMFResult",
    "allocate_budget",
    "energy_options",
    "energy_rank",
    "evbmf",
    "evbmf_tau_threshold",
    "rank_rule",
    "selected_ranks",
    "singular_values",
    "unfolding",
    "vbmf_rank",
]

# Methods whose ranks a rule can pick from one or two unfoldings; others (CP, TT, ...) need rules of their own.
RANKED_METHODS = ("svd", "tucker2")


# ----------------------------------------------------------------------------- spectra


def unfolding(weight: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding: rows index that mode, columns the other modes in order, the last fastest."""
    if not 0 <= mode < weight.ndim:
        raise ValueError(f"mode {mode} is out of range for a {weight.ndim}-way tensor")
    # Same layout as the native backend's unfold, so ranks picked here mean the same factors there.
    return weight.movedim(mode, 0).reshape(weight.shape[mode], -1)


def _svdvals(matrix: Tensor) -> Tensor:
    """Singular values of ``matrix`` in float64, descending."""
    matrix = matrix.detach().to(torch.float64)
    # The transpose has the same singular values and LAPACK is faster on it when the matrix is wide (a 512 x 2304
    # conv unfolding, one thread: 0.07 s against 0.26 s).
    return torch.linalg.svdvals(matrix.T if matrix.shape[0] < matrix.shape[1] else matrix)


def _left_singular_basis(matrix: Tensor) -> Tensor:
    """An orthonormal basis of ``matrix``'s column space and its complement, leading left singular vectors first.

    Eigenvectors of the Gram matrix ``A A^T`` rather than an SVD with vectors, ~6x faster on a 512 x 2304 conv
    unfolding; squaring blurs only directions carrying below ~1e-16 of the energy, which no energy share can see.
    """
    _, vectors = torch.linalg.eigh(matrix @ matrix.T)
    return vectors.flip(1)


def singular_values(weight: Tensor, mode: int) -> Tensor:
    """Singular values of the mode-``mode`` unfolding, float64, in descending order."""
    return _svdvals(unfolding(weight, mode))


def _spectrum(values: Tensor | Sequence[float]) -> Tensor:
    """``values`` as a validated 1-D float64 tensor of non-negative, non-increasing singular values."""
    s = torch.as_tensor(values, dtype=torch.float64).detach()
    if s.ndim != 1 or s.numel() == 0:
        raise ValueError(f"singular values must be a non-empty 1-D sequence, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError("singular values must be finite and non-negative")
    if bool((s[1:] > s[:-1]).any()):
        raise ValueError("singular values must be in descending order")
    return s


def energy_rank(singular_values: Tensor | Sequence[float], share: float) -> int:
    """The smallest ``r`` with ``sum(s[:r]**2) >= share * sum(s**2)``; ``share`` in ``(0, 1]``.

    ``share = 1`` keeps every non-zero singular value (the full rank); an all-zero spectrum gives 0.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    s = _spectrum(singular_values)
    cumulative = torch.cumsum(s**2, dim=0)
    # The target is taken from the cumulative sum itself, so share 1 meets it exactly despite rounding.
    target = share * cumulative[-1]
    return int(torch.searchsorted(cumulative, target, side="left")) + 1 if cumulative[-1] > 0 else 0


# ----------------------------------------------------------------------------- EVBMF


@dataclass(frozen=True)
class VBMFResult:
    """The EVBMF estimate for one matrix: the retained ``rank``, the ``noise_variance`` sigma² and the singular-value
    ``threshold`` above which a component is kept."""

    rank: int
    noise_variance: float
    threshold: float


def evbmf_tau_threshold(alpha: float) -> float:
    """The EVB threshold ``tau`` for aspect ratio ``alpha = L / M``, root of ``psi(tau) + psi(tau / alpha) = 0`` with
    ``psi(z) = log(1 + z) / z - 1/2``.

    The reference code uses the approximation ``2.5129 sqrt(alpha)`` (exact at ``alpha = 1``); the exact root makes
    the free energy continuous at the threshold, which a bracketing minimiser relies on.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")

    def gap(tau: float) -> float:
        return math.log1p(tau) / tau + alpha * math.log1p(tau / alpha) / tau - 1.0

    # gap falls monotonically from +1 (tau -> 0) and is negative at 3 for every alpha <= 1: bisect that bracket.
    low, high = 1e-12, 3.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if gap(mid) > 0 else (low, mid)
        if high - low <= 1e-15 * high:
            break
    return 0.5 * (low + high)


def _free_energy(log_sigma2: np.ndarray, squared: np.ndarray, m: int, alpha: float, x_threshold: float) -> np.ndarray:
    """EVB free energy (up to terms free of sigma²) at each ``log sigma²``, for squared singular values ``squared``.

    With ``x_h = gamma_h² / (M sigma²)`` it is ``sum_h (x_h + log sigma²) + sum_{x_h > x_threshold} psi1(x_h)``,
    ``psi1(x) = log(tau + 1) + alpha log(tau / alpha + 1) - tau`` and ``tau(x)`` the larger root of
    ``x = (1 + tau)(1 + alpha / tau)`` (Nakajima et al.). Writing ``-log x`` as ``log sigma²`` plus a constant keeps
    exactly-zero singular values (rank-deficient unfoldings) finite.
    """
    sigma2 = np.exp(np.atleast_1d(log_sigma2))[:, None]
    x = squared[None, :] / (m * sigma2)
    above = x > x_threshold
    # Where x is below the threshold psi1 is not used; clamping keeps the square root real there.
    shifted = np.where(above, x, x_threshold) - (1 + alpha)
    tau = 0.5 * (shifted + np.sqrt(np.maximum(shifted**2 - 4 * alpha, 0.0)))
    psi1 = np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau
    return (x + np.log(sigma2)).sum(axis=1) + np.where(above, psi1, 0.0).sum(axis=1)


def _golden_section(func: Callable[[float], float], low: float, high: float, tol: float = 1e-10) -> float:
    """Minimum of a unimodal ``func`` on ``[low, high]`` by golden-section search (scipy-free fallback)."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = func(c), func(d)
    while b - a > tol * max(1.0, abs(a) + abs(b)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = func(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = func(d)
    return 0.5 * (a + b)


def evbmf(matrix: Tensor, grid_points: int = 256) -> VBMFResult:
    """Analytic empirical VBMF (Nakajima et al., JMLR 2013) of ``matrix``: noise variance and retained rank.

    The matrix is oriented as ``L x M`` with ``L <= M`` (a tall one is transposed, which leaves the spectrum
    unchanged). sigma² minimises the EVB free energy over the bounds of the reference implementation
    (CasvandenBogaard/VBMF): above by the variance of pure noise ``sum gamma² / (L M)``, below by what the largest
    possible EVB rank ``ceil(L / (1 + alpha)) - 1`` leaves over. The free energy can have several local minima, so a
    log-spaced grid of ``grid_points`` finds the best basin first, and a bounded scalar search (scipy's, or
    golden-section without scipy) refines it in ``log sigma²``, where a tolerance is relative to sigma²'s scale. The
    rank is the number of singular values above ``sqrt(M sigma² (1 + tau)(1 + alpha / tau))``.
    """
    if matrix.ndim != 2 or matrix.numel() == 0:
        raise ValueError(f"EVBMF needs a non-empty matrix, got shape {tuple(matrix.shape)}")
    s = _svdvals(matrix).cpu().numpy()
    short, long = min(matrix.shape), max(matrix.shape)
    alpha = short / long
    tau = evbmf_tau_threshold(alpha)
    x_threshold = (1 + tau) * (1 + alpha / tau)
    squared = s**2
    total = float(squared.sum())
    if total == 0:
        return VBMFResult(rank=0, noise_variance=0.0, threshold=0.0)

    upper = total / (short * long)
    max_rank = min(math.ceil(short / (1 + alpha)) - 1, short)  # EVB never keeps more components than this
    tail = squared[max_rank:]
    lower = max(tail[0] / (long * x_threshold), tail.mean() / long)
    # An exactly low-rank matrix gives lower = 0, where log sigma² diverges; a relative floor stands in for zero.
    lower = min(max(lower, upper * 1e-12), upper)

    def energy(log_sigma2: float) -> float:
        return float(_free_energy(np.array([log_sigma2]), squared, long, alpha, x_threshold)[0])

    if lower < upper:
        grid = np.linspace(math.log(lower), math.log(upper), grid_points)
        values = _free_energy(grid, squared, long, alpha, x_threshold)
        best = int(np.argmin(values))
        bracket = grid[max(best - 1, 0)], grid[min(best + 1, grid_points - 1)]
        if minimize_scalar is not None:
            refined = float(minimize_scalar(energy, bounds=bracket, method="bounded", options={"xatol": 1e-10}).x)
        else:
            refined = _golden_section(energy, *bracket)
        log_sigma2 = refined if energy(refined) <= values[best] else float(grid[best])
    else:
        log_sigma2 = math.log(upper)
    sigma2 = math.exp(log_sigma2)
    threshold = math.sqrt(long * sigma2 * x_threshold)
    return VBMFResult(rank=int((s > threshold).sum()), noise_variance=sigma2, threshold=threshold)


def vbmf_rank(matrix: Tensor) -> int:
    """The rank EVBMF retains for ``matrix`` (see :func:`evbmf`); 0 when it finds only noise."""
    return evbmf(matrix).rank


# ----------------------------------------------------------------------------- per-layer dispatch


def parse_share(text: str) -> float:
    """An energy share given as text, checked to lie in (0, 1]; ValueError (one line) otherwise."""
    try:
        share = float(text)
    except ValueError:
        raise ValueError(f"energy share {text!r} is not a number (e.g. energy:0.9)") from None
    if not 0 < share <= 1:
        raise ValueError(f"energy share {text} must be in (0, 1] (the share of spectral energy kept)")
    return share


def rank_rule(rule: str | Callable[[Tensor], int]) -> Callable[[Tensor], int]:
    """A rule name as a function from a matrix to a rank: ``"vbmf"``, ``"energy:<share>"`` or a callable as is."""
    if callable(rule):
        return rule
    if rule == "vbmf":
        return vbmf_rank
    name, _, share = rule.partition(":")
    if name == "energy" and share:
        value = parse_share(share)
        return lambda matrix: energy_rank(_svdvals(matrix), value)
    raise ValueError(f"unknown rank rule {rule!r}; expected 'vbmf', 'energy:<share>' or a callable")


def _check_weight(weight: Tensor, kind: str, method: str) -> None:
    if kind not in ("linear", "conv2d"):
        raise ValueError(f"unknown layer kind {kind!r}; expected 'linear' or 'conv2d'")
    if weight.ndim != (2 if kind == "linear" else 4):
        raise ValueError(f"a {kind} weight must be {2 if kind == 'linear' else 4}-D, got shape {tuple(weight.shape)}")
    if method not in RANKED_METHODS or (method == "tucker2" and kind != "conv2d"):
        raise ValueError(f"rank selection is not defined for method {method} on {kind} layers")


def selected_ranks(
    weight: Tensor, kind: str, method: str, rule: str | Callable[[Tensor], int]
) -> int | tuple[int, int]:
    """The ranks ``rule`` (see :func:`rank_rule`) picks for one layer's weight.

    ``"svd"`` gives one rank, of the weight as a matrix (a conv kernel flattened to ``(C_out, C_in kh kw)``, its
    mode-0 unfolding); ``"tucker2"`` (conv only) gives ``(R_out, R_in)`` from the mode-0 and mode-1 unfoldings, in the
    order of :func:`harness.tensor.structures.tucker2_params`. Each rank is at least 1, because a rank-0 replacement is no
    layer, and at most the unfolding's smaller side, since a rank of an unfolding cannot exceed it. Other methods
    (CP, TT, ...) raise :class:`ValueError`.
    """
    _check_weight(weight, kind, method)
    pick = rank_rule(rule)
    modes = (0,) if method == "svd" else (0, 1)
    ranks = tuple(max(1, min(int(pick(unfolding(weight, mode))), min(unfolding(weight, mode).shape)))
                  for mode in modes)
    return ranks[0] if method == "svd" else ranks


def energy_options(
    weight: Tensor,
    kind: str,
    method: str,
    param_of_rank: Callable[[int | tuple[int, int]], int],
    ranks: Iterable[int | tuple[int, int]],
) -> list[tuple[int, float]]:
    """``(parameters, retained energy share)`` for each candidate rank: the options of :func:`allocate_budget`.

    For ``"svd"`` a rank ``r`` retains ``sum(s[:r]²) / sum(s²)``, exactly the truncated SVD's energy. For
    ``"tucker2"`` a pair ``(R_out, R_in)`` retains the energy of the truncated HOSVD core, ``||G[:R_out, :R_in]||²``
    over ``||W||²``, where ``G`` projects the kernel on all left singular vectors of both unfoldings (exact for the
    truncated HOSVD, up to directions holding below ~1e-16 of the energy; HOOI, which refines the HOSVD, retains at
    least as much). ``param_of_rank`` prices a rank, e.g.
    ``lambda r: svd_params(in, out, r, bias)`` or ``lambda rr: tucker2_params(layer, *rr)``.
    """
    _check_weight(weight, kind, method)
    ranks = list(ranks)
    if any(min((r,) if isinstance(r, int) else r) < 1 for r in ranks):
        raise ValueError(f"candidate ranks must be >= 1, got {ranks}")
    w = weight.detach().to(torch.float64)
    if method == "svd":
        cumulative = torch.cumsum(_svdvals(unfolding(w, 0)) ** 2, dim=0)
        shares = (cumulative / cumulative[-1]) if cumulative[-1] > 0 else torch.ones_like(cumulative)
        shares = shares.tolist()
        return [(int(param_of_rank(r)), shares[min(int(r), len(shares)) - 1]) for r in ranks]
    u_out, u_in = _left_singular_basis(unfolding(w, 0)), _left_singular_basis(unfolding(w, 1))
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    # Energy of the core's leading (R_out, R_in) block for every pair at once, as a 2-D cumulative sum.
    block = (core**2).sum(dim=(2, 3)).cumsum(0).cumsum(1)
    total = float((w**2).sum())
    options = []
    for pair in ranks:
        rank_out, rank_in = (min(int(r), size) for r, size in zip(pair, block.shape))
        share = float(block[rank_out - 1, rank_in - 1]) / total if total > 0 else 1.0
        options.append((int(param_of_rank(pair)), min(share, 1.0)))
    return options


def truncation(weight: Tensor, kind: str, method: str) -> Callable[[int | tuple[int, int]], Tensor]:
    """The reference structure's reconstruction of ``weight`` at a rank, as a function of the rank.

    ``"svd"``: the rank-``r`` truncated SVD of the weight as a matrix (a conv kernel flattened), reshaped back;
    ``"tucker2"`` (conv only): the truncated HOSVD that projects the output- and input-channel modes on their
    leading ``(R_out, R_in)`` left singular vectors. The factorisation is computed once, so pricing many ranks of
    one layer (as a sensitivity probe does) costs one matrix product each. Float64, on the weight's device.
    """
    _check_weight(weight, kind, method)
    w = weight.detach().to(torch.float64)
    if method == "svd":
        matrix = unfolding(w, 0)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)

        def svd_at(rank: int | tuple[int, int]) -> Tensor:
            r = int(rank)
            return ((u[:, :r] * s[:r]) @ vh[:r]).reshape(w.shape)

        return svd_at
    u_out, u_in = _left_singular_basis(unfolding(w, 0)), _left_singular_basis(unfolding(w, 1))

    def tucker2_at(ranks: int | tuple[int, int]) -> Tensor:
        rank_out, rank_in = ranks  # type: ignore[misc]
        p_out, p_in = u_out[:, :rank_out], u_in[:, :rank_in]
        core = torch.einsum("pa,pjkl,jb->abkl", p_out, w, p_in)
        return torch.einsum("oa,abkl,ib->oikl", p_out, core, p_in)

    return tucker2_at


# ----------------------------------------------------------------------------- budget allocation


def allocate_budget(
    options: Sequence[Sequence[tuple[int, float]]], total_params: int, buckets: int = 4096
) -> list[int]:
    """One option per layer, ``options[i][j] = (params, value)``, maximising the summed value within ``total_params``.

    A multiple-choice knapsack solved by dynamic programming over the parameters each layer spends beyond its cheapest
    option (the slack). When the slack is at most ``buckets`` parameters the solution is exact; otherwise parameters
    are counted in units of ``ceil(slack / buckets)``, each option's extra rounded up, so the budget is never exceeded
    and the answer is at least as good as the best allocation of ``total_params - len(options) * unit`` parameters:
    more buckets cost memory and time linearly for a finer result. Ties go to the cheaper option. Returns the chosen
    index per layer; raises :class:`ValueError` when even the cheapest options together exceed the budget.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    params, values = [], []
    for i, layer in enumerate(options):
        if not layer:
            raise ValueError(f"layer {i} has no options")
        cost = np.array([p for p, _ in layer], dtype=np.int64)
        value = np.array([v for _, v in layer], dtype=np.float64)
        if (cost < 0).any() or not np.isfinite(value).all():
            raise ValueError(f"layer {i}: parameters must be non-negative and values finite")
        params.append(cost)
        values.append(value)
    cheapest = sum(int(cost.min()) for cost in params)
    if cheapest > total_params:
        raise ValueError(f"the cheapest options need {cheapest} parameters, over the budget of {total_params}")
    if not params:
        return []

    slack = total_params - cheapest
    unit = max(1, math.ceil(slack / buckets))
    capacity = slack // unit
    # best[c]: the highest value of the layers so far whose extras cost at most c units; every c is reachable because
    # each layer's cheapest option costs 0 extra units, so no -inf bookkeeping is needed.
    best = np.zeros(capacity + 1)
    choices = []
    for cost, value in zip(params, values):
        extra_units = -((cost.min() - cost) // unit)  # ceil((cost - min) / unit): rounding up keeps the budget safe
        new_best = np.full(capacity + 1, -np.inf)
        choice = np.zeros(capacity + 1, dtype=np.int64)
        # Cheapest first with a strict comparison, so among equal values the cheaper option stays.
        for j in np.lexsort((np.arange(len(cost)), cost)):
            units = int(extra_units[j])
            if units > capacity:
                continue
            candidate = np.full(capacity + 1, -np.inf)
            candidate[units:] = best[: capacity + 1 - units] + value[j]
            better = candidate > new_best
            new_best[better] = candidate[better]
            choice[better] = j
        best = new_best
        choices.append((choice, extra_units))

    picked = []
    budget = capacity
    for choice, extra_units in reversed(choices):
        j = int(choice[budget])
        picked.append(j)
        budget -= int(extra_units[j])
    return picked[::-1]
