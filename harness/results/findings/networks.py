"""The best compressed networks: the answer table's rows, and the one-line verdict of a run.

Each row names one configuration (means over its seeds) chosen from the comparable decomposed cells for one
constraint: the most accurate at or above each compression the run aimed at (of the decomposed layers, as the
constraint says; a budget filled to 98 % counts), the fastest within :data:`WITHIN_DENSE_PP` points of dense, and
the smallest whole network within that many points that is not slower than dense (in a data-free run, the fastest
and the smallest not slower). Accuracy ties (equal to two decimals) go to the faster network, then to the smaller
whole network. Every row shows the whole model's compression and parameters beside the decomposed layers', and its
speedup says "slower than dense" where it is below 1, so a row never recommends a slower network unannounced.
Speedups above their FLOP bound are not trusted (see ``measurement_problems``). ``export_format`` is a format the
row's cell is known to export to: ONNX when the run's ONNX Runtime phase exported it, else the pt or torchscript
export that phase found to work, else None (nothing known to work, or nothing tried). Where the run quantized its
networks (``--quantize int8``), an "after INT8" column gives the row's INT8 accuracy in ONNX Runtime (mean ± std over
seeds; left out in a data-free run, whose accuracies are on random inputs) and its speedup against the INT8 dense
baseline, so a row that only pays off in FP32 shows it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.contract.selection import DEFAULT_SELECTION
from harness.plan.cells import NO_RATIO
from harness.results.aggregate import decomposed_ok, mean_std, seed_summary, with_delta, with_numbers
from harness.results.findings.common import COMPARE, _pp, _ratio_or_total, _times, trusted_speedups

WITHIN_DENSE_PP = 1.0
# A ratio target is met within rounding: a x4 cell at 3.99x (a layer kept dense, a budget not filled) answers ">= x4".
REACHED = 0.98
SLOWER = "slower than dense"
AFTER_INT8 = "after INT8"  # the answer table's column: INT8 accuracy % · INT8 speedup × against the INT8 dense


def _speed_text(value: Any) -> str:
    text = _times(value)
    return f"{text} ({SLOWER})" if pd.notna(value) and float(value) < 1.0 else text


def _int8_text(pick: pd.Series, seeds: pd.DataFrame, has_accuracy: bool) -> str:
    """The "after INT8" cell of a row: "97.61 ± 0.40 % · 1.85×" (the accuracy only where the run measured one),
    or why there is none."""
    speed = pick["int8_speedup_mean"]
    if pd.isna(speed) and pd.isna(pick["int8_acc_mean"]):
        quantized = seeds.get("int8_error", pd.Series(dtype=object))
        return "could not be quantized (see int8_error)" if quantized.map(lambda v: isinstance(v, str)).any() else "–"
    if not has_accuracy:
        return _speed_text(speed)
    return f"{mean_std(pick['int8_acc_mean'], pick['int8_acc_std'], None, unit=' %')} · {_speed_text(speed)}"


def _params_text(value: Any) -> str:
    if pd.isna(value):
        return "–"
    value = float(value)
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k" if value >= 1e3 else f"{value:.0f}"


def _export_format(cell: pd.Series | None) -> str | None:
    """A format ``cell``'s kept network is known to export to: onnx where the ONNX Runtime phase exported it, else
    the one that phase found instead (pt or torchscript); None when none does or nothing was tried."""
    if cell is None:
        return None
    if isinstance(cell.get("onnx_file"), str):
        return "onnx"
    found = cell.get("export_format")
    return found if isinstance(found, str) else None


def _with_model_compression(cells: pd.DataFrame) -> pd.DataFrame:
    out = cells.copy()
    dense = pd.to_numeric(out.get("model_params_dense"), errors="coerce")
    params = pd.to_numeric(out.get("model_params"), errors="coerce")
    out["model_compression"] = dense / params
    out["model_params"] = params
    return out


def best_networks(cells: pd.DataFrame) -> pd.DataFrame:
    """The answer a user came for, one row per constraint (see the module docstring), with ``cell_id`` (the
    configuration's best seed by the row's criterion), ``kept`` (whether the run kept its network for ``harness
    export``), ``export_format`` and ``export_tried`` (whether the run tried any export of it) and ``int8_kept`` (whether it kept its INT8 graph, with
    ``--quantize int8``) for the command that
    takes it home."""
    ok = decomposed_ok(cells)
    if ok.empty:
        return pd.DataFrame()
    ok = _with_model_compression(ok)
    group = COMPARE + ["backend"]
    has_ort = with_numbers(ok, "ort_speedup")
    has_int8 = with_numbers(ok, "int8_speedup")
    metrics = (["acc_final", "delta", "compression", "model_compression", "model_params", "speedup"]
               + (["ort_speedup"] if has_ort else []) + (["int8_acc", "int8_speedup"] if has_int8 else []))
    summary = seed_summary(with_delta(ok), metrics, group)
    trusted = seed_summary(trusted_speedups(ok), ["speedup"], group)[group + ["speedup_mean"]]
    summary = summary.drop(columns=["speedup_mean", "speedup_std"]).merge(trusted, on=group, how="left")
    summary["acc_rounded"] = summary["acc_final_mean"].round(2)
    has_accuracy = summary["acc_final_mean"].notna().any()
    rows = []

    def row(constraint: str, pick: pd.Series, by: str, higher: bool = True) -> dict[str, Any]:
        """The row of ``pick``, naming its seed with the highest (or lowest) ``by``."""
        seeds = ok[(ok[group].astype(str) == pick[group].astype(str).values).all(axis=1)]
        if by in seeds.columns:
            values = pd.to_numeric(seeds[by], errors="coerce").dropna()
            chosen = seeds.loc[values.idxmax() if higher else values.idxmin()] if not values.empty else None
        else:
            chosen = seeds.iloc[0] if not seeds.empty else None
        out = {"constraint": constraint, "backend": pick["backend"], "method": pick["method"],
               "target": pick["target"], "ratio": _ratio_or_total(pick["ratio"]), "init": pick["init"],
               "rank selection": pick["rank_selection"],
               "compression × (decomposed layers)": _times(pick["compression_mean"]),
               "compression × (whole model)": _times(pick["model_compression_mean"]),
               "params (whole model)": _params_text(pick["model_params_mean"]),
               "final accuracy %": mean_std(pick["acc_final_mean"], pick["acc_final_std"], pick["n"]),
               "Δ vs dense pp": _pp(pick["delta_mean"], signed=True), "speedup ×": _speed_text(pick["speedup_mean"])}
        if has_ort:
            out["ORT speedup ×"] = _speed_text(pick["ort_speedup_mean"])
        if has_int8:
            out[AFTER_INT8] = _int8_text(pick, seeds, has_accuracy)
        out["cell_id"] = chosen["cell_id"] if chosen is not None else None
        out["kept"] = bool(chosen is not None and isinstance(chosen.get("model_file"), str))
        out["export_format"] = _export_format(chosen)
        out["export_tried"] = chosen is not None and (isinstance(chosen.get("onnx_file"), str)
                                                      or isinstance(chosen.get("ort_error"), str))
        out["int8_kept"] = chosen is not None and isinstance(chosen.get("int8_file"), str)
        return out

    def first(frame: pd.DataFrame, keys: list[str], ascending: list[bool]) -> pd.Series:
        return frame.sort_values(keys, ascending=ascending, na_position="last").iloc[0]

    for ratio in sorted(r for r in summary["ratio"].unique() if float(r) != NO_RATIO):
        reach = summary[summary["compression_mean"] >= float(ratio) * REACHED]
        constraint = f"≥ ×{float(ratio):g} compression of the decomposed layers"
        if has_accuracy and reach["acc_final_mean"].notna().any():
            # Equal accuracy: the faster network is the better answer, then the smaller one.
            best = first(reach.dropna(subset=["acc_final_mean"]),
                         ["acc_rounded", "speedup_mean", "model_compression_mean"], [False, False, False])
            rows.append(row(f"most accurate at {constraint}", best, "acc_final"))
        elif not has_accuracy and reach["speedup_mean"].notna().any():
            rows.append(row(f"fastest at {constraint}", first(reach, ["speedup_mean", "model_compression_mean"],
                                                               [False, False]), "speedup"))
    near = summary[summary["delta_mean"] >= -WITHIN_DENSE_PP] if has_accuracy else summary
    within = f" within {WITHIN_DENSE_PP:g} point of dense accuracy" if has_accuracy else ""
    if near["speedup_mean"].notna().any():
        label = f"fastest{within}" if has_accuracy else "fastest (no accuracy in a data-free run)"
        rows.append(row(label, first(near, ["speedup_mean", "model_compression_mean"], [False, False]), "speedup"))
    not_slower = near[near["speedup_mean"] >= 1.0]
    if not not_slower.empty:
        rows.append(row(f"smallest whole network{within} and not slower than dense",
                        first(not_slower, ["model_params_mean", "speedup_mean"], [True, False]), "model_params",
                        higher=False))
    answer = pd.DataFrame(_merged(rows))
    if not answer.empty and (answer["rank selection"] == DEFAULT_SELECTION).all():
        answer = answer.drop(columns="rank selection")  # the default for every row says nothing
    return answer


def _merged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: a configuration that answers several constraints names them all in one row."""
    kept: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(str(v) for k, v in row.items()
                    if k not in ("constraint", "cell_id", "kept", "export_format", "export_tried", "int8_kept"))
        if key in kept:
            kept[key]["constraint"] += f"; {row['constraint']}"
        else:
            kept[key] = dict(row)
    return list(kept.values())


