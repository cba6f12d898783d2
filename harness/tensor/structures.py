"""The stock-module structures that backends fill with factors, so that backends computing the same format run on
identical kernels: a backend computes factors with its own algorithm (plain torch, tensorly, ...) and hands them to a
builder here, which lays them into a fixed chain of stock modules, namely CP as ``1x1 -> (kh, 1) depthwise -> (1, kw)
depthwise -> 1x1`` convs (Lebedev et al., 2015), Tucker-2 as ``1x1 -> (kh, kw) core -> 1x1`` (Kim et al., 2016), TT as
``1x1 -> (kh, 1) -> (1, kw) -> 1x1``, truncated SVD as two thin ``nn.Linear`` and the TT-matrix format (Novikov et al.,
2015) as a :class:`TTMatrixLinear`; only the spatial sub-convs carry the layer's geometry (stride, padding and dilation
go to the axis each one slides over, ``padding_mode`` to each padded conv), the bias goes to the last module, and the
parameter formulas, maximum useful ranks and budget-rank solvers live here too so that every backend sizes a format the
same way; :class:`PaddedLinear` runs a zero-padded Linear replacement at the original sizes. Nothing here depends on a
decomposition library, and grouped convs are not handled (backends refuse them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.contract.backend import FULL_RANK, DecomposeRequest, Unsupported, fill_ranks, largest_fitting

__all__ = [
    "PaddedLinear",
    "zero_padded",
    "TTMatrixLinear",
    "cp_budget_rank",
    "cp_conv_module",
    "cp_params",
    "full_geometry",
    "stock_method",
    "ranks_arg",
    "split_geometry",
    "svd_budget_rank",
    "svd_linear_module",
    "svd_params",
    "tt_conv_budget_ranks",
    "tt_conv_max_ranks",
    "tt_conv_module",
    "tt_conv_params",
    "tt_conv_shape",
    "tt_linear_budget_ranks",
    "tt_linear_max_ranks",
    "tt_linear_params",
    "tt_matrix_linear_module",
    "tt_max_ranks",
    "tucker2_budget_ranks",
    "tucker2_conv_module",
    "tucker2_max_ranks",
    "tucker2_params",
]


# ----------------------------------------------------------------------------- shared helpers


def stock_method(decompose: Any) -> Any:
    """A backend's callable from ``decompose(layer, request) -> (module, info)`` that fills a structure here.

    ``"full"`` becomes a rank far above any format's maximum, which every builder here lowers to the maximum
    (CP, with no finite full rank, is refused), and the info becomes the module's ``decomposition_info``.
    """

    def run(layer: nn.Module, request: DecomposeRequest) -> nn.Module:
        if request.rank == FULL_RANK:
            if request.method == "cp":
                raise Unsupported("CP has no finite full rank")
            request = dataclasses.replace(request, rank=10**9)
        module, info = decompose(layer, request)
        module.decomposition_info = info
        return module

    return run


def stock_methods(linear: Any, conv: Any) -> dict[str, dict[str, Any]]:
    """The methods table of a backend that fills these structures with its own algorithms: ``linear`` and ``conv``
    (its modules) provide ``decompose_svd`` and ``decompose_tt``, and ``decompose_cp``, ``decompose_tucker2`` and
    ``decompose_tt``, each ``(layer, request) -> (module, info)``, wrapped by :func:`stock_method`."""
    return {
        "linear": {"svd": stock_method(linear.decompose_svd), "tt": stock_method(linear.decompose_tt)},
        "conv2d": {"cp": stock_method(conv.decompose_cp), "tucker2": stock_method(conv.decompose_tucker2),
                   "tt": stock_method(conv.decompose_tt),
                   # The kernel as a (Cout, Cin kh kw) matrix: a kh x kw conv to the rank, then a 1x1 conv; two 1x1
                   # convs for a 1x1 conv, which is a matrix (ResNet bottlenecks, MobileNet pointwise convs).
                   "svd": stock_method(linear.decompose_svd)},
    }


def tt_max_ranks(shape: Sequence[int]) -> list[int]:
    """The largest useful TT rank at each of the ``len(shape) - 1`` bonds: the smaller side of the split."""
    return [min(math.prod(shape[: k + 1]), math.prod(shape[k + 1 :])) for k in range(len(shape) - 1)]


def ranks_arg(rank: Any, count: int) -> list[int]:
    """An explicit rank request (one int for every bond, or ``count`` of them) as a list of ``count`` ints."""
    if isinstance(rank, int):
        return [rank] * count
    ranks = [int(r) for r in rank]
    if len(ranks) != count:
        raise ValueError(f"expected an int or {count} ranks, got {rank!r}")
    return ranks


def split_geometry(layer: nn.Conv2d) -> tuple[dict[str, Any], dict[str, Any]]:
    """Conv2d arguments for a ``(kh, 1)`` then a ``(1, kw)`` conv that slide like ``layer`` together."""
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    if isinstance(layer.padding, str):
        # torch pads each axis on its own for "same" (and not at all for "valid"), so the string splits exactly.
        pad_h = pad_w = layer.padding
    else:
        ph, pw = layer.padding
        pad_h, pad_w = (ph, 0), (0, pw)
    mode = layer.padding_mode
    vertical = {"stride": (sh, 1), "padding": pad_h, "dilation": (dh, 1), "padding_mode": mode}
    horizontal = {"stride": (1, sw), "padding": pad_w, "dilation": (1, dw), "padding_mode": mode}
    return vertical, horizontal


def full_geometry(layer: nn.Conv2d) -> dict[str, Any]:
    """Conv2d arguments for a ``(kh, kw)`` conv that slides exactly like ``layer``."""
    return {
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "padding_mode": layer.padding_mode,
    }


def _conv(layer: nn.Conv2d, cin: int, cout: int, kernel: tuple[int, int], **kwargs: Any) -> nn.Conv2d:
    kwargs.setdefault("bias", False)
    # skip_init: every weight is overwritten anyway, and a default init would draw from the global RNG.
    return nn.utils.skip_init(
        nn.Conv2d, cin, cout, kernel, device=layer.weight.device, dtype=layer.weight.dtype, **kwargs
    )


def _last_conv(layer: nn.Conv2d, cin: int) -> nn.Conv2d:
    return _conv(layer, cin, layer.out_channels, (1, 1), bias=layer.bias is not None)


def _copy(module: nn.Sequential, weights: Sequence[Tensor], layer: nn.Conv2d) -> None:
    with torch.no_grad():
        for conv, weight in zip(module, weights):
            conv.weight.copy_(weight)  # copy_ casts the float64 factors back to the layer's dtype
        if layer.bias is not None:
            module[-1].bias.copy_(layer.bias)


def _bias_size(layer: nn.Conv2d) -> int:
    return layer.out_channels if layer.bias is not None else 0


# ----------------------------------------------------------------------------- CP conv


def cp_params(layer: nn.Conv2d, rank: int) -> int:
    """Parameters of the CP replacement: ``R (Cin + kh + kw + Cout)`` plus the bias."""
    kh, kw = layer.kernel_size
    return rank * (layer.in_channels + kh + kw + layer.out_channels) + _bias_size(layer)


def cp_budget_rank(layer: nn.Conv2d, budget: int) -> int:
    """The largest CP rank whose replacement fits ``budget`` (CP has no finite maximum rank)."""
    per_rank = cp_params(layer, 1) - cp_params(layer, 0)
    return largest_fitting(lambda r: cp_params(layer, r), budget, max(1, budget // per_rank))


def cp_conv_module(layer: nn.Conv2d, a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> nn.Sequential:
    """The four-conv CP chain from factors ``a (Cout, R)``, ``b (Cin, R)``, ``c (kh, R)``, ``d (kw, R)``.

    The kernel is ``W[o, i, y, x] = sum_r a[o, r] b[i, r] c[y, r] d[x, r]``; the caller
    decides how the component scale is spread over the four factors.
    """
    cout, cin, kh, kw = layer.weight.shape
    rank = a.shape[1]
    vertical, horizontal = split_geometry(layer)
    module = nn.Sequential(
        _conv(layer, cin, rank, (1, 1)),
        _conv(layer, rank, rank, (kh, 1), groups=rank, **vertical),
        _conv(layer, rank, rank, (1, kw), groups=rank, **horizontal),
        _last_conv(layer, rank),
    )
    _copy(module, [b.T[:, :, None, None], c.T[:, None, :, None], d.T[:, None, None, :], a[:, :, None, None]], layer)
    return module


# ----------------------------------------------------------------------------- Tucker-2 conv


def tucker2_params(layer: nn.Conv2d, rank_out: int, rank_in: int) -> int:
    """Parameters of the Tucker-2 replacement: ``Cin R_in + R_in R_out kh kw + R_out Cout`` plus the bias."""
    kh, kw = layer.kernel_size
    return (
        layer.in_channels * rank_in + rank_in * rank_out * kh * kw + rank_out * layer.out_channels + _bias_size(layer)
    )


def tucker2_max_ranks(layer: nn.Conv2d) -> tuple[int, int]:
    """``(R_out, R_in)`` beyond which Tucker-2 cannot get more exact: the ranks of the two unfoldings' shapes."""
    kh, kw = layer.kernel_size
    cout, cin = layer.out_channels, layer.in_channels
    return min(cout, cin * kh * kw), min(cin, cout * kh * kw)


