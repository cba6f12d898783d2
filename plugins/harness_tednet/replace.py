"""From a request and a format to the replacement module: ranks, seeded build, fill, checks, record.

The same steps for every TedNet format, so that each one is sized, seeded and checked
alike: choose the ranks (explicit, ``"full"`` or the budget), build TedNet's layer on a
forked RNG with its printout captured, fill it from the trained weight when the method
starts from it (then the bias is copied too; from scratch TedNet's zero bias stays),
wrap it in :class:`~harness_tednet.library.TedNetLayer`, and check that the measured
parameter count is the closed form the budget was solved with (the host checks the
budget itself).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from harness import DecomposeRequest, count_params
from harness_tednet.formats import Format, choose_ranks, copy_into
from harness_tednet.library import TedNetLayer, build_quietly


def replace(layer: nn.Module, request: DecomposeRequest, fmt: Format, init: str) -> nn.Module:
    """The TedNet replacement of ``layer`` for ``request``, with its ``decomposition_info``."""
    method = f"{request.kind}/{request.method}"
    ranks = choose_ranks(fmt, request, method)
    tednet_layer, printed = build_quietly(lambda: fmt.build(ranks), request.seed)
    kind = request.kind
    in_features = layer.in_features if kind == "linear" else layer.in_channels
    out_features = layer.out_features if kind == "linear" else layer.out_channels
    replacement = TedNetLayer(tednet_layer, kind, in_features, out_features)
    # Move before filling: the float64 factors then land in the layer's own dtype, not via float32.
    replacement.to(device=layer.weight.device, dtype=layer.weight.dtype)
    info: dict[str, Any] = {"init": init, "rank": ranks, **fmt.shapes}
    if init == "decompose":
        if fmt.fill is None:
            raise RuntimeError(f"tednet/{method} is declared 'decompose' but has no fill")
        # A private CPU generator (CP restarts, padded ranks): the seed alone fixes the factors.
        info.update(fmt.fill(tednet_layer, ranks, request.generator()))
        if layer.bias is not None:
            copy_into(tednet_layer, "bias", layer.bias.detach())
    measured = count_params(replacement)
    if measured != fmt.params(ranks):
        # The budget was solved with the closed form: if it is wrong, so may be the size.
        raise RuntimeError(f"tednet/{method}: {measured} parameters built, {fmt.params(ranks)} expected")
    info["params"] = measured
    if request.rank is None:
        info["budget"] = request.max_params
    info["tednet_stdout"] = printed
    replacement.decomposition_info = info
    return replacement
