"""Tensor algebra shared by the backends that compute decompositions in plain PyTorch (native, TedNet's fills).

The matricized-tensor-times-Khatri-Rao product (MTTKRP) is the core of every CP-ALS sweep; computed as
``unfold(X, mode) @ khatri_rao(others)`` it materialises the Khatri-Rao product of the other factors, which for
a 512x512x3x3 kernel at rank 570 is 1.3 G numbers per call. :func:`mttkrp` contracts the tensor mode by mode
instead, so a backend's CP scales to the layers of real networks. Backends import it from here rather than from
each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def mttkrp(tensor: Tensor, factors: Sequence[Tensor], mode: int) -> Tensor:
    """``unfold(tensor, mode) @ khatri_rao(factors other than mode's)``, without forming the Khatri-Rao product.

    The other modes are contracted one at a time, the largest first: that first contraction is one matmul that
    does nearly all the work, and every intermediate holds at most ``tensor.numel() / largest * rank`` numbers
    (for a 512x512x3x3 kernel at rank 570: 2.6 M, where the Khatri-Rao product of the others is 1.3 G).
    """
    others = sorted((m for m in range(tensor.ndim) if m != mode), key=lambda m: -tensor.shape[m])
    out = torch.tensordot(tensor, factors[others[0]], dims=([others[0]], [0]))  # remaining modes..., rank
    remaining = [m for m in range(tensor.ndim) if m != others[0]]
    for m in others[1:]:
        axis = remaining.index(m)
        out = (out.movedim(axis, -2) * factors[m]).sum(dim=-2)
        remaining.remove(m)
    return out  # (tensor.shape[mode], rank)
