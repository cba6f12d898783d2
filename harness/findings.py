"""Findings: the run's answers, computed from its tables, each one or two sentences with numbers.

Every finding is a pure function of the cells and epochs frames of a run: which backend
won where (accuracy, measured speed, stability), whether decomposing conv or linear
layers paid off, whether decomposing trained weights beat training the format from
scratch, whether the decomposed networks train more or less steadily than the dense
control, how close measured speedups come to the FLOP bound, and which backend
decomposes fastest and recovers most often. Numbers are means over seeds of ok cells,
stated with their spread and count; a finding whose data the run lacks says what is
missing instead of guessing. Nothing here is written by hand.

Numbers are compared at the precision they are shown with (accuracies 2 decimals,
stability metrics 3, see :data:`harness.aggregate.STABILITY_DIGITS`): when every backend
of a comparison shows the same value, the comparison is called a tie and nobody wins it.
Each finding's table is for reading, so its cells are text with one format per kind of
number (accuracies and pp 2 decimals, speedups 2 decimals with ×, seconds 3 significant
digits, shares as %) and the unit in the header; the raw values are in ``numbers``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.aggregate import (
    SECONDS_FORMAT,
    STABILITY_DIGITS,
    control_ok,
    decomposed_ok,
    mean_std,
    seed_summary,
    with_delta,
)
from harness.stability import LAST_K, RECOVERY_TOLERANCE
from harness.store import KEY_COLUMNS, RunResults

# A comparison is fair only between cells that differ in backend alone.
COMPARE = ["model", "dataset", "target", "init", "method", "ratio", "rank_selection", "tensorize"]
TIE = "tie"  # the winner of a comparison in which every backend shows the same value


@dataclass
class Finding:
    """One answer: a title, a sentence or two with the numbers, the numbers, and an optional small table."""

    key: str
    title: str
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)
    table: pd.DataFrame | None = None


def _label(row: pd.Series | dict) -> str:
    selection, shape = row.get("rank_selection", "ratio"), row.get("tensorize", "")
    suffix = ("" if selection in (None, "ratio") else f"/{selection}") + (f"/{shape}" if shape else "")
    return f"{row['model']}/{row['dataset']}/{row['target']}/{row['init']}/{row['method']}/x{row['ratio']:g}{suffix}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value)


def _pp(value: Any, digits: int = 2, signed: bool = False) -> str:
    """Accuracy or percentage points with fixed decimals ("96.20", "+0.10"); "–" when missing."""
    return "–" if _missing(value) else f"{float(value):{'+' if signed else ''}.{digits}f}"


def _times(value: Any) -> str:
    """A speedup: "0.88×"."""
    return "–" if _missing(value) else f"{float(value):.2f}×"


def _seconds(value: Any) -> str:
    """Seconds with 3 significant digits: "0.0131", "8.31"."""
    return "–" if _missing(value) else format(float(value), SECONDS_FORMAT)


def _share(value: Any) -> str:
    """A fraction as a percentage: "51%"."""
    return "–" if _missing(value) else f"{float(value):.0%}"


def _ratio(value: Any) -> str:
    return "–" if _missing(value) else f"×{float(value):g}"


def _decompose_regime(cells: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Ok decomposed cells of the decompose regime only, and a clause naming what was left out.

    The two regimes are kept apart: a format trained from scratch (or a mix of regimes)
    says nothing about how well a decomposition of trained weights does, and its far lower
    accuracy would swamp any mean it joined.
    """
    ok = decomposed_ok(cells)
    if ok.empty:
        return ok, ""
    kept = ok[ok["init"] == "decompose"]
    left_out = len(ok) - len(kept)
    return kept, (f" (decompose regime only; {left_out} scratch or mixed cells are compared under "
                  "'Decompose vs scratch')" if left_out else "")