def tucker2_budget_ranks(layer: nn.Conv2d, budget: int) -> tuple[int, int]:
    """``(R_out, R_in)`` proportional to the channels, as large as ``budget`` allows, then topped up one by one."""
    cout, cin = layer.out_channels, layer.in_channels
    max_out, max_in = tucker2_max_ranks(layer)
    steps = max(cout, cin)

    def at(k: int) -> tuple[int, int]:
        return max(1, min(max_out, round(k * cout / steps))), max(1, min(max_in, round(k * cin / steps)))

    k = largest_fitting(lambda k: tucker2_params(layer, *at(k)), budget, steps)
    rank_out, rank_in = at(k)
    # Rounding leaves budget unused; spend it one rank at a time, on the rank lagging its channel share.
    while True:
        bumps = []
        if rank_out < max_out:
            bumps.append((rank_out + 1, rank_in))
        if rank_in < max_in:
            bumps.append((rank_out, rank_in + 1))
        bumps = [b for b in bumps if tucker2_params(layer, *b) <= budget]
        if not bumps:
            return rank_out, rank_in
        rank_out, rank_in = min(bumps, key=lambda b: max(b[0] / cout, b[1] / cin))


def tucker2_conv_module(layer: nn.Conv2d, core: Tensor, u_out: Tensor, u_in: Tensor) -> nn.Sequential:
    """``1x1 -> (kh, kw) core -> 1x1`` from a Tucker-2 fit of the kernel on its channel modes.

    ``core`` is ``(R_out, R_in, kh, kw)``, ``u_out (Cout, R_out)`` and ``u_in (Cin, R_in)``;
    the kernel is ``W = core x_0 u_out x_1 u_in`` (mode products on the channel modes).
    """
    cout, cin, kh, kw = layer.weight.shape
    rank_out, rank_in = u_out.shape[1], u_in.shape[1]
    module = nn.Sequential(
        _conv(layer, cin, rank_in, (1, 1)),
        _conv(layer, rank_in, rank_out, (kh, kw), **full_geometry(layer)),
        _last_conv(layer, rank_out),
    )
    _copy(module, [u_in.T[:, :, None, None], core, u_out[:, :, None, None]], layer)
    return module


