"""The ``tensorly`` backend's decompositions of ``nn.Conv2d``: CP, Tucker-2 and TT, as chains of stock convs.

tensorly computes the factors of the kernel ``W (Cout, Cin, kh, kw)`` (``parafac``,
``partial_tucker`` on the channel modes, ``tensor_train`` of the kernel permuted to
``(Cin, kh, kw, Cout)``; see ``tensorly_ops.py``) and this module lays them into the same
``nn.Sequential`` of ``nn.Conv2d`` layers the native backend builds, so native against
tensorly compares the decomposition algorithms on identical kernels. CP (Lebedev et
al., 2015) becomes a 1x1 conv, a ``(kh, 1)`` and a ``(1, kw)`` depthwise conv and a 1x1
conv; Tucker-2 (Kim et al., 2016) a 1x1 conv, the ``(kh, kw)`` core conv and a 1x1 conv;
TT a 1x1, a ``(kh, 1)``, a ``(1, kw)`` and a 1x1 conv. Only the spatial sub-convs carry
the layer's geometry: stride, padding and dilation go to the axis each one slides over,
``padding_mode`` to each padded conv, and the bias to the last 1x1 conv. Grouped convs
are refused by the plugin before getting here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harness import DecomposeRequest, fill_ranks, largest_fitting
from harness_tensorly import tensorly_ops as ops


def _conv(layer: nn.Conv2d, cin: int, cout: int, kernel: tuple[int, int], **kwargs: Any) -> nn.Conv2d:
    kwargs.setdefault("bias", False)
    # skip_init: every weight is overwritten anyway, and a default init would draw from the global RNG.
    return nn.utils.skip_init(
        nn.Conv2d, cin, cout, kernel, device=layer.weight.device, dtype=layer.weight.dtype, **kwargs
    )


def _split_geometry(layer: nn.Conv2d) -> tuple[dict[str, Any], dict[str, Any]]:
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


def _full_geometry(layer: nn.Conv2d) -> dict[str, Any]:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
            "padding_mode": layer.padding_mode}


def _last_conv(layer: nn.Conv2d, cin: int) -> nn.Conv2d:
    return _conv(layer, cin, layer.out_channels, (1, 1), bias=layer.bias is not None)


def _copy(module: nn.Sequential, weights: Sequence[torch.Tensor], layer: nn.Conv2d) -> None:
    with torch.no_grad():
        for conv, weight in zip(module, weights):
            conv.weight.copy_(weight)  # copy_ casts float64 back to the layer's dtype
        if layer.bias is not None:
            module[-1].bias.copy_(layer.bias)


def _ranks_arg(rank: Any, count: int) -> list[int]:
    ranks = [int(rank)] * count if isinstance(rank, int) else [int(r) for r in rank]
    if len(ranks) != count:
        raise ValueError(f"expected an int or {count} ranks, got {rank!r}")
    if any(r < 1 for r in ranks):
        raise ValueError(f"ranks must be >= 1, got {rank!r}")
    return ranks


# ----------------------------------------------------------------------------- CP


def cp_params(layer: nn.Conv2d, rank: int) -> int:
    """Parameters of the CP replacement: ``R (Cin + kh + kw + Cout)`` plus the bias."""
    kh, kw = layer.kernel_size
    bias = layer.out_channels if layer.bias is not None else 0
    return rank * (layer.in_channels + kh + kw + layer.out_channels) + bias


def cp_conv(
    layer: nn.Conv2d, rank: int, *, seed: int, init: str = "svd", n_iter_max: int = 300, tol: float = 1e-8
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Replace ``layer`` by the four-conv CP chain fitted by tensorly's CP-ALS at ``rank``."""
    weight = ops.weight64(layer)
    cout, cin, kh, kw = weight.shape
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
    vertical, horizontal = _split_geometry(layer)
    module = nn.Sequential(
        _conv(layer, cin, rank, (1, 1)),
        _conv(layer, rank, rank, (kh, 1), groups=rank, **vertical),
        _conv(layer, rank, rank, (1, kw), groups=rank, **horizontal),
        _last_conv(layer, rank),
    )
    _copy(module, [b.T[:, :, None, None], c.T[:, None, :, None], d.T[:, None, None, :], a[:, :, None, None]], layer)
    info = {
        "rank": rank,
        "init": init,
        "n_iter": fit.n_iter,
        "n_iter_max": n_iter_max,
        "tol": tol,
        "converged": fit.converged,
        "rel_error": ops.relative_error(weight, approx),
    }
    return module, info


