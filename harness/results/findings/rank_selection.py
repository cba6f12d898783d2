"""Which rank selection was most accurate at equal total parameters."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.contract.selection import split_match
from harness.plan.cells import NO_RATIO
from harness.results.aggregate import decomposed_ok, mean_std, seed_summary
from harness.results.findings.common import TIE, Finding, _counts, _lead_verdict, _missing, _pp, _several, _share


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
