"""Tensor algebra shared by the backends that compute decompositions in plain PyTorch (native, TedNet's fills).

Unfoldings, mode products, Khatri-Rao products, leading singular vectors, and CP by alternating least squares
(CP-ALS): the HOSVD-based start and random restarts that compete for a few sweeps, then ALS, each Gram system
solved by Cholesky (the pseudo-inverse when it is singular), until the error stops moving. The matricized-tensor-times-Khatri-Rao product
(MTTKRP) is the core of every sweep; computed as ``unfold(X, mode) @ khatri_rao(others)`` it materialises the
Khatri-Rao product of the other factors (for a 512x512x3x3 kernel at rank 570, 1.3 G numbers per call).
:func:`mttkrp` contracts the tensor mode by mode instead, and a sweep contracts the full tensor twice, not once
per mode: the first mode's MTTKRP, then the tensor times the new first factor, from which every other mode's
MTTKRP is a small contraction. Those two contractions run in float32 against unfoldings laid out once; Grams,
solves and the error stay in float64. The error is read off Gram matrices and the last MTTKRP, never a
reconstruction. On 2 cores: 23 s for 300 sweeps on a 512x512x3x3 kernel at rank 572 (46 s all in float64).
Backends import all this from here rather than from each other, so the native backend and TedNet's layers are
filled by the same algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def _weighted_sum(block: Tensor, weights: Tensor) -> Tensor:
    """``sum_k block[:, k, r] * weights[k, r]``: for a few ``k`` by accumulating in place, which reads ``block`` once
    and allocates nothing its size (twice as fast as a product and a sum on a 512x9x572 block)."""
    if block.shape[1] > 64:
        return (block * weights).sum(dim=1)
    out = block[:, 0, :] * weights[0]
    for k in range(1, block.shape[1]):
        out.addcmul_(block[:, k, :], weights[k])
    return out


def _contract_others(partial: Tensor, modes: list[int], factors: Sequence[Tensor], keep: int) -> Tensor:
    """``partial`` (one axis per entry of ``modes``, then the rank) contracted with every mode's factor but
    ``keep``'s: the (size of ``keep``, rank) result. The other modes' factors are combined into their Khatri-Rao
    product first, which is never larger than ``partial`` divided by ``keep``'s size, so the contraction is one
    weighted sum over a contiguous block instead of a strided pass per mode."""
    axis = modes.index(keep)
    rank = partial.shape[-1]
    block = partial.movedim(axis, 0).reshape(partial.shape[axis], -1, rank)
    others = [factors[m] for m in modes if m != keep]
    if not others:
        return block.reshape(partial.shape[axis], rank)
    return _weighted_sum(block, khatri_rao(others))


def mttkrp(tensor: Tensor, factors: Sequence[Tensor], mode: int) -> Tensor:
    """``unfold(tensor, mode) @ khatri_rao(factors other than mode's)``, without forming the Khatri-Rao product.

    The largest other mode is contracted first, in one matmul that does nearly all the work; the rest is a
    multiply-and-sum with the Khatri-Rao product of the remaining (small) modes. Every intermediate holds at most
    ``tensor.numel() / largest * rank`` numbers (for a 512x512x3x3 kernel at rank 570: 2.6 M, where the
    Khatri-Rao product of all the other modes is 1.3 G).
    """
    largest = max((m for m in range(tensor.ndim) if m != mode), key=lambda m: tensor.shape[m])
    partial = torch.tensordot(tensor, factors[largest], dims=([largest], [0]))  # remaining modes..., rank
    return _contract_others(partial, [m for m in range(tensor.ndim) if m != largest], factors, mode)


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
        # The leading eigenvectors of the unfolding's Gram matrix are its leading left singular vectors, found
        # ten times faster than by an SVD of the wide unfolding (0.06 s against 0.66 s for 512x4608); a start
        # needs no more accuracy than that.
        matrix = unfold(tensor, mode)
        _, vectors = torch.linalg.eigh(matrix @ matrix.T)
        u = vectors.flip(-1)[:, :min(rank, size)]
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


def _solve_gram(product: Tensor, gram: Tensor) -> Tensor:
    """``product @ inverse(gram)`` for a symmetric positive semi-definite ``gram``: by Cholesky when it is definite
    (a third of a rank^3, where the pseudo-inverse's eigendecomposition costs about ten rank^3 and dominated
    sweeps at ranks in the hundreds), by the pseudo-inverse when it is singular (a rank above the other modes'
    combined size, or collinear factors)."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        # Two triangular solves: a fifth faster than cholesky_solve at ranks in the hundreds, same result.
        lower = torch.linalg.solve_triangular(factor, product.T, upper=False)
        solved = torch.linalg.solve_triangular(factor.T, lower, upper=True).T
        if bool(torch.isfinite(solved).all()):
            return solved
    return product @ torch.linalg.pinv(gram, hermitian=True)


def _hadamard(matrices: Sequence[Tensor]) -> Tensor:
    out = matrices[0]
    for matrix in matrices[1:]:
        out = out * matrix
    return out


def _als(tensor: Tensor, factors: list[Tensor], n_iter_max: int, tol: float, prev_error: float | None) -> CPResult:
    factors = list(factors)
    rank = factors[0].shape[1]
    weights = torch.ones(rank, dtype=tensor.dtype, device=tensor.device)
    norm_sq = float(tensor.pow(2).sum())
    error = math.inf if prev_error is None else prev_error
    converged = False
    n_iter = 0
    ndim = tensor.ndim
    later = list(range(1, ndim))
    # Two full contractions per sweep: the first mode's MTTKRP (through the largest other mode), then the tensor
    # times the new first factor, from which every later mode's MTTKRP is small. Both run as one matmul against
    # an unfolding laid out once here, so no sweep copies the tensor. The iterates are those of plain ALS.
    largest = max(later, key=lambda m: tensor.shape[m]) if later else 0
    first_rest = [m for m in range(ndim) if m != largest]
    # The kernels come from float32 layers: the contractions with the tensor run in float32, which halves their
    # time, while the Gram matrices, the solves and the error stay in the tensor's own precision. At 300 sweeps
    # on a 512x512x3x3 kernel the error is that of float64 contractions to 1e-8.
    dtype = tensor.dtype
    low = torch.float32 if dtype == torch.float64 else dtype
    by_largest = tensor.movedim(largest, -1).reshape(-1, tensor.shape[largest]).to(low)
    by_first = tensor.movedim(0, -1).reshape(-1, tensor.shape[0]).to(low)
    grams = [f.T @ f for f in factors]  # kept current as each factor is updated, as are the low-precision copies
    lows = [f.to(low) for f in factors]
    for n_iter in range(1, n_iter_max + 1):
        for mode in range(ndim):
            others = [g for m, g in enumerate(grams) if m != mode]
            gram = _hadamard(others) if others else torch.ones_like(grams[mode])
            if mode == 0:
                partial = (by_largest @ lows[largest]).reshape(*(tensor.shape[m] for m in first_rest), rank)
                product = _contract_others(partial, first_rest, lows, 0).to(dtype)
            else:
                # ``partial`` holds the tensor times the new factors of the modes before this one, axes from this
                # mode on: this mode's MTTKRP contracts the later modes; then this mode's new factor is folded in.
                product = _contract_others(partial, list(range(mode, ndim)), lows, mode).to(dtype)
            updated = _solve_gram(product, gram)
            norms = torch.linalg.vector_norm(updated, dim=0)
            # Normalising keeps the factors on one scale so the Gram products stay well conditioned.
            weights = torch.where(norms > 0, norms, torch.ones_like(norms))
            factors[mode] = updated / weights
            grams[mode] = factors[mode].T @ factors[mode]
            lows[mode] = factors[mode].to(low)
            if mode == 0 and later:
                partial = (by_first @ lows[0]).reshape(*tensor.shape[1:], rank)
            elif 0 < mode < ndim - 1:
                size = partial.shape[0]
                partial = (partial.reshape(size, -1, rank) * lows[mode][:, None, :]).sum(dim=0).reshape(
                    *tensor.shape[mode + 1:], rank)
        # The error from Gram matrices and the last MTTKRP, never from a reconstruction:
        # ||X - X^||^2 = ||X||^2 - 2 <X, X^> + ||X^||^2, with <X, X^> = sum_r w_r <F_last[:, r], M_last[:, r]>;
        # the last mode's system matrix times its own Gram is the Hadamard product of all of them.
        inner = float((weights * (factors[-1] * product).sum(dim=0)).sum())
        approx_sq = float(weights @ (gram * grams[-1]) @ weights)
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
