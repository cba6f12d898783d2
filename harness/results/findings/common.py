"""The shared parts of every finder: the :class:`Finding`, the thresholds, number formats, the regime and
speed filters, and picking winners of a comparison with their uncertainty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.plan.cells import NO_RATIO
from harness.results.aggregate import SECONDS_FORMAT, decomposed_ok, mean_std, seed_summary, with_delta

# A comparison is fair only between cells that differ in backend alone.
COMPARE = ["model", "dataset", "target", "init", "method", "ratio", "rank_selection", "tensorize"]
TIE = "tie"  # the winner of a comparison in which every backend shows the same value
# With a single seed there is no seed std: accuracy leads up to this many points are called ties. Seeds of the same
# configuration differ by 0.1-0.3 pp on the default run, so a smaller lead is not evidence.
SINGLE_SEED_TIE_PP = 0.5
# The last-k std of one seed has no spread of its own: steadiness leads up to this many points are ties.
STABILITY_SINGLE_SEED_PP = 0.1
# What a lead between siblings is about: two backends of one library (accuracy, steadiness), or two that build
# their networks from the same modules (speed).
SAME_LIBRARY = ("{a} and {b} are both {shared}: the same factorisation with a different forward path, so this lead "
                "is about the forward path, not the library.")
SAME_MODULES = ("{a} and {b} build their networks from the same modules ({shared}), so a speed lead between them is "
                "measurement noise, not a difference between the libraries.")
# A measured speedup more than this fraction above its FLOP bound is a measurement problem, not a result: a
# factorisation cannot run faster than its arithmetic allows by more than caches and kernel choice explain.
ABOVE_BOUND_SLACK = 0.10
# The dense network's latency should be one number within a run; more spread than this (max / min over the cells
# of one model, data and batch) says the machine was not quiet while it was timed.
DENSE_LATENCY_TOLERANCE = 1.25
# A cell whose final accuracy is within this many points of chance learned nothing: a failure, not a regime.
CHANCE_MARGIN_PP = 2.0
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


def above_bound(cells: pd.DataFrame) -> pd.Series:
    """Which cells measured a speedup more than :data:`ABOVE_BOUND_SLACK` above their own FLOP bound."""
    if cells.empty or "speedup" not in cells.columns or "flop_speedup" not in cells.columns:
        return pd.Series(False, index=cells.index)
    speedup = pd.to_numeric(cells["speedup"], errors="coerce")
    bound = pd.to_numeric(cells["flop_speedup"], errors="coerce")
    return (speedup > bound * (1 + ABOVE_BOUND_SLACK)).fillna(False)


def trusted_speedups(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells whose measured speedup may be ranked: those above their FLOP bound are left out (see
    :func:`measurement_problems`)."""
    return cells[~above_bound(cells)]


def at_chance(cells: pd.DataFrame) -> pd.Series:
    """Which cells ended within :data:`CHANCE_MARGIN_PP` of chance accuracy (100 / classes): they learned nothing."""
    if cells.empty or "chance_acc" not in cells.columns or "acc_final" not in cells.columns:
        return pd.Series(False, index=cells.index)
    final = pd.to_numeric(cells["acc_final"], errors="coerce")
    chance = pd.to_numeric(cells["chance_acc"], errors="coerce")
    return (final <= chance + CHANCE_MARGIN_PP).fillna(False)


def _counts(names: pd.Series) -> str:
    counts = names.value_counts()
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _uncertainty(row: pd.Series, metric: str, floor: float, spread: str | None) -> float:
    """How far apart two backends' means must be before one wins: the larger of ``floor``, the seed std (two
    seeds or more) and the measurement's own spread (``spread``'s mean over seeds, e.g. the latency IQR)."""
    values = [floor]
    for column in (f"{metric}_std", f"{spread}_mean" if spread else None):
        if column and column in row and not _missing(row[column]):
            values.append(float(row[column]))
    return max(values)


