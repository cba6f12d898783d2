"""The thin layer between this plugin and TedNet itself: lazy import, quiet seeded builds, the adapter.

TedNet is an optional dependency, so nothing here imports it at module level: the
plugin must load (and register TedNet as unavailable) without it. TedNet prints each
layer's compression ratio when it builds the layer and draws its init from the global
RNG; :func:`build_quietly` captures the text and builds under a private RNG state, so
the caller's stdout and random stream are untouched. TedNet's Linear layers read the
input as ``(batch, features)`` only and its convs ``view`` the input, which fails on a
non-contiguous one: :class:`TedNetLayer` makes either a drop-in for ``nn.Linear`` or
``nn.Conv2d`` (any leading dims, unbatched inputs, any memory layout).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
from collections.abc import Callable

import torch
from torch import Tensor, nn

# TedNet's class name -> the subpackage of tednet.tnn that defines it.
_MODULES = {
    "CPConv2D": "cp", "CPLinear": "cp",
    "TK2Conv2D": "tucker2", "TK2Linear": "tucker2",
    "TTConv2D": "tensor_train", "TTLinear": "tensor_train",
    "TRConv2D": "tensor_ring", "TRLinear": "tensor_ring",
    "BTTConv2D": "bt_tucker", "BTTLinear": "bt_tucker",
}


def tednet_version() -> str | None:
    """TedNet's installed version, or None when it cannot be imported."""
    try:
        importlib.import_module("tednet")
    except Exception:  # noqa: BLE001 - a broken install is as unavailable as a missing one
        return None
    try:
        return importlib.metadata.version("tednet")
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module("tednet"), "__version__", "unknown")


def tednet_class(name: str) -> type[nn.Module]:
    """TedNet's layer class ``name`` (e.g. ``"TK2Conv2D"``), imported on first use."""
    return getattr(importlib.import_module(f"tednet.tnn.{_MODULES[name]}"), name)


def build_quietly(make: Callable[[], nn.Module], seed: int) -> tuple[nn.Module, str]:
    """``make()`` seeded with ``seed`` on a forked RNG, with what it prints captured and returned."""
    text = io.StringIO()
    # devices=[]: the layer is built on the CPU, and forking every CUDA RNG would be slow and pointless.
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(text):
        torch.manual_seed(seed)
        module = make()
    return module, text.getvalue()


class TedNetLayer(nn.Module):
    """A TedNet layer behind the interface of the ``nn.Linear`` or ``nn.Conv2d`` it replaces.

    Linear inputs ``(*, in_features)`` are flattened to the ``(batch, in)`` TedNet
    expects and reshaped back; conv inputs are made contiguous (TedNet ``view``\\ s them)
    and an unbatched ``(C, H, W)`` input gets a batch of one, as ``nn.Conv2d`` allows.
    The TedNet module is ``self.tednet``; its parameters are the only ones here.
    """

    def __init__(self, tednet: nn.Module, kind: str, in_features: int, out_features: int) -> None:
        super().__init__()
        self.tednet = tednet
        self.kind = kind
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "linear":
            lead = x.shape[:-1]
            return self.tednet(x.reshape(-1, self.in_features)).reshape(*lead, self.out_features)
        if x.dim() == 3:
            return self.tednet(x.unsqueeze(0).contiguous()).squeeze(0)
        return self.tednet(x.contiguous())

    def extra_repr(self) -> str:
        return f"kind={self.kind}, in={self.in_features}, out={self.out_features}"
