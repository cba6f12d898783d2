"""Decompositions that fill TedNet's layers from trained weights, in plain PyTorch.

TedNet only trains its factorised layers from random init, so this backend computes
the factors itself and copies them in. Everything here works on dense float64
tensors and knows nothing about layers: CP by alternating least squares (CP-ALS),
Tucker by HOSVD followed by HOOI on any subset of modes, a sequential-SVD sweep that
gives tensor-train (TT-SVD) and, after one extra split, tensor-ring (TR-SVD) cores,
and :func:`pad_core`, which widens a core to ranks the data cannot use while keeping
the product exact and the new slots trainable. It is deliberately self-contained:
plugins do not import each other, and tensorly is not a dependency of this backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.algebra import mttkrp
from harness.metrics import relative_error


def unfold(tensor: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding: rows index that mode, columns the other modes in order, last fastest."""
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def mode_dot(tensor: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """Multiply ``tensor`` along ``mode`` by ``matrix`` (shape ``(new, tensor.shape[mode])``)."""
    return torch.tensordot(matrix, tensor, dims=([1], [mode])).movedim(0, mode)


def khatri_rao(matrices: Sequence[Tensor]) -> Tensor:
    """Column-wise Kronecker product, the last matrix's row index fastest (matches :func:`unfold`)."""
    out = matrices[0]
    for matrix in matrices[1:]:
        out = (out[:, None, :] * matrix[None, :, :]).reshape(-1, out.shape[1])
    return out


def leading_left_singular_vectors(matrix: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading left singular vectors of ``matrix`` (``rank <= matrix.shape[0]``)."""
    # Inside HOOI the projected unfolding can have fewer columns than the rank asked for;
    # the full SVD completes the basis, so a Tucker factor always has its full width.
    u, _, _ = torch.linalg.svd(matrix, full_matrices=rank > min(matrix.shape))
    return u[:, :rank]


def _randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    # Draw on the generator's (CPU) device, then move: the same seed gives the same numbers anywhere.
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype).to(like.device)


# ----------------------------------------------------------------------------- CP


@dataclass
class CPResult:
    """``sum_r weights[r] * outer(factors[0][:, r], factors[1][:, r], ...)`` and how the fit went."""

    weights: Tensor
    factors: list[Tensor]
    n_iter: int
    converged: bool
    rel_error: float


def cp_to_tensor(weights: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """The dense tensor that CP weights and factors describe."""
    shape = [f.shape[0] for f in factors]
    return ((factors[0] * weights) @ khatri_rao(factors[1:]).T).reshape(shape)


def _cp_svd_init(tensor: Tensor, rank: int, generator: torch.Generator) -> list[Tensor]:
    factors = []
    for mode, size in enumerate(tensor.shape):
        u = leading_left_singular_vectors(unfold(tensor, mode), min(rank, size))
        if rank > size:
            # A mode shorter than the rank has no more singular vectors: random columns fill it.
            u = torch.cat([u, _randn((size, rank - size), generator, tensor)], dim=1)
        factors.append(u)
    return factors


def _als(tensor: Tensor, factors: list[Tensor], n_iter_max: int, tol: float, prev_error: float | None) -> CPResult:
    factors = list(factors)
    rank = factors[0].shape[1]
    weights = torch.ones(rank, dtype=tensor.dtype, device=tensor.device)
    error = math.inf if prev_error is None else prev_error
    converged = False
    n_iter = 0
    for n_iter in range(1, n_iter_max + 1):
        for mode in range(tensor.ndim):
            others = [f for m, f in enumerate(factors) if m != mode]
            gram = torch.ones(rank, rank, dtype=tensor.dtype, device=tensor.device)
            for f in others:
                gram = gram * (f.T @ f)
            # pinv, not solve: the Gram matrix is singular whenever the rank exceeds a mode's size.
            updated = mttkrp(tensor, factors, mode) @ torch.linalg.pinv(gram, hermitian=True)
            norms = torch.linalg.vector_norm(updated, dim=0)
            # Normalised factors keep the Gram products well conditioned; the scale goes to the weights.
            weights = torch.where(norms > 0, norms, torch.ones_like(norms))
            factors[mode] = updated / weights
        previous, error = error, relative_error(tensor, cp_to_tensor(weights, factors))
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
    ``generator``; each runs ``trial_iter`` sweeps and only the best goes on. Stops when
    the relative error changes by less than ``tol`` between sweeps (``converged``) or
    after ``n_iter_max`` sweeps in all.
    """
    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    starts = [_cp_svd_init(tensor, rank, generator)]
    starts += [[_randn((size, rank), generator, tensor) for size in tensor.shape] for _ in range(n_restarts)]
    first = min(trial_iter, n_iter_max)
    best = min((_als(tensor, f, first, tol, None) for f in starts), key=lambda result: result.rel_error)
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

    def to_tensor(self) -> Tensor:
        out = self.core
        for mode, factor in zip(self.modes, self.factors):
            out = mode_dot(out, factor, mode)
        return out


def tucker(tensor: Tensor, modes: Sequence[int], ranks: Sequence[int], *, n_iter_max: int = 10,
           tol: float = 1e-10) -> TuckerResult:
    """Tucker decomposition along ``modes`` only (all modes for a full Tucker): HOSVD, then HOOI.

    Each rank must be at most the size of its mode. HOOI stops after ``n_iter_max``
    sweeps or when the relative error changes by less than ``tol``.
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

    # With orthonormal factors ||X - X̂||² = ||X||² - ||core||²: no reconstruction per sweep.
    def error_of(core: Tensor) -> float:
        return 0.0 if norm == 0 else math.sqrt(max(norm**2 - float(torch.linalg.vector_norm(core)) ** 2, 0.0)) / norm

    error = error_of(project(None))
    n_iter = 0
    for n_iter in range(1, n_iter_max + 1):
        for i, (mode, rank) in enumerate(zip(modes, ranks)):
            factors[i] = leading_left_singular_vectors(unfold(project(i), mode), rank)
        previous, error = error, error_of(project(None))
        if abs(previous - error) < tol:
            break
    result = TuckerResult(project(None), factors, modes, n_iter, 0.0)
    result.rel_error = relative_error(tensor, result.to_tensor())
    return result


# ----------------------------------------------------------------------------- tensor train / ring


def tt_max_ranks(shape: Sequence[int]) -> list[int]:
    """The largest useful TT rank at each of the ``len(shape) - 1`` bonds: the smaller side of the split."""
    return [min(math.prod(shape[: k + 1]), math.prod(shape[k + 1 :])) for k in range(len(shape) - 1)]


def pad_core(core: Tensor, r_in: int, r_out: int, generator: torch.Generator) -> Tensor:
    """Widen ``core (a, n, b)`` to ``(r_in, n, r_out)`` so a chain or ring of padded cores is unchanged.

    The new input rows get random entries on the old output columns and everything else
    is zero: any product that passes through a new slot meets a zero on its way in, so
    the tensor is exact, yet the zero entries have non-zero gradients, so fine-tuning
    can use the extra rank (zeros on both sides would be a saddle it never leaves).
    """
    a, n, b = core.shape
    if (a, b) == (r_in, r_out):
        return core
    out = torch.zeros(r_in, n, r_out, dtype=core.dtype, device=core.device)
    out[:a, :, :b] = core
    if r_in > a:
        scale = float(core.square().mean().sqrt()) or 1.0
        out[a:, :, :b] = scale * _randn((r_in - a, n, b), generator, core)
    return out


def _sweep(tensor: Tensor, ranks: Sequence[int]) -> list[Tensor]:
    """Sequential SVDs of ``tensor (r_left, n_1, ..., n_m, r_right)`` into ``m`` cores ``(r_{k-1}, n_k, r_k)``.

    ``ranks`` are the ``m - 1`` inner ranks, each lowered to what the SVD can deliver;
    the first core keeps ``r_left`` rows and the last ``r_right`` columns.
    """
    r_left, *sizes, r_right = tensor.shape
    cores = []
    rest = tensor.reshape(r_left, -1)
    prev = r_left
    for size, wanted in zip(sizes[:-1], ranks):
        u, s, vh = torch.linalg.svd(rest.reshape(prev * size, -1), full_matrices=False)
        r = max(1, min(int(wanted), s.numel()))
        cores.append(u[:, :r].reshape(prev, size, r))
        rest = s[:r, None] * vh[:r]
        prev = r
    cores.append(rest.reshape(prev, sizes[-1], r_right))
    return cores


def _pad_chain(cores: list[Tensor], bonds: Sequence[int], generator: torch.Generator) -> list[Tensor]:
    """Pad ``cores[k]`` to ``(bonds[k], n_k, bonds[k + 1])``; the bonds the sweep delivered are never wider."""
    return [pad_core(core, bonds[k], bonds[k + 1], generator) for k, core in enumerate(cores)]


def tt_svd(tensor: Tensor, ranks: Sequence[int], generator: torch.Generator) -> list[Tensor]:
    """TT-SVD: cores ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1`` and exactly the inner ``ranks`` asked for.

    Where the SVDs deliver less rank than asked (never at :func:`tt_max_ranks`), the
    cores are padded by :func:`pad_core`, so the layer has the size the budget chose.
    """
    if len(ranks) != tensor.ndim - 1:
        raise ValueError(f"a {tensor.ndim}-way tensor train needs {tensor.ndim - 1} ranks, got {list(ranks)}")
    cores = _sweep(tensor.reshape(1, *tensor.shape, 1), ranks)
    return _pad_chain(cores, [1, *ranks, 1], generator)


def tr_svd(tensor: Tensor, ranks: Sequence[int], generator: torch.Generator) -> list[Tensor]:
    """TR-SVD (Zhao et al., 2016): ring cores ``(r_k, n_k, r_{k+1})``, ``r_d = r_0``, with ``ranks = [r_0..r_{d-1}]``.

    The first unfolding is split at rank ``r_0 r_1`` (zero columns where it has less),
    ``r_0`` is moved to the far end and the rest is a TT sweep from ``r_1`` to ``r_0``.
    With ``r_0 = 1`` this is TT-SVD, exact at :func:`tt_max_ranks`.
    """
    d = tensor.ndim
    if d < 2 or len(ranks) != d:
        raise ValueError(f"a {d}-way tensor ring needs d >= 2 and {d} ranks, got {list(ranks)}")
    r0, r1 = int(ranks[0]), int(ranks[1])
    n1 = tensor.shape[0]
    u, s, vh = torch.linalg.svd(tensor.reshape(n1, -1), full_matrices=False)
    k = min(r0 * r1, s.numel())
    first = torch.zeros(n1, r0 * r1, dtype=tensor.dtype, device=tensor.device)
    first[:, :k] = u[:, :k]
    rest = torch.zeros(r0 * r1, vh.shape[1], dtype=tensor.dtype, device=tensor.device)
    rest[:k] = s[:k, None] * vh[:k]
    # (r0 r1, n2..nd) -> (r1, n2, ..., nd, r0): r0 travels round the ring to the last core.
    rest = rest.reshape(r0, r1, *tensor.shape[1:]).movedim(0, -1)
    cores = [first.reshape(n1, r0, r1).permute(1, 0, 2)]
    cores += _sweep(rest, ranks[2:])
    return _pad_chain(cores, [*ranks, r0], generator)


def chain_to_tensor(cores: Sequence[Tensor]) -> Tensor:
    """The dense tensor a tensor ring (or train, with end ranks 1) of cores ``(r_k, n_k, r_{k+1})`` describes."""
    shape = [core.shape[1] for core in cores]
    total = None
    # One open train per value of the closing index: memory stays at one train's (N, r), not (r_0, N, r).
    for a in range(cores[0].shape[0]):
        out = cores[0][a]  # (n_1, r_1): the modes seen so far merged into the rows
        for core in cores[1:-1]:
            out = (out @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[2])
        last = cores[-1][:, :, a] if len(cores) > 1 else None
        train = out @ last if last is not None else out[:, a]
        total = train if total is None else total + train
    return total.reshape(shape)
