"""Native decompositions of ``nn.Conv2d``: CP, Tucker-2 and tensor-train, as chains of stock convs.

Each method factorises the kernel ``W (Cout, Cin, kh, kw)`` in plain PyTorch with the host's
kernels (``cp_als``, ``tucker``, ``tt_svd``) and hands the factors to the host's shared builders
(``cp_conv_module`` and the like), which lay them into an ``nn.Sequential`` of ``nn.Conv2d``
layers (the same kernels every backend computing the format gets). CP (Lebedev et al.,
2015) becomes a 1x1 conv, a ``(kh, 1)`` and a ``(1, kw)`` depthwise conv and a 1x1 conv;
Tucker-2 (Kim et al., 2016) a 1x1 conv, the ``(kh, kw)`` core conv and a 1x1 conv; TT a
1x1, a ``(kh, 1)``, a ``(1, kw)`` and a 1x1 conv. The parameter formulas and budget-rank
solvers are the shared ones too. Grouped convs are not handled (the plugin raises
``Unsupported`` before getting here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness import (DecomposeRequest, cp_als, cp_budget_rank, cp_conv_module, cp_options, cp_to_tensor, param_budget,
                     ranks_arg, relative_error, tt_conv_budget_ranks, tt_conv_max_ranks, tt_conv_module, tt_svd,
                     tt_to_tensor, tucker, tucker2_budget_ranks, tucker2_conv_module, weight64)


# ----------------------------------------------------------------------------- CP


def cp_conv(
    layer: nn.Conv2d,
    rank: int,
    *,
    generator: torch.Generator,
    n_iter_max: int = 300,
    tol: float = 1e-8,
    n_restarts: int = 2,
) -> tuple[nn.Sequential, dict]:
    """Replace ``layer`` by the four-conv CP chain fitted by CP-ALS at ``rank``."""
    weight = weight64(layer)
    fit = cp_als(weight, rank, generator=generator, n_iter_max=n_iter_max, tol=tol, n_restarts=n_restarts)
    # Spread the component norms evenly over the four factors so no sub-conv starts at an odd scale.
    scale = fit.weights ** 0.25
    module = cp_conv_module(layer, *(factor * scale for factor in fit.factors))
    info = {
        "rank": rank,
        "n_iter": fit.n_iter,
        "converged": fit.converged,
        "rel_error": relative_error(weight, cp_to_tensor(fit.weights, fit.factors)),
    }
    return module, info


def decompose_cp(layer: nn.Conv2d, request: DecomposeRequest) -> tuple[nn.Module, dict]:
    """CP at ``request.rank``, else at the largest rank within the budget.

    ``request.options`` may set ``n_iter_max``, ``tol`` and ``n_restarts`` for CP-ALS.
    """
    if request.rank is not None:
        rank = int(request.rank)
    else:
        rank = cp_budget_rank(layer, param_budget(request))
    restarts = 1 if request.rebuild else int(request.options.get("n_restarts", 2))
    return cp_conv(layer, rank, generator=request.generator(), n_restarts=restarts, **cp_options(request))


# ----------------------------------------------------------------------------- Tucker-2


def tucker2_conv(layer: nn.Conv2d, rank_out: int, rank_in: int, *, n_iter_max: int = 10) -> tuple[nn.Sequential, dict]:
    """Replace ``layer`` by ``1x1 -> (kh, kw) core -> 1x1`` from HOSVD + HOOI on the channel modes."""
    weight = weight64(layer)
    cout, cin = weight.shape[:2]
    rank_out = max(1, min(int(rank_out), cout))
    rank_in = max(1, min(int(rank_in), cin))
    fit = tucker(weight, (0, 1), (rank_out, rank_in), n_iter_max=n_iter_max)
    u_out, u_in = fit.factors
    module = tucker2_conv_module(layer, fit.core, u_out, u_in)
    info = {"rank": [rank_out, rank_in], "n_iter": fit.n_iter, "rel_error": fit.rel_error}
    return module, info


def decompose_tucker2(layer: nn.Conv2d, request: DecomposeRequest) -> tuple[nn.Module, dict]:
    """Tucker-2 at ``request.rank`` (int, or ``[R_out, R_in]``), else within the budget.

    ``request.options["n_iter_max"]`` sets the number of HOOI sweeps (default 10); a rebuild needs the HOSVD's
    shapes only, since the saved factors are loaded over them.
    """
    if request.rank is not None:
        rank_out, rank_in = ranks_arg(request.rank, 2)
    else:
        rank_out, rank_in = tucker2_budget_ranks(layer, param_budget(request))
    sweeps = 0 if request.rebuild else int(request.options.get("n_iter_max", 10))
    return tucker2_conv(layer, rank_out, rank_in, n_iter_max=sweeps)


# ----------------------------------------------------------------------------- tensor train


def tt_conv(layer: nn.Conv2d, ranks: Sequence[int]) -> tuple[nn.Sequential, dict]:
    """Replace ``layer`` by ``1x1 -> (kh, 1) -> (1, kw) -> 1x1`` from the TT-SVD of its kernel."""
    weight = weight64(layer)
    permuted = weight.permute(1, 2, 3, 0)  # (Cin, kh, kw, Cout): the chain's order of application
    caps = tt_conv_max_ranks(layer)
    cores = tt_svd(permuted, [max(1, min(int(r), cap)) for r, cap in zip(ranks, caps)])
    module = tt_conv_module(layer, cores)
    info = {"rank": [core.shape[-1] for core in cores[:-1]], "rel_error": relative_error(permuted, tt_to_tensor(cores))}
    return module, info


def decompose_tt(layer: nn.Conv2d, request: DecomposeRequest) -> tuple[nn.Module, dict]:
    """TT at ``request.rank`` (int, or ``[r1, r2, r3]``), else the ranks that fill the budget."""
    if request.rank is not None:
        return tt_conv(layer, ranks_arg(request.rank, 3))
    return tt_conv(layer, tt_conv_budget_ranks(layer, param_budget(request)))
