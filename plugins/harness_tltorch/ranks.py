"""Rank arithmetic for tltorch's formats: what each rank argument means and what fits a budget.

tltorch takes a rank as an int, a tuple, or a float (the fraction of the dense
tensor's parameters to keep, which tensorly's ``validate_*_rank`` turns into ranks).
Two things it does not do are needed here. First, ranks must be *realisable*: TT-SVD
and HOOI silently deliver fewer components than asked when a rank exceeds what an
unfolding allows, so the layer would shrink after decomposition and its parameter count
would not be the one planned; :func:`tt_rank` and :func:`feasible_tucker_rank` lower
ranks to what the algorithms can deliver. Second, a budget: every search takes a
``count(rank)`` callback that builds the layer (on the meta device) and counts its
parameters, so what is compared with the budget is what tltorch really allocates. TT
ranks fill a budget by the harness's shared rule; Tucker ranks start from tltorch's
fractional rank, then spend what rounding left.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from harness import FULL_RANK, DecomposeRequest, Unsupported, fill_ranks, largest_fitting

# Steps per unit of tltorch's fractional Tucker rank: fine enough that consecutive steps
# rarely skip a rank, so the search loses nothing to the grid.
FRACTION_GRID = 10_000

Count = Callable[[object], int]


def scalar(rank: object) -> int | float | None:
    """``rank`` as a Python int or float when it is one number (NumPy scalars included), else None."""
    if isinstance(rank, bool):
        return None
    if isinstance(rank, numbers.Integral):
        return int(rank)
    if isinstance(rank, numbers.Real):
        return float(rank)
    return None


def budget_of(request: DecomposeRequest) -> int:
    """The replacement's parameter budget; a request with neither rank nor ratio cannot be sized."""
    if request.max_params is None:
        raise ValueError(f"{request.layer_path}: the request gives neither a rank nor a ratio")
    return request.max_params


def cp_rank_arg(rank: object, shape: Sequence[int]) -> int:
    """An explicit CP rank: an int as it is, a float as tltorch's fraction of ``prod(shape)`` parameters."""
    import tensorly as tl

    if rank == FULL_RANK:
        raise Unsupported("CP has no finite full rank")
    value = scalar(rank)
    if value is None:
        raise ValueError(f"a CP rank is one number, got {rank!r}")
    if isinstance(value, float):
        value = tl.cp_tensor.validate_cp_rank(tuple(shape), value)
    return max(1, int(value))


def tt_caps(shape: Sequence[int]) -> list[int]:
    """Largest realisable TT rank at each of the ``len(shape) - 1`` bonds: the smaller side of the split."""
    return [min(math.prod(shape[: k + 1]), math.prod(shape[k + 1 :])) for k in range(len(shape) - 1)]


def tt_rank(internal: Sequence[int], shape: Sequence[int]) -> list[int]:
    """tltorch's TT rank ``[1, r_1, ..., r_{d-1}, 1]`` with each internal rank lowered to what TT-SVD delivers.

    TT-SVD sweeps left to right and keeps at most ``min(r_{k-1} n_k, n_{k+1} ... n_d)``
    components at bond ``k``; the result is monotone in ``internal``.
    """
    if len(internal) != len(shape) - 1:
        raise ValueError(f"a {len(shape)}-core tensor train has {len(shape) - 1} internal ranks, got {list(internal)}")
    ranks = [1]
    for k, wanted in enumerate(internal):
        ranks.append(max(1, min(int(wanted), ranks[-1] * shape[k], math.prod(shape[k + 1 :]))))
    return [*ranks, 1]


def tt_rank_arg(rank: object, shape: Sequence[int]) -> list[int]:
    """An explicit TT rank in any form tltorch or the native backend accepts, made realisable.

    An int is used at every bond, a float is tltorch's parameter fraction, a sequence
    gives either the ``d - 1`` internal ranks or all ``d + 1`` with the boundary 1s.
    """
    import tensorly as tl

    rank = scalar(rank) if scalar(rank) is not None else rank
    if isinstance(rank, float):
        rank = tl.tt_tensor.validate_tt_rank(tuple(shape), rank)
    if isinstance(rank, int):
        return tt_rank([rank] * (len(shape) - 1), shape)
    ranks = [int(r) for r in rank]
    if len(ranks) == len(shape) + 1:
        ranks = ranks[1:-1]
    return tt_rank(ranks, shape)


def largest_tt_rank(shape: Sequence[int], count: Count, budget: int) -> list[int]:
    """The TT rank that fills the budget, by the harness's shared rule (:func:`harness.contract.backend.fill_ranks`).

    The largest uniform rank (capped per bond), then one bond at a time; ranks TT-SVD could
    not deliver are counted as what it would deliver, so they never win budget they do not use.
    """
    internal = fill_ranks(tt_caps(shape), lambda r: count(tt_rank(r, shape)), budget)
    return tt_rank(internal, shape)


