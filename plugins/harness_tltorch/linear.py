"""``nn.Linear`` through ``tltorch.FactorizedLinear.from_linear``: CP, Tucker and block-TT weights.

The weight ``(out, in)`` is tensorized to ``(out_1..out_d, in_1..in_d)`` with the shapes
from :func:`harness.tensor.shapes.tensorized_shapes` (so every backend tensorizes alike) and
factorized by tltorch; ``blocktt`` is its TT-matrix, the one TT tltorch accepts for a
Linear. Budgets are met by counting the parameters of the factorized weight tltorch
would create (``TensorizedTensor.new`` on the meta device, which is what
``FactorizedLinear`` builds; building the layer itself would draw its random init)
plus the bias. ``from_linear`` always creates a bias unless told not to, and shares the
dense layer's bias storage: both are handled here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness import FULL_RANK, DecomposeRequest, count_params, largest_fitting, relative_error, tensorized_shapes
from harness_tltorch import ranks
from harness_tltorch.fitting import as_json_rank, decomposition_kwargs

# Harness method name -> tltorch factorization name.
FACTORIZATIONS = {"cp": "cp", "tucker": "tucker", "blocktt": "blocktt"}

Shapes = tuple[tuple[int, ...], tuple[int, ...]]


def param_counter(layer: nn.Linear, shapes: Shapes, factorization: str) -> Callable[[Any], int]:
    """``count(rank)``: parameters of the factorized layer at ``rank``, bias included, allocated on meta."""
    from harness_tltorch.layers import tensorized_weight

    in_shape, out_shape = shapes
    bias = layer.out_features if layer.bias is not None else 0

    def count(rank: Any) -> int:
        return count_params(tensorized_weight((out_shape, in_shape), factorization, rank, device="meta")) + bias

    return count


def _blocktt_shape(shapes: Shapes) -> list[int]:
    # tltorch's block-TT has one core per pair (out_k, in_k); its bonds see the merged sizes.
    in_shape, out_shape = shapes
    return [m * n for m, n in zip(out_shape, in_shape)]


def choose_rank(layer: nn.Linear, method: str, request: DecomposeRequest, shapes: Shapes,
                count: Callable[[Any], int]) -> tuple[Any, dict]:
    """The rank to hand tltorch (explicit, ``"full"`` or the largest within budget) and how it was found."""
    factorization = FACTORIZATIONS[method]
    in_shape, out_shape = shapes
    rank = request.rank
    if factorization == "cp":
        if rank is not None:
            return ranks.cp_rank_arg(rank, out_shape + in_shape), {}
        budget = ranks.budget_of(request)
        per_rank = sum(in_shape) + sum(out_shape) + 1  # factors + CP weight
        return largest_fitting(count, budget, max(1, budget // per_rank)), {}
    if factorization == "tucker":
        shape = out_shape + in_shape
        if rank == FULL_RANK:
            return ranks.full_tucker_rank(shape), {}
        if rank is not None:
            return ranks.tucker_rank_arg(rank, shape), {}
        found, fraction = ranks.largest_tucker_rank(shape, (), count, ranks.budget_of(request))
        return found, {"fraction": fraction}
    shape = _blocktt_shape(shapes)
    if rank == FULL_RANK:
        return ranks.tt_rank(ranks.tt_caps(shape), shape), {}
    if rank is not None:
        return ranks.tt_rank_arg(rank, shape), {}
    return ranks.largest_tt_rank(shape, count, ranks.budget_of(request)), {}


def decompose(layer: nn.Linear, request: DecomposeRequest, method: str, implementation: str) -> tuple[nn.Module, dict]:
    """A ``TltorchLinear`` decomposed from ``layer`` by ``method`` with the given forward implementation."""
    from harness_tltorch.layers import TltorchLinear

    factorization = FACTORIZATIONS[method]
    in_shape, out_shape = tensorized_shapes(layer.in_features, layer.out_features, request.options)
    shapes = (tuple(in_shape), tuple(out_shape))  # tuples: tltorch concatenates them
    rank, search_info = choose_rank(layer, method, request, shapes, param_counter(layer, shapes, factorization))
    kwargs, trace = decomposition_kwargs(factorization, request)
    module = TltorchLinear.from_linear(
        layer, rank=rank, auto_tensorize=False, in_tensorized_features=shapes[0], out_tensorized_features=shapes[1],
        bias=layer.bias is not None, factorization=factorization, implementation=implementation,
        decomposition_kwargs=kwargs,
    )
    with torch.no_grad():
        if layer.bias is not None:
            # from_linear makes the new bias share storage with the dense one: fine-tuning would edit both.
            module.bias = nn.Parameter(layer.bias.detach().clone())
        weight = module.dense_weight()
    module = module.to(device=layer.weight.device, dtype=layer.weight.dtype)
    info = {
        "rank": as_json_rank(module.weight.rank),
        "factorization": module.weight.name,
        "implementation": implementation,
        "in_shape": list(shapes[0]),
        "out_shape": list(shapes[1]),
        "rel_error": relative_error(layer.weight, weight),
        **search_info,
        **(trace.info() if trace is not None else {}),
    }
    return module, info
