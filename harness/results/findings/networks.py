"""The best compressed networks: the answer table's rows."""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.plan.cells import NO_RATIO
from harness.results.aggregate import decomposed_ok, mean_std, seed_summary, with_delta
from harness.results.findings.common import COMPARE, _pp, _ratio_or_total, _times, trusted_speedups

WITHIN_DENSE_PP = 1.0


def best_networks(cells: pd.DataFrame) -> pd.DataFrame:
    """The answer a user came for, one row per constraint: the most accurate configuration at or above each
    compression the run aimed at, and the fastest one within :data:`WITHIN_DENSE_PP` points of dense (the
    fastest at all, for a data-free run). Means over seeds of comparable decomposed cells; speedups above their
    FLOP bound are not trusted (see :func:`measurement_problems`). With the ONNX Runtime speedup when the run
    measured it, and ``cell_id`` (the configuration's best seed by the row's criterion) with ``kept`` (whether
    the run kept its network for ``harness export``) for the command that takes it home."""
    ok = decomposed_ok(cells)
    if ok.empty:
        return pd.DataFrame()
    group = COMPARE + ["backend"]
    has_ort = "ort_speedup" in ok.columns and pd.to_numeric(ok["ort_speedup"], errors="coerce").notna().any()
    metrics = ["acc_final", "delta", "compression", "speedup"] + (["ort_speedup"] if has_ort else [])
    summary = seed_summary(with_delta(ok), metrics, group)
    trusted = seed_summary(trusted_speedups(ok), ["speedup"], group)[group + ["speedup_mean"]]
    summary = summary.drop(columns=["speedup_mean", "speedup_std"]).merge(trusted, on=group, how="left")
    rows = []

    def row(constraint: str, pick: pd.Series, by: str) -> dict[str, Any]:
        seeds = ok[(ok[group].astype(str) == pick[group].astype(str).values).all(axis=1)]
        seeds = seeds[pd.to_numeric(seeds[by], errors="coerce").notna()] if by in seeds.columns else seeds
        chosen = seeds.loc[pd.to_numeric(seeds[by], errors="coerce").idxmax()] if not seeds.empty else None
        out = {"constraint": constraint, "backend": pick["backend"], "method": pick["method"],
               "target": pick["target"], "ratio": _ratio_or_total(pick["ratio"]), "init": pick["init"],
               "compression ×": _times(pick["compression_mean"]),
               "final accuracy %": mean_std(pick["acc_final_mean"], pick["acc_final_std"], pick["n"]),
               "Δ vs dense pp": _pp(pick["delta_mean"], signed=True), "speedup ×": _times(pick["speedup_mean"])}
        if has_ort:
            out["ORT speedup ×"] = _times(pick["ort_speedup_mean"])
        out["cell_id"] = chosen["cell_id"] if chosen is not None else None
        out["kept"] = bool(chosen is not None and isinstance(chosen.get("model_file"), str))
        return out

    has_accuracy = summary["acc_final_mean"].notna().any()
    for ratio in sorted(r for r in summary["ratio"].unique() if float(r) != NO_RATIO):
        reach = summary[summary["compression_mean"] >= float(ratio) * 0.98]  # a budget filled to 98 % counts
        if has_accuracy and reach["acc_final_mean"].notna().any():
            # Equal accuracy: the smaller network is the better answer.
            best = reach.sort_values(["acc_final_mean", "compression_mean"], ascending=False).iloc[0]
            rows.append(row(f"most accurate at ≥ ×{float(ratio):g} compression", best, "acc_final"))
    fast = summary[summary["delta_mean"] >= -WITHIN_DENSE_PP] if has_accuracy else summary
    if fast["speedup_mean"].notna().any():
        label = (f"fastest within {WITHIN_DENSE_PP:g} point of dense accuracy" if has_accuracy
                 else "fastest (no accuracy in a data-free run)")
        rows.append(row(label, fast.loc[fast["speedup_mean"].idxmax()], "speedup"))
    return pd.DataFrame(rows)
