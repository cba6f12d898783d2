"""Decompositions that fill TedNet's layers from trained weights, in plain PyTorch.

TedNet only trains its factorised layers from random init, so this backend computes
the factors itself and copies them in. Everything here works on dense float64
tensors and knows nothing about layers: Tucker by HOSVD followed by HOOI on any subset of modes, a sequential-SVD sweep that
gives tensor-train (TT-SVD) and, after one extra split, tensor-ring (TR-SVD) cores,
and :func:`pad_core`, which widens a core to ranks the data cannot use while keeping
the product exact and the new slots trainable. CP by alternating least squares
(CP-ALS) and the primitives are the host's (:mod:`harness.tensor.algebra`), the same the native
backend uses; plugins do not import each other, and tensorly is not a dependency here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from harness import leading_left_singular_vectors, mode_dot, relative_error, unfold


def _randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    # Draw on the generator's (CPU) device, then move: the same seed gives the same numbers anywhere.
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype).to(like.device)


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

    The first unfolding is split at rank ``r_0 r_1``, ``r_0`` is moved to the far end and
    the rest is a TT sweep from ``r_1`` to ``r_0``. With ``r_0 = 1`` this is TT-SVD, exact
    at :func:`tt_max_ranks`. Where the first unfolding has less rank ``k`` than ``r_0 r_1``
    (it has at most ``n_1``), the ring is swept at the ``(ceil(k / r_1'), r_1' = min(k, r_1))``
    its ``k`` columns fill and only then widened by :func:`pad_core`: sweeping the
    ``r_0 r_1 - k`` zero rows as well took 24.5 GB for a 512x512x3x3 kernel at x4.
    """
    d = tensor.ndim
    if d < 2 or len(ranks) != d:
        raise ValueError(f"a {d}-way tensor ring needs d >= 2 and {d} ranks, got {list(ranks)}")
    r0, r1 = int(ranks[0]), int(ranks[1])
    n1 = tensor.shape[0]
    u, s, vh = torch.linalg.svd(tensor.reshape(n1, -1), full_matrices=False)
    k = min(r0 * r1, s.numel())
    # Column j of the split is the pair (j // r1, j % r1); the first k of them fit in (r0_used, r1_used).
    r1_used = min(k, r1)
    r0_used = -(-k // r1_used)
    first = torch.zeros(n1, r0_used * r1_used, dtype=tensor.dtype, device=tensor.device)
    first[:, :k] = u[:, :k]
    rest = torch.zeros(r0_used * r1_used, vh.shape[1], dtype=tensor.dtype, device=tensor.device)
    rest[:k] = s[:k, None] * vh[:k]
    # (r0 r1, n2..nd) -> (r1, n2, ..., nd, r0): r0 travels round the ring to the last core.
    rest = rest.reshape(r0_used, r1_used, *tensor.shape[1:]).movedim(0, -1)
    cores = [first.reshape(n1, r0_used, r1_used).permute(1, 0, 2)]
    cores += _sweep(rest, ranks[2:])
    return _pad_chain(cores, [*ranks, r0], generator)


def chain_to_tensor(cores: Sequence[Tensor]) -> Tensor:
    """The dense tensor a tensor ring (or train, with end ranks 1) of cores ``(r_k, n_k, r_{k+1})`` describes."""
    shape = [core.shape[1] for core in cores]
    if len(cores) == 1:
        return torch.diagonal(cores[0], dim1=0, dim2=2).sum(-1)
    # Split the ring where its two halves' sizes balance, and build one open train per value of the closing index:
    # memory stays at a (left, r) and an (r, right) matrix. Building left to right instead holds (N / n_d, r), 5 GB
    # for VGG-11's 25,088-input Linear at x4.
    split = min(range(1, len(cores)), key=lambda m: max(math.prod(shape[:m]), math.prod(shape[m:])))
    total = None
    for a in range(cores[0].shape[0]):
        left = cores[0][a]  # (n_1, r_1): the modes seen so far merged into the rows
        for core in cores[1:split]:
            left = (left @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[2])
        right = cores[-1][:, :, a]  # (r_{d-1}, n_d): the modes seen so far merged into the columns
        for core in reversed(cores[split:-1]):
            right = (core.reshape(-1, core.shape[2]) @ right).reshape(core.shape[0], -1)
        train = left @ right
        total = train if total is None else total + train
    return total.reshape(shape)
