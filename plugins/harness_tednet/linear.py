"""TedNet's five ``*Linear`` formats, sized for one ``nn.Linear`` and (all but CP) filled from its weight.

Features are tensorized with :func:`harness.tensor.shapes.tensorized_shapes` like every other
backend (``in = prod(in_k)``, ``out = prod(out_k)``, ``d`` modes each). Tucker-2
(``TK2Linear``) is, for ``d = 3``, a Tucker of the weight seen as ``(in_1, in_2, in_3, out)``
on modes ``in_1`` and ``out`` (HOOI fills it) and, for ``d = 1``, a two-factor product
(truncated SVD fills it); TedNet offers no other ``d``. TT (``TTLinear``) is a TT-matrix
filled by TT-SVD of the ``(in_k, out_k)`` pairs, TR (``TRLinear``) a ring over
``(in_1..in_d, out_1..out_d)`` filled by TR-SVD, and block-term Tucker (``BTTLinear``) a
sum of ``block_num`` Tucker terms over the pairs, each fitted by HOOI to what the blocks
before it left (TedNet's forward reads its core in reversed mode order, so the fill
stores it transposed). CP (``CPLinear``) is one rank-1 term per rank over all ``2d``
modes: a CP of that ``2d``-way tensor is not a matrix decomposition (a rank-3 matrix has
a far higher CP rank there), and at a budget's rank (hundreds) CP-ALS and TedNet's
per-rank Python loop are both slow, so CP Linear starts from TedNet's own init.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harness import Unsupported, relative_error, ring_to_tensor, tensorized_shapes, tt_max_ranks, tucker
from harness_tednet.formats import Format, copy_into, dense_weight, paired_order
from harness_tednet.library import tednet_class
from harness_tednet.tensor_ops import tr_svd, tt_svd

# TedNet's own BTT models (BTTLeNet5, BTTResNet*) all use two blocks.
DEFAULT_BLOCKS = 2


def _bias_count(layer: nn.Linear) -> int:
    return layer.out_features if layer.bias is not None else 0


def _shapes(layer: nn.Linear, options: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tensorized_shapes(layer.in_features, layer.out_features, options)


def _shape_info(in_shape: Sequence[int], out_shape: Sequence[int], **extra: Any) -> dict[str, Any]:
    return {"in_shape": list(in_shape), "out_shape": list(out_shape), **extra}


# ----------------------------------------------------------------------------- CP (scratch)


def cp(layer: nn.Linear, options: dict[str, Any]) -> Format:
    """``CPLinear``: one rank; ``R (sum in_k + sum out_k)`` parameters plus the bias. Random init only."""
    in_shape, out_shape = _shapes(layer, options)
    bias = layer.bias is not None

    def params(ranks: Sequence[int]) -> int:
        return ranks[0] * (sum(in_shape) + sum(out_shape)) + _bias_count(layer)

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("CPLinear")(list(in_shape), list(out_shape), ranks[0], bias=bias)

    return Format(caps=[layer.in_features * layer.out_features], params=params, build=build,
                  shapes=_shape_info(in_shape, out_shape))


# ----------------------------------------------------------------------------- Tucker-2


def tucker2(layer: nn.Linear, options: dict[str, Any]) -> Format:
    """``TK2Linear``: ranks ``[R_in, R_out]`` for ``d = 3`` (only ``in_shape`` is used), ``[R]`` for ``d = 1``."""
    in_shape, _ = _shapes(layer, options)
    n_in, n_out = layer.in_features, layer.out_features
    bias = layer.bias is not None
    if len(in_shape) not in (1, 3):
        raise Unsupported(f"TedNet's TK2Linear takes 1 or 3 input modes, not {len(in_shape)} ({list(in_shape)})")

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("TK2Linear")(list(in_shape), n_out, ranks, bias=bias)

    if len(in_shape) == 1:

        def params_1(ranks: Sequence[int]) -> int:
            return ranks[0] * (n_in + n_out) + _bias_count(layer)

        def fill_1(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
            weight = dense_weight(layer)
            u, s, vh = torch.linalg.svd(weight.T, full_matrices=False)  # (in, out) = U S V^T
            r = ranks[0]
            # sqrt(S) on both sides: the two factors start at the same scale.
            copy_into(module, "node0", u[:, :r] * s[:r].sqrt())
            copy_into(module, "node1", s[:r].sqrt()[:, None] * vh[:r])
            return {"rel_error": relative_error(weight.T, (u[:, :r] * s[:r]) @ vh[:r])}

        caps = [min(n_in, n_out)]
        return Format(caps=caps, params=params_1, build=build, fill=fill_1, full=caps,
                      shapes={"in_shape": list(in_shape), "out_size": n_out})

    n0, n1, n2 = in_shape

    def params(ranks: Sequence[int]) -> int:
        r0, r1 = ranks
        return n0 * r0 + r0 * n1 * n2 * r1 + r1 * n_out + _bias_count(layer)

    def fill(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
        r0, r1 = ranks
        arranged = dense_weight(layer).T.reshape(n0, n1, n2, n_out)
        fit = tucker(arranged, (0, 3), (r0, r1), n_iter_max=int(options.get("n_iter_max", 10)))
        u_in, u_out = fit.factors
        copy_into(module, "node0", u_in)  # (n0, R_in)
        copy_into(module, "node_core", fit.core.permute(1, 2, 0, 3))  # (n1, n2, R_in, R_out)
        copy_into(module, "node1", u_out.T)  # (R_out, out)
        return {"n_iter": fit.n_iter, "rel_error": fit.rel_error}

    caps = [min(n0, n1 * n2 * n_out), min(n_out, n_in)]
    return Format(caps=caps, params=params, build=build, fill=fill, full=caps,
                  shapes={"in_shape": list(in_shape), "out_size": n_out})


# ----------------------------------------------------------------------------- tensor train


def tt(layer: nn.Linear, options: dict[str, Any]) -> Format:
    """``TTLinear``: ``d - 1`` ranks; ``sum_k R_{k-1} in_k out_k R_k`` parameters plus the bias."""
    in_shape, out_shape = _shapes(layer, options)
    d = len(in_shape)
    bias = layer.bias is not None
    if d < 2:
        raise Unsupported(f"TedNet's TTLinear needs at least 2 modes, got in_shape {list(in_shape)}")
    pairs = [i * o for i, o in zip(in_shape, out_shape)]

    def params(ranks: Sequence[int]) -> int:
        bonds = [1, *ranks, 1]
        return sum(bonds[k] * pairs[k] * bonds[k + 1] for k in range(d)) + _bias_count(layer)

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("TTLinear")(list(in_shape), list(out_shape), ranks, bias=bias)

    def fill(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
        arranged = dense_weight(layer).reshape(*out_shape, *in_shape).permute(*paired_order(d)).reshape(pairs)
        cores = tt_svd(arranged, ranks, generator)
        for k, core in enumerate(cores):
            r_left, _, r_right = core.shape
            node = core.reshape(r_left, in_shape[k], out_shape[k], r_right).permute(1, 2, 0, 3)
            # TedNet drops the unit end ranks: (in, out, R) at both ends, (in, out, R_left, R_right) inside.
            if k == 0:
                node = node[:, :, 0]
            elif k == d - 1:
                node = node[..., 0]
            copy_into(module, f"node{k}", node)
        return {"rel_error": relative_error(arranged, ring_to_tensor(cores))}

    caps = tt_max_ranks(pairs)
    return Format(caps=caps, params=params, build=build, fill=fill, full=caps, shapes=_shape_info(in_shape, out_shape))


# ----------------------------------------------------------------------------- tensor ring


def tr(layer: nn.Linear, options: dict[str, Any]) -> Format:
    """``TRLinear``: ``2d`` ring ranks around ``(in_1..in_d, out_1..out_d)``."""
    in_shape, out_shape = _shapes(layer, options)
    d = len(in_shape)
    bias = layer.bias is not None
    ring = (*in_shape, *out_shape)

    def params(ranks: Sequence[int]) -> int:
        m = len(ring)
        return sum(ranks[k] * ring[k] * ranks[(k + 1) % m] for k in range(m)) + _bias_count(layer)

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("TRLinear")(list(in_shape), list(out_shape), ranks, bias=bias)

    def fill(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
        arranged = dense_weight(layer).reshape(*out_shape, *in_shape).permute(*range(d, 2 * d), *range(d))
        cores = tr_svd(arranged, ranks, generator)
        for k, core in enumerate(cores):
            copy_into(module, f"node{k}", core)
        return {"rel_error": relative_error(arranged, ring_to_tensor(cores))}

    # A ring has no single full rank; closing it with R_0 = 1 makes it a train, exact at TT's maximal ranks.
    full = [1, *tt_max_ranks(ring)]
    return Format(caps=[math.prod(ring)] * len(ring), params=params, build=build, fill=fill, full=full,
                  shapes=_shape_info(in_shape, out_shape))


# ----------------------------------------------------------------------------- block-term Tucker


def btt(layer: nn.Linear, options: dict[str, Any]) -> Format:
    """``BTTLinear``: per-pair Tucker ranks ``[R_1..R_d]``, times ``block_num`` blocks."""
    in_shape, out_shape = _shapes(layer, options)
    d = len(in_shape)
    bias = layer.bias is not None
    blocks = int(options.get("block_num", DEFAULT_BLOCKS))
    pairs = [i * o for i, o in zip(in_shape, out_shape)]

    def params(ranks: Sequence[int]) -> int:
        return blocks * (math.prod(ranks) + sum(r * n for r, n in zip(ranks, pairs))) + _bias_count(layer)

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("BTTLinear")(list(in_shape), list(out_shape), ranks, blocks, bias=bias)

    def fill(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
        arranged = dense_weight(layer).reshape(*out_shape, *in_shape).permute(*paired_order(d)).reshape(pairs)
        residual, iterations = arranged, []
        for b in range(blocks):
            fit = tucker(residual, range(d), ranks, n_iter_max=int(options.get("n_iter_max", 10)))
            # TedNet's forward flattens the contracted rank axes last-mode-first and multiplies by
            # core.view(-1): the core it applies is its parameter read in reversed mode order.
            core = fit.core.permute(*reversed(range(d))).reshape(ranks)
            copy_into(module, f"core_block{b}", core)
            for j in range(d):
                copy_into(module, f"factor{j}_block{b}", fit.factors[j].reshape(in_shape[j], out_shape[j], ranks[j]))
            residual = residual - fit.to_tensor()
            iterations.append(fit.n_iter)
        return {"n_iter": iterations, "rel_error": relative_error(arranged, arranged - residual)}

    caps = [min(n, math.prod(pairs) // n) for n in pairs]
    return Format(caps=caps, params=params, build=build, fill=fill, full=caps,
                  shapes=_shape_info(in_shape, out_shape, block_num=blocks))
