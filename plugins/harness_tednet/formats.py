"""What every TedNet format tells the plugin, and how a request's size becomes its rank list.

TedNet's layers take their ranks as an explicit list whose length and meaning differ
by type (one CP rank, ``[r_in, r_out]`` for Tucker-2, one rank per core for TT, a ring
of ranks for TR, per-mode Tucker ranks for BTT). A :class:`Format` hides that: it
knows its rank slots with their caps, the closed-form parameter count of the layer it
builds (bias included, checked against ``count_params`` in the tests), how to build
the TedNet layer and, where a decomposition of the trained weight fits TedNet's
parameter layout, how to fill it. :func:`choose_ranks` turns an explicit rank,
``"full"`` or a parameter budget into the rank list, the same way for every format;
the small helpers at the end are shared by the fills in ``conv.py`` and ``linear.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness import FULL_RANK, DecomposeRequest, Unsupported, largest_fitting

# fill(tednet_layer, ranks, generator) copies factors of the trained weight into the layer
# and returns what to record about the fit (relative error, iterations...).
Fill = Callable[[nn.Module, list[int], torch.Generator], dict[str, Any]]


@dataclass
class Format:
    """One TedNet layer type, sized for one dense layer.

    ``caps`` bound each rank slot (beyond them a rank adds parameters but no
    expressiveness); ``full`` is the rank list at which ``fill`` reproduces the weight
    exactly (None where no finite one is known, as for CP); ``shares`` weight the slots
    when the budget grows them together. ``params(ranks)`` is the replacement's exact
    parameter count, bias included; ``build(ranks)`` makes the TedNet layer with its own
    random init. ``shapes`` (JSON-able) goes into ``decomposition_info``.
    """

    caps: list[int]
    params: Callable[[Sequence[int]], int]
    build: Callable[[list[int]], nn.Module]
    fill: Fill | None = None
    full: list[int] | None = None
    shares: list[float] | None = None
    shapes: dict[str, Any] = field(default_factory=dict)

    def at(self, k: int) -> list[int]:
        """The rank list at step ``k`` of the budget search: ``k * share`` per slot, within ``[1, cap]``."""
        shares = self.shares or [1.0] * len(self.caps)
        return [max(1, min(cap, round(k * share))) for cap, share in zip(self.caps, shares)]


def choose_ranks(fmt: Format, request: DecomposeRequest, method: str) -> list[int]:
    """The rank list for ``request``: ``"full"``, an explicit rank (int for every slot, or a list), or the budget."""
    rank = request.rank
    if rank == FULL_RANK:
        if fmt.full is None:
            raise Unsupported(f"tednet/{method} has no finite full rank; ask for a rank or a ratio")
        return list(fmt.full)
    if rank is not None:
        if isinstance(rank, int):
            return [max(1, min(int(rank), cap)) for cap in fmt.caps]
        ranks = [int(r) for r in rank]
        if len(ranks) != len(fmt.caps) or min(ranks) < 1:
            raise ValueError(f"tednet/{method} takes an int or {len(fmt.caps)} positive ranks, got {rank!r}")
        return ranks
    budget = request.max_params
    if budget is None:
        raise ValueError(f"{request.layer_path}: the request gives neither a rank nor a ratio")
    return fit_budget(fmt, budget, method)


def fit_budget(fmt: Format, budget: int, method: str) -> list[int]:
    """The largest ranks whose layer has at most ``budget`` parameters.

    First the largest ``k`` of :meth:`Format.at` that fits (:func:`largest_fitting`, as
    every backend does), then single slots are raised one at a time, the one furthest
    below its share first, while the count stays within the budget: rounding and caps
    otherwise leave a good part of it unused.
    """
    shares = fmt.shares or [1.0] * len(fmt.caps)
    upper = max(math.ceil(cap / share) for cap, share in zip(fmt.caps, shares))
    try:
        k = largest_fitting(lambda k: fmt.params(fmt.at(k)), budget, upper)
    except Unsupported as exc:
        raise Unsupported(f"tednet/{method} cannot fit the budget even at rank 1: {exc}") from None
    ranks = fmt.at(k)
    while True:
        bumps = []
        for i, (rank, cap) in enumerate(zip(ranks, fmt.caps)):
            candidate = [*ranks[:i], rank + 1, *ranks[i + 1 :]]
            if rank < cap and fmt.params(candidate) <= budget:
                bumps.append((rank / shares[i], i, candidate))
        if not bumps:
            return ranks
        ranks = min(bumps)[2]


# ----------------------------------------------------------------------------- helpers for the fills


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a detached float64 tensor, on the CPU where TedNet's layer is built."""
    return layer.weight.detach().to(device="cpu", dtype=torch.float64)


def copy_into(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Overwrite parameter ``name`` of ``module`` (a dotted path) with ``value``, shape-checked."""
    param = module.get_parameter(name)
    if tuple(param.shape) != tuple(value.shape):
        raise RuntimeError(f"TedNet parameter {name} has shape {tuple(param.shape)}, the fill {tuple(value.shape)}")
    with torch.no_grad():
        # Cast on the host first: some devices (MPS) take no float64.
        param.copy_(value.to(param.dtype))


def paired_order(d: int) -> list[int]:
    """Permutation of ``(out_1..out_d, in_1..in_d)`` axes to ``(in_1, out_1, ..., in_d, out_d)``.

    TedNet's TT and BTT cores index each mode pair input-first (``(in_k, out_k, ...)``).
    """
    return [axis for k in range(d) for axis in (d + k, k)]
