"""The ``tensorly`` backend's decompositions of ``nn.Linear``: truncated SVD and TT-matrix.

The factors come from tensorly (``svd_interface`` for the SVD, ``tensor_train_matrix``
for the TT-matrix, see ``tensorly_ops.py``); the modules they go into are the same
ones the native backend builds, so the two backends differ only in how the factors are
computed (the modules, parameter formulas and budget-rank solvers are those of
:mod:`harness.tensor.structures`). Truncated SVD becomes two thin ``nn.Linear`` layers sharing the square roots
of the singular values. The TT-matrix format tensorizes ``in_features = prod(n_k)`` and
``out_features = prod(m_k)`` with :func:`harness.tensor.shapes.tensorized_shapes` (the same
tensorization for every backend) and keeps the cores ``(r_{k-1}, m_k, n_k, r_k)`` in a
:class:`~harness.tensor.structures.TTMatrixLinear`, whose forward contracts the input one core at a time.
``decompose_svd`` and ``decompose_tt`` read a request (explicit rank or budget) and
return the replacement with its ``decomposition_info``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from harness import (DecomposeRequest, TTMatrixLinear, param_budget, relative_error, svd_budget_rank, svd_linear_module,
                     tensorized_shapes, tt_linear_budget_ranks, tt_linear_max_ranks, tt_matrix_linear_module, weight64)

from harness_tensorly import tensorly_ops as ops

# ----------------------------------------------------------------------------- truncated SVD


def svd_linear(layer: nn.Linear, rank: int, seed: int) -> tuple[nn.Sequential, dict[str, Any]]:
    """Replace ``layer`` by ``Linear(in, rank) -> Linear(rank, out)`` from tensorly's truncated SVD."""
    if int(rank) < 1:
        raise ValueError(f"SVD rank must be >= 1, got {rank}")
    weight = weight64(layer).flatten(1)  # a conv kernel as (Cout, Cin kh kw)
    rank = min(int(rank), min(weight.shape))
    u, s, vh = ops.truncated_svd(weight, rank, seed)
    # Splitting sqrt(S) between the two factors gives them equal scale, which fine-tuning prefers.
    root = s.sqrt()
    first_w = root[:, None] * vh
    second_w = u * root
    info = {"rank": rank, "rel_error": relative_error(weight, second_w @ first_w)}
    return svd_linear_module(layer, first_w, second_w), info


def decompose_svd(layer: nn.Linear, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """Truncated SVD at ``request.rank``, else at the largest rank within the request's budget."""
    if request.rank is not None:
        return svd_linear(layer, int(request.rank), request.seed)
    return svd_linear(layer, svd_budget_rank(layer, param_budget(request)), request.seed)


# ----------------------------------------------------------------------------- TT-matrix


def tt_linear(
    layer: nn.Linear, ranks: Sequence[int], in_shape: Sequence[int], out_shape: Sequence[int], seed: int
) -> tuple[TTMatrixLinear, dict[str, Any]]:
    """Replace ``layer`` by a :class:`~harness.tensor.structures.TTMatrixLinear` from tensorly's TT-matrix SVD."""
    d = len(in_shape)
    if len(ranks) != d - 1:
        raise ValueError(f"a {d}-core TT-matrix needs {d - 1} ranks, got {list(ranks)}")
    if any(int(r) < 1 for r in ranks):
        raise ValueError(f"TT ranks must be >= 1, got {list(ranks)}")
    weight = weight64(layer)
    caps = tt_linear_max_ranks(in_shape, out_shape)
    # tensorly's TT-matrix cores are (r_{k-1}, m_k, n_k, r_k) with the output modes as rows: TTMatrixLinear's layout.
    cores = ops.tensor_train_matrix(weight, in_shape, out_shape, [min(int(r), c) for r, c in zip(ranks, caps)], seed)
    module = tt_matrix_linear_module(layer, cores)
    info = {
        "rank": list(module.ranks),
        "in_shape": list(module.in_shape),
        "out_shape": list(module.out_shape),
        "rel_error": relative_error(weight, ops.tt_matrix_to_matrix(cores)),
    }
    return module, info


def decompose_tt(layer: nn.Linear, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """TT-matrix at ``request.rank`` (int or one per bond), else the ranks that fill the budget."""
    in_shape, out_shape = tensorized_shapes(layer.in_features, layer.out_features, request.options)
    if request.rank is not None:
        caps = tt_linear_max_ranks(in_shape, out_shape)
        ranks = [int(request.rank)] * len(caps) if isinstance(request.rank, int) else [int(r) for r in request.rank]
        return tt_linear(layer, ranks, in_shape, out_shape, request.seed)
    ranks = tt_linear_budget_ranks(in_shape, out_shape, layer.bias is not None, param_budget(request))
    return tt_linear(layer, ranks, in_shape, out_shape, request.seed)
