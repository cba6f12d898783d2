"""Native decompositions of ``nn.Linear``: truncated SVD and the TT-matrix format.

The factors are computed in plain PyTorch (``torch.linalg.svd`` and the host's ``tt_svd``) and
laid into the host's shared modules (``svd_linear_module``, ``TTMatrixLinear``).
Truncated SVD (the baseline every fully-connected method must beat) replaces the
layer with two thin ``nn.Linear`` layers whose weights share the square roots of
the singular values. The TT-matrix format (Novikov et al., 2015) tensorizes
``in_features = prod(n_k)`` and ``out_features = prod(m_k)`` and stores the weight
as cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)`` in a
:class:`~harness.tensor.structures.TTMatrixLinear`. ``decompose_svd`` and ``decompose_tt``
read a request (explicit rank or parameter budget) and return the replacement with
its ``decomposition_info`` dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness import (DecomposeRequest, TTMatrixLinear, param_budget, relative_error, svd_budget_rank, svd_linear_module,
                     tensorized_shapes, tt_linear_budget_ranks, tt_linear_max_ranks, tt_matrix_linear_module, tt_svd,
                     tt_to_tensor, weight64)


# ----------------------------------------------------------------------------- truncated SVD


def svd_linear(layer: nn.Linear, rank: int) -> tuple[nn.Sequential, dict]:
    """Replace ``layer`` by ``Linear(in, rank) -> Linear(rank, out)`` from its truncated SVD."""
    weight = weight64(layer).flatten(1)  # a conv kernel as (Cout, Cin kh kw)
    rank = max(1, min(int(rank), min(weight.shape)))
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    # Splitting sqrt(S) between the two factors gives them equal scale, which fine-tuning prefers.
    root = s[:rank].sqrt()
    first_w = root[:, None] * vh[:rank]
    second_w = u[:, :rank] * root
    info = {"rank": rank, "rel_error": relative_error(weight, second_w @ first_w)}
    return svd_linear_module(layer, first_w, second_w), info


def decompose_svd(layer: nn.Linear, request: DecomposeRequest) -> tuple[nn.Module, dict]:
    """Truncated SVD at ``request.rank``, else at the largest rank within the request's budget."""
    if request.rank is not None:
        return svd_linear(layer, int(request.rank))
    return svd_linear(layer, svd_budget_rank(layer, param_budget(request)))


# ----------------------------------------------------------------------------- TT-matrix


def tt_linear(
    layer: nn.Linear, ranks: Sequence[int], in_shape: Sequence[int], out_shape: Sequence[int]
) -> tuple[TTMatrixLinear, dict]:
    """Replace ``layer`` by a :class:`~harness.tensor.structures.TTMatrixLinear` from the TT-SVD of its tensorized weight."""
    d = len(in_shape)
    if len(ranks) != d - 1:
        raise ValueError(f"a {d}-core TT-matrix needs {d - 1} ranks, got {list(ranks)}")
    weight = weight64(layer)
    # (m_1..m_d, n_1..n_d) -> (m_1 n_1, ..., m_d n_d): each TT core then holds one (m_k, n_k) pair.
    paired = weight.reshape(*out_shape, *in_shape)
    paired = paired.permute(*(i for k in range(d) for i in (k, d + k)))
    paired = paired.reshape([m * n for m, n in zip(out_shape, in_shape)])
    caps = tt_linear_max_ranks(in_shape, out_shape)
    cores = tt_svd(paired, [max(1, min(int(r), cap)) for r, cap in zip(ranks, caps)])
    # TT-SVD of the paired tensor gives (r_{k-1}, m_k n_k, r_k) cores; TTMatrixLinear keeps (m_k, n_k) apart.
    split = [core.reshape(core.shape[0], m, n, core.shape[-1]) for core, m, n in zip(cores, out_shape, in_shape)]
    module = tt_matrix_linear_module(layer, split)
    approx = tt_to_tensor(cores).reshape(paired.shape)
    info = {
        "rank": list(module.ranks),
        "in_shape": list(module.in_shape),
        "out_shape": list(module.out_shape),
        "rel_error": relative_error(paired, approx),
    }
    return module, info


def decompose_tt(layer: nn.Linear, request: DecomposeRequest) -> tuple[nn.Module, dict]:
    """TT-matrix at ``request.rank`` (int or one per bond), else the ranks that fill the budget."""
    in_shape, out_shape = tensorized_shapes(layer.in_features, layer.out_features, request.options)
    if request.rank is not None:
        caps = tt_linear_max_ranks(in_shape, out_shape)
        ranks = [int(request.rank)] * len(caps) if isinstance(request.rank, int) else list(request.rank)
        return tt_linear(layer, ranks, in_shape, out_shape)
    ranks = tt_linear_budget_ranks(in_shape, out_shape, layer.bias is not None, param_budget(request))
    return tt_linear(layer, ranks, in_shape, out_shape)
