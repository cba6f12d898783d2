"""``nn.Conv2d`` through ``tltorch.FactorizedConv.from_conv``: CP, Tucker-2 and TT kernels.

Each method picks a rank in tltorch's notion, then lets tltorch decompose the trained
kernel (``decompose_weights=True``) into a :class:`~harness_tltorch.layers.TltorchConv`.
``tucker2`` is tltorch's Tucker with ``fixed_rank_modes="spatial"``: the two spatial
modes keep full rank (their ``kh x kh`` and ``kw x kw`` factors still count as
parameters), so only the channel modes are compressed, as in the native Tucker-2.
``tt`` is tltorch's TT over the kernel permuted to ``(Cin, kh, kw, Cout)``. Budgets
are met by building candidate layers on the meta device and counting what tltorch
allocates; the bias is copied, not shared with the dense layer as ``from_conv`` leaves it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness import FULL_RANK, DecomposeRequest, count_params, largest_fitting, relative_error
from harness_tltorch import ranks
from harness_tltorch.fitting import as_json_rank, decomposition_kwargs

# Harness method name -> tltorch factorization name.
FACTORIZATIONS = {"cp": "cp", "tucker2": "tucker", "tt": "tt"}
SPATIAL_MODES = (2, 3)  # of the (Cout, Cin, kh, kw) kernel: what fixed_rank_modes="spatial" keeps full


def _fixed_rank_modes(factorization: str) -> str | None:
    # tltorch warns when fixed_rank_modes is given to anything but Tucker.
    return "spatial" if factorization == "tucker" else None


def tensor_shape(layer: nn.Conv2d, factorization: str) -> tuple[int, ...]:
    """Shape of the tensor tltorch factorizes: the kernel, or for TT the kernel with ``Cout`` moved last."""
    cout, cin, kh, kw = layer.weight.shape
    return (cin, kh, kw, cout) if factorization == "tt" else (cout, cin, kh, kw)


def param_counter(layer: nn.Conv2d, factorization: str) -> Callable[[Any], int]:
    """``count(rank)``: parameters of the layer tltorch builds at ``rank``, bias included, allocated on meta."""
    from harness_tltorch.layers import TltorchConv

    def count(rank: Any) -> int:
        skeleton = TltorchConv(
            layer.in_channels, layer.out_channels, tuple(layer.kernel_size), bias=layer.bias is not None,
            factorization=factorization, rank=rank, fixed_rank_modes=_fixed_rank_modes(factorization),
            device="meta",
        )
        return count_params(skeleton)

    return count


def choose_rank(
    layer: nn.Conv2d, method: str, request: DecomposeRequest, count: Callable[[Any], int]
) -> tuple[Any, dict]:
    """The rank to hand tltorch (explicit, ``"full"`` or the largest within budget) and how it was found."""
    factorization = FACTORIZATIONS[method]
    shape = tensor_shape(layer, factorization)
    rank = request.rank
    if factorization == "cp":
        if rank is not None:
            return ranks.cp_rank_arg(rank, shape), {}
        budget = ranks.budget_of(request)
        per_rank = layer.in_channels + layer.out_channels + sum(layer.kernel_size) + 1  # factors + CP weight
        return largest_fitting(count, budget, max(1, budget // per_rank)), {}
    if factorization == "tucker":
        if rank == FULL_RANK:
            return ranks.full_tucker_rank(shape), {}
        if rank is not None:
            return ranks.tucker_rank_arg(rank, shape, SPATIAL_MODES), {}
        found, fraction = ranks.largest_tucker_rank(shape, SPATIAL_MODES, count, ranks.budget_of(request))
        return found, {"fraction": fraction}
    if rank == FULL_RANK:
        return ranks.tt_rank(ranks.tt_caps(shape), shape), {}
    if rank is not None:
        return ranks.tt_rank_arg(rank, shape), {}
    return ranks.largest_tt_rank(shape, count, ranks.budget_of(request)), {}


def decompose(layer: nn.Conv2d, request: DecomposeRequest, method: str, implementation: str) -> tuple[nn.Module, dict]:
    """A ``TltorchConv`` decomposed from ``layer`` by ``method`` with the given forward implementation."""
    from harness_tltorch.layers import TltorchConv

    factorization = FACTORIZATIONS[method]
    rank, search_info = choose_rank(layer, method, request, param_counter(layer, factorization))
    kwargs, trace = decomposition_kwargs(factorization, request)
    module = TltorchConv.from_conv(
        layer, rank=rank, factorization=factorization, implementation=implementation, decompose_weights=True,
        decomposition_kwargs=kwargs, fixed_rank_modes=_fixed_rank_modes(factorization),
    )
    with torch.no_grad():
        if layer.bias is not None:
            # from_conv makes the new bias share storage with the dense one: fine-tuning would edit both.
            module.bias = nn.Parameter(layer.bias.detach().clone())
        kernel = module.dense_kernel()
    module = module.to(device=layer.weight.device, dtype=layer.weight.dtype)
    info = {
        # weight.rank, not module.rank: tltorch updates only the former when TT-SVD lowers a rank.
        "rank": as_json_rank(module.weight.rank),
        "factorization": module.weight.name,
        "implementation": implementation,
        "rel_error": relative_error(layer.weight, kernel),
        **search_info,
        **(trace.info() if trace is not None else {}),
    }
    return module, info