def _winners(cells: pd.DataFrame, metric: str, higher: bool, tiebreak: str | None = None,
             digits: int = 2, single_seed_floor: float = 0.0, spread: str | None = None) -> pd.DataFrame:
    """Per comparison with ≥ 2 backends: the best backend(s), its mean/std/n and the runner-up.

    A backend ties with the best when their means differ by no more than the larger of their uncertainties
    (:func:`_uncertainty`: the seed std, the measurement's ``spread``, and with a single seed
    ``single_seed_floor``) or show the same value at the shown precision (``digits``); the tied backends share
    the win, and when every backend ties the winner is :data:`TIE` (``tied`` lists them) and there is no
    runner-up. ``tiebreak`` orders backends that show the same value.
    """
    metrics = [metric] + ([tiebreak] if tiebreak else []) + ([spread] if spread else [])
    summary = seed_summary(with_delta(decomposed_ok(cells)), metrics, COMPARE + ["backend"])
    summary = summary.dropna(subset=[f"{metric}_mean"])
    rows = []
    for _, group in summary.groupby(COMPARE, sort=True):
        if len(group) < 2:
            continue
        sign = -1 if higher else 1
        order = [(sign * group[f"{metric}_mean"]).round(digits)] + (
            [group[f"{tiebreak}_mean"].fillna(math.inf).round(digits)] if tiebreak else [])
        keys = pd.concat(order, axis=1).apply(tuple, axis=1)
        top = group.loc[keys.idxmin()]
        margin = {index: _uncertainty(row, metric, single_seed_floor if row["n"] < 2 else 0.0, spread)
                  for index, row in group.iterrows()}
        gap = (group[f"{metric}_mean"] - top[f"{metric}_mean"]).abs()
        tied = (keys == keys.min()) | ((gap <= pd.Series(margin).clip(lower=margin[top.name])) & (gap > 0))
        best, rest = group[tied], group[~tied]
        row = {c: top[c] for c in COMPARE}
        row.update(winner=", ".join(best["backend"]) if not rest.empty else TIE, tied=", ".join(best["backend"]),
                   mean=top[f"{metric}_mean"], std=top[f"{metric}_std"], n=int(top["n"]), margin=margin[top.name],
                   within_spread=bool(((gap > 0) & tied).any()),
                   spread=top[f"{spread}_mean"] if spread else None)
        if tiebreak:
            row.update(tiebreak_mean=top[f"{tiebreak}_mean"], tiebreak_std=top[f"{tiebreak}_std"])
        if not rest.empty:
            second = rest.loc[keys[~tied].idxmin()]
            row.update(runner_up=second["backend"], runner_up_mean=second[f"{metric}_mean"],
                       runner_up_std=second[f"{metric}_std"], runner_up_n=int(second["n"]),
                       runner_up_spread=second[f"{spread}_mean"] if spread else None)
            if tiebreak:
                row.update(runner_up_tiebreak_mean=second[f"{tiebreak}_mean"],
                           runner_up_tiebreak_std=second[f"{tiebreak}_std"])
        rows.append(row)
    return pd.DataFrame(rows)


