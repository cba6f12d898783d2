"""The modules this backend hands back: tltorch's factorized layers, made safe to call anywhere.

:class:`TltorchConv` and :class:`TltorchLinear` are ``tltorch.FactorizedConv`` and
``tltorch.FactorizedLinear`` with one change: the forward runs under tensorly's PyTorch
backend. tltorch's forwards call ``tensorly`` functions, which fail on torch tensors
when another backend (NumPy, tensorly's default) is active — and this plugin restores
the caller's backend after importing tltorch. Everything else (parameters, state-dict
keys, both forward implementations) is tltorch's own. Importing this module imports
tltorch, so the plugin imports it only when it builds a layer; the classes live at
module level so replacements can be pickled and deep-copied.
"""

from __future__ import annotations

import torch

from harness_tltorch.library import import_tltorch, pytorch_backend

tltorch = import_tltorch()


class TltorchConv(tltorch.FactorizedConv):
    """``tltorch.FactorizedConv`` whose forward works whatever tensorly backend is active."""

    def forward(self, x: torch.Tensor, indices: int = 0) -> torch.Tensor:
        with pytorch_backend():
            return super().forward(x, indices)

    def dense_kernel(self) -> torch.Tensor:
        """The ``(Cout, Cin, kh, kw)`` kernel the factors describe (TT keeps ``Cout`` last)."""
        with pytorch_backend():
            tensor = self.weight.to_tensor()
            return tensor.movedim(-1, 0) if self.weight.name.lower() == "tt" else tensor


class TltorchLinear(tltorch.FactorizedLinear):
    """``tltorch.FactorizedLinear`` whose forward works whatever tensorly backend is active."""

    def forward(self, x: torch.Tensor, indices: int = 0) -> torch.Tensor:
        with pytorch_backend():
            return super().forward(x, indices)

    def dense_weight(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix the factors describe."""
        with pytorch_backend():
            return self.weight.to_matrix()


def tensorized_weight(shape: tuple[tuple[int, ...], tuple[int, ...]], factorization: str, rank, device=None):
    """``TensorizedTensor.new``: the factorized weight ``FactorizedLinear`` creates, without initialising it."""
    return tltorch.TensorizedTensor.new(shape, rank=rank, factorization=factorization, device=device)
