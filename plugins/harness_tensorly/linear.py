"""The ``tensorly`` backend's decompositions of ``nn.Linear``: truncated SVD and TT-matrix.

The factors come from tensorly (``svd_interface`` for the SVD, ``tensor_train_matrix``
for the TT-matrix, see ``tensorly_ops.py``); the modules they go into are the same
ones the native backend builds, so the two backends differ only in how the factors are
computed. Truncated SVD becomes two thin ``nn.Linear`` layers sharing the square roots
of the singular values. The TT-matrix format tensorizes ``in_features = prod(n_k)`` and
``out_features = prod(m_k)`` with :func:`harness.shapes.tensorized_shapes` (the same
tensorization for every backend) and keeps the cores ``(r_{k-1}, m_k, n_k, r_k)`` in a
:class:`TTMatrixLinear`, whose forward contracts the input one core at a time.
``decompose_svd`` and ``decompose_tt`` read a request (explicit rank or budget) and
return the replacement with its ``decomposition_info``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from harness import DecomposeRequest, fill_ranks, largest_fitting
from harness.shapes import tensorized_shapes
from harness_tensorly import tensorly_ops as ops

# ----------------------------------------------------------------------------- truncated SVD


def svd_params(in_features: int, out_features: int, rank: int, bias: bool) -> int:
    """Parameters of the two-layer SVD replacement: ``rank * (in + out)`` plus the bias."""
    return rank * (in_features + out_features) + (out_features if bias else 0)


def svd_linear(layer: nn.Linear, rank: int, seed: int) -> tuple[nn.Sequential, dict[str, Any]]:
    """Replace ``layer`` by ``Linear(in, rank) -> Linear(rank, out)`` from tensorly's truncated SVD."""
    if int(rank) < 1:
        raise ValueError(f"SVD rank must be >= 1, got {rank}")
    weight = ops.weight64(layer)
    rank = min(int(rank), min(weight.shape))
    u, s, vh = ops.truncated_svd(weight, rank, seed)
    # Splitting sqrt(S) between the two factors gives them equal scale, which fine-tuning prefers.
    root = s.sqrt()
    first_w = root[:, None] * vh
    second_w = u * root
    kwargs = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    # skip_init: both weights are overwritten, and a default init would draw from the global RNG.
    first = nn.utils.skip_init(nn.Linear, layer.in_features, rank, bias=False, **kwargs)
    second = nn.utils.skip_init(nn.Linear, rank, layer.out_features, bias=layer.bias is not None, **kwargs)
    with torch.no_grad():
        first.weight.copy_(first_w)
        second.weight.copy_(second_w)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    info = {"rank": rank, "rel_error": ops.relative_error(weight, second_w @ first_w)}
    return nn.Sequential(first, second), info


