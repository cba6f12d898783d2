"""Backends that break the budget contract, for the host's checks and the conformance kit's.

``greedy`` returns the full-rank truncated SVD of every Linear and Conv2d layer, whatever the
budget: more parameters than the dense layer, so it would always look the most accurate.
``stingy`` always returns rank 1, within every budget but far below it. ``sloppy`` drops the bias and a conv's
stride, for the kit's messages to name the shapes and numbers. ``hoarder`` returns a rank-1
pair for the budget to count and keeps the dense kernel in buffers, which is what its forward runs. Both are written the
short way (one callable per method) and are otherwise correct, so only the budget can catch
them. Loaded in tests with ``-p bad_backends`` (tests/plugins on sys.path).
"""

from __future__ import annotations

import torch
from torch import nn

import harness


def svd_at(layer: nn.Module, rank: int) -> nn.Module:
    """``layer`` as a (flattened-kernel) SVD pair at ``rank``: a conv of the layer's geometry, then a 1x1 conv."""
    weight = layer.weight.detach().flatten(1)
    out_dim, in_dim = weight.shape
    rank = min(rank, out_dim, in_dim)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(in_dim, rank, bias=False), nn.Linear(rank, out_dim, bias=bias)
        first_shape, second_shape = (rank, in_dim), (out_dim, rank)
    else:
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, padding_mode=layer.padding_mode, bias=False)
        second = nn.Conv2d(rank, out_dim, 1, bias=bias)
        first_shape, second_shape = first.weight.shape, second.weight.shape
    with torch.no_grad():
        first.weight.copy_((s[:rank, None] * vh[:rank]).reshape(first_shape))
        second.weight.copy_(u[:, :rank].reshape(second_shape))
        if bias:
            second.bias.copy_(layer.bias)
    module = nn.Sequential(first, second)
    module.decomposition_info = {"rank": rank}
    return module


def full_rank(layer: nn.Module, request: harness.DecomposeRequest) -> nn.Module:
    return svd_at(layer, min(layer.weight.flatten(1).shape))


def rank_one(layer: nn.Module, request: harness.DecomposeRequest) -> nn.Module:
    if request.rank is not None and request.rank != harness.FULL_RANK:
        return svd_at(layer, int(request.rank))
    return svd_at(layer, min(layer.weight.flatten(1).shape) if request.rank == harness.FULL_RANK else 1)


@harness.hookimpl
def harness_register_backends(register):
    register(harness.BackendInfo(name="greedy", library="torch", library_version=torch.__version__,
                                 methods={"linear": {"svd": full_rank}, "conv2d": {"svd": full_rank}}))
    register(harness.BackendInfo(name="stingy", library="torch", library_version=torch.__version__,
                                 methods={"linear": {"svd": rank_one}, "conv2d": {"svd": rank_one}}))
    register(harness.BackendInfo(name="sloppy", library="torch", library_version=torch.__version__,
                                 methods={"linear": {"svd": sloppy}, "conv2d": {"svd": sloppy}}))
    register(harness.BackendInfo(name="hoarder", library="torch", library_version=torch.__version__,
                                 methods={"linear": {"svd": hidden_kernel}}))


class KernelInBuffer(nn.Module):
    """A rank-1 pair for the budget to count, and the dense kernel kept in buffers, which is what really runs."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.small = svd_at(layer, 1)
        self.register_buffer("kernel", layer.weight.detach().clone())
        self.register_buffer("offset", layer.bias.detach().clone() if layer.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.kernel, self.offset) + 0 * self.small(x)


def hidden_kernel(layer: nn.Module, request: harness.DecomposeRequest) -> nn.Module:
    return KernelInBuffer(layer)


def sloppy(layer: nn.Module, request: harness.DecomposeRequest) -> nn.Module:
    module = rank_one(layer, request) if request.rank is not None else svd_at(layer, 1)
    first, second = module
    if isinstance(first, nn.Conv2d):
        first.stride = (1, 1)
    if second.bias is not None:
        with torch.no_grad():
            second.bias.zero_()
    return module