def feasible_tucker_rank(rank: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """The largest Tucker rank at or below ``rank`` that HOOI can deliver in full.

    Each rank is at most its mode's size and at most the product of the other ranks (the
    width of the projected unfolding it is taken from). Lowering one rank can only tighten
    the others, so the loop runs to a fixed point; the result is monotone in ``rank``,
    which keeps a budget search over it well-defined.
    """
    ranks = [max(1, min(int(r), int(s))) for r, s in zip(rank, shape)]
    if len(ranks) != len(shape):
        raise ValueError(f"a Tucker rank for a {len(shape)}-way tensor needs {len(shape)} entries, got {list(rank)}")
    changed = True
    while changed:
        changed = False
        for k in range(len(ranks)):
            others = math.prod(ranks[:k] + ranks[k + 1 :])
            if ranks[k] > others:
                ranks[k], changed = others, True
    return tuple(ranks)


def tucker_rank_arg(rank: object, shape: Sequence[int], fixed_modes: Sequence[int] = ()) -> tuple[int, ...]:
    """An explicit Tucker rank made realisable: an int for every free mode, a float fraction, or one per mode.

    Modes in ``fixed_modes`` keep their full size, as ``fixed_rank_modes`` does in tltorch.
    For a conv (fixed spatial modes) a pair ``(R_out, R_in)`` is also accepted, as the
    native backend's Tucker-2 takes it.
    """
    import tensorly as tl

    free = [k for k in range(len(shape)) if k not in fixed_modes]
    rank = scalar(rank) if scalar(rank) is not None else rank
    if isinstance(rank, float):
        rank = tl.tucker_tensor.validate_tucker_rank(tuple(shape), rank, fixed_modes=list(fixed_modes) or None)
    if isinstance(rank, int):
        rank = [rank] * len(free)
    rank = [int(r) for r in rank]
    if len(rank) == len(free) and len(free) != len(shape):
        full = list(shape)
        for k, r in zip(free, rank):
            full[k] = r
        rank = full
    return feasible_tucker_rank(rank, shape)


def tucker_rank_at_fraction(fraction: float, shape: Sequence[int], fixed_modes: Sequence[int]) -> tuple[int, ...]:
    """tltorch's own rank for a parameter fraction (ranks proportional to the mode sizes), made realisable."""
    import tensorly as tl

    rank = tl.tucker_tensor.validate_tucker_rank(tuple(shape), float(fraction), fixed_modes=list(fixed_modes) or None)
    return feasible_tucker_rank(rank, shape)


def top_up(
    rank: Sequence[int],
    free: Sequence[int],
    realisable: Callable[[list[int]], Sequence[int]],
    count: Count,
    budget: int,
    scale: Sequence[int],
) -> tuple[int, ...]:
    """Raise entries ``free`` of ``rank`` one at a time while the layer still fits ``budget``.

    Each round tries every free entry + 1 that stays realisable and fits, and keeps the one
    that leaves the largest ``rank[k] / scale[k]`` smallest, so ranks stay proportional to
    ``scale`` (the mode sizes, as tltorch's fractional ranks are). Stops when no step fits.
    """
    rank = list(rank)
    while True:
        bumps = []
        for k in free:
            bumped = list(rank)
            bumped[k] += 1
            if list(realisable(bumped)) == bumped and count(tuple(bumped)) <= budget:
                bumps.append(bumped)
        if not bumps:
            return tuple(rank)
        rank = min(bumps, key=lambda b: max(b[k] / scale[k] for k in free))


def largest_tucker_rank(
    shape: Sequence[int], fixed_modes: Sequence[int], count: Count, budget: int
) -> tuple[tuple[int, ...], float]:
    """The Tucker rank that fills the budget in tltorch's notion, and the fraction it started from.

    First the largest fraction on a fine grid whose tltorch rank fits (tltorch's own way of
    sizing a Tucker rank: proportional to the mode sizes); rounding each rank leaves some
    budget unused, which :func:`top_up` spends keeping the proportions, as the native
    Tucker-2 does. Ranks far from proportional can fill a budget more closely; they are
    not tried, since they buy a few parameters with a badly shaped core.
    """
    numel = math.prod(shape)
    upper = FRACTION_GRID * max(1, math.ceil(2 * budget / numel))

    def at(step: int) -> tuple[int, ...]:
        return tucker_rank_at_fraction(step / FRACTION_GRID, shape, fixed_modes)

    step = largest_fitting(lambda s: count(at(s)), budget, upper)
    free = [k for k in range(len(shape)) if k not in fixed_modes]
    rank = top_up(at(step), free, lambda r: feasible_tucker_rank(r, shape), count, budget, scale=shape)
    return rank, step / FRACTION_GRID


def full_tucker_rank(shape: Sequence[int]) -> tuple[int, ...]:
    """The largest realisable Tucker rank: every mode at its size (exact)."""
    return feasible_tucker_rank(shape, shape)
