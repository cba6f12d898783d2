"""Whether decomposed networks train more or less steadily than the dense control over the epochs."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.measure.stability import LAST_K
from harness.results.aggregate import STABILITY_DIGITS, control_ok
from harness.results.findings.common import Finding, _decompose_regime, _pp
from harness.results.store import KEY_COLUMNS


def _seed_spread(cells: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (all keys but seed): mean over epochs of the std of test accuracy across seeds."""
    keys = [k for k in KEY_COLUMNS if k != "seed"]
    rows = epochs[epochs["cell_id"].isin(cells["cell_id"])]
    if rows.empty:
        return pd.DataFrame(columns=keys + ["spread"])
    per_epoch = rows.groupby(keys + ["epoch"])["test_acc"].std().rename("spread").reset_index()
    return per_epoch.groupby(keys)["spread"].mean().reset_index()


def control_stability(cells: pd.DataFrame, epochs: pd.DataFrame) -> list[Finding]:
    """Are the decomposed networks steadier under fine-tuning than the dense control of the same model/data?"""
    key, title = "control_stability", "Decomposed vs dense control stability"
    control = control_ok(cells)
    if control.empty:
        return [Finding(key, title, "The run has no ok dense control rows, so the stability of the decomposed "
                                    "networks has no dense reference (run without --no-dense-control).")]
    pairs = control[["model", "dataset"]].drop_duplicates()
    kept, regime_note = _decompose_regime(cells)
    decomposed = kept.merge(pairs, on=["model", "dataset"])
    if decomposed.empty:
        return [Finding(key, title, "No ok decomposed cell shares a model and dataset with the dense control.")]
    measures = {"last_k_std": f"last-{LAST_K}-epoch std", "overfit_drop": "best−last drop",
                "spread": "across-seed std per epoch"}

    def side(frame: pd.DataFrame, name: str) -> dict[str, Any]:
        spread = _seed_spread(frame, epochs)["spread"]
        return {"networks": name, "cells": len(frame),
                "last_k_std": pd.to_numeric(frame["last_k_std"], errors="coerce").mean(),
                "overfit_drop": pd.to_numeric(frame["overfit_drop"], errors="coerce").mean(),
                "spread": spread.mean() if spread.notna().any() else math.nan}

    dec, ctl = side(decomposed, "decomposed (all backends)"), side(control, "dense control")
    by_backend = [side(g, f"decomposed: {b}") for b, g in decomposed.groupby("backend")]
    table = pd.DataFrame([dec, *by_backend, ctl])
    for measure, label in measures.items():
        table[f"{label} pp"] = table.pop(measure).map(lambda v: _pp(v, STABILITY_DIGITS))
    compared = [m for m in measures if math.isfinite(dec[m]) and math.isfinite(ctl[m])]
    # Compared at the shown precision: a difference below it is a tie, not a steadier network.
    shown = {m: (round(dec[m], STABILITY_DIGITS), round(ctl[m], STABILITY_DIGITS)) for m in compared}
    steadier = [m for m in compared if shown[m][0] < shown[m][1]]
    tied = [m for m in compared if shown[m][0] == shown[m][1]]

    def values(s: dict) -> str:
        return ", ".join(f"{measures[m]} {_pp(s[m], STABILITY_DIGITS)}" for m in measures if math.isfinite(s[m]))

    text = (f"Decomposed networks (n={dec['cells']} cells{regime_note}): {values(dec)} pp; dense control of the same "
            f"model/data (n={ctl['cells']}): {values(ctl)} pp. ")
    if compared and len(tied) == len(compared):
        text += (f"A tie: the decomposed nets are as stable as the dense one at the shown precision "
                 f"({STABILITY_DIGITS} decimals) on all {len(compared)} measures.")
    elif compared:
        verdict = "more" if 2 * len(steadier) > len(compared) - len(tied) else "not more"
        text += (f"The decomposed nets are {verdict} stable than the dense one (steadier on {len(steadier)} of "
                 f"{len(compared)} measures" + (f", {len(tied)} tied at the shown precision" if tied else "") + ").")
    else:
        text += "No measure is available for both sides."
    if not math.isfinite(dec["spread"]) or not math.isfinite(ctl["spread"]):
        text += " The across-seed spread needs at least two seeds per configuration."
    numbers = {"decomposed": dec, "control": ctl, "steadier_measures": steadier, "tied_measures": tied,
               "compared_measures": compared}
    return [Finding(key, title, text, numbers, table)]
