"""An example backend plugin: truncated SVD of Linear layers, in one file.

This is the smallest complete harness backend. It declares itself, answers only the
requests addressed to it, meets the parameter budget with the shared helper, honours
an explicit rank (``"full"`` included) and returns a drop-in module made of stock layers.
"""

from __future__ import annotations

import torch
from torch import nn

import harness
from harness import FULL_RANK, BackendInfo, DecomposeRequest, largest_fitting

NAME = "lowrank"


@harness.hookimpl
def harness_register_backends(register) -> None:
    register(BackendInfo(name=NAME, library="torch", library_version=torch.__version__,
                         methods={"linear": ("svd",)}, description="truncated SVD of Linear layers"))


@harness.hookimpl
def harness_decompose_layer(layer: nn.Module, request: DecomposeRequest) -> nn.Module | None:
    if request.backend != NAME:
        return None  # another backend's request
    weight = layer.weight.detach()
    out_features, in_features = weight.shape
    bias = layer.bias is not None
    max_rank = min(in_features, out_features)

    def params(rank: int) -> int:
        return rank * (in_features + out_features) + (out_features if bias else 0)

    if request.rank == FULL_RANK:
        rank = max_rank
    elif request.rank is not None:
        rank = min(int(request.rank), max_rank)
    else:
        rank = largest_fitting(params, request.max_params, upper=max_rank)

    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()  # split the singular values evenly so both layers start at the same scale
    first = nn.Linear(in_features, rank, bias=False)
    second = nn.Linear(rank, out_features, bias=bias)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root)
        if bias:
            second.bias.copy_(layer.bias)
    replacement = nn.Sequential(first, second)
    replacement.decomposition_info = {"rank": rank}
    return replacement
