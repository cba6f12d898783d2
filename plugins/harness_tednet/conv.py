"""TedNet's five ``*Conv2D`` formats, sized for one ``nn.Conv2d`` and filled from its kernel ``W (Cout, Cin, kh, kw)``.

Each function returns a :class:`~harness_tednet.formats.Format`. TedNet cannot start
from trained weights, but every conv format's parameters are the factors of a
decomposition of the (rearranged) kernel, so each is filled by hand: CP (``CPConv2D``,
which rebuilds the kernel from its rank-1 terms in a Python loop on every forward)
from CP-ALS of ``W``; Tucker-2 (``TK2Conv2D``: a ``Cin x R_in`` matrix, an
``(R_out, R_in, kh, kw)`` core conv, an ``R_out x Cout`` matrix) from HOOI on the channel
modes; TT (``TTConv2D``: ``R_0`` spatial filters shared by every input channel, then
cores over the tensorized ``(in_k, out_k)`` channel pairs) from TT-SVD of ``W`` arranged
as ``(kh kw, in_1 out_1, ..., in_d out_d)``; TR (``TRConv2D``: a ring over
``(in_1..in_d, kh kw, out_1..out_d)`` whose spatial core is a conv) from TR-SVD; and
block-term Tucker (``BTTConv2D``) from HOOI of ``W`` arranged as
``(in_1 out_1, ..., in_d out_d, kh, kw)``, each block fitted to what the blocks before
it left. Stride and padding (ints, tuples, ``"same"``/``"valid"``) go to TedNet, which
hands them to ``F.conv2d``/``nn.Conv2d`` as given; TedNet has no dilation, groups or
padding mode, and the plugin refuses those before getting here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harness import (CP_ALS, cp_als, cp_to_tensor, relative_error, ring_to_tensor, tensorized_shapes, tt_max_ranks,
                     tucker)
from harness_tednet.formats import Format, copy_into, dense_weight, paired_order
from harness_tednet.library import tednet_class
from harness_tednet.tensor_ops import tr_svd, tt_svd

# TedNet's own BTT models (BTTLeNet5, BTTResNet*) all use two blocks.
DEFAULT_BLOCKS = 2


def _geometry(layer: nn.Conv2d) -> dict[str, Any]:
    """The keyword arguments every TedNet conv takes, from the dense layer."""
    padding = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)
    return {
        "kernel_size": tuple(layer.kernel_size),
        "stride": tuple(layer.stride),
        "padding": padding,
        "bias": layer.bias is not None,
    }


def _bias_count(layer: nn.Conv2d) -> int:
    return layer.out_channels if layer.bias is not None else 0


def _channel_shapes(layer: nn.Conv2d, options: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # Channels are tensorized exactly like Linear features, so options (in_shape, out_shape, tt_d) mean the same.
    return tensorized_shapes(layer.in_channels, layer.out_channels, options)


# ----------------------------------------------------------------------------- CP


def cp(layer: nn.Conv2d, options: dict[str, Any]) -> Format:
    """``CPConv2D``: one rank; ``R (Cin + Cout + kh + kw)`` parameters plus the bias."""
    cout, cin, kh, kw = layer.weight.shape
    geometry = _geometry(layer)

    def params(ranks: Sequence[int]) -> int:
        return ranks[0] * (cin + cout + kh + kw) + _bias_count(layer)

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("CPConv2D")(cin, cout, ranks[0], **geometry)

    def fill(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
        weight = dense_weight(layer)
        fit = cp_als(weight, ranks[0], generator=generator,
                     n_iter_max=int(options.get("n_iter_max", CP_ALS["n_iter_max"])),
                     tol=float(options.get("tol", CP_ALS["tol"])), n_restarts=int(options.get("n_restarts", 2)))
        # Spread each component's weight evenly over its four vectors: no factor starts at an odd scale.
        scale = fit.weights ** 0.25
        out, inp, k0, k1 = (factor * scale for factor in fit.factors)
        for r in range(ranks[0]):
            copy_into(module, f"node_out_block{r}", out[:, r])
            copy_into(module, f"node_in_block{r}", inp[:, r])
            copy_into(module, f"node_k0_block{r}", k0[:, r])
            copy_into(module, f"node_k1_block{r}", k1[:, r])
        return {"n_iter": fit.n_iter, "converged": fit.converged,
                "rel_error": relative_error(weight, cp_to_tensor(fit.weights, fit.factors))}

    # No finite full rank for CP; the cap only bounds the budget search.
    return Format(caps=[cout * cin * kh * kw], params=params, build=build, fill=fill,
                  shapes={"kernel_size": [kh, kw]})


# ----------------------------------------------------------------------------- Tucker-2


def tucker2(layer: nn.Conv2d, options: dict[str, Any]) -> Format:
    """``TK2Conv2D``: ranks ``[R_in, R_out]`` (TedNet's order); ``Cin R_in + R_in R_out kh kw + R_out Cout`` + bias."""
    cout, cin, kh, kw = layer.weight.shape
    geometry = _geometry(layer)

    def params(ranks: Sequence[int]) -> int:
        r_in, r_out = ranks
        return cin * r_in + r_in * r_out * kh * kw + r_out * cout + _bias_count(layer)

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("TK2Conv2D")(cin, cout, ranks, **geometry)

    def fill(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
        r_in, r_out = ranks
        weight = dense_weight(layer)
        fit = tucker(weight, (0, 1), (r_out, r_in), n_iter_max=int(options.get("n_iter_max", 10)))
        u_out, u_in = fit.factors
        copy_into(module, "node0", u_in)  # (Cin, R_in): contracts the input channels
        copy_into(module, "kernel.weight", fit.core)  # (R_out, R_in, kh, kw)
        copy_into(module, "node1", u_out.T)  # (R_out, Cout)
        return {"n_iter": fit.n_iter, "rel_error": fit.rel_error}

    caps = [min(cin, cout * kh * kw), min(cout, cin * kh * kw)]
    # Ranks grow in proportion to the channels they compress, as in the native backend.
    biggest = max(cin, cout)
    return Format(caps=caps, params=params, build=build, fill=fill, full=caps,
                  shares=[cin / biggest, cout / biggest], shapes={"kernel_size": [kh, kw]})


# ----------------------------------------------------------------------------- tensor train


def tt(layer: nn.Conv2d, options: dict[str, Any]) -> Format:
    """``TTConv2D``: ranks ``[R_0 (spatial filters), R_1, ..., R_{d-1}]``, one per core."""
    cout, cin, kh, kw = layer.weight.shape
    in_shape, out_shape = _channel_shapes(layer, options)
    d = len(in_shape)
    geometry = _geometry(layer)
    chain = (kh * kw, *(i * o for i, o in zip(in_shape, out_shape)))

    def params(ranks: Sequence[int]) -> int:
        bonds = [*ranks, 1]
        cores = sum(bonds[k] * in_shape[k] * out_shape[k] * bonds[k + 1] for k in range(d))
        return cores + kh * kw * ranks[0] + _bias_count(layer)

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("TTConv2D")(list(in_shape), list(out_shape), ranks, **geometry)

    def fill(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
        weight = dense_weight(layer)
        arranged = weight.reshape(*out_shape, *in_shape, kh * kw)
        arranged = arranged.permute(2 * d, *paired_order(d)).reshape(chain)
        cores = tt_svd(arranged, ranks, generator)
        spatial, *pairs = cores
        copy_into(module, "kernel.weight", spatial[0].T.reshape(ranks[0], 1, kh, kw))
        for k, core in enumerate(pairs):
            r_left, _, r_right = core.shape
            node = core.reshape(r_left, in_shape[k], out_shape[k], r_right).permute(1, 2, 0, 3)
            copy_into(module, f"node{k}", node if k < d - 1 else node[..., 0])
        return {"rel_error": relative_error(arranged, ring_to_tensor(cores))}

    caps = tt_max_ranks(chain)
    return Format(caps=caps, params=params, build=build, fill=fill, full=caps,
                  shapes={"in_shape": list(in_shape), "out_shape": list(out_shape), "kernel_size": [kh, kw]})


# ----------------------------------------------------------------------------- tensor ring


def tr(layer: nn.Conv2d, options: dict[str, Any]) -> Format:
    """``TRConv2D``: ``2d + 1`` ring ranks around ``(in_1..in_d, kh kw, out_1..out_d)``."""
    cout, cin, kh, kw = layer.weight.shape
    in_shape, out_shape = _channel_shapes(layer, options)
    d = len(in_shape)
    geometry = _geometry(layer)
    ring = (*in_shape, kh * kw, *out_shape)

    def params(ranks: Sequence[int]) -> int:
        m = len(ring)
        return sum(ranks[k] * ring[k] * ranks[(k + 1) % m] for k in range(m)) + _bias_count(layer)

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("TRConv2D")(list(in_shape), list(out_shape), ranks, **geometry)

    def fill(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
        weight = dense_weight(layer)
        arranged = weight.reshape(*out_shape, *in_shape, kh * kw)
        arranged = arranged.permute(*range(d, 2 * d), 2 * d, *range(d)).reshape(ring)
        cores = tr_svd(arranged, ranks, generator)
        for k in range(d):
            copy_into(module, f"in_node{k}", cores[k])
            copy_into(module, f"out_node{k}", cores[d + 1 + k])
        r_in, _, r_out = cores[d].shape
        copy_into(module, "kernel.weight", cores[d].permute(2, 0, 1).reshape(r_out, r_in, kh, kw))
        return {"rel_error": relative_error(arranged, ring_to_tensor(cores))}

    # A ring has no single full rank; closing it with R_0 = 1 makes it a train, exact at TT's maximal ranks.
    full = [1, *tt_max_ranks(ring)]
    return Format(caps=[math.prod(ring)] * len(ring), params=params, build=build, fill=fill, full=full,
                  shapes={"in_shape": list(in_shape), "out_shape": list(out_shape), "kernel_size": [kh, kw]})


# ----------------------------------------------------------------------------- block-term Tucker


def btt(layer: nn.Conv2d, options: dict[str, Any]) -> Format:
    """``BTTConv2D``: per-mode Tucker ranks ``[R_1..R_d, R_kh, R_kw]``, times ``block_num`` blocks."""
    cout, cin, kh, kw = layer.weight.shape
    in_shape, out_shape = _channel_shapes(layer, options)
    d = len(in_shape)
    blocks = int(options.get("block_num", DEFAULT_BLOCKS))
    geometry = _geometry(layer)
    modes = (*(i * o for i, o in zip(in_shape, out_shape)), kh, kw)

    def params(ranks: Sequence[int]) -> int:
        factors = sum(r * n for r, n in zip(ranks, modes))
        return blocks * (math.prod(ranks) + factors) + _bias_count(layer)

    def build(ranks: list[int]) -> nn.Module:
        return tednet_class("BTTConv2D")(list(in_shape), list(out_shape), ranks, blocks, **geometry)

    def fill(module: nn.Module, ranks: list[int], generator: torch.Generator) -> dict[str, Any]:
        weight = dense_weight(layer)
        arranged = weight.reshape(*out_shape, *in_shape, kh, kw)
        arranged = arranged.permute(*paired_order(d), 2 * d, 2 * d + 1).reshape(modes)
        residual, iterations = arranged, []
        for b in range(blocks):
            # Each block is the best Tucker term of what the blocks before it left: a greedy block-term fit.
            fit = tucker(residual, range(len(modes)), ranks, n_iter_max=int(options.get("n_iter_max", 10)))
            copy_into(module, f"core_block{b}", fit.core)
            for j in range(d):
                copy_into(module, f"c_factor{j}_block{b}", fit.factors[j].reshape(in_shape[j], out_shape[j], ranks[j]))
            copy_into(module, f"k0_factor_block{b}", fit.factors[d])
            copy_into(module, f"k1_factor_block{b}", fit.factors[d + 1])
            residual = residual - fit.to_tensor()
            iterations.append(fit.n_iter)
        return {"n_iter": iterations, "rel_error": relative_error(arranged, arranged - residual)}

    caps = [min(n, math.prod(modes) // n) for n in modes]
    return Format(caps=caps, params=params, build=build, fill=fill, full=caps,
                  shapes={"in_shape": list(in_shape), "out_shape": list(out_shape), "kernel_size": [kh, kw],
                          "block_num": blocks})
