"""A test backend whose layers no exporter can trace: a truncated SVD whose forward leaves torch for Python lists.

``sealed`` offers ``lowrank`` for Linear layers: numerically an honest low-rank layer (so its cells are ok and
its network is kept), but its forward goes through ``Tensor.tolist()``, which torch.export and the ONNX exporter
cannot follow (the values are data, not graph) and which TorchScript's tracer freezes into a constant. (A NumPy
round trip would not do: the exporters translate NumPy calls into torch ops.) Loaded with ``-p sealed_backend``.
"""

from __future__ import annotations

import numpy
import torch
from torch import nn

import harness
from harness import BackendInfo, largest_fitting


class ListLowRank(nn.Module):
    """``x @ first.T @ second.T + bias``, with the hidden features passed through a Python list."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.first, self.second = nn.Parameter(first), nn.Parameter(second)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tensor((x @ self.first.T).detach().tolist(), dtype=x.dtype, device=x.device)
        out = hidden @ self.second.T
        return out + self.bias if self.bias is not None else out


@harness.hookimpl
def harness_register_backends(register):
    register(BackendInfo(name="sealed", library="numpy", library_version=numpy.__version__, methods={"linear": ("lowrank",)}))


@harness.hookimpl
def harness_decompose_layer(layer, request):
    if request.backend != "sealed":
        return None
    out_dim, in_dim = layer.weight.shape
    bias = layer.bias is not None
    rank = largest_fitting(lambda r: r * (in_dim + out_dim) + (out_dim if bias else 0), request.max_params,
                           upper=min(out_dim, in_dim))
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    module = ListLowRank(vh[:rank] * s[:rank, None], u[:, :rank], layer.bias.detach().clone() if bias else None)
    module.decomposition_info = {"rank": rank}
    return module
