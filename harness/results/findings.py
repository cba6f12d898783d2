"""Findings: the run's answers, computed from its tables, each one or two sentences with numbers.

Every finding is a pure function of the cells and epochs frames of a run: which backend
won where (accuracy, measured speed, stability), whether decomposing conv or linear
layers paid off, whether decomposing trained weights beat training the format from
scratch, whether the decomposed networks train more or less steadily than the dense
control, how close measured speedups come to the FLOP bound, and which backend
decomposes fastest and recovers most often. Where the run holds the studies, also: which
rank selection was most accurate at equal total parameters (a selector and those matched
to its total with ``SEL@REF``, or ratio-based selectors at the same ratio), and how
mixed networks (a method per layer: a mix or ``auto``, the category "mixed" beside the
conv / linear / all targets) compare with single-method ones; a run without a study gets
no finding about it. Numbers are means over seeds of ok cells,
stated with their spread and count; a finding whose data the run lacks says what is
missing instead of guessing. Nothing here is written by hand.

Numbers are compared at the precision they are shown with (accuracies 2 decimals,
stability metrics 3, see :data:`harness.results.aggregate.STABILITY_DIGITS`): when every backend
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

from harness.results.aggregate import (
    MIXED,
    SECONDS_FORMAT,
    STABILITY_DIGITS,
    categories,
    control_ok,
    decomposed_ok,
    is_control,
    mean_std,
    seed_summary,
    with_delta,
)
from harness.config.mixing import AUTO, label_kinds
from harness.plan.planner import NO_RATIO
from harness.contract.selection import split_match
from harness.measure.stability import LAST_K, RECOVERY_TOLERANCE
from harness.results.store import KEY_COLUMNS, RunResults

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


def best_backends(cells: pd.DataFrame, libraries: dict[str, str] | None = None,
                  modules: dict[str, str] | None = None) -> list[Finding]:
    """Best backend per comparison for final accuracy, measured speedup and stability, and a win tally.

    ``libraries`` (backend -> library) tells siblings apart from rivals: two backends of one library (tltorch and
    tltorch-rec) share a factorisation and differ only in the forward path, and a lead between them says so.
    ``modules`` (backend -> the modules its networks are built from) does the same for speed: native and tensorly
    build the same modules, so a speed lead between them is noise.
    """
    found = [
        _best_finding(cells, "best_accuracy", "Most accurate backend", "highest mean final accuracy",
                      "acc_final", True, " %", "final accuracy %", single_seed_floor=SINGLE_SEED_TIE_PP,
                      siblings=(libraries, SAME_LIBRARY)),
        _best_finding(trusted_speedups(cells), "best_speedup", "Fastest backend (measured)",
                      "largest measured latency speedup", "speedup", True, "×", "speedup ×",
                      spread=("speedup_iqr", "the IQR of the repeated latency measurements"),
                      siblings=(modules, SAME_MODULES)),
        _best_finding(cells, "best_stability", "Steadiest backend",
                      f"lowest std of the last {LAST_K} epochs' accuracy (ties: smallest best−last drop)",
                      "last_k_std", False, " pp", f"last-{LAST_K} std pp",
                      tiebreak=("overfit_drop", "best−last drop pp"), digits=STABILITY_DIGITS,
                      single_seed_floor=STABILITY_SINGLE_SEED_PP, siblings=(libraries, SAME_LIBRARY)),
    ]
    speed = found[1]
    if speed.numbers and all(entry["mean"] <= 1 for entry in speed.numbers["winners"].values()):
        speed.text += " No decomposed network ran faster than dense here: \"fastest\" means least slow."
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
    least_loss, most_speed = overall["delta"].idxmax(), overall["speedup"].idxmax()
    ratios = ", ".join(_ratio_or_total(r) for r in common)
    speeds = ", ".join(f"{t} {v:.2f}×" for t, v in overall["speedup"].items())
    # The words follow the numbers: "gained speed" only above 1x, and a loss is called one.
    if overall["speedup"].max() > 1:
        speed_text = f"{most_speed} gained most speed (mean measured speedup {speeds})"
    else:
        speed_text = (f"no target gained speed: every one ran slower than dense on average (mean measured speedup "
                      f"{speeds}; {most_speed} lost least)")
    text = (f"At the ratios every target ran ({ratios}), {least_loss} lost least accuracy (mean Δ vs dense "
            + ", ".join(f"{t} {v:+.2f}" for t, v in overall["delta"].items()) + f" pp) and {speed_text}{regime_note}.")
    if MIXED in overall.index:
        text += f" {MIXED} = a method chosen per layer (a mix or auto)."
    numbers = {"least_accuracy_loss": least_loss, "most_speedup": most_speed if overall["speedup"].max() > 1 else None,
               "ratios": common,
               "delta": overall["delta"].to_dict(), "speedup": overall["speedup"].to_dict()}
    return [Finding(key, title, text, numbers, table)]


def _ratio_or_total(ratio: Any) -> str:
    """A cell's ratio, or "own total" for the placeholder of a selector that chooses its own total."""
    return "own total" if not _missing(ratio) and float(ratio) == NO_RATIO else _ratio(ratio)