def _counts(names: pd.Series) -> str:
    counts = names.value_counts()
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _winners(cells: pd.DataFrame, metric: str, higher: bool, tiebreak: str | None = None,
             digits: int = 2) -> pd.DataFrame:
    """Per comparison with ≥ 2 backends: the best backend(s), its mean/std/n and the runner-up.

    Means are compared rounded to ``digits`` decimals, the precision they are shown with:
    backends that show the same value share the win, and when all of them do the winner
    is :data:`TIE` (``tied`` lists them) and there is no runner-up.
    """
    metrics = [metric] + ([tiebreak] if tiebreak else [])
    summary = seed_summary(with_delta(decomposed_ok(cells)), metrics, COMPARE + ["backend"])
    summary = summary.dropna(subset=[f"{metric}_mean"])
    rows = []
    for _, group in summary.groupby(COMPARE, sort=True):
        if len(group) < 2:
            continue
        sign = -1 if higher else 1
        # Differences below the shown precision are noise: such backends tie.
        order = [(sign * group[f"{metric}_mean"]).round(digits)] + (
            [group[f"{tiebreak}_mean"].fillna(math.inf).round(digits)] if tiebreak else [])
        keys = pd.concat(order, axis=1).apply(tuple, axis=1)
        best_key = keys.min()
        best = group[keys == best_key]
        rest = group[keys != best_key]
        top = best.iloc[0]
        row = {c: top[c] for c in COMPARE}
        row.update(winner=", ".join(best["backend"]) if not rest.empty else TIE, tied=", ".join(best["backend"]),
                   mean=top[f"{metric}_mean"], std=top[f"{metric}_std"], n=int(top["n"]))
        if tiebreak:
            row.update(tiebreak_mean=top[f"{tiebreak}_mean"], tiebreak_std=top[f"{tiebreak}_std"])
        if not rest.empty:
            second = rest.loc[min(keys[keys != best_key].items(), key=lambda item: item[1])[0]]
            row.update(runner_up=second["backend"], runner_up_mean=second[f"{metric}_mean"],
                       runner_up_std=second[f"{metric}_std"], runner_up_n=int(second["n"]))
            if tiebreak:
                row.update(runner_up_tiebreak_mean=second[f"{tiebreak}_mean"],
                           runner_up_tiebreak_std=second[f"{tiebreak}_std"])
        rows.append(row)
    return pd.DataFrame(rows)


def _best_finding(cells: pd.DataFrame, key: str, title: str, what: str, metric: str, higher: bool,
                  unit: str, column: str, tiebreak: tuple[str, str] | None = None, digits: int = 2) -> Finding:
    """``tiebreak`` = (metric, column label) deciding between backends that show the same ``metric``."""
    tiebreak, tiebreak_column = tiebreak or (None, None)
    table = _winners(cells, metric, higher, tiebreak, digits)
    if table.empty:
        return Finding(key, title, f"No (target, method, ratio) has ok cells of two or more backends with {what}; "
                                   "there is no winner to name.")
    tie = table["winner"] == TIE
    decided = table[~tie]
    wins = decided["winner"].str.split(", ").explode()
    text = f"{what.capitalize()}, best backend per (target, method, ratio), {len(table)} comparisons of ≥ 2 backends: "
    text += f"{_counts(wins)} wins." if not decided.empty else "no winner."
    if tie.any():
        text += (f" {int(tie.sum())} of {len(table)} comparisons are a tie: every backend shows the same value at the "
                 f"shown precision ({digits} decimals), so no backend is named there.")
    if not decided.empty and "runner_up_mean" in decided:
        lead = (decided["mean"] - decided["runner_up_mean"]).abs()
        widest = decided.loc[lead.fillna(-1).idxmax()]
        if math.isfinite(lead.max()):
            first = mean_std(widest["mean"], widest["std"], widest["n"], digits, unit)
            second = mean_std(widest["runner_up_mean"], widest["runner_up_std"], widest["runner_up_n"], digits, unit)
            text += (f" Widest lead: {widest['winner']} on {widest['target']} {widest['method']} "
                     f"×{widest['ratio']:g}, {first} vs {widest['runner_up']} {second}.")
    numbers = {"comparisons": len(table), "wins": wins.value_counts().to_dict(), "ties": int(tie.sum()),
               "winners": {_label(r): {"backend": r["winner"], "mean": r["mean"], "std": r["std"], "n": r["n"],
                                       "tied": r["tied"].split(", ") if r["winner"] == TIE else []}
                           for _, r in table.iterrows()}}
    shown = table[["target", "method"]].copy()
    shown["ratio"] = table["ratio"].map(_ratio)
    shown["winner"] = [f"tie: {t}" if w == TIE else w for w, t in zip(table["winner"], table["tied"])]
    shown[column] = [mean_std(m, s, n, digits) for m, s, n in zip(table["mean"], table["std"], table["n"])]
    if tiebreak:
        shown[tiebreak_column] = [mean_std(m, s, None, digits) for m, s in
                                  zip(table["tiebreak_mean"], table["tiebreak_std"])]
    if "runner_up" in table:
        shown["runner-up"] = table["runner_up"].fillna("–")
        shown[f"runner-up {column}"] = [mean_std(m, s, n, digits) for m, s, n in
                                        zip(table["runner_up_mean"], table["runner_up_std"], table["runner_up_n"])]
        if tiebreak:
            shown[f"runner-up {tiebreak_column}"] = [
                mean_std(m, s, None, digits)
                for m, s in zip(table["runner_up_tiebreak_mean"], table["runner_up_tiebreak_std"])]
    for name in ("model", "dataset", "init"):
        if table[name].nunique() > 1:
            shown.insert(0, name, table[name])
    return Finding(key, title, text, numbers, shown)


