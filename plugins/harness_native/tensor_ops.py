"""Tensor algorithms shared by the native backend's linear and conv methods, in plain PyTorch.

Everything here works on dense float64 tensors and knows nothing about layers or
requests: unfoldings and Khatri-Rao products, CP by alternating least squares
(CP-ALS, whose MTTKRP contracts the tensor mode by mode instead of forming the
Khatri-Rao product, and whose error per sweep comes from Gram matrices instead of a
reconstruction), partial Tucker by HOSVD followed by HOOI, and the tensor-train SVD
(TT-SVD) with the maximal TT ranks it can reach. The layer builders in
``linear.py`` and ``conv.py`` turn the factors these return into modules; keeping
the algebra apart lets it be tested and reused without building any module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.algebra import mttkrp
from harness.metrics import relative_error
from harness.structures import tt_max_ranks


def unfold(tensor: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding: rows index that mode, columns the other modes in order, last fastest."""
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def khatri_rao(matrices: Sequence[Tensor]) -> Tensor:
    """Column-wise Kronecker product, with the last matrix's row index varying fastest (matches :func:`unfold`)."""
    out = matrices[0]
    for matrix in matrices[1:]:
        out = (out[:, None, :] * matrix[None, :, :]).reshape(-1, out.shape[1])
    return out


