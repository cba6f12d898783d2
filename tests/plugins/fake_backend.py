"""A small test backend for exercising the host: a real low-rank method plus deliberate faults.

``lowrank`` is a truncated SVD of the (flattened) weight for Linear and Conv2d layers at the largest rank
within budget; ``lowrank2`` is the same at half that rank (an honest, always worse second choice, so ``auto``
has a known answer); ``boom`` raises, ``hang`` sleeps past any sensible time limit, ``nope`` raises
Unsupported, ``explode`` is ``lowrank`` with its output scaled so far up that training
diverges. The backend ``plain`` offers only ``lowrank`` and ``lowrank2``: ``auto`` tries every decompose-init
method, and on ``fake`` that would include ``boom`` and ``hang``. Loaded in tests with ``-p fake_backend`` (tests/plugins on sys.path).
"""

from __future__ import annotations

import time

import torch
from torch import nn

import harness
from harness import BackendInfo, Unsupported, largest_fitting


@harness.hookimpl
def harness_register_backends(register):
    register(BackendInfo(name="fake", library="torch", library_version=torch.__version__,
                         methods={"linear": ("lowrank", "boom", "hang", "nope", "explode", "lowrank2"),
                                  "conv2d": ("lowrank", "boom", "hang", "nope", "explode", "lowrank2")},
                         conv_unsupported=frozenset({"dilation"})))
    register(BackendInfo(name="plain", library="torch", library_version=torch.__version__,
                         methods={"linear": ("lowrank2", "lowrank"), "conv2d": ("lowrank2", "lowrank")}))
    register(BackendInfo(name="missing", library="nonexistent-lib", library_version=None,
                         methods={"linear": ("lowrank",)}, available=False,
                         install_hint='pip install nonexistent-lib'))


@harness.hookimpl
def harness_decompose_layer(layer, request):
    if request.backend not in ("fake", "plain"):
        return None
    if request.method == "boom":
        raise ValueError("planned failure")
    if request.method == "hang":
        time.sleep(3600)
    if request.method == "nope":
        raise Unsupported("this layer is not for me")
    weight = layer.weight.detach().flatten(1)
    out_dim, in_dim = weight.shape
    bias = layer.bias is not None
    rank = largest_fitting(lambda r: r * (in_dim + out_dim) + (out_dim if bias else 0), request.max_params,
                           upper=min(out_dim, in_dim))
    if request.method == "lowrank2":
        rank = max(1, rank // 2)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    first_w, second_w = (vh[:rank] * s[:rank, None]), u[:, :rank]
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(in_dim, rank, bias=False), nn.Linear(rank, out_dim, bias=bias)
        first.weight.data.copy_(first_w)
    else:
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, bias=False)
        second = nn.Conv2d(rank, out_dim, 1, bias=bias)
        first.weight.data.copy_(first_w.reshape(rank, *layer.weight.shape[1:]))
        second_w = second_w[:, :, None, None]
    # explode: outputs near float32's limit, so the first loss is infinite.
    second.weight.data.copy_(second_w * (1e37 if request.method == "explode" else 1.0))
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    module = nn.Sequential(first, second)
    module.decomposition_info = {"rank": rank}
    return module
