"""Which backend decomposes fastest."""

from __future__ import annotations

import pandas as pd

from harness.results.aggregate import decomposed_ok
from harness.results.findings.common import Finding, _counts, _seconds


def decomposition_time(cells: pd.DataFrame) -> list[Finding]:
    """Fastest decomposition per method (median seconds per cell, by backend)."""
    key, title = "decomposition_time", "Fastest decomposition per method"
    ok = decomposed_ok(cells)
    ok = ok[ok["init"] != "scratch"] if not ok.empty else ok  # scratch cells decompose nothing
    seconds = pd.to_numeric(ok["decompose_s"], errors="coerce") if not ok.empty else pd.Series(dtype=float)
    ok = ok.assign(decompose_s=seconds).dropna(subset=["decompose_s"]) if not ok.empty else ok
    if ok.empty:
        return [Finding(key, title, "No ok decomposed cell records a decomposition time.")]
    median = ok.groupby(["method", "backend"])["decompose_s"].median().reset_index()
    rows = []
    for method, group in median.groupby("method"):
        ranked = group.sort_values("decompose_s")
        rows.append({"method": method, "fastest": ranked.iloc[0]["backend"], "median s": ranked.iloc[0]["decompose_s"],
                     "slowest": ranked.iloc[-1]["backend"], "slowest median s": ranked.iloc[-1]["decompose_s"],
                     "backends": len(ranked)})
    table = pd.DataFrame(rows)
    contested = table[table["backends"] > 1]
    text = "Median decomposition time per cell, fastest backend per method: " + "; ".join(
        f"{r['method']} {r['fastest']} {r['median s']:.3g} s" + (
            f" (slowest {r['slowest']} {r['slowest median s']:.3g} s)" if r["backends"] > 1 else " (only backend)")
        for _, r in table.iterrows()) + "."
    if not contested.empty:
        text += f" Fastest most often: {_counts(contested['fastest'])} of {len(contested)} contested methods."
    numbers = {"fastest": {r["method"]: {"backend": r["fastest"], "median_s": r["median s"]}
                           for _, r in table.iterrows()}}
    alone = table["backends"] == 1  # no slowest to name
    shown = table.assign(**{"median s": table["median s"].map(_seconds),
                            "slowest": table["slowest"].where(~alone, "–"),
                            "slowest median s": table["slowest median s"].map(_seconds).where(~alone, "–")})
    return [Finding(key, title, text, numbers, shown)]
