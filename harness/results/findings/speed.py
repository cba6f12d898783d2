"""How close measured speedups come to the FLOP bound."""

from __future__ import annotations

import pandas as pd

from harness.results.aggregate import decomposed_ok
from harness.results.findings.common import Finding, _missing, _share, _times, above_bound


def speedup_vs_flops(cells: pd.DataFrame) -> list[Finding]:
    """Measured speedup against the FLOP bound, and how many decomposed networks are actually faster.

    Shares of the bound are given only where the bound exceeds 1 (below it, a share over 100 % would only mean
    "slower than dense, but less slow than the FLOPs say"), and cells measured above their bound are left out
    (:func:`measurement_problems` lists them).
    """
    key, title = "speedup_vs_flops", "Measured speedup vs FLOP bound"
    ok = decomposed_ok(cells)
    if not ok.empty:
        ok = ok.assign(speedup=pd.to_numeric(ok["speedup"], errors="coerce"),
                       flop_speedup=pd.to_numeric(ok["flop_speedup"], errors="coerce"))
        ok = ok[(ok["speedup"] > 0) & (ok["flop_speedup"] > 0)]
    suspect_mask = above_bound(ok)
    suspect = int(suspect_mask.sum())
    ok = ok[~suspect_mask]
    if ok.empty:
        return [Finding(key, title, "No ok decomposed cell has both a measured and a FLOP speedup"
                                    + (f" within its bound ({suspect} measured above it)." if suspect else "."))]
    ok = ok.assign(efficiency=(ok["speedup"] / ok["flop_speedup"]).where(ok["flop_speedup"] > 1),
                   faster=ok["speedup"] > 1)
    table = ok.groupby("backend").agg(cells=("speedup", "size"), faster=("faster", "sum"),
                                      median_speedup=("speedup", "median"),
                                      median_flop_speedup=("flop_speedup", "median"),
                                      median_share_of_bound=("efficiency", "median")).reset_index()
    table = table.sort_values(["median_share_of_bound", "median_speedup"], ascending=False,
                              na_position="last").reset_index(drop=True)
    faster, fewer_flops, n = int(ok["faster"].sum()), int((ok["flop_speedup"] > 1).sum()), len(ok)
    text = (f"{faster} of {n} ok decomposed cells ({faster / n:.0%}) ran faster than dense (median measured "
            f"speedup {ok['speedup'].median():.2f}×), while {fewer_flops} of {n} need fewer FLOPs.")
    shares = table.dropna(subset=["median_share_of_bound"])
    if not shares.empty:
        best, worst = shares.iloc[0], shares.iloc[-1]
        text += (f" Where the FLOP bound is above 1×, measured speedup reaches a median "
                 f"{ok['efficiency'].median():.0%} of it; best {best['backend']} ({best['median_share_of_bound']:.0%}), "
                 f"worst {worst['backend']} ({worst['median_share_of_bound']:.0%}).")
    never = table[table["median_share_of_bound"].isna()]["backend"].tolist()
    if never:
        text += f" {', '.join(never)}: no cell with fewer FLOPs than dense, so no share of a bound."
    if suspect:
        text += f" {suspect} cells measured above their FLOP bound are left out (see 'Measurement problems')."
    numbers = {"faster": faster, "cells": n, "fewer_flops": fewer_flops, "above_bound": suspect,
               "median_share_of_bound": None if shares.empty else float(ok["efficiency"].median()),
               "share_by_backend": {b: (None if _missing(v) else v)
                                    for b, v in zip(table["backend"], table["median_share_of_bound"])}}
    shown = pd.DataFrame({"backend": table["backend"], "cells": table["cells"],
                          "faster than dense": table["faster"].astype(int),
                          "median speedup ×": table["median_speedup"].map(_times),
                          "median FLOP speedup ×": table["median_flop_speedup"].map(_times),
                          "median share of FLOP bound (bound > 1×)": table["median_share_of_bound"].map(
                              lambda v: "–" if _missing(v) else _share(v))})
    return [Finding(key, title, text, numbers, shown)]