def faster_than_dense_sentence(cells: pd.DataFrame) -> str:
    """One sentence when no comparable decomposed network measured faster than dense on this machine, else ""."""
    ok = decomposed_ok(cells)
    if ok.empty or "speedup" not in ok.columns:  # no latency measured (the phase was cut short): nothing to say
        return ""
    speed = pd.to_numeric(trusted_speedups(ok)["speedup"], errors="coerce").dropna()
    if speed.empty or (speed > 1.0).any():
        return ""
    return (f"No decomposed network ran faster than dense on this machine: the fastest measured {speed.max():.2f}× "
            "(try --rank-selection latency:S, which keeps every layer whose candidates are slower dense).")


def verdict_lines(cells: pd.DataFrame) -> list[str]:
    """The answer table as a few lines for the end of a run: one per row, then the sentence above if it applies."""
    answer = best_networks(cells)
    lines = []
    for _, pick in answer.iterrows():
        accuracy = pick["final accuracy %"]
        shown = accuracy.replace(" (n=", " % (n=", 1) if " (n=" in accuracy else f"{accuracy} %"
        accuracy = "" if accuracy == "–" else f", final accuracy {shown}"
        selection = pick.get("rank selection", DEFAULT_SELECTION)
        selection = f" ({selection})" if selection != DEFAULT_SELECTION else ""
        lines.append(f"{pick['constraint']}: {pick['backend']} {pick['method']}{selection} on {pick['target']}"
                     f"{accuracy}, "
                     f"whole model {pick['compression × (whole model)']} smaller, speedup {pick['speedup ×']} "
                     f"({pick['cell_id']})")
    sentence = faster_than_dense_sentence(cells)
    return lines + ([sentence] if sentence else [])
