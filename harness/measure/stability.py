"""Stability of a fine-tuning run, computed from its per-epoch test-accuracy curve.

These numbers answer "how much was lost, how fast was it regained, and how steady is
training afterwards": the drop right after decomposition, the first epoch whose test
accuracy is back within a tolerance of the dense baseline (None when it never is), the
fall from the best epoch to the last (overfitting or instability), and the spread of
the last few epochs. They are pure functions of plain numbers, so any report can
recompute them from the store.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

RECOVERY_TOLERANCE = 0.5  # accuracy points below the baseline that still count as recovered
LAST_K = 3


def recovery_epoch(baseline: float, start: float, curve: Sequence[float],
                   tolerance: float = RECOVERY_TOLERANCE) -> int | None:
    """First epoch (1-based; 0 = right after decomposition) within ``tolerance`` of ``baseline``, else None."""
    if start >= baseline - tolerance:
        return 0
    for epoch, accuracy in enumerate(curve, start=1):
        if accuracy >= baseline - tolerance:
            return epoch
    return None


def stability_metrics(baseline: float, start: float, curve: Sequence[float], last_k: int = LAST_K) -> dict:
    """Drop, recovery epoch, best-minus-last and the std of the last ``last_k`` epochs of ``curve``."""
    finite = [a for a in curve if a is not None and math.isfinite(a)]
    tail = finite[-last_k:]
    return {
        "acc_drop": baseline - start,
        "recovery_epoch": recovery_epoch(baseline, start, finite),
        "overfit_drop": (max(finite) - finite[-1]) if finite else None,
        "last_k_std": statistics.pstdev(tail) if len(tail) >= 2 else None,
    }