def mode_dot(tensor: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """Multiply ``tensor`` along ``mode`` by ``matrix`` (shape ``(new, tensor.shape[mode])``)."""
    return torch.tensordot(matrix, tensor, dims=([1], [mode])).movedim(0, mode)


def leading_left_singular_vectors(matrix: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading left singular vectors of ``matrix`` (``rank <= matrix.shape[0]``)."""
    # Beyond the matrix's own rank the reduced SVD has too few columns; the full one
    # completes them with an orthonormal basis, so a "full" Tucker rank stays exact.
    full = rank > min(matrix.shape)
    u, _, _ = torch.linalg.svd(matrix, full_matrices=full)
    return u[:, :rank]


# ----------------------------------------------------------------------------- CP


@dataclass
class CPResult:
    """A CP decomposition ``sum_r weights[r] * outer(factors[0][:, r], factors[1][:, r], ...)``."""

    weights: Tensor
    factors: list[Tensor]
    n_iter: int
    converged: bool
    rel_error: float


def cp_to_tensor(weights: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """The dense tensor that CP weights and factors describe."""
    shape = [f.shape[0] for f in factors]
    if len(factors) == 1:
        return (factors[0] * weights).sum(dim=1)
    return ((factors[0] * weights) @ khatri_rao(factors[1:]).T).reshape(shape)


def _svd_init(tensor: Tensor, rank: int, generator: torch.Generator) -> list[Tensor]:
    factors = []
    for mode, size in enumerate(tensor.shape):
        u = leading_left_singular_vectors(unfold(tensor, mode), min(rank, size))
        if rank > size:
            # A mode shorter than the rank has no more singular vectors; random columns fill it.
            extra = _randn((size, rank - size), generator, tensor)
            u = torch.cat([u, extra], dim=1)
        factors.append(u)
    return factors


def _randn(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    # Draw where the generator lives, then move: a CPU generator gives the same numbers for every device.
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def _random_init(tensor: Tensor, rank: int, generator: torch.Generator) -> list[Tensor]:
    return [_randn((size, rank), generator, tensor) for size in tensor.shape]


def _als(tensor: Tensor, factors: list[Tensor], n_iter_max: int, tol: float, prev_error: float | None) -> CPResult:
    factors = list(factors)
    rank = factors[0].shape[1]
    weights = torch.ones(rank, dtype=tensor.dtype, device=tensor.device)
    norm_sq = float(tensor.pow(2).sum())
    error = math.inf if prev_error is None else prev_error
    converged = False
    n_iter = 0
    for n_iter in range(1, n_iter_max + 1):
        grams = [f.T @ f for f in factors]
        for mode in range(tensor.ndim):
            gram = torch.ones(rank, rank, dtype=tensor.dtype, device=tensor.device)
            for m, other in enumerate(grams):
                if m != mode:
                    gram = gram * other
            product = mttkrp(tensor, factors, mode)
            # pinv, not solve: the Gram matrix is singular whenever the rank exceeds a mode's size.
            updated = product @ torch.linalg.pinv(gram, hermitian=True)
            norms = torch.linalg.vector_norm(updated, dim=0)
            # Normalising keeps the factors on one scale so the Gram products stay well conditioned.
            weights = torch.where(norms > 0, norms, torch.ones_like(norms))
            factors[mode] = updated / weights
            grams[mode] = factors[mode].T @ factors[mode]
        # The error from Gram matrices and the last MTTKRP, never from a reconstruction:
        # ||X - X^||^2 = ||X||^2 - 2 <X, X^> + ||X^||^2, with <X, X^> = sum_r w_r <F_last[:, r], M_last[:, r]>.
        inner = float((weights * (factors[-1] * product).sum(dim=0)).sum())
        gram_all = torch.ones(rank, rank, dtype=tensor.dtype, device=tensor.device)
        for other in grams:
            gram_all = gram_all * other
        approx_sq = float(weights @ gram_all @ weights)
        residual = math.sqrt(max(norm_sq - 2 * inner + approx_sq, 0.0))
        previous, error = error, residual / math.sqrt(norm_sq) if norm_sq > 0 else residual
        if abs(previous - error) < tol:
            converged = True
            break
    return CPResult(weights, factors, n_iter, converged, error)


def cp_als(
    tensor: Tensor,
    rank: int,
    *,
    generator: torch.Generator,
    n_iter_max: int = 300,
    tol: float = 1e-8,
    n_restarts: int = 2,
    trial_iter: int = 10,
) -> CPResult:
    """CP decomposition of ``tensor`` at ``rank`` by alternating least squares.

    Starts from an HOSVD-based init and ``n_restarts`` random inits drawn from
    ``generator``; each runs ``trial_iter`` sweeps and only the best goes on, so
    restarts cost a few sweeps each rather than a full fit. Stops when the relative
    error changes by less than ``tol`` between sweeps (``converged``) or after
    ``n_iter_max`` sweeps in all (``n_iter`` counts the kept run's sweeps).
    """
    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    starts = [_svd_init(tensor, rank, generator)]
    starts += [_random_init(tensor, rank, generator) for _ in range(n_restarts)]
    first = min(trial_iter, n_iter_max)
    trials = [_als(tensor, factors, first, tol, None) for factors in starts]
    best = min(trials, key=lambda result: result.rel_error)
    if best.converged or best.n_iter >= n_iter_max:
        return best
    rest = _als(tensor, best.factors, n_iter_max - best.n_iter, tol, best.rel_error)
    return CPResult(rest.weights, rest.factors, best.n_iter + rest.n_iter, rest.converged, rest.rel_error)


# ----------------------------------------------------------------------------- Tucker


@dataclass
class TuckerResult:
    """``tensor ≈ core`` multiplied along each of ``modes`` by the matching orthonormal factor."""

    core: Tensor
    factors: list[Tensor]
    modes: tuple[int, ...]
    n_iter: int
    rel_error: float


def partial_tucker(
    tensor: Tensor, modes: Sequence[int], ranks: Sequence[int], *, n_iter_max: int = 10, tol: float = 1e-10
) -> TuckerResult:
    """Tucker decomposition along ``modes`` only: HOSVD init, then HOOI sweeps.

    HOOI refines each factor against the others' projections; it stops after
    ``n_iter_max`` sweeps or when the relative error changes by less than ``tol``.
    """
    modes = tuple(modes)
    factors = [leading_left_singular_vectors(unfold(tensor, m), r) for m, r in zip(modes, ranks)]

    def project(skip: int | None) -> Tensor:
        out = tensor
        for i, (mode, factor) in enumerate(zip(modes, factors)):
            if i != skip:
                out = mode_dot(out, factor.T, mode)
        return out

    norm = float(torch.linalg.vector_norm(tensor))
    # With orthonormal factors ||X - X̂||² = ||X||² - ||core||², so no reconstruction per sweep.
    def error_of(core: Tensor) -> float:
        if norm == 0:
            return 0.0
        return math.sqrt(max(norm**2 - float(torch.linalg.vector_norm(core)) ** 2, 0.0)) / norm

    error = error_of(project(None))
    n_iter = 0
    for n_iter in range(1, n_iter_max + 1):
        for i, (mode, rank) in enumerate(zip(modes, ranks)):
            factors[i] = leading_left_singular_vectors(unfold(project(i), mode), rank)
        previous, error = error, error_of(project(None))
        if abs(previous - error) < tol:
            break
    core = project(None)
    approx = core
    for mode, factor in zip(modes, factors):
        approx = mode_dot(approx, factor, mode)
    return TuckerResult(core, factors, modes, n_iter, relative_error(tensor, approx))


# ----------------------------------------------------------------------------- tensor train


def uniform_tt_ranks(rank: int, shape: Sequence[int]) -> list[int]:
    """One rank for every bond, capped where the split allows less."""
    return [min(rank, cap) for cap in tt_max_ranks(shape)]


def tt_svd(tensor: Tensor, ranks: Sequence[int]) -> list[Tensor]:
    """TT-SVD: cores ``G_k`` of shape ``(r_{k-1}, n_k, r_k)``, ``r_0 = r_d = 1``.

    ``ranks`` gives the ``d - 1`` internal ranks; each is lowered to what the
    sequential SVDs can deliver. Cores are left-orthonormal except the last, which
    carries the singular values.
    """
    shape = tuple(tensor.shape)
    if len(ranks) != len(shape) - 1:
        raise ValueError(f"a {len(shape)}-way tensor train needs {len(shape) - 1} ranks, got {list(ranks)}")
    cores = []
    rest = tensor.reshape(1, -1)
    r_prev = 1
    for size, wanted in zip(shape[:-1], ranks):
        u, s, vh = torch.linalg.svd(rest.reshape(r_prev * size, -1), full_matrices=False)
        r = max(1, min(int(wanted), s.numel()))
        cores.append(u[:, :r].reshape(r_prev, size, r))
        rest = s[:r, None] * vh[:r]
        r_prev = r
    cores.append(rest.reshape(r_prev, shape[-1], 1))
    return cores


def tt_to_tensor(cores: Sequence[Tensor]) -> Tensor:
    """The dense tensor a list of TT cores ``(r_{k-1}, n_k, r_k)`` describes."""
    shape = [core.shape[1] for core in cores]
    out = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        out = (out @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    return out.reshape(shape)