def _best_finding(cells: pd.DataFrame, key: str, title: str, what: str, metric: str, higher: bool,
                  unit: str, column: str, tiebreak: tuple[str, str] | None = None, digits: int = 2,
                  single_seed_floor: float = 0.0, spread: tuple[str, str] | None = None,
                  siblings: tuple[dict[str, str] | None, str] | None = None) -> Finding:
    """``tiebreak`` = (metric, column label) deciding between backends that show the same ``metric``; ``spread`` =
    (column, words) of the measurement's own spread that a lead must exceed (see :func:`_winners`)."""
    tiebreak, tiebreak_column = tiebreak or (None, None)
    spread_column, spread_words = spread or (None, None)
    table = _winners(cells, metric, higher, tiebreak, digits, single_seed_floor, spread_column)
    if table.empty:
        return Finding(key, title, f"No (target, method, ratio) has ok cells of two or more backends with {what}; "
                                   "there is no winner to name.")
    tie = table["winner"] == TIE
    decided = table[~tie]
    wins = decided["winner"].str.split(", ").explode()
    text = f"{what.capitalize()}, best backend per (target, method, ratio), {len(table)} comparisons of ≥ 2 backends: "
    text += f"{_counts(wins)} wins." if not decided.empty else "no winner."
    spreads = ["the seed std"] + ([spread_words] if spread_words else [])
    floor_unit = " pp" if unit.strip() == "%" else unit  # a difference of percentages is in points
    if single_seed_floor and (table["n"] < 2).any():
        spreads.append(f"{single_seed_floor:g}{floor_unit} with one seed")
    if tie.any():
        text += (f" {int(tie.sum())} of {len(table)} comparisons are a tie: every backend is within the spread "
                 f"({', '.join(spreads)}) or shows the same value at the shown precision, so no backend is named "
                 "there.")
    elif table["within_spread"].any():
        text += f" Backends within the spread ({', '.join(spreads)}) of the best share its win."
    if single_seed_floor and (table["n"] < 2).any():
        text += (f" With one seed a lead of up to {single_seed_floor:g}{floor_unit} is not told apart from noise: run more "
                 "seeds (e.g. --seeds 0,1,2) to separate those backends.")
    if not decided.empty and "runner_up_mean" in decided:
        lead = (decided["mean"] - decided["runner_up_mean"]).abs()
        widest = decided.loc[lead.fillna(-1).idxmax()]
        if math.isfinite(lead.max()):
            first = mean_std(widest["mean"], widest["std"], widest["n"], digits, unit)
            second = mean_std(widest["runner_up_mean"], widest["runner_up_std"], widest["runner_up_n"], digits, unit)
            selection = widest.get("rank_selection", "ratio")
            named = not (selection in (None, "ratio") or _missing(selection))
            # A selection that chooses its own total has no ratio to show; its name says how it was sized.
            where = (selection if named and float(widest["ratio"]) == NO_RATIO
                     else _ratio(widest["ratio"]) + (f" {selection}" if named else ""))
            text += (f" Widest lead: {widest['winner']} on {widest['target']} {widest['method']} "
                     f"{where}, {first} vs {widest['runner_up']} {second}.")
            shared, words = siblings or (None, "")
            kin = (shared or {}).get(str(widest["runner_up"]))
            same = [b for b in str(widest["winner"]).split(", ") if kin and (shared or {}).get(b) == kin]
            if same:
                text += " " + words.format(a=same[0], b=widest["runner_up"], shared=kin)
    numbers = {"comparisons": len(table), "wins": wins.value_counts().to_dict(), "ties": int(tie.sum()),
               "single_seed_floor": single_seed_floor,
               "winners": {_label(r): {"backend": r["winner"], "mean": r["mean"], "std": r["std"], "n": r["n"],
                                       "tied": r["tied"].split(", ") if r["winner"] == TIE else []}
                           for _, r in table.iterrows()}}
    shown = table[["target", "method"]].copy()
    shown["ratio"] = table["ratio"].map(_ratio)
    shown["winner"] = [f"tie: {t}" if w == TIE else w for w, t in zip(table["winner"], table["tied"])]
    def with_spread(text: str, value: Any) -> str:  # the measurement's own spread, where it has one
        return text if not spread_column or _missing(value) else f"{text} IQR {float(value):.{digits}f}"

    shown[column] = [with_spread(mean_std(m, s, n, digits), q)
                     for m, s, n, q in zip(table["mean"], table["std"], table["n"], table["spread"])]
    if tiebreak:
        shown[tiebreak_column] = [mean_std(m, s, None, digits) for m, s in
                                  zip(table["tiebreak_mean"], table["tiebreak_std"])]
    if "runner_up" in table:
        shown["runner-up"] = table["runner_up"].fillna("–")
        shown[f"runner-up {column}"] = [with_spread(mean_std(m, s, n, digits), q) for m, s, n, q in
                                        zip(table["runner_up_mean"], table["runner_up_std"], table["runner_up_n"],
                                            table["runner_up_spread"])]
        if tiebreak:
            shown[f"runner-up {tiebreak_column}"] = [
                mean_std(m, s, None, digits)
                for m, s in zip(table["runner_up_tiebreak_mean"], table["runner_up_tiebreak_std"])]
    for name in ("model", "dataset", "init"):
        if table[name].nunique() > 1:
            shown.insert(0, name, table[name])
    return Finding(key, title, text, numbers, shown)


def _ratio_or_total(ratio: Any) -> str:
    """A cell's ratio, or "own total" for the placeholder of a selector that chooses its own total."""
    return "own total" if not _missing(ratio) and float(ratio) == NO_RATIO else _ratio(ratio)


def _lead_verdict(lead: float, std_a: Any, std_b: Any) -> str:
    """Whether a difference of means is larger than the larger of the two seed stds."""
    spreads = [float(v) for v in (std_a, std_b) if not _missing(v)]
    if not spreads:
        return "one seed"
    return "beyond one std" if abs(lead) > max(spreads) else "within one std"


def _several(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """The ``columns`` that hold more than one value (the others go without saying)."""
    return [c for c in columns if c in frame.columns and frame[c].nunique(dropna=False) > 1]