def decompose_svd(layer: nn.Linear, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """Truncated SVD at ``request.rank``, else at the largest rank within the request's budget."""
    if request.rank is not None:
        return svd_linear(layer, int(request.rank), request.seed)
    bias = layer.bias is not None
    rank = largest_fitting(
        lambda r: svd_params(layer.in_features, layer.out_features, r, bias),
        ops.param_budget(request),
        min(layer.in_features, layer.out_features),
    )
    return svd_linear(layer, rank, request.seed)


# ----------------------------------------------------------------------------- TT-matrix


class TTMatrixLinear(nn.Module):
    """A linear layer whose weight is a TT-matrix: ``W[(m_1..m_d), (n_1..n_d)] = G_1[m_1, n_1] ... G_d[m_d, n_d]``.

    ``cores[k]`` has shape ``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_d = 1`` (tensorly's
    TT-matrix layout with the output modes as rows). The forward eats the input modes
    in order and appends each output mode as it is produced, so it never forms the
    dense weight; any leading batch dimensions pass through.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        ranks: Sequence[int],
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(in_shape) != len(out_shape) or len(ranks) != len(in_shape) - 1:
            raise ValueError(f"inconsistent TT shapes: in {in_shape}, out {out_shape}, ranks {ranks}")
        self.in_shape = tuple(int(n) for n in in_shape)
        self.out_shape = tuple(int(m) for m in out_shape)
        self.ranks = tuple(int(r) for r in ranks)
        self.in_features = math.prod(self.in_shape)
        self.out_features = math.prod(self.out_shape)
        bonds = (1, *self.ranks, 1)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(bonds[k], m, n, bonds[k + 1], device=device, dtype=dtype))
            for k, (m, n) in enumerate(zip(self.out_shape, self.in_shape))
        )
        self.bias = nn.Parameter(torch.zeros(self.out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # A weight entry sums prod(ranks) products of d core entries; this std gives it
        # nn.Linear's default variance 1/(3 in_features), so a from-scratch layer trains alike.
        std = (1.0 / (3 * self.in_features * math.prod(self.ranks))) ** (1 / (2 * len(self.cores)))
        for core in self.cores:
            nn.init.normal_(core, std=std)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        batch = math.prod(lead)
        # t is (batch, r_{k-1}, n_k, rest of the input modes, output modes so far).
        t = x.reshape(batch, 1, self.in_shape[0], self.in_features // self.in_shape[0], 1)
        for k, core in enumerate(self.cores):
            t = torch.einsum("brnio,rmns->bsiom", t, core)
            done = t.shape[3] * t.shape[4]  # the new output mode goes last: row-major out index
            if k + 1 < len(self.cores):
                n_next = self.in_shape[k + 1]
                t = t.reshape(batch, t.shape[1], n_next, t.shape[2] // n_next, done)
            else:
                t = t.reshape(batch, done)
        out = t.reshape(*lead, self.out_features)
        if self.bias is not None:
            out = out + self.bias
        return out

    def to_dense(self) -> Tensor:
        """The ``(out_features, in_features)`` weight the cores describe."""
        d = len(self.cores)
        full = self.cores[0]
        for core in self.cores[1:]:
            full = torch.tensordot(full, core, dims=([full.ndim - 1], [0]))
        # (1, m1, n1, m2, n2, ..., 1) -> (m1..md, n1..nd)
        full = full.reshape([s for m, n in zip(self.out_shape, self.in_shape) for s in (m, n)])
        full = full.permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2))
        return full.reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}, ranks={self.ranks}, bias={self.bias is not None}"


def tt_linear_max_ranks(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """Largest useful TT-matrix rank at each bond of the ``(m_k n_k)`` chain."""
    return ops.tt_max_ranks([m * n for m, n in zip(out_shape, in_shape)])


def tt_linear_params(in_shape: Sequence[int], out_shape: Sequence[int], ranks: Sequence[int], bias: bool) -> int:
    """Parameters of a :class:`TTMatrixLinear`: ``sum_k r_{k-1} m_k n_k r_k`` plus the bias."""
    bonds = (1, *ranks, 1)
    cores = sum(bonds[k] * m * n * bonds[k + 1] for k, (m, n) in enumerate(zip(out_shape, in_shape)))
    return cores + (math.prod(out_shape) if bias else 0)


def tt_linear(
    layer: nn.Linear, ranks: Sequence[int], in_shape: Sequence[int], out_shape: Sequence[int], seed: int
) -> tuple[TTMatrixLinear, dict[str, Any]]:
    """Replace ``layer`` by a :class:`TTMatrixLinear` from tensorly's TT-matrix SVD of its weight."""
    d = len(in_shape)
    if len(ranks) != d - 1:
        raise ValueError(f"a {d}-core TT-matrix needs {d - 1} ranks, got {list(ranks)}")
    if any(int(r) < 1 for r in ranks):
        raise ValueError(f"TT ranks must be >= 1, got {list(ranks)}")
    weight = ops.weight64(layer)
    caps = tt_linear_max_ranks(in_shape, out_shape)
    cores = ops.tensor_train_matrix(weight, in_shape, out_shape, [min(int(r), c) for r, c in zip(ranks, caps)], seed)
    kept = [core.shape[-1] for core in cores[:-1]]
    module = nn.utils.skip_init(
        TTMatrixLinear, in_shape, out_shape, kept, bias=layer.bias is not None,
        device=layer.weight.device, dtype=layer.weight.dtype,
    )
    with torch.no_grad():
        for param, core in zip(module.cores, cores):
            param.copy_(core)
        if layer.bias is not None:
            module.bias.copy_(layer.bias)
    info = {
        "rank": kept,
        "in_shape": list(module.in_shape),
        "out_shape": list(module.out_shape),
        "rel_error": ops.relative_error(weight, ops.tt_matrix_to_matrix(cores)),
    }
    return module, info


def decompose_tt(layer: nn.Linear, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """TT-matrix at ``request.rank`` (int or one per bond), else the ranks that fill the budget (``fill_ranks``)."""
    in_shape, out_shape = tensorized_shapes(layer.in_features, layer.out_features, request.options)
    caps = tt_linear_max_ranks(in_shape, out_shape)
    if request.rank is not None:
        ranks = [int(request.rank)] * len(caps) if isinstance(request.rank, int) else [int(r) for r in request.rank]
        return tt_linear(layer, ranks, in_shape, out_shape, request.seed)
    bias = layer.bias is not None

    ranks = fill_ranks(caps, lambda ranks: tt_linear_params(in_shape, out_shape, ranks, bias), ops.param_budget(request))
    return tt_linear(layer, ranks, in_shape, out_shape, request.seed)