def decompose_cp(layer: nn.Conv2d, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """CP at ``request.rank``, else at the largest rank within the budget.

    ``request.options`` may set ``init`` (``"svd"`` or ``"random"``), ``n_iter_max`` and
    ``tol`` for tensorly's ALS; the defaults match the native backend's (300 sweeps, 1e-8).
    """
    if request.rank is not None:
        rank = _ranks_arg(request.rank, 1)[0]
    else:
        budget = ops.param_budget(request)
        per_rank = cp_params(layer, 1) - cp_params(layer, 0)
        rank = largest_fitting(lambda r: cp_params(layer, r), budget, max(1, budget // per_rank))
    options = request.options
    return cp_conv(
        layer,
        rank,
        seed=request.seed,
        init=str(options.get("init", "svd")),
        n_iter_max=int(options.get("n_iter_max", 300)),
        tol=float(options.get("tol", 1e-8)),
    )


# ----------------------------------------------------------------------------- Tucker-2


def tucker2_params(layer: nn.Conv2d, rank_out: int, rank_in: int) -> int:
    """Parameters of the Tucker-2 replacement: ``Cin R_in + R_in R_out kh kw + R_out Cout`` plus the bias."""
    kh, kw = layer.kernel_size
    bias = layer.out_channels if layer.bias is not None else 0
    return layer.in_channels * rank_in + rank_in * rank_out * kh * kw + rank_out * layer.out_channels + bias


def tucker2_max_ranks(layer: nn.Conv2d) -> tuple[int, int]:
    """``(R_out, R_in)`` beyond which Tucker-2 cannot get more exact: the ranks of the two unfoldings' shapes."""
    kh, kw = layer.kernel_size
    cout, cin = layer.out_channels, layer.in_channels
    return min(cout, cin * kh * kw), min(cin, cout * kh * kw)


def tucker2_conv(
    layer: nn.Conv2d, rank_out: int, rank_in: int, *, seed: int, n_iter_max: int = 10, tol: float = 1e-10
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Replace ``layer`` by ``1x1 -> (kh, kw) core -> 1x1`` from tensorly's ``partial_tucker`` on modes 0 and 1."""
    weight = ops.weight64(layer)
    cout, cin, kh, kw = weight.shape
    max_out, max_in = tucker2_max_ranks(layer)
    rank_out, rank_in = min(int(rank_out), max_out), min(int(rank_in), max_in)
    fit = ops.partial_tucker(weight, (0, 1), (rank_out, rank_in), seed=seed, n_iter_max=n_iter_max, tol=tol)
    u_out, u_in = fit.factors
    module = nn.Sequential(
        _conv(layer, cin, rank_in, (1, 1)),
        _conv(layer, rank_in, rank_out, (kh, kw), **_full_geometry(layer)),
        _last_conv(layer, rank_out),
    )
    _copy(module, [u_in.T[:, :, None, None], fit.core, u_out[:, :, None, None]], layer)
    approx = ops.tucker_to_tensor(fit, (0, 1))
    info = {"rank": [rank_out, rank_in], "n_iter": fit.n_iter, "rel_error": ops.relative_error(weight, approx)}
    return module, info


def tucker2_budget_ranks(layer: nn.Conv2d, budget: int) -> tuple[int, int]:
    """``(R_out, R_in)`` proportional to the channels, as large as ``budget`` allows, then topped up one by one."""
    cout, cin = layer.out_channels, layer.in_channels
    max_out, max_in = tucker2_max_ranks(layer)
    steps = max(cout, cin)

    def at(k: int) -> tuple[int, int]:
        return (max(1, min(max_out, round(k * cout / steps))), max(1, min(max_in, round(k * cin / steps))))

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


def decompose_tucker2(layer: nn.Conv2d, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """Tucker-2 at ``request.rank`` (int, or ``[R_out, R_in]``), else within the budget.

    ``request.options`` may set ``n_iter_max`` (HOOI sweeps, default 10 as in the native
    backend) and ``tol``; tensorly's own defaults (100 sweeps, tol 1e-4) are not used so
    that both backends run the same algorithm budget.
    """
    if request.rank is not None:
        rank_out, rank_in = _ranks_arg(request.rank, 2)
    else:
        rank_out, rank_in = tucker2_budget_ranks(layer, ops.param_budget(request))
    options = request.options
    return tucker2_conv(
        layer, rank_out, rank_in, seed=request.seed,
        n_iter_max=int(options.get("n_iter_max", 10)), tol=float(options.get("tol", 1e-10)),
    )


# ----------------------------------------------------------------------------- tensor train


def _tt_shape(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    kh, kw = layer.kernel_size
    return (layer.in_channels, kh, kw, layer.out_channels)


def tt_conv_max_ranks(layer: nn.Conv2d) -> list[int]:
    """Largest useful ``(r1, r2, r3)`` for the TT of the kernel permuted to ``(Cin, kh, kw, Cout)``."""
    return ops.tt_max_ranks(_tt_shape(layer))


def tt_conv_params(layer: nn.Conv2d, ranks: Sequence[int]) -> int:
    """Parameters of the TT replacement: ``Cin r1 + r1 kh r2 + r2 kw r3 + r3 Cout`` plus the bias."""
    cin, kh, kw, cout = _tt_shape(layer)
    r1, r2, r3 = ranks
    bias = cout if layer.bias is not None else 0
    return cin * r1 + r1 * kh * r2 + r2 * kw * r3 + r3 * cout + bias


def tt_conv(layer: nn.Conv2d, ranks: Sequence[int], *, seed: int) -> tuple[nn.Sequential, dict[str, Any]]:
    """Replace ``layer`` by ``1x1 -> (kh, 1) -> (1, kw) -> 1x1`` from tensorly's TT-SVD of its kernel."""
    weight = ops.weight64(layer)
    permuted = weight.permute(1, 2, 3, 0).contiguous()  # (Cin, kh, kw, Cout): the chain's order of application
    caps = tt_conv_max_ranks(layer)
    g1, g2, g3, g4 = ops.tensor_train(permuted, [min(int(r), cap) for r, cap in zip(ranks, caps)], seed)
    r1, r2, r3 = g1.shape[-1], g2.shape[-1], g3.shape[-1]
    cin, kh, kw, cout = permuted.shape
    vertical, horizontal = _split_geometry(layer)
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
    info = {"rank": [r1, r2, r3], "rel_error": ops.relative_error(permuted, ops.tt_to_tensor([g1, g2, g3, g4]))}
    return module, info


def decompose_tt(layer: nn.Conv2d, request: DecomposeRequest) -> tuple[nn.Module, dict[str, Any]]:
    """TT at ``request.rank`` (int, or ``[r1, r2, r3]``), else the ranks that fill the budget (``fill_ranks``)."""
    caps = tt_conv_max_ranks(layer)
    if request.rank is not None:
        return tt_conv(layer, _ranks_arg(request.rank, 3), seed=request.seed)
    ranks = fill_ranks(caps, lambda ranks: tt_conv_params(layer, ranks), ops.param_budget(request))
    return tt_conv(layer, ranks, seed=request.seed)
