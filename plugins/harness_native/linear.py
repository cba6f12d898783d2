"""Native decompositions of ``nn.Linear``: truncated SVD and the TT-matrix format.

Truncated SVD (the baseline every fully-connected method must beat) replaces the
layer with two thin ``nn.Linear`` layers whose weights share the square roots of
the singular values. The TT-matrix format (Novikov et al., 2015) tensorizes
``in_features = prod(n_k)`` and ``out_features = prod(m_k)`` and stores the weight
as cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)`` in a :class:`TTLinear`.
``decompose_svd`` and ``decompose_tt`` read a request (explicit rank or parameter
budget) and return the replacement with its ``decomposition_info`` dict; the
``*_params`` functions give parameter counts without building anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from harness import DecomposeRequest, fill_ranks, largest_fitting
from harness.shapes import tensorized_shapes
from harness_native.tensor_ops import param_budget, relative_error, tt_max_ranks, tt_svd, tt_to_tensor, weight64


# ----------------------------------------------------------------------------- truncated SVD


def svd_params(in_features: int, out_features: int, rank: int, bias: bool) -> int:
    """Parameters of the two-layer SVD replacement: ``rank * (in + out)`` plus the bias."""
    return rank * (in_features + out_features) + (out_features if bias else 0)


def svd_linear(layer: nn.Linear, rank: int) -> tuple[nn.Sequential, dict]:
    """Replace ``layer`` by ``Linear(in, rank) -> Linear(rank, out)`` from its truncated SVD."""
    weight = weight64(layer)
    rank = max(1, min(int(rank), min(weight.shape)))
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    # Splitting sqrt(S) between the two factors gives them equal scale, which fine-tuning prefers.
    root = s[:rank].sqrt()
    first_w = root[:, None] * vh[:rank]
    second_w = u[:, :rank] * root
    kwargs = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    # skip_init: both weights are overwritten, and a default init would draw from the global RNG.
    first = nn.utils.skip_init(nn.Linear, layer.in_features, rank, bias=False, **kwargs)
    second = nn.utils.skip_init(nn.Linear, rank, layer.out_features, bias=layer.bias is not None, **kwargs)
    with torch.no_grad():
        first.weight.copy_(first_w)
        second.weight.copy_(second_w)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    info = {"rank": rank, "rel_error": relative_error(weight, second_w @ first_w)}
    return nn.Sequential(first, second), info


def decompose_svd(layer: nn.Linear, request: DecomposeRequest, generator: torch.Generator) -> tuple[nn.Module, dict]:
    """Truncated SVD at ``request.rank``, else at the largest rank within the request's budget."""
    max_rank = min(layer.in_features, layer.out_features)
    if request.rank is not None:
        return svd_linear(layer, int(request.rank))
    bias = layer.bias is not None
    rank = largest_fitting(
        lambda r: svd_params(layer.in_features, layer.out_features, r, bias), param_budget(request), max_rank
    )
    return svd_linear(layer, rank)


# ----------------------------------------------------------------------------- TT-matrix


class TTLinear(nn.Module):
    """A linear layer whose weight is a TT-matrix: ``W[(m_1..m_d), (n_1..n_d)] = G_1[m_1, n_1] ... G_d[m_d, n_d]``.

    ``cores[k]`` has shape ``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_d = 1``. The
    forward contracts the input with one core at a time (``d`` einsums), never
    forming the dense weight, and accepts any leading batch dimensions.
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
        # nn.Linear's default variance 1/(3 in_features), so a from-scratch TTLinear trains alike.
        paths = math.prod(self.ranks)
        std = (1.0 / (3 * self.in_features * paths)) ** (1 / (2 * len(self.cores)))
        for core in self.cores:
            nn.init.normal_(core, std=std)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        # (batch * m_<k, r_{k-1}, n_k, n_>k): the output modes pile up in front, the input modes are eaten in order.
        t = x.reshape(-1, 1, self.in_shape[0], self.in_features // self.in_shape[0])
        for k, core in enumerate(self.cores):
            t = torch.einsum("prnq,rmns->pmsq", t, core)
            if k + 1 < len(self.cores):
                n_next = self.in_shape[k + 1]
                t = t.reshape(-1, core.shape[-1], n_next, t.shape[-1] // n_next)
        out = t.reshape(*lead, self.out_features)
        if self.bias is not None:
            out = out + self.bias
        return out

    def to_dense(self) -> Tensor:
        """The ``(out_features, in_features)`` weight the cores describe."""
        d = len(self.cores)
        merged = [core.reshape(core.shape[0], -1, core.shape[-1]) for core in self.cores]
        full = tt_to_tensor(merged).reshape(*(x for m, n in zip(self.out_shape, self.in_shape) for x in (m, n)))
        full = full.permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2))
        return full.reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}, ranks={self.ranks}, bias={self.bias is not None}"


def tt_linear_max_ranks(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """Largest useful TT-matrix rank at each bond of the ``(m_k n_k)`` chain."""
    return tt_max_ranks([m * n for m, n in zip(out_shape, in_shape)])


def tt_linear_params(in_shape: Sequence[int], out_shape: Sequence[int], ranks: Sequence[int], bias: bool) -> int:
    """Parameters of a :class:`TTLinear`: ``sum_k r_{k-1} m_k n_k r_k`` plus the bias."""
    bonds = (1, *ranks, 1)
    cores = sum(bonds[k] * m * n * bonds[k + 1] for k, (m, n) in enumerate(zip(out_shape, in_shape)))
    return cores + (math.prod(out_shape) if bias else 0)


def tt_linear(
    layer: nn.Linear, ranks: Sequence[int], in_shape: Sequence[int], out_shape: Sequence[int]
) -> tuple[TTLinear, dict]:
    """Replace ``layer`` by a :class:`TTLinear` from the TT-SVD of its tensorized weight."""
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
    kept = [core.shape[-1] for core in cores[:-1]]
    module = nn.utils.skip_init(
        TTLinear, in_shape, out_shape, kept, bias=layer.bias is not None, device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    with torch.no_grad():
        for param, core, m, n in zip(module.cores, cores, out_shape, in_shape):
            param.copy_(core.reshape(core.shape[0], m, n, core.shape[-1]))
        if layer.bias is not None:
            module.bias.copy_(layer.bias)
    approx = tt_to_tensor(cores).reshape(paired.shape)
    info = {
        "rank": kept,
        "in_shape": list(module.in_shape),
        "out_shape": list(module.out_shape),
        "rel_error": relative_error(paired, approx),
    }
    return module, info


def decompose_tt(layer: nn.Linear, request: DecomposeRequest, generator: torch.Generator) -> tuple[nn.Module, dict]:
    """TT-matrix at ``request.rank`` (int or one per bond), else the ranks that fill the budget (:func:`fill_ranks`)."""
    in_shape, out_shape = tensorized_shapes(layer.in_features, layer.out_features, request.options)
    caps = tt_linear_max_ranks(in_shape, out_shape)
    if request.rank is not None:
        ranks = [int(request.rank)] * len(caps) if isinstance(request.rank, int) else list(request.rank)
        return tt_linear(layer, ranks, in_shape, out_shape)
    bias = layer.bias is not None

    ranks = fill_ranks(caps, lambda ranks: tt_linear_params(in_shape, out_shape, ranks, bias), param_budget(request))
    return tt_linear(layer, ranks, in_shape, out_shape)
