"""Tensorized shapes of feature vectors, shared by every backend that needs them.

A TT-matrix (or block-TT, or tensor-ring) Linear layer views its ``in_features`` and
``out_features`` as tensors of ``d`` modes. Choosing those shapes the same way for every
backend keeps the comparison about the libraries, not about their shape heuristics:
balanced factors by default, or explicit shapes from the request's options. A size that
factors badly (a prime such as 97 gives ``(97, 1, 1)``) can be padded up to a nearby size
that factors evenly (:func:`padded_factors`); the runner then zero-pads the layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def balanced_factors(n: int, d: int) -> tuple[int, ...]:
    """Split ``n`` into ``d`` factors of similar size (1s allowed), largest first.

    Prime factors go, largest first, into whichever bin is currently smallest.
    """
    if n < 1 or d < 1:
        raise ValueError(f"cannot split {n} into {d} factors")
    primes = []
    rest = n
    p = 2
    while p * p <= rest:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    if rest > 1:
        primes.append(rest)
    bins = [1] * d
    for prime in sorted(primes, reverse=True):
        bins[bins.index(min(bins))] *= prime
    return tuple(sorted(bins, reverse=True))


# Largest max/min factor ratio still called balanced: 400 -> (10, 8, 5) is 2, 98 -> (7, 7, 2) is 3.5.
DEFAULT_MAX_SPREAD = 4.0


def spread(factors: tuple[int, ...]) -> float:
    """Largest factor over smallest: 1 for a perfectly even split, ``n`` for ``(n, 1, 1)``."""
    return max(factors) / min(factors)


def padded_factors(n: int, d: int, max_spread: float = DEFAULT_MAX_SPREAD) -> tuple[int, ...]:
    """Balanced ``d`` factors of the smallest ``n' >= n`` whose spread is at most ``max_spread``.

    The search stops at ``n + n // 8`` (padding beyond an eighth would spend more on zeros
    than a lopsided shape costs); when no size there is balanced enough, the one with the
    least spread wins (the smallest on ties). ``n`` itself is returned when it factors well.
    """
    best = balanced_factors(n, d)
    if spread(best) <= max_spread:
        return best
    for candidate in range(n + 1, n + n // 8 + 1):
        factors = balanced_factors(candidate, d)
        if spread(factors) <= max_spread:
            return factors
        if spread(factors) < spread(best):
            best = factors
    return best


def tensorized_shapes(in_features: int, out_features: int, options: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output tensorizations from ``options`` (``in_shape``, ``out_shape``, ``tt_d``), else balanced.

    The default is ``d = 3`` balanced factors for both sides; explicit shapes must
    multiply out to the layer's sizes and have the same number of modes.
    """
    in_shape = options.get("in_shape")
    out_shape = options.get("out_shape")
    d = len(in_shape) if in_shape else len(out_shape) if out_shape else int(options.get("tt_d", 3))
    in_shape = tuple(in_shape) if in_shape else balanced_factors(in_features, d)
    out_shape = tuple(out_shape) if out_shape else balanced_factors(out_features, d)
    if len(in_shape) != len(out_shape):
        raise ValueError(f"in_shape {in_shape} and out_shape {out_shape} have different lengths")
    if math.prod(in_shape) != in_features or math.prod(out_shape) != out_features:
        raise ValueError(
            f"in_shape {in_shape} x out_shape {out_shape} does not tensorize a {in_features} -> {out_features} layer"
        )
    return in_shape, out_shape
