"""TedNet's own padding of the host's decompositions: TT and TR cores exactly at the ranks a layer was built with.

TedNet only trains its factorised layers from random init, so this backend computes the factors itself and copies
them in. Tucker, the TT sweep and CP-ALS are the host's (``from harness import tucker, tt_svd, tt_sweep, cp_als``),
the same every backend uses; what is TedNet's own is :func:`pad_core`, which widens a core to ranks the data cannot
use while keeping the product exact and the new slots trainable, the TT-SVD padded with it, and the tensor-ring
SVD (TR-SVD), whose ring is swept at the rank its first unfolding has and then padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from harness import tt_sweep
from harness import tt_svd as host_tt_svd


def _randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    # Draw on the generator's (CPU) device, then move: the same seed gives the same numbers anywhere.
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype).to(like.device)


# ----------------------------------------------------------------------------- padding


def pad_core(core: Tensor, r_in: int, r_out: int, generator: torch.Generator) -> Tensor:
    """Widen ``core (a, n, b)`` to ``(r_in, n, r_out)`` so a chain or ring of padded cores is unchanged.

    The new input rows get random entries on the old output columns and everything else
    is zero: any product that passes through a new slot meets a zero on its way in, so
    the tensor is exact, yet the zero entries have non-zero gradients, so fine-tuning
    can use the extra rank (zeros on both sides would be a saddle it never leaves).
    """
    a, n, b = core.shape
    if (a, b) == (r_in, r_out):
        return core
    out = torch.zeros(r_in, n, r_out, dtype=core.dtype, device=core.device)
    out[:a, :, :b] = core
    if r_in > a:
        scale = float(core.square().mean().sqrt()) or 1.0
        out[a:, :, :b] = scale * _randn((r_in - a, n, b), generator, core)
    return out


def _pad_chain(cores: list[Tensor], bonds: Sequence[int], generator: torch.Generator) -> list[Tensor]:
    """Pad ``cores[k]`` to ``(bonds[k], n_k, bonds[k + 1])``; the bonds the sweep delivered are never wider."""
    return [pad_core(core, bonds[k], bonds[k + 1], generator) for k, core in enumerate(cores)]


def tt_svd(tensor: Tensor, ranks: Sequence[int], generator: torch.Generator) -> list[Tensor]:
    """TT-SVD: cores ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1`` and exactly the inner ``ranks`` asked for.

    Where the SVDs deliver less rank than asked (never at :func:`tt_max_ranks`), the
    cores are padded by :func:`pad_core`, so the layer has the size the budget chose.
    """
    return _pad_chain(host_tt_svd(tensor, ranks), [1, *ranks, 1], generator)


def tr_svd(tensor: Tensor, ranks: Sequence[int], generator: torch.Generator) -> list[Tensor]:
    """TR-SVD (Zhao et al., 2016): ring cores ``(r_k, n_k, r_{k+1})``, ``r_d = r_0``, with ``ranks = [r_0..r_{d-1}]``.

    The first unfolding is split at rank ``r_0 r_1``, ``r_0`` is moved to the far end and
    the rest is a TT sweep from ``r_1`` to ``r_0``. With ``r_0 = 1`` this is TT-SVD, exact
    at :func:`tt_max_ranks`. Where the first unfolding has less rank ``k`` than ``r_0 r_1``
    (it has at most ``n_1``), the ring is swept at the ``(ceil(k / r_1'), r_1' = min(k, r_1))``
    its ``k`` columns fill and only then widened by :func:`pad_core`: sweeping the
    ``r_0 r_1 - k`` zero rows as well took 24.5 GB for a 512x512x3x3 kernel at x4.
    """
    d = tensor.ndim
    if d < 2 or len(ranks) != d:
        raise ValueError(f"a {d}-way tensor ring needs d >= 2 and {d} ranks, got {list(ranks)}")
    r0, r1 = int(ranks[0]), int(ranks[1])
    n1 = tensor.shape[0]
    u, s, vh = torch.linalg.svd(tensor.reshape(n1, -1), full_matrices=False)
    k = min(r0 * r1, s.numel())
    # Column j of the split is the pair (j // r1, j % r1); the first k of them fit in (r0_used, r1_used).
    r1_used = min(k, r1)
    r0_used = -(-k // r1_used)
    first = torch.zeros(n1, r0_used * r1_used, dtype=tensor.dtype, device=tensor.device)
    first[:, :k] = u[:, :k]
    rest = torch.zeros(r0_used * r1_used, vh.shape[1], dtype=tensor.dtype, device=tensor.device)
    rest[:k] = s[:k, None] * vh[:k]
    # (r0 r1, n2..nd) -> (r1, n2, ..., nd, r0): r0 travels round the ring to the last core.
    rest = rest.reshape(r0_used, r1_used, *tensor.shape[1:]).movedim(0, -1)
    cores = [first.reshape(n1, r0_used, r1_used).permute(1, 0, 2)]
    cores += tt_sweep(rest, ranks[2:])
    return _pad_chain(cores, [*ranks, r0], generator)
