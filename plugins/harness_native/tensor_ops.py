"""Tensor algorithms shared by the native backend's linear and conv methods, in plain PyTorch.

Everything here works on dense float64 tensors and knows nothing about layers or
requests: partial Tucker by HOSVD followed by HOOI, and the tensor-train SVD
(TT-SVD) with the maximal TT ranks it can reach; CP-ALS and the primitives (unfoldings,
Khatri-Rao products) are the host's (:mod:`harness.tensor.algebra`), shared with the TedNet backend's fills. The layer builders in
``linear.py`` and ``conv.py`` turn the factors these return into modules; keeping
the algebra apart lets it be tested and reused without building any module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from harness import leading_left_singular_vectors, mode_dot, relative_error, tt_max_ranks, unfold


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
