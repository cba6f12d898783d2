"""How mixed networks (a method per layer: a mix or ``auto``) compare with single-method ones."""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.config.mixing import AUTO, label_kinds
from harness.results.aggregate import MIXED, categories, decomposed_ok, mean_std, seed_summary
from harness.results.findings.common import Finding, _lead_verdict, _pp, _ratio_or_total, _several


def _mix_parts(method: str) -> tuple[str | None, str | None]:
    """The conv and linear methods of a mixed cell's label (``mix-tucker2+svd``: tucker2, svd); None = left dense.

    ``auto`` picks per layer on either kind, so its conv-only and linear-only counterparts are ``auto`` too.
    """
    return (AUTO, AUTO) if method == AUTO else label_kinds(method)


def mixed_vs_single(cells: pd.DataFrame) -> list[Finding]:
    """Each mixed network against single-method ones of the same backend, ratio and rank selection; none without."""
    key, title = "mixed_vs_single", "Mixed methods vs one method"
    ok = decomposed_ok(cells)
    if ok.empty:
        return []
    ok = ok.assign(category=categories(ok), model_compression=pd.to_numeric(ok["model_params_dense"], errors="coerce")
                   / pd.to_numeric(ok["model_params"], errors="coerce"))
    if not (ok["category"] == MIXED).any():
        return []  # the run has no mixed networks: nothing to say
    where = ["model", "dataset", "backend", "ratio", "rank_selection"]
    config = where + ["method", "target", "category", "init", "tensorize"]
    summary = seed_summary(ok, ["acc_final", "model_compression", "speedup"], config)
    summary = summary.dropna(subset=["acc_final_mean"])
    rows: list[dict[str, Any]] = []
    for _, mix in summary[summary["category"] == MIXED].iterrows():
        same = summary[(summary[where] == mix[where]).all(axis=1) & (summary["category"] != MIXED)
                       # A method the backend does not tensorize keeps the default label whatever the mix has.
                       & summary["tensorize"].isin([mix["tensorize"], ""])]
        singles = same[(same["target"] == mix["target"]) & (same["init"] == mix["init"])]
        row: dict[str, Any] = {"mix": mix}
        if not singles.empty:
            row["single"] = singles.loc[singles["acc_final_mean"].round(2).idxmax()]
        if mix["target"] == "all":  # the mix's own method on one kind of layer only
            for kind, method in zip(("conv", "linear"), _mix_parts(str(mix["method"]))):
                part = summary[(summary[where] == mix[where]).all(axis=1) & (summary["target"] == kind)
                               & (summary["method"] == method) & summary["tensorize"].isin([mix["tensorize"], ""])]
                if not part.empty:  # the mix's own shapes first, else the default ones
                    row[kind] = part.sort_values("tensorize", key=lambda t: t != mix["tensorize"]).iloc[0]
        if len(row) > 1:
            rows.append(row)
    mixes = sorted(summary.loc[summary["category"] == MIXED, "method"].unique())
    if not rows:
        return [Finding(key, title, f"The run has mixed networks ({', '.join(mixes)}) but no single-method network "
                                    "of the same backend, ratio and rank selection to compare them with.",
                        {"comparisons": 0, "mixes": mixes})]
    with_single = [r for r in rows if "single" in r]
    outcome = {"more": 0, "tie": 0, "less": 0, "more_beyond": 0, "less_beyond": 0, "faster": 0}
    for r in with_single:
        mix, single = r["mix"], r["single"]
        lead = round(mix["acc_final_mean"], 2) - round(single["acc_final_mean"], 2)
        beyond = _lead_verdict(lead, mix["acc_final_std"], single["acc_final_std"]) == "beyond one std"
        side = "more" if lead > 0 else "less" if lead < 0 else "tie"
        outcome[side] += 1
        if side != "tie" and beyond:
            outcome[f"{side}_beyond"] += 1
        outcome["faster"] += int(round(mix["speedup_mean"], 2) > round(single["speedup_mean"], 2))
    text = (f"{len(rows)} mixed configuration(s) ({', '.join(mixes)}) compared with single-method networks of the "
            "same backend, ratio and rank selection.")
    if with_single:
        def beyond(side: str) -> str:
            count = outcome[f"{side}_beyond"]
            return f" ({count} by more than the larger seed std)" if outcome[side] else ""

        text += (f" Against the most accurate single method on the same layers, the mix was more accurate in "
                 f"{outcome['more']} of {len(with_single)}{beyond('more')}, tied at the shown precision in "
                 f"{outcome['tie']} and less accurate in {outcome['less']}{beyond('less')}; its measured speedup "
                 f"was higher in {outcome['faster']}.")
    means = {name: float(pd.Series([r[name]["model_compression_mean"] for r in rows if name in r]).mean())
             for name in ("mix", "single", "conv", "linear") if any(name in r for r in rows)}
    labels = {"mix": "mixed", "single": "best single method", "conv": "conv only", "linear": "linear only"}
    text += (" Mean whole-model compression: " + ", ".join(f"{labels[n]} ×{v:.2f}" for n, v in means.items())
             + "; the comparison is at the same ratio, not the same whole-model compression (the target comparison "
               "plot compares at equal compression). Conv only and linear only use the mix's own method for those "
               "layers.")
    numbers = {"comparisons": len(rows), "with_single": len(with_single), **outcome, "model_compression": means,
               "mixes": mixes}
    frame = pd.DataFrame([r["mix"] for r in rows])
    shown = pd.DataFrame({c: frame[c].to_numpy() for c in _several(frame, ("model", "dataset"))})
    shown["backend"] = frame["backend"].to_numpy()
    shown["ratio"] = frame["ratio"].map(_ratio_or_total).to_numpy()
    if frame["rank_selection"].nunique() > 1:
        shown["rank selection"] = frame["rank_selection"].to_numpy()
    shown["mix"] = frame["method"].to_numpy()
    for name, label in labels.items():
        if not any(name in r for r in rows):
            continue
        if name == "single":
            shown["best single method"] = [r["single"]["method"] if "single" in r else "–" for r in rows]
        prefix = {"mix": "mix", "single": "single"}.get(name, label)
        sides = [r.get(name) for r in rows]
        shown[f"{prefix} acc %"] = ["–" if x is None else mean_std(x["acc_final_mean"], x["acc_final_std"], x["n"])
                                    for x in sides]
        shown[f"{prefix} whole-model ×"] = ["–" if x is None else _pp(x["model_compression_mean"]) for x in sides]
        shown[f"{prefix} speedup ×"] = ["–" if x is None else mean_std(x["speedup_mean"], x["speedup_std"], None)
                                        for x in sides]
    return [Finding(key, title, text, numbers, shown)]
