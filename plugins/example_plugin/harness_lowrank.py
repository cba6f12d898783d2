"""An example backend plugin: truncated SVD of Linear layers, in one file.

The smallest complete harness backend: it declares one method with the callable that
serves it, and the host does the rest (only this backend's requests reach it, the
budget it promised is checked, declared gaps are refused). ``request.pick_rank`` turns
the request (explicit rank, ``"full"`` or a parameter budget) into one rank.
"""

import torch
from torch import nn

import harness


def svd(layer: nn.Linear, request: harness.DecomposeRequest) -> nn.Module:
    out_features, in_features = layer.weight.shape
    bias = layer.bias is not None
    rank = request.pick_rank(lambda r: r * (in_features + out_features) + (out_features if bias else 0),
                             full=min(in_features, out_features))
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    root = s[:rank].sqrt()  # both layers get sqrt(S), so they start at the same scale
    first, second = nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=bias)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root)
        if bias:
            second.bias.copy_(layer.bias)
    replacement = nn.Sequential(first, second)
    replacement.decomposition_info = {"rank": rank}  # stored per layer; the conformance kit reads the rank
    return replacement


@harness.hookimpl
def harness_register_backends(register) -> None:
    register(harness.BackendInfo(name="lowrank", library="torch", library_version=torch.__version__,
                                 methods={"linear": {"svd": svd}}, description="truncated SVD of Linear layers"))
