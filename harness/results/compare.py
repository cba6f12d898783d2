"""Cell-by-cell comparison of two run directories: what changed between run A and run B.

Cells are matched by their id (backend/model/dataset/method/target/ratio/seed). A cell
has *changed* when its status differs, when an accuracy moved by more than the
threshold (in accuracy points), or when a ratio-like measurement — speedup,
compression, reconstruction error — moved by more than the relative threshold. Both
runs are read from their stores only, so any two runs, of any age, compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.results.store import RunResults

# Accuracies compare in points, the rest relative to run A's value.
POINT_METRICS = ("acc_decomposed", "acc_final")
RELATIVE_METRICS = ("speedup", "compression", "recon_error")


@dataclass
class Comparison:
    """The matched cells (one row each, A and B side by side) and the cells found in one run only."""

    table: pd.DataFrame
    only_a: list[str]
    only_b: list[str]

    @property
    def changed(self) -> pd.DataFrame:
        return self.table[self.table["changed"]]


def _moved(a: float, b: float, limit: float, relative: bool) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return False
    change = abs(b - a) / abs(a) if relative and a else abs(b - a)
    return change > limit


def compare_runs(a: RunResults, b: RunResults, threshold: float = 0.5, relative_threshold: float = 0.1) -> Comparison:
    """Match the cells of two runs and flag those that changed beyond the thresholds."""
    columns = ["cell_id", "status", *POINT_METRICS, *RELATIVE_METRICS]
    left = a.cells.reindex(columns=columns).set_index("cell_id")
    right = b.cells.reindex(columns=columns).set_index("cell_id")
    common = [cell_id for cell_id in left.index if cell_id in right.index]
    rows = []
    for cell_id in common:
        x, y = left.loc[cell_id], right.loc[cell_id]
        reasons = []
        if x["status"] != y["status"]:
            reasons.append(f"status {x['status']} → {y['status']}")
        for metric in POINT_METRICS:
            if _moved(x[metric], y[metric], threshold, relative=False):
                reasons.append(f"{metric} {y[metric] - x[metric]:+.2f} pts")
        for metric in RELATIVE_METRICS:
            if _moved(x[metric], y[metric], relative_threshold, relative=True):
                reasons.append(f"{metric} {100 * (y[metric] - x[metric]) / abs(x[metric]):+.0f}%")
        row = {"cell_id": cell_id, "status_a": x["status"], "status_b": y["status"]}
        for metric in (*POINT_METRICS, *RELATIVE_METRICS):
            row[f"{metric}_a"], row[f"{metric}_b"] = x[metric], y[metric]
        row["changed"] = bool(reasons)
        row["why"] = "; ".join(reasons)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["cell_id", "status_a", "status_b",
                                        *[f"{m}_{s}" for m in (*POINT_METRICS, *RELATIVE_METRICS) for s in "ab"],
                                        "changed", "why"])
    only_a = sorted(set(left.index) - set(right.index))
    only_b = sorted(set(right.index) - set(left.index))
    return Comparison(table=table, only_a=only_a, only_b=only_b)