def _equal_total(selection: str, ratio: float) -> str:
    """What a cell's total parameter budget equals, so cells with the same answer ran at equal total params.

    ``SEL@REF`` spends REF's total and REF spends its own; a ratio-based selector (ratio, budget) spends
    Σ dense/ratio, the same at the same ratio whichever way it spreads it over the layers.
    """
    own, reference = split_match(str(selection))
    if reference is not None:
        return f"{reference}'s total"
    if float(ratio) == NO_RATIO:
        return f"{own}'s total"
    return f"Σ dense/×{float(ratio):g}"


def _lead_verdict(lead: float, std_a: Any, std_b: Any) -> str:
    """Whether a difference of means is larger than the larger of the two seed stds."""
    spreads = [float(v) for v in (std_a, std_b) if not _missing(v)]
    if not spreads:
        return "one seed"
    return "beyond one std" if abs(lead) > max(spreads) else "within one std"


def _several(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """The ``columns`` that hold more than one value (the others go without saying)."""
    return [c for c in columns if c in frame.columns and frame[c].nunique(dropna=False) > 1]


def _joined(networks: dict[tuple, list[str]], selections: pd.Series) -> str:
    """``selections`` as "a = b, c": "=" joins those that built the same network (``networks``' groups)."""
    chosen = set(selections)
    parts = [" = ".join(name for name in names if name in chosen) for names in networks.values()]
    return ", ".join(part for part in parts if part)


def rank_selection_at_equal_params(cells: pd.DataFrame) -> list[Finding]:
    """Which rank selection was most accurate where several ran at equal total parameters; none without a study."""
    key, title = "rank_selection_at_equal_params", "Rank selections at equal total parameters"
    ok = decomposed_ok(cells)
    selections = sorted(ok["rank_selection"].astype(str).unique()) if not ok.empty else []
    if len(selections) < 2:
        return []  # the run compares no rank selections: nothing to say
    ok = ok.assign(equal_total=[_equal_total(s, r) for s, r in zip(ok["rank_selection"], ok["ratio"])])
    where = ["model", "dataset", "backend", "method", "target", "init", "tensorize", "equal_total"]
    summary = seed_summary(ok, ["acc_final", "params", "speedup"], where + ["rank_selection"])
    summary = summary.dropna(subset=["acc_final_mean"])
    # Selections that built the very same network (same params and accuracy in every seed: with one
    # decomposed layer a matched total leaves no choice) are one result, not several that agree.
    same = {key_: tuple(sorted(zip(frame["seed"], pd.to_numeric(frame["params"], errors="coerce").round(6),
                                   pd.to_numeric(frame["acc_final"], errors="coerce").round(6))))
            for key_, frame in ok.groupby(where + ["rank_selection"], sort=True, dropna=False)}
    rows: list[dict[str, Any]] = []
    for group_key, group in summary.groupby(where, sort=True, dropna=False):
        if group["rank_selection"].nunique() < 2:
            continue
        networks: dict[tuple, list[str]] = {}
        for selection in group["rank_selection"]:
            networks.setdefault(same[(*group_key, selection)], []).append(selection)

        # Compared at the shown precision, as every other comparison: equal as shown is a tie.
        shown = group["acc_final_mean"].round(2)
        best, rest = group[shown == shown.max()], group[shown != shown.max()]
        top = best.iloc[0]
        row: dict[str, Any] = dict(zip(where, group_key))
        row.update(winner=_joined(networks, best["rank_selection"]) if not rest.empty else TIE,
                   tied=_joined(networks, best["rank_selection"]), identical=any(len(n) > 1 for n in networks.values()),
                   per={r["rank_selection"]: r for _, r in group.iterrows()})
        params = group["params_mean"].dropna()
        row["params_spread"] = float((params.max() - params.min()) / params.max()) if len(params) and params.max() \
            else math.nan
        if not rest.empty:
            second = rest.loc[rest["acc_final_mean"].idxmax()]
            row.update(runner_up=second["rank_selection"], lead=top["acc_final_mean"] - second["acc_final_mean"],
                       verdict=_lead_verdict(top["acc_final_mean"] - second["acc_final_mean"],
                                             top["acc_final_std"], second["acc_final_std"]))
        rows.append(row)
    if not rows:
        own = [s for s in selections if split_match(s)[1] is None and not ok.loc[
            ok["rank_selection"] == s, "ratio"].ne(NO_RATIO).any()]
        text = (f"The run used the rank selections {', '.join(selections)}, but no two ran at equal total parameters "
                "for the same backend, method and target")
        text += (f": {', '.join(own)} chose their own total and no selection was matched to it (SEL@REF)"
                 if own else "") + ". The rank-selection plot compares them by achieved compression instead."
        return [Finding(key, title, text, {"groups": 0, "selections": selections})]
    table_rows = pd.DataFrame(rows)
    decided = table_rows[table_rows["winner"] != TIE]
    # Co-winners tied at the shown precision each get a win; selections that are one network share one.
    wins = decided["winner"].str.split(", ").explode() if not decided.empty else pd.Series(dtype=str)
    verdicts = decided["verdict"].value_counts() if not decided.empty else pd.Series(dtype=int)
    beyond, within, single = (int(verdicts.get(v, 0)) for v in ("beyond one std", "within one std", "one seed"))
    text = (f"{len(rows)} group(s) ran two or more rank selections at equal total parameters (a selector and those "
            "matched to its total with SEL@REF, or ratio-based selectors at the same ratio; same backend, method, "
            "target and seeds). Most accurate: " + (f"{_counts(wins)}." if not decided.empty else "no selection."))
    ties = len(rows) - len(decided)
    if ties:
        text += f" {ties} group(s) are a tie at the shown precision (2 decimals)."
    identical = int(table_rows["identical"].sum())
    if identical:
        text += (f" In {identical} group(s) some selections built the very same network (equal params and accuracy "
                 "in every seed, as when one layer is decomposed and the matched total fixes its budget); they are "
                 "joined by '=' and count as one.")
    if not decided.empty:
        text += (f" The lead over the runner-up is larger than the larger seed std in {beyond} of {len(decided)} "
                 f"decided group(s)" + (f" and within one std in {within}" if within else "")
                 + (f"; {single} ran one seed, so there is no spread to judge" if single else "") + ".")
        if beyond == 0 and within:
            text += " No selection is ahead by more than the seed noise."
    spread = table_rows["params_spread"].max()
    if not _missing(spread):
        text += (f" Achieved parameters of the decomposed layers differ by at most {_share(spread)} within a group "
                 "(a backend may fill less than its budget).")
    numbers = {"groups": len(rows), "wins": wins.value_counts().to_dict(), "ties": ties, "identical": identical,
               "beyond_std": beyond,
               "within_std": within, "one_seed": single, "params_spread": None if _missing(spread) else spread,
               "winners": {"/".join(str(r[c]) for c in where if r[c] != ""): {
                   "selection": r["winner"], "tied": r["tied"].split(", ") if r["winner"] == TIE else [],
                   "lead": r.get("lead"), "verdict": r.get("verdict")} for r in rows}}
    # Matched selections after the plain ones, so a reference comes before the selectors matched to it.
    order = sorted({s for r in rows for s in r["per"]}, key=lambda s: (split_match(s)[1] is not None, s))
    shown = pd.DataFrame({c: table_rows[c] for c in _several(table_rows, ("model", "dataset", "init", "tensorize"))})
    for column in ("backend", "method", "target"):
        shown[column] = table_rows[column]
    shown["equal total"] = table_rows["equal_total"]
    for selection in order:
        present = [r["per"].get(selection) for r in rows]
        shown[f"{selection} acc %"] = ["–" if p is None else mean_std(p["acc_final_mean"], p["acc_final_std"],
                                                                     p["n"]) for p in present]
        shown[f"{selection} params"] = ["–" if p is None or _missing(p["params_mean"]) else f"{p['params_mean']:.0f}"
                                        for p in present]
        shown[f"{selection} speedup ×"] = ["–" if p is None else mean_std(p["speedup_mean"], p["speedup_std"], None)
                                           for p in present]
    shown["best"] = [f"tie: {r['tied']}" if r["winner"] == TIE else r["winner"] for r in rows]
    shown["lead pp"] = [_pp(r.get("lead"), signed=True) for r in rows]
    shown["lead vs seed std"] = [r.get("verdict") or "–" for r in rows]
    return [Finding(key, title, text, numbers, shown)]


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


def _group_name(index: Any) -> str:
    """A groupby key (one value or a tuple) as text: "lenet5/mnist-embedded/32/cpu"."""
    return "/".join(str(v) for v in (index if isinstance(index, tuple) else (index,)))


def measurement_problems(cells: pd.DataFrame) -> list[Finding]:
    """What the run cannot vouch for: speedups above their FLOP bound, a dense latency that moved within the run,
    and cells that ended at chance accuracy (failures, not results)."""
    key, title = "measurement_problems", "Measurement problems"
    ok = cells[~is_control(cells)] if not cells.empty else cells
    sentences, numbers, rows = [], {}, []
    suspect = ok[above_bound(ok)]
    if not suspect.empty:
        sentences.append(f"{len(suspect)} cells measured a speedup more than {ABOVE_BOUND_SLACK:.0%} above their own "
                         "FLOP bound, which the arithmetic does not allow: a timing problem, so they are not ranked.")
        numbers["above_bound"] = suspect["cell_id"].tolist()
        rows += [{"problem": "speedup above FLOP bound", "cell": r["cell_id"],
                  "value": f"{_times(r['speedup'])} vs bound {_times(r['flop_speedup'])}"} for _, r in suspect.iterrows()]
    if not cells.empty and "latency_dense_ms" in cells.columns:
        dense = cells.assign(latency_dense_ms=pd.to_numeric(cells["latency_dense_ms"], errors="coerce"))
        group = [c for c in ("model", "dataset", "latency_batch", "device") if c in dense.columns]
        spread = dense.dropna(subset=["latency_dense_ms"]).groupby(group)["latency_dense_ms"].agg(["min", "max"])
        spread = spread[spread["min"] > 0]
        loose = spread[spread["max"] / spread["min"] > DENSE_LATENCY_TOLERANCE]
        for index, r in loose.iterrows():
            sentences.append(f"The dense latency of {_group_name(index)} ranged {r['min']:.3g}–{r['max']:.3g} ms "
                             f"within the run (more than {DENSE_LATENCY_TOLERANCE:g}× apart): its speedups carry that "
                             "noise.")
            rows.append({"problem": "dense latency moved", "cell": _group_name(index),
                         "value": f"{r['min']:.3g}–{r['max']:.3g} ms"})
        numbers["dense_latency_spread"] = {_group_name(i): r["max"] / r["min"] for i, r in spread.iterrows()}
    failed = ok[at_chance(ok)]
    if not failed.empty:
        sentences.append(f"{len(failed)} cells ended within {CHANCE_MARGIN_PP:g} pp of chance accuracy: they learned "
                         "nothing, a failure of that backend and method, and are kept out of regime comparisons.")
        numbers["at_chance"] = failed["cell_id"].tolist()
        rows += [{"problem": "accuracy at chance", "cell": r["cell_id"], "value": f"{_pp(r['acc_final'])} %"}
                 for _, r in failed.iterrows()]
    if not sentences:
        return [Finding(key, title, "None found: no speedup above its FLOP bound, the dense latency stayed within "
                                    f"{DENSE_LATENCY_TOLERANCE:g}× over the run, and no cell ended at chance.", numbers)]
    return [Finding(key, title, " ".join(sentences), numbers, pd.DataFrame(rows))]


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


# How close to the dense accuracy a network must stay to count as "as accurate as dense" when picking the fastest.
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


FINDERS: list[Callable[[pd.DataFrame, pd.DataFrame, dict[str, Any]], list[Finding]]] = [
    lambda cells, epochs, meta: best_backends(cells, _libraries(meta), _libraries(meta, "modules")),
    lambda cells, epochs, meta: target_payoff(cells),
    lambda cells, epochs, meta: mixed_vs_single(cells),
    lambda cells, epochs, meta: rank_selection_at_equal_params(cells),
    lambda cells, epochs, meta: regime(cells),
    lambda cells, epochs, meta: control_stability(cells, epochs),
    lambda cells, epochs, meta: speedup_vs_flops(cells),
    lambda cells, epochs, meta: decomposition_time(cells),
    lambda cells, epochs, meta: recovery(cells),
    lambda cells, epochs, meta: measurement_problems(cells),
]


def _libraries(meta: dict[str, Any], field: str = "library") -> dict[str, str]:
    """Backend -> library name (or another field of its entry, e.g. its ``modules``), from the run's metadata."""
    return {name: entry.get(field) for name, entry in (meta.get("libraries") or {}).items()
            if isinstance(entry, dict) and entry.get(field)}


def all_findings(results: RunResults) -> list[Finding]:
    """Every finding of a run; one that fails to compute says so instead of taking the others down."""
    found: list[Finding] = []
    for index, finder in enumerate(FINDERS):
        try:
            found += finder(results.comparable, results.epochs, results.meta)
        except Exception as exc:  # noqa: BLE001 - a report must survive one odd table
            found.append(Finding(f"failed_{index}", "A finding could not be computed",
                                 f"{type(exc).__name__}: {exc}"))
    return found