# ----------------------------------------------------------------------------- TT conv


def tt_conv_shape(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """The kernel's TT order ``(Cin, kh, kw, Cout)``: the order in which the chain applies the modes."""
    kh, kw = layer.kernel_size
    return (layer.in_channels, kh, kw, layer.out_channels)


def tt_conv_max_ranks(layer: nn.Conv2d) -> list[int]:
    """Largest useful ``(r1, r2, r3)`` for the TT of the kernel permuted to ``(Cin, kh, kw, Cout)``."""
    return tt_max_ranks(tt_conv_shape(layer))


def tt_conv_params(layer: nn.Conv2d, ranks: Sequence[int]) -> int:
    """Parameters of the TT replacement: ``Cin r1 + r1 kh r2 + r2 kw r3 + r3 Cout`` plus the bias."""
    cin, kh, kw, cout = tt_conv_shape(layer)
    r1, r2, r3 = ranks
    return cin * r1 + r1 * kh * r2 + r2 * kw * r3 + r3 * cout + _bias_size(layer)


def tt_conv_budget_ranks(layer: nn.Conv2d, budget: int) -> list[int]:
    """The ``(r1, r2, r3)`` that fill ``budget`` (:func:`harness.contract.backend.fill_ranks`)."""
    return fill_ranks(tt_conv_max_ranks(layer), lambda ranks: tt_conv_params(layer, ranks), budget)


def tt_conv_module(layer: nn.Conv2d, cores: Sequence[Tensor]) -> nn.Sequential:
    """``1x1 -> (kh, 1) -> (1, kw) -> 1x1`` from the four TT cores ``(r_{k-1}, n_k, r_k)`` of the kernel.

    The cores describe the kernel permuted to ``(Cin, kh, kw, Cout)`` (:func:`tt_conv_shape`),
    the order in which the chain applies the modes.
    """
    g1, g2, g3, g4 = cores
    cin, kh, kw, _ = tt_conv_shape(layer)
    r1, r2, r3 = g1.shape[-1], g2.shape[-1], g3.shape[-1]
    vertical, horizontal = split_geometry(layer)
    module = nn.Sequential(
        _conv(layer, cin, r1, (1, 1)),
        _conv(layer, r1, r2, (kh, 1), **vertical),
        _conv(layer, r2, r3, (1, kw), **horizontal),
        _last_conv(layer, r3),
    )
    _copy(
        module,
        [
            g1[0].T[:, :, None, None],  # (r1, Cin, 1, 1)
            g2.permute(2, 0, 1)[:, :, :, None],  # (r2, r1, kh, 1)
            g3.permute(2, 0, 1)[:, :, None, :],  # (r3, r2, 1, kw)
            g4[:, :, 0].T[:, :, None, None],  # (Cout, r3, 1, 1)
        ],
        layer,
    )
    return module


# ----------------------------------------------------------------------------- truncated SVD linear


def svd_params(in_features: int, out_features: int, rank: int, bias: bool) -> int:
    """Parameters of the two-layer SVD replacement: ``rank * (in + out)`` plus the bias."""
    return rank * (in_features + out_features) + (out_features if bias else 0)


def svd_budget_rank(layer: nn.Linear | nn.Conv2d, budget: int) -> int:
    """The largest SVD rank (at most ``min(in, out)``) whose replacement fits ``budget``; a conv's "in" is
    ``Cin kh kw``, the size of its flattened kernel rows."""
    bias = layer.bias is not None
    out_features, in_features = layer.weight.flatten(1).shape
    return largest_fitting(lambda r: svd_params(in_features, out_features, r, bias), budget,
                           min(in_features, out_features))


def svd_linear_module(layer: nn.Linear | nn.Conv2d, first_weight: Tensor, second_weight: Tensor) -> nn.Sequential:
    """``Linear(in, R) -> Linear(R, out)`` with weights ``first_weight (R, in)`` and ``second_weight (out, R)``.

    For a conv (``first_weight (R, Cin kh kw)``): a ``(kh, kw)`` conv to R channels that slides like the layer,
    then a 1x1 conv to ``Cout`` with the bias; for a 1x1 conv, two 1x1 convs.
    """
    rank = first_weight.shape[0]
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("the SVD of a grouped conv's kernel is not a drop-in replacement")
        module = nn.Sequential(_conv(layer, layer.in_channels, rank, tuple(layer.kernel_size), **full_geometry(layer)),
                               _last_conv(layer, rank))
        _copy(module, [first_weight.reshape(rank, *layer.weight.shape[1:]), second_weight[:, :, None, None]], layer)
        return module
    kwargs = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    # skip_init: both weights are overwritten, and a default init would draw from the global RNG.
    first = nn.utils.skip_init(nn.Linear, layer.in_features, rank, bias=False, **kwargs)
    second = nn.utils.skip_init(nn.Linear, rank, layer.out_features, bias=layer.bias is not None, **kwargs)
    with torch.no_grad():
        first.weight.copy_(first_weight)
        second.weight.copy_(second_weight)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


# ----------------------------------------------------------------------------- TT-matrix linear


class TTMatrixLinear(nn.Module):
    """A linear layer whose weight is a TT-matrix: ``W[(m_1..m_d), (n_1..n_d)] = G_1[m_1, n_1] ... G_d[m_d, n_d]``.

    ``cores[k]`` has shape ``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_d = 1``: the output
    modes ``m`` come first, as rows do in tensorly's TT-matrix cores. The forward
    contracts the input with one core at a time (``d`` einsums), never forming the dense
    weight, and accepts any leading batch dimensions.
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
    return tt_max_ranks([m * n for m, n in zip(out_shape, in_shape)])


def tt_linear_params(in_shape: Sequence[int], out_shape: Sequence[int], ranks: Sequence[int], bias: bool) -> int:
    """Parameters of a :class:`TTMatrixLinear`: ``sum_k r_{k-1} m_k n_k r_k`` plus the bias."""
    bonds = (1, *ranks, 1)
    cores = sum(bonds[k] * m * n * bonds[k + 1] for k, (m, n) in enumerate(zip(out_shape, in_shape)))
    return cores + (math.prod(out_shape) if bias else 0)


def tt_linear_budget_ranks(in_shape: Sequence[int], out_shape: Sequence[int], bias: bool, budget: int) -> list[int]:
    """The per-bond TT-matrix ranks that fill ``budget`` (:func:`harness.contract.backend.fill_ranks`)."""
    caps = tt_linear_max_ranks(in_shape, out_shape)
    return fill_ranks(caps, lambda ranks: tt_linear_params(in_shape, out_shape, ranks, bias), budget)


def tt_matrix_linear_module(layer: nn.Linear, cores: Sequence[Tensor]) -> TTMatrixLinear:
    """A :class:`TTMatrixLinear` holding ``cores`` ``(r_{k-1}, m_k, n_k, r_k)`` and ``layer``'s bias."""
    in_shape = [core.shape[2] for core in cores]
    out_shape = [core.shape[1] for core in cores]
    ranks = [core.shape[-1] for core in cores[:-1]]
    # skip_init: the cores are overwritten, and reset_parameters would draw from the global RNG.
    module = nn.utils.skip_init(
        TTMatrixLinear, in_shape, out_shape, ranks, bias=layer.bias is not None,
        device=layer.weight.device, dtype=layer.weight.dtype,
    )
    with torch.no_grad():
        for param, core in zip(module.cores, cores):
            param.copy_(core)  # copy_ casts the float64 cores back to the layer's dtype
        if layer.bias is not None:
            module.bias.copy_(layer.bias)
    return module


# ----------------------------------------------------------------------------- padded Linear


def zero_padded(layer: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """A dense ``(out_features, in_features)`` copy of ``layer`` whose extra rows, columns and bias entries are zero."""
    weight = layer.weight.detach()
    padded = nn.Linear(in_features, out_features, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        padded.weight.zero_()
        padded.weight[: layer.out_features, : layer.in_features] = weight
        if layer.bias is not None:
            padded.bias.zero_()
            padded.bias[: layer.out_features] = layer.bias.detach()
    return padded


class PaddedLinear(nn.Module):
    """A replacement of a padded Linear: zero-pads the input features, runs ``inner``, crops the output.

    The network around it keeps its shapes; only ``inner`` holds parameters, so the
    parameter count is the inner replacement's.
    """

    def __init__(self, inner: nn.Module, in_features: int, out_features: int, padded_in: int | None = None):
        super().__init__()
        self.inner = inner
        self.in_features = in_features
        self.out_features = out_features
        self.padded_in = int(padded_in if padded_in is not None else inner.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(F.pad(x, (0, self.padded_in - self.in_features)))[..., : self.out_features]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, padded_in={self.padded_in}"
