"""Whether decomposing conv layers, linear layers or both paid off, in accuracy and speed."""

from __future__ import annotations

import pandas as pd

from harness.results.aggregate import MIXED, categories, with_delta
from harness.results.findings.common import Finding, _decompose_regime, _pp, _ratio_or_total, _times


def target_payoff(cells: pd.DataFrame) -> list[Finding]:
    """Per target and ratio: mean Δ accuracy vs dense and mean measured speedup; which target paid off.

    Mixed networks (a method per layer) count as their own target, :data:`MIXED`.
    """
    key, title = "target_payoff", "Conv vs linear (vs both) decomposition"
    kept, regime_note = _decompose_regime(cells)
    ok = with_delta(kept)
    if not ok.empty:  # a mixed network is its own category, not one more "all" network
        ok = ok.assign(target=categories(ok))
    targets = sorted(ok["target"].unique()) if not ok.empty else []
    if len(targets) < 2:
        return [Finding(key, title, f"Only target(s) {', '.join(targets) or 'none'} have ok cells; "
                                    "no comparison between targets.")]
    per = ok.groupby(["target", "ratio"]).agg(delta=("delta", "mean"), speedup=("speedup", "mean"),
                                              n=("delta", "size")).reset_index()
    common = sorted(set.intersection(*(set(g["ratio"]) for _, g in per.groupby("target"))))
    pivot = per.pivot(index="ratio", columns="target", values=["delta", "speedup"])
    table = pd.DataFrame({"ratio": [_ratio_or_total(r) for r in pivot.index]})
    for measure, target in pivot.columns:
        values = pivot[(measure, target)].to_numpy()
        if measure == "delta":
            table[f"Δ vs dense {target} pp"] = [_pp(v, signed=True) for v in values]
        else:
            table[f"speedup {target} ×"] = [_times(v) for v in values]
    if not common:
        return [Finding(key, title, "The targets were never run at the same ratio; no comparison.", {}, table)]
    overall = per[per["ratio"].isin(common)].groupby("target")[["delta", "speedup"]].mean()
    # A data-free run has no accuracy to lose, and a run that timed nothing no speed to gain.
    least_loss = overall["delta"].idxmax() if overall["delta"].notna().any() else None
    if not overall["speedup"].notna().any():
        return [Finding(key, title, "No target's speed was measured; no comparison.", {}, table)]
    most_speed = overall["speedup"].idxmax()
    ratios = ", ".join(_ratio_or_total(r) for r in common)
    speeds = ", ".join(f"{t} {v:.2f}×" for t, v in overall["speedup"].items())
    # The words follow the numbers: "gained speed" only above 1x, and a loss is called one.
    if overall["speedup"].max() > 1:
        speed_text = f"{most_speed} gained most speed (mean measured speedup {speeds})"
    else:
        speed_text = (f"no target gained speed: every one ran slower than dense on average (mean measured speedup "
                      f"{speeds}; {most_speed} lost least)")
    accuracy_text = ("" if least_loss is None else f"{least_loss} lost least accuracy (mean Δ vs dense "
                     + ", ".join(f"{t} {v:+.2f}" for t, v in overall["delta"].items()) + " pp) and ")
    text = f"At the ratios every target ran ({ratios}), {accuracy_text}{speed_text}{regime_note}."
    if MIXED in overall.index:
        text += f" {MIXED} = a method chosen per layer (a mix or auto)."
    numbers = {"least_accuracy_loss": least_loss, "most_speedup": most_speed if overall["speedup"].max() > 1 else None,
               "ratios": common,
               "delta": overall["delta"].to_dict(), "speedup": overall["speedup"].to_dict()}
    return [Finding(key, title, text, numbers, table)]