def best_backends(cells: pd.DataFrame) -> list[Finding]:
    """Best backend per comparison for final accuracy, measured speedup and stability, and a win tally."""
    found = [
        _best_finding(cells, "best_accuracy", "Most accurate backend", "highest mean final accuracy",
                      "acc_final", True, " %", "final accuracy %"),
        _best_finding(cells, "best_speedup", "Fastest backend (measured)", "largest measured latency speedup",
                      "speedup", True, "×", "speedup ×"),
        _best_finding(cells, "best_stability", "Steadiest backend",
                      f"lowest std of the last {LAST_K} epochs' accuracy (ties: smallest best−last drop)",
                      "last_k_std", False, " pp", f"last-{LAST_K} std pp",
                      tiebreak=("overfit_drop", "best−last drop pp"), digits=STABILITY_DIGITS),
    ]
    tally = {f.key.removeprefix("best_"): f.numbers["wins"] for f in found if f.numbers}
    if tally:
        table = pd.DataFrame(tally).fillna(0).astype(int)
        table["total"] = table.sum(axis=1)
        table = table.sort_values("total", ascending=False).rename_axis("backend").reset_index()
        comparisons = sum(f.numbers["comparisons"] for f in found if f.numbers)
        text = (f"Over {comparisons} comparisons (accuracy, speed, stability): "
                + ", ".join(f"{b} won {t}" for b, t in zip(table["backend"], table["total"])) + ".")
        found.append(Finding("backend_wins", "How often each backend wins", text,
                             {"comparisons": comparisons, "wins": dict(zip(table["backend"], table["total"]))}, table))
    return found


def target_payoff(cells: pd.DataFrame) -> list[Finding]:
    """Per target and ratio: mean Δ accuracy vs dense and mean measured speedup; which target paid off."""
    key, title = "target_payoff", "Conv vs linear (vs both) decomposition"
    kept, regime_note = _decompose_regime(cells)
    ok = with_delta(kept)
    targets = sorted(ok["target"].unique()) if not ok.empty else []
    if len(targets) < 2:
        return [Finding(key, title, f"Only target(s) {', '.join(targets) or 'none'} have ok cells; "
                                    "no comparison between targets.")]
    per = ok.groupby(["target", "ratio"]).agg(delta=("delta", "mean"), speedup=("speedup", "mean"),
                                              n=("delta", "size")).reset_index()
    common = sorted(set.intersection(*(set(g["ratio"]) for _, g in per.groupby("target"))))
    pivot = per.pivot(index="ratio", columns="target", values=["delta", "speedup"])
    table = pd.DataFrame({"ratio": [_ratio(r) for r in pivot.index]})
    for measure, target in pivot.columns:
        values = pivot[(measure, target)].to_numpy()
        if measure == "delta":
            table[f"Δ vs dense {target} pp"] = [_pp(v, signed=True) for v in values]
        else:
            table[f"speedup {target} ×"] = [_times(v) for v in values]
    if not common:
        return [Finding(key, title, "The targets were never run at the same ratio; no comparison.", {}, table)]
    overall = per[per["ratio"].isin(common)].groupby("target")[["delta", "speedup"]].mean()
    least_loss, most_speed = overall["delta"].idxmax(), overall["speedup"].idxmax()
    ratios = ", ".join(f"×{r:g}" for r in common)
    text = (f"At the ratios every target ran ({ratios}), {least_loss} lost least accuracy (mean Δ vs dense "
            + ", ".join(f"{t} {v:+.2f}" for t, v in overall["delta"].items()) + " pp) and "
            f"{most_speed} gained most speed (mean measured speedup "
            + ", ".join(f"{t} {v:.2f}×" for t, v in overall["speedup"].items()) + f"){regime_note}.")
    numbers = {"least_accuracy_loss": least_loss, "most_speedup": most_speed, "ratios": common,
               "delta": overall["delta"].to_dict(), "speedup": overall["speedup"].to_dict()}
    return [Finding(key, title, text, numbers, table)]


