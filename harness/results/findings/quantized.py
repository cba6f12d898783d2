"""Whether decomposition still pays off once both networks are INT8, in accuracy and in latency.

A run with ``--quantize int8`` quantizes each kept decomposed network and its dense baseline and measures both in ONNX
Runtime. Per configuration (the comparison keys and the backend, means over the seeds that were quantized), the
decomposed network's accuracy against dense in FP32 (the FP32 graphs in ONNX Runtime, ``ort_acc − ort_dense_acc``,
else ``acc_final − acc_baseline``) is set beside the same difference in INT8 (``int8_acc − int8_dense_acc``), and
its FP32 ORT speedup (``ort_speedup``) beside its speedup against the INT8 dense baseline (``int8_speedup``).
A configuration still pays off in latency when its INT8 speedup shows above 1.00× and lies above 1× by more than
its spread (the seed std and the IQR of the paired latency ratios); INT8 costs it more accuracy than it costs dense
when the decomposed network's extra loss (FP32 Δ − INT8 Δ, per seed) shows above 0.00 pp and exceeds the seed std
(:data:`SINGLE_SEED_TIE_PP` with one seed). Networks that could not be quantized are counted and the first reason
named. A data-free run (random inputs, so its accuracies mean nothing) is compared in latency only; a run without
INT8 numbers gets no finding.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.results.aggregate import decomposed_ok, mean_std, numeric_column, seed_summary, with_numbers
from harness.results.findings.common import (
    COMPARE,
    SINGLE_SEED_TIE_PP,
    Finding,
    _label,
    _missing,
    _pp,
    _ratio_or_total,
    _several,
)

GROUP = COMPARE + ["backend"]
METRICS = ["fp32_delta", "int8_delta", "int8_extra_loss", "ort_speedup", "ort_speedup_iqr", "int8_speedup",
           "int8_speedup_iqr", "int8_vs_fp32_speedup"]
MODES = {"static": "static INT8, calibrated QDQ", "dynamic": "dynamic INT8"}
FASTER, SLOWER, AS_FAST = "faster than dense", "slower than dense", "within the spread of dense"


def _speed_verdict(mean: Any, std: Any, iqr: Any) -> str | None:
    """Faster, slower or as fast as dense: beyond 1× by more than the seed std and the latency IQR, and so at the
    shown precision (2 decimals); None without a speedup."""
    if _missing(mean):
        return None
    margin = max([float(v) for v in (std, iqr) if not _missing(v)], default=0.0)
    shown = round(float(mean), 2)
    if shown > 1 and float(mean) - 1 > margin:
        return FASTER
    if shown < 1 and 1 - float(mean) > margin:
        return SLOWER
    return AS_FAST


def _loss_verdict(mean: Any, std: Any, n: int) -> str | None:
    """"more" when INT8 cost the decomposed network more points than it cost dense (beyond the seed std, or
    :data:`SINGLE_SEED_TIE_PP` with one seed, and at 2 decimals), "less" the other way, else "same"."""
    if _missing(mean):
        return None
    margin = SINGLE_SEED_TIE_PP if n < 2 or _missing(std) else float(std)
    shown = round(float(mean), 2)
    if shown > 0 and float(mean) > margin:
        return "more"
    if shown < 0 and -float(mean) > margin:
        return "less"
    return "same"


def _signed(mean: Any, std: Any) -> str:
    """A difference in points with its seed std: "+0.40 ± 0.30", "-0.10"."""
    text = _pp(mean, signed=True)
    return text if _missing(mean) or _missing(std) else f"{text} ± {float(std):.2f}"


def _speed(mean: Any, std: Any, iqr: Any = None) -> str:
    """A speedup with its seed std and the IQR of its paired ratios: "1.62 ± 0.08× IQR 0.05"."""
    text = mean_std(mean, std, None, 2, "×")
    return text if text == "–" or _missing(iqr) else f"{text} IQR {float(iqr):.2f}"


def _are(count: int, one: str = "is", many: str = "are") -> str:
    return one if count == 1 else many


def _where(row: pd.Series) -> str:
    return f"{row['backend']} {row['method']} on {row['target']} {_ratio_or_total(row['ratio'])}"


def _modes(cells: pd.DataFrame) -> str:
    """How the networks were quantized: "static INT8, calibrated QDQ", the count of each mode when they differ, or ""
    when the run did not say."""
    if "int8_mode" not in cells.columns:
        return ""
    counts = cells["int8_mode"].dropna().astype(str).value_counts()
    if len(counts) == 1:
        return MODES.get(counts.index[0], f"{counts.index[0]} INT8")
    return ", ".join(f"{MODES.get(mode, mode)} for {count}" for mode, count in counts.items())


def _fallbacks(cells: pd.DataFrame) -> str:
    """A sentence on the networks quantized dynamically because static quantization failed, "" when none was."""
    if "int8_static_error" not in cells.columns:
        return ""
    failed = cells["int8_static_error"][cells["int8_static_error"].map(lambda v: isinstance(v, str) and bool(v.strip()))]
    if failed.empty:
        return ""
    return (f" {len(failed)} network{'s' if len(failed) != 1 else ''} fell back to dynamic INT8 because static "
            f"quantization failed: {_first_line(failed.iloc[0])}.")


def _first_line(text: object, limit: int = 300) -> str:
    return str(text).strip().splitlines()[0][:limit]


def _median(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.median()) if not values.empty else math.nan


def int8_payoff(cells: pd.DataFrame, data_free: bool = False) -> list[Finding]:
    """Per configuration, the accuracy and latency of decomposed against dense in FP32 and once both are INT8.

    ``data_free`` (or a run without final accuracies) compares latency only. An empty list for a run without INT8
    numbers or INT8 errors: it did not quantize.
    """
    key, title = "int8_payoff", "Decomposition once both networks are INT8"
    ok = decomposed_ok(cells)
    if ok.empty:
        return []
    errors = ok["int8_error"] if "int8_error" in ok.columns else pd.Series(dtype=object)
    failed = ok.loc[errors[errors.map(lambda v: isinstance(v, str) and v.strip() != "")].index]
    if not (with_numbers(ok, "int8_speedup") or with_numbers(ok, "int8_acc")) and failed.empty:
        return []  # the run did not quantize: nothing to say
    data_free = data_free or not with_numbers(ok, "acc_final")
    fp32_delta = (numeric_column(ok, "ort_acc") - numeric_column(ok, "ort_dense_acc")).fillna(
        numeric_column(ok, "acc_final") - numeric_column(ok, "acc_baseline"))
    int8_delta = numeric_column(ok, "int8_acc") - numeric_column(ok, "int8_dense_acc")
    ok = ok.assign(fp32_delta=fp32_delta, int8_delta=int8_delta, int8_extra_loss=fp32_delta - int8_delta)
    quantized = ok[numeric_column(ok, "int8_speedup").notna() | numeric_column(ok, "int8_acc").notna()]
    # Only the seeds that were quantized: n is how many seeds stand behind each INT8 number.
    summary = seed_summary(quantized, METRICS, GROUP) if not quantized.empty else pd.DataFrame()
    first_error = _first_line(failed["int8_error"].iloc[0]) if not failed.empty else None
    not_quantized = (f" {len(failed)} network{'s' if len(failed) != 1 else ''} could not be quantized: "
                     f"{first_error}." if first_error else "")
    numbers: dict[str, Any] = {"configurations": len(summary), "not_quantized": len(failed),
                               "first_error": first_error, "data_free": data_free, "modes": _modes(quantized)}
    if summary.empty:
        return [Finding(key, title, "No network was quantized, so nothing compares decomposition in INT8."
                        + not_quantized, numbers)]

    summary["int8_verdict"] = [_speed_verdict(m, s, q) for m, s, q in zip(
        summary["int8_speedup_mean"], summary["int8_speedup_std"], summary["int8_speedup_iqr_mean"])]
    summary["fp32_verdict"] = [_speed_verdict(m, s, q) for m, s, q in zip(
        summary["ort_speedup_mean"], summary["ort_speedup_std"], summary["ort_speedup_iqr_mean"])]
    summary["loss_verdict"] = [None if data_free else _loss_verdict(m, s, n) for m, s, n in zip(
        summary["int8_extra_loss_mean"], summary["int8_extra_loss_std"], summary["n"])]
    timed = summary.dropna(subset=["int8_speedup_mean"])
    verdicts = timed["int8_verdict"].value_counts()
    faster, slower, as_fast = (int(verdicts.get(v, 0)) for v in (FASTER, SLOWER, AS_FAST))
    erased = int(((timed["fp32_verdict"] == FASTER) & (timed["int8_verdict"] != FASTER)).sum())
    gained = int(((timed["fp32_verdict"].isin([SLOWER, AS_FAST])) & (timed["int8_verdict"] == FASTER)).sum())
    median_int8, median_fp32 = _median(timed["int8_speedup_mean"]), _median(timed["ort_speedup_mean"])
    median_gain = _median(timed["int8_vs_fp32_speedup_mean"])
    numbers.update(timed=len(timed), faster=faster, slower=slower, within_spread=as_fast, erased=erased,
                   gained=gained, median_int8_speedup=median_int8, median_ort_speedup=median_fp32,
                   median_int8_vs_fp32_speedup=median_gain)

    modes = f" ({numbers['modes']})" if numbers["modes"] else ""
    text = f"Once both networks are INT8 in ONNX Runtime{modes}, "
    if timed.empty:
        text += "no INT8 latency was measured."
    else:
        against = f", against {median_fp32:.2f}× in FP32 ORT" if not math.isnan(median_fp32) else ""
        text += (f"decomposition still pays off in latency for {faster} of {len(timed)} configurations (median "
                 f"speedup {median_int8:.2f}× over the INT8 dense baseline{against})")
        rest = [f"{count} {_are(count)} {words}" for count, words in ((slower, SLOWER), (as_fast, AS_FAST)) if count]
        if erased:
            rest.append(f"INT8 erased the FP32 speedup of {erased}")
        if gained:
            rest.append(f"{gained} that {_are(gained, 'was', 'were')} not faster than dense in FP32 {_are(gained)} in "
                        "INT8")
        text += ("; " + ", ".join(rest) if rest else "") + "."
        best = timed.loc[timed["int8_speedup_mean"].idxmax()]
        text += (f" Fastest in INT8: {_where(best)}, "
                 f"{mean_std(best['int8_speedup_mean'], best['int8_speedup_std'], best['n'], 2, '×')}"
                 + ("" if _missing(best["int8_speedup_iqr_mean"]) else f", IQR {best['int8_speedup_iqr_mean']:.2f}")
                 + (f", against {best['ort_speedup_mean']:.2f}× in FP32 ORT" if not _missing(best["ort_speedup_mean"])
                    else "") + ".")
        if not math.isnan(median_gain):  # the words follow the numbers: "faster" only above 1.00x
            text += (f" Quantization made the decomposed networks a median {median_gain:.2f}× faster than their FP32 "
                     "graphs." if round(median_gain, 2) > 1 else
                     f" Quantization made the decomposed networks no faster than their FP32 graphs (median "
                     f"{median_gain:.2f}×).")

    compared = summary.dropna(subset=["int8_extra_loss_mean"]) if not data_free else summary.iloc[0:0]
    if data_free:
        text += " A data-free run: accuracies on random inputs mean nothing, so only latency is compared."
    elif not compared.empty:
        losses = compared["loss_verdict"].value_counts()
        more, less = int(losses.get("more", 0)), int(losses.get("less", 0))
        median_int8_delta, median_fp32_delta = _median(compared["int8_delta_mean"]), _median(
            compared["fp32_delta_mean"])
        single = (compared["n"] < 2).any()
        text += (f" Accuracy against dense: a median {median_int8_delta:+.2f} pp in INT8 against "
                 f"{median_fp32_delta:+.2f} pp in FP32; INT8 cost the decomposed network more than it cost dense in "
                 f"{more} of {len(compared)} configurations and less in {less}, beyond the seed std"
                 + (f" (with one seed, {SINGLE_SEED_TIE_PP:g} pp)" if single else "") + ".")
        if more:
            beyond = compared[compared["loss_verdict"] == "more"]
            worst = beyond.loc[beyond["int8_extra_loss_mean"].idxmax()]
            text += (f" Largest extra loss: {_where(worst)}, "
                     f"{mean_std(worst['int8_extra_loss_mean'], worst['int8_extra_loss_std'], worst['n'], 2, ' pp')}.")
        numbers.update(accuracy_configurations=len(compared), more_loss=more, less_loss=less,
                       median_int8_delta=median_int8_delta, median_fp32_delta=median_fp32_delta)
    text += _fallbacks(quantized) + not_quantized
    numbers["by_configuration"] = {
        f"{row['backend']}/{_label(row)}": {
            "n": int(row["n"]), "int8_speedup": row["int8_speedup_mean"], "int8_speedup_std": row["int8_speedup_std"],
            "ort_speedup": row["ort_speedup_mean"], "int8_verdict": row["int8_verdict"],
            "fp32_verdict": row["fp32_verdict"],
            **({} if data_free else {"fp32_delta": row["fp32_delta_mean"], "int8_delta": row["int8_delta_mean"],
                                     "int8_extra_loss": row["int8_extra_loss_mean"],
                                     "int8_extra_loss_std": row["int8_extra_loss_std"],
                                     "loss_verdict": row["loss_verdict"]})}
        for _, row in summary.iterrows()}
    return [Finding(key, title, text, numbers, _table(summary, failed, data_free))]


def _table(summary: pd.DataFrame, failed: pd.DataFrame, data_free: bool) -> pd.DataFrame:
    """One row per configuration, quantized ones first, then those none of whose seeds could be quantized."""
    shown = pd.DataFrame({c: summary[c].to_numpy() for c in _several(summary, ("model", "dataset", "init"))})
    shown["backend"] = summary["backend"].to_numpy()
    shown["method"] = summary["method"].to_numpy()
    shown["target"] = summary["target"].to_numpy()
    shown["ratio"] = summary["ratio"].map(_ratio_or_total).to_numpy()
    if summary["rank_selection"].nunique() > 1:
        shown["rank selection"] = summary["rank_selection"].to_numpy()
    if not data_free:
        shown["FP32 Δ vs dense pp"] = [_signed(m, s) for m, s in
                                       zip(summary["fp32_delta_mean"], summary["fp32_delta_std"])]
        shown["INT8 Δ vs dense pp"] = [_signed(m, s) for m, s in
                                       zip(summary["int8_delta_mean"], summary["int8_delta_std"])]
        shown["extra INT8 loss pp"] = [_signed(m, s) for m, s in
                                       zip(summary["int8_extra_loss_mean"], summary["int8_extra_loss_std"])]
    shown["FP32 ORT speedup ×"] = [_speed(m, s, q) for m, s, q in zip(
        summary["ort_speedup_mean"], summary["ort_speedup_std"], summary["ort_speedup_iqr_mean"])]
    shown["INT8 speedup ×"] = [_speed(m, s, q) for m, s, q in zip(
        summary["int8_speedup_mean"], summary["int8_speedup_std"], summary["int8_speedup_iqr_mean"])]
    shown["INT8 / FP32 ×"] = [_speed(m, s) for m, s in zip(summary["int8_vs_fp32_speedup_mean"],
                                                           summary["int8_vs_fp32_speedup_std"])]
    shown["INT8"] = summary["int8_verdict"].fillna("–").to_numpy()
    shown["seeds"] = summary["n"].astype(int).to_numpy()
    done = set(map(tuple, summary[GROUP].astype(str).to_numpy()))
    lost = failed[[tuple(key) not in done for key in failed[GROUP].astype(str).to_numpy()]]
    if lost.empty:
        return shown
    rows = lost.groupby(GROUP, sort=True, dropna=False).agg(
        seeds=("int8_error", "size"), reason=("int8_error", "first")).reset_index()
    extra = pd.DataFrame({c: rows[c] for c in shown.columns if c in rows.columns and c != "seeds"})
    extra["ratio"] = rows["ratio"].map(_ratio_or_total)
    if "rank selection" in shown.columns:
        extra["rank selection"] = rows["rank_selection"]
    extra["INT8"] = ["not quantized: " + _first_line(reason, 120) for reason in rows["reason"]]
    extra["seeds"] = rows["seeds"]
    return pd.concat([shown, extra], ignore_index=True).fillna("–")
