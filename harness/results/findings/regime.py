"""Whether decomposing trained weights beat training the factorised layers from scratch."""

from __future__ import annotations

import pandas as pd

from harness.results.aggregate import decomposed_ok
from harness.results.findings.common import Finding, _pp, _ratio, at_chance


def regime(cells: pd.DataFrame) -> list[Finding]:
    """Decomposing trained weights vs training the format from scratch, where both ran."""
    key, title = "regime", "Decompose vs scratch"
    ok = decomposed_ok(cells)
    failed = int(at_chance(ok).sum()) if not ok.empty else 0
    ok = ok[~at_chance(ok)] if failed else ok  # a cell that learned nothing is a failure, not a regime
    regimes = sorted(ok["init"].unique()) if not ok.empty else []
    if "decompose" not in regimes or len(regimes) < 2:
        return [Finding(key, title, f"Only the {', '.join(regimes) or 'no'} regime has ok cells; "
                                    "no decompose vs scratch comparison.", {"regimes": regimes})]
    where = ["model", "dataset", "target", "method", "ratio"]
    per = ok.groupby(where + ["init"])["acc_final"].mean().unstack("init")
    several = ok[["model", "dataset"]].drop_duplicates().shape[0] > 1  # else model/dataset need no column
    sentences, numbers, tables = [], {"regimes": regimes}, []
    for other in (r for r in regimes if r != "decompose"):
        both = per[["decompose", other]].dropna()
        if both.empty:
            sentences.append(f"decompose and {other} never ran for the same model, target, method and ratio.")
            continue
        wins = int((both["decompose"] > both[other]).sum())
        diff = float((both["decompose"] - both[other]).mean())
        better = "decompose" if diff > 0 else other
        sentences.append(
            f"Where decompose and {other} both ran ({len(both)} target/method/ratio, mean over backends and "
            f"seeds), {better} did better: decompose beat {other} in {wins} of {len(both)} on final accuracy "
            f"(mean {both['decompose'].mean():.2f} vs {both[other].mean():.2f} %, {diff:+.2f} pp).")
        numbers[other] = {"pairs": len(both), "decompose_wins": wins, "mean_difference": diff, "better": better}
        shown = both.reset_index()
        tables.append(pd.DataFrame({
            **{c: shown[c] for c in where if c != "ratio" and (c not in ("model", "dataset") or several)},
            "ratio": shown["ratio"].map(_ratio),
            "decompose acc %": shown["decompose"].map(_pp), f"{other} acc %": shown[other].map(_pp),
            "difference pp": (shown["decompose"] - shown[other]).map(lambda v: _pp(v, signed=True))}))
    if failed:
        sentences.append(f"{failed} cells at chance accuracy are left out (see 'Measurement problems').")
        numbers["at_chance"] = failed
    table = pd.concat(tables, ignore_index=True) if tables else None
    return [Finding(key, title, " ".join(sentences), numbers, table)]
