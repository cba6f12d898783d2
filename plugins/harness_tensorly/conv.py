"""The ``tensorly`` backend's decompositions of ``nn.Conv2d``: CP, Tucker-2 and TT, as chains of stock convs.

tensorly computes the factors of the kernel ``W (Cout, Cin, kh, kw)`` (``parafac``,
``partial_tucker`` on the channel modes, ``tensor_train`` of the kernel permuted to
``(Cin, kh, kw, Cout)``; see ``tensorly_ops.py``) and the shared builders of
:mod:`harness.tensor.structures` lay them into the same ``nn.Sequential`` of ``nn.Conv2d``
layers the native backend builds, so native against tensorly compares the decomposition
algorithms on identical kernels. CP (Lebedev et al., 2015) becomes a 1x1 conv, a
``(kh, 1)`` and a ``(1, kw)`` depthwise conv and a 1x1 conv; Tucker-2 (Kim et al., 2016)
a 1x1 conv, the ``(kh, kw)`` core conv and a 1x1 conv; TT a 1x1, a ``(kh, 1)``, a
``(1, kw)`` and a 1x1 conv. The parameter formulas and budget-rank solvers are the
shared ones too. Grouped convs are refused by the plugin before getting here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harness import (DecomposeRequest, cp_budget_rank, cp_conv_module, cp_options, param_budget, ranks_arg,
                     relative_error, tt_conv_budget_ranks, tt_conv_max_ranks, tt_conv_module, tucker2_budget_ranks,
                     tucker2_conv_module, tucker2_max_ranks, weight64)

from harness_tensorly import tensorly_ops as ops


def _positive_ranks(rank: Any, count: int) -> list[int]:
    # tensorly fails obscurely on a zero rank, so an explicit request is checked up front.
    ranks = [int(r) for r in ranks_arg(rank, count)]
    if any(r < 1 for r in ranks):
        raise ValueError(f"ranks must be >= 1, got {rank!r}")
    return ranks


# ----------------------------------------------------------------------------- CP


def cp_conv(
    layer: nn.Conv2d, rank: int, *, seed: int, init: str = "svd", n_iter_max: int = 300, tol: float = 1e-8
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Replace ``layer`` by the four-conv CP chain fitted by tensorly's CP-ALS at ``rank``."""
    weight = weight64(layer)
    fit = ops.parafac(weight, rank, seed=seed, init=init, n_iter_max=n_iter_max, tol=tol)
    approx = ops.cp_to_tensor(fit.weights, fit.factors)
    if not torch.isfinite(approx).all():
        raise RuntimeError(f"tensorly parafac at rank {rank} (init={init!r}) returned non-finite factors")
    # tensorly leaves the scale wherever ALS put it (the SVD init puts it all in mode 0).
    # Spread each component's magnitude evenly over the four factors so no sub-conv starts
    # at an odd scale; the product, hence the kernel, is unchanged.
    norms = [torch.linalg.vector_norm(f, dim=0) for f in fit.factors]
    magnitude = fit.weights * norms[0] * norms[1] * norms[2] * norms[3]
    share = magnitude.abs() ** 0.25
    sign = torch.where(magnitude < 0, -1.0, 1.0).to(weight)
    safe = [torch.where(n > 0, n, torch.ones_like(n)) for n in norms]
    a, b, c, d = (f / n * share for f, n in zip(fit.factors, safe))
    a = a * sign  # a negative component weight goes to the last 1x1 conv
    module = cp_conv_module(layer, a, b, c, d)
    info = {
        "rank": rank,
        "init": init,
        "n_iter": fit.n_iter,
        "n_iter_max": n_iter_max,
        "tol": tol,
        "converged": fit.converged,
        "rel_error": relative_error(weight, approx),
    }
    return module, info


def decompose_cp(layer: nn.Conv2d, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """CP at ``request.rank``, else at the largest rank within the budget.

    ``request.options`` may set ``init`` (``"svd"`` or ``"random"``), ``n_iter_max`` and
    ``tol`` for tensorly's ALS; the defaults match the native backend's (300 sweeps, 1e-8).
    """
    if request.rank is not None:
        rank = _positive_ranks(request.rank, 1)[0]
    else:
        rank = cp_budget_rank(layer, param_budget(request))
    return cp_conv(layer, rank, seed=request.seed, init=str(request.options.get("init", "svd")), **cp_options(request))


# ----------------------------------------------------------------------------- Tucker-2


def tucker2_conv(
    layer: nn.Conv2d, rank_out: int, rank_in: int, *, seed: int, n_iter_max: int = 10, tol: float = 1e-10
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Replace ``layer`` by ``1x1 -> (kh, kw) core -> 1x1`` from tensorly's ``partial_tucker`` on modes 0 and 1."""
    weight = weight64(layer)
    max_out, max_in = tucker2_max_ranks(layer)
    rank_out, rank_in = min(int(rank_out), max_out), min(int(rank_in), max_in)
    fit = ops.partial_tucker(weight, (0, 1), (rank_out, rank_in), seed=seed, n_iter_max=n_iter_max, tol=tol)
    u_out, u_in = fit.factors
    module = tucker2_conv_module(layer, fit.core, u_out, u_in)
    approx = ops.tucker_to_tensor(fit, (0, 1))
    info = {"rank": [rank_out, rank_in], "n_iter": fit.n_iter, "rel_error": relative_error(weight, approx)}
    return module, info


def decompose_tucker2(layer: nn.Conv2d, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """Tucker-2 at ``request.rank`` (int, or ``[R_out, R_in]``), else within the budget.

    ``request.options`` may set ``n_iter_max`` (HOOI sweeps, default 10 as in the native
    backend) and ``tol``; tensorly's own defaults (100 sweeps, tol 1e-4) are not used so
    that both backends run the same algorithm budget.
    """
    if request.rank is not None:
        rank_out, rank_in = _positive_ranks(request.rank, 2)
    else:
        rank_out, rank_in = tucker2_budget_ranks(layer, param_budget(request))
    options = request.options
    return tucker2_conv(
        layer, rank_out, rank_in, seed=request.seed,
        n_iter_max=int(options.get("n_iter_max", 10)), tol=float(options.get("tol", 1e-10)),
    )


# ----------------------------------------------------------------------------- tensor train


def tt_conv(layer: nn.Conv2d, ranks: Sequence[int], *, seed: int) -> tuple[nn.Sequential, dict[str, Any]]:
    """Replace ``layer`` by ``1x1 -> (kh, 1) -> (1, kw) -> 1x1`` from tensorly's TT-SVD of its kernel."""
    weight = weight64(layer)
    permuted = weight.permute(1, 2, 3, 0).contiguous()  # (Cin, kh, kw, Cout): the chain's order of application
    caps = tt_conv_max_ranks(layer)
    cores = ops.tensor_train(permuted, [min(int(r), cap) for r, cap in zip(ranks, caps)], seed)
    module = tt_conv_module(layer, cores)
    info = {
        "rank": [core.shape[-1] for core in cores[:-1]],
        "rel_error": relative_error(permuted, ops.tt_to_tensor(cores)),
    }
    return module, info


def decompose_tt(layer: nn.Conv2d, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """TT at ``request.rank`` (int, or ``[r1, r2, r3]``), else the ranks that fill the budget."""
    if request.rank is not None:
        return tt_conv(layer, _positive_ranks(request.rank, 3), seed=request.seed)
    return tt_conv(layer, tt_conv_budget_ranks(layer, param_budget(request)), seed=request.seed)
