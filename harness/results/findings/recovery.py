"""Which backend's networks recover their accuracy in fine-tuning, and how often."""

from __future__ import annotations

import math

import pandas as pd

from harness.measure.stability import RECOVERY_TOLERANCE
from harness.results.findings.common import Finding, _decompose_regime, _missing, _share


def recovery(cells: pd.DataFrame) -> list[Finding]:
    """Share of decomposed cells that got back to the dense accuracy, and how soon."""
    key, title = "recovery", "Recovery of the dense accuracy"
    ok, regime_note = _decompose_regime(cells)
    if ok.empty or "recovery_epoch" not in ok.columns:
        return [Finding(key, title, "No ok decomposed cells, so no recovery to report.")]
    ok = ok.assign(recovery_epoch=pd.to_numeric(ok["recovery_epoch"], errors="coerce"))
    ok = ok.assign(recovered=ok["recovery_epoch"].notna())
    table = ok.groupby("backend").agg(cells=("recovered", "size"), recovered=("recovered", "sum"),
                                      median_epoch=("recovery_epoch", "median")).reset_index()
    table["share"] = (table["recovered"] / table["cells"]).round(3)
    recovered, n = int(ok["recovered"].sum()), len(ok)
    median = ok["recovery_epoch"].median()
    text = (f"{recovered} of {n} ok decomposed cells ({recovered / n:.0%}) came back within "
            f"{RECOVERY_TOLERANCE} pp of the dense baseline accuracy{regime_note}")
    text += (f"; median recovery epoch {median:g} (0 = right after decomposition)." if recovered
             else "; none did.")
    best = table.sort_values(["share", "median_epoch"], ascending=[False, True]).iloc[0]
    if len(table) > 1:
        text += f" Most often: {best['backend']} ({best['share']:.0%})."
    numbers = {"recovered": recovered, "cells": n, "median_epoch": None if math.isnan(median) else float(median),
               "share_by_backend": dict(zip(table["backend"], table["share"]))}
    shown = pd.DataFrame({"backend": table["backend"], "cells": table["cells"],
                          "recovered": table["recovered"].astype(int), "share recovered": table["share"].map(_share),
                          "median recovery epoch": table["median_epoch"].map(
                              lambda v: "–" if _missing(v) else f"{v:g}")})
    return [Finding(key, title, text, numbers, shown)]


# How close to the dense accuracy a network must stay to count as "as accurate as dense" when picking the fastest.