def regime(cells: pd.DataFrame) -> list[Finding]:
    """Decomposing trained weights vs training the format from scratch, where both ran."""
    key, title = "regime", "Decompose vs scratch"
    ok = decomposed_ok(cells)
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
    table = pd.concat(tables, ignore_index=True) if tables else None
    return [Finding(key, title, " ".join(sentences), numbers, table)]


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


def speedup_vs_flops(cells: pd.DataFrame) -> list[Finding]:
    """Measured speedup against the FLOP bound, and how many decomposed networks are actually faster."""
    key, title = "speedup_vs_flops", "Measured speedup vs FLOP bound"
    ok = decomposed_ok(cells)
    if not ok.empty:
        ok = ok.assign(speedup=pd.to_numeric(ok["speedup"], errors="coerce"),
                       flop_speedup=pd.to_numeric(ok["flop_speedup"], errors="coerce"))
        ok = ok[(ok["speedup"] > 0) & (ok["flop_speedup"] > 0)]
    if ok.empty:
        return [Finding(key, title, "No ok decomposed cell has both a measured and a FLOP speedup.")]
    ok = ok.assign(efficiency=ok["speedup"] / ok["flop_speedup"], faster=ok["speedup"] > 1)
    table = ok.groupby("backend").agg(cells=("speedup", "size"), faster=("faster", "sum"),
                                      median_speedup=("speedup", "median"),
                                      median_flop_speedup=("flop_speedup", "median"),
                                      median_share_of_bound=("efficiency", "median")).reset_index()
    table = table.sort_values("median_share_of_bound", ascending=False).reset_index(drop=True)
    faster, fewer_flops, n = int(ok["faster"].sum()), int((ok["flop_speedup"] > 1).sum()), len(ok)
    best, worst = table.iloc[0], table.iloc[-1]
    text = (f"{faster} of {n} ok decomposed cells ({faster / n:.0%}) ran faster than dense (median measured "
            f"speedup {ok['speedup'].median():.2f}×), while {fewer_flops} of {n} need fewer FLOPs. Measured "
            f"speedup reaches a median {ok['efficiency'].median():.0%} of the FLOP bound; "
            f"best {best['backend']} ({best['median_share_of_bound']:.0%}), "
            f"worst {worst['backend']} ({worst['median_share_of_bound']:.0%}).")
    numbers = {"faster": faster, "cells": n, "fewer_flops": fewer_flops,
               "median_share_of_bound": float(ok["efficiency"].median()),
               "share_by_backend": dict(zip(table["backend"], table["median_share_of_bound"]))}
    shown = pd.DataFrame({"backend": table["backend"], "cells": table["cells"],
                          "faster than dense": table["faster"].astype(int),
                          "median speedup ×": table["median_speedup"].map(_times),
                          "median FLOP speedup ×": table["median_flop_speedup"].map(_times),
                          "median share of FLOP bound": table["median_share_of_bound"].map(_share)})
    return [Finding(key, title, text, numbers, shown)]


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


FINDERS: list[Callable[[pd.DataFrame, pd.DataFrame], list[Finding]]] = [
    lambda cells, epochs: best_backends(cells),
    lambda cells, epochs: target_payoff(cells),
    lambda cells, epochs: regime(cells),
    control_stability,
    lambda cells, epochs: speedup_vs_flops(cells),
    lambda cells, epochs: decomposition_time(cells),
    lambda cells, epochs: recovery(cells),
]


def all_findings(results: RunResults) -> list[Finding]:
    """Every finding of a run; one that fails to compute says so instead of taking the others down."""
    found: list[Finding] = []
    for index, finder in enumerate(FINDERS):
        try:
            found += finder(results.cells, results.epochs)
        except Exception as exc:  # noqa: BLE001 - a report must survive one odd table
            found.append(Finding(f"failed_{index}", "A finding could not be computed",
                                 f"{type(exc).__name__}: {exc}"))
    return found
