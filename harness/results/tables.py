"""The tables every report shows, built from a run's store: per-configuration summaries, the dense control, layers'
ranks, dense baselines, budget deviations, failed and unsupported cells, and the key columns one value fills.

Report plugins (the built-in CSV/Markdown/terminal and HTML reports, and any other) build their tables with these
functions, through the public API (``from harness import summary_table, ...``), so every report shows the same
numbers. Stability metrics are shown with 3 decimals, seconds with 3 significant digits, the rest with 2; a key
column holding one value in every row is left out and its value stated above the table (:func:`constant_columns`).
"""

from __future__ import annotations

import json

import pandas as pd

from harness.plan.status import Status
from harness.results.aggregate import (
    SECONDS_FORMAT,
    STABILITY_DIGITS,
    control_ok,
    decomposed_ok,
    format_summary,
    layer_info,
    seed_summary,
    with_delta,
    with_numbers,
)
from harness.results.store import RunResults

CELL_COLUMNS = [
    "backend", "method", "model", "dataset", "target", "ratio", "rank_selection", "tensorize", "seed", "init", "status",
    "error",
    "params_dense", "params", "compression", "budget", "budget_ok", "model_params_dense", "model_params",
    "flops_dense", "flops", "flop_speedup", "latency_dense_ms", "latency_ms", "latency_dense_iqr_ms",
    "latency_iqr_ms", "speedup", "speedup_iqr", "latency_batch", "latency_threads", "latency_memory_format",
    "threads", "device", "decompose_s", "layers_targeted", "layers_decomposed", "acc_baseline", "acc_decomposed",
    "acc_final", "acc_best", "recon_error",
    "acc_drop", "recovery_epoch", "overfit_drop", "last_k_std",
    "epoch_s", "cell_s", "cell_id",
]
EPOCH_COLUMNS = ["backend", "method", "model", "dataset", "target", "ratio", "seed", "init", "epoch", "train_loss",
                 "test_loss", "test_acc", "epoch_s", "cell_id"]
BUDGET_FILL = 0.9
GROUP = ["model", "dataset", "target", "init", "backend", "method", "ratio", "rank_selection", "tensorize"]
SUMMARY = {
    "compression": "compression ×",
    "acc_decomposed": "acc after decomp %",
    "acc_final": "acc final %",
    "delta": "Δ vs dense pp",
    "speedup": "speedup ×",
    "decompose_s": "decomp s",
}
# The summary of a data-free speed study (--no-train), which measures no accuracy.
# Rows of the summary printed in a terminal (by `harness run` and `harness report`); the files hold every row.
TERMINAL_ROWS = 15
SPEED_SUMMARY = {
    "compression": "compression ×",
    "flop_speedup": "FLOP bound ×",
    "speedup": "speedup ×",
    "recon_error": "recon error",
    "decompose_s": "decomp s",
}
CONTROL_GROUP = ["model", "dataset"]
CONTROL_SUMMARY = {
    "acc_baseline": "acc dense %",
    "acc_final": "acc final %",
    "delta": "Δ vs dense pp",
    "overfit_drop": "best−last pp",
    "last_k_std": "last-k std pp",
    "speedup": "speedup ×",
}
DIGITS = {"last_k_std": STABILITY_DIGITS, "overfit_drop": STABILITY_DIGITS, "decompose_s": SECONDS_FORMAT,
          "recon_error": 3,
          "layers_decomposed": 0, "layers_targeted": 0}
# Columns that describe a configuration rather than measure it: left out of a table when they hold one value.
CONSTANT_CANDIDATES = ("model", "dataset", "target", "init", "backend", "method", "ratio", "rank_selection",
                       "tensorize", "ratios", "seeds", "status")
FAILED_COLUMNS = ["backend", "model", "method", "target", "init", "ratio", "seed", "status", "error"]
UNSUPPORTED_KEYS = ["backend", "model", "method", "target", "error"]
TABLES = ("cells", "epochs", "layers")


def ordered_columns(frame: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    for column in first:
        if column not in frame.columns:
            frame[column] = None
    return frame[first + [c for c in frame.columns if c not in first]]


def summary_table(cells: pd.DataFrame, summary: dict[str, str] = SUMMARY) -> pd.DataFrame:
    """Per model, dataset, target, backend, method and ratio: mean ± std over seeds of the ok decomposed cells.

    When some cell left targeted layers dense (a depthwise conv, a layer its backend refused), a column says how
    many layers each configuration decomposed, so its compression is read for what it is.
    """
    ok = with_delta(decomposed_ok(cells))
    data_free = not ok.empty and pd.to_numeric(ok.get("acc_final"), errors="coerce").isna().all()
    if data_free:
        summary = SPEED_SUMMARY  # a data-free study: no accuracy, so its speed and size columns say everything
    if "layers_decomposed" in ok.columns and (pd.to_numeric(ok["layers_decomposed"], errors="coerce")
                                              < pd.to_numeric(ok["layers_targeted"], errors="coerce")).any():
        summary = {**summary, "layers_decomposed": "layers decomposed", "layers_targeted": "of targeted"}
    if with_numbers(ok, "ort_speedup"):
        # --save-models with onnxruntime: does the factorisation still pay off once ONNX Runtime runs the graph?
        summary = {**summary, "ort_speedup": "ORT speedup ×"}
    if with_numbers(ok, "int8_speedup"):
        # --quantize int8: the INT8 network against the INT8 dense baseline, and its accuracy where the run measured
        # one (a data-free run's accuracies are on random inputs, so its summary has none).
        accuracy = {} if data_free else {"int8_acc": "INT8 acc %"}
        summary = {**summary, **accuracy, "int8_speedup": "INT8 speedup ×"}
    return format_summary(seed_summary(ok, list(summary), GROUP), GROUP, summary, DIGITS)


def control_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per model and dataset: mean ± std over seeds of the dense control (the dense net fine-tuned alike)."""
    summary = seed_summary(with_delta(control_ok(cells)), list(CONTROL_SUMMARY), CONTROL_GROUP)
    return format_summary(summary, CONTROL_GROUP, CONTROL_SUMMARY, DIGITS)


LAYER_KEYS = ["model", "dataset", "target", "init", "backend", "method", "ratio", "rank_selection", "tensorize", "layer"]


def _info_text(info: object, key: str) -> str:
    """One entry of a layer's decomposition info (stored as JSON) as compact text, "–" when absent."""
    value = layer_info(info).get(key)
    if value is None:
        return "–"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _layer_latency_text(info: object) -> str:
    """A replacement's latency against its dense layer's, from the layer's latency table: "0.031 of 0.045", with
    "slower than dense" where it is; "–" where no table was measured."""
    data = layer_info(info)
    ms, dense_ms = data.get("latency_predicted_ms"), data.get("latency_dense_layer_ms")
    if ms is None or dense_ms is None:
        return "–"
    if data.get("left_dense"):
        return f"{dense_ms:.3g} (dense)"
    return f"{ms:.3g} of {dense_ms:.3g}" + (" (slower than dense)" if data.get("slower_than_dense") else "")


def layer_ranks_table(results: RunResults) -> pd.DataFrame:
    """Per configuration and targeted layer of the comparable cells: budget, parameters, the method and rank used,
    the rank selector's reference ranks, why a layer was left dense, and the reconstruction error, over seeds
    ("a / b" when seeds differ): the cell's per-layer plan as it ran."""
    layers, cells = results.layers, results.cells
    if layers.empty or cells.empty:
        return pd.DataFrame(columns=[*LAYER_KEYS, "budget", "params", "layer method", "rank", "selected",
                                     "left dense", "layer latency ms", "seeds"])
    ok_ids = set(results.comparable["cell_id"])
    rows = layers[layers["cell_id"].isin(ok_ids)].copy()
    for column in LAYER_KEYS:
        if column not in rows.columns:
            rows[column] = ""
    rows["layer method"] = [_info_text(i, "method") for i in rows["info"]]
    rows["rank"] = [_info_text(i, "rank") for i in rows["info"]]
    rows["selected"] = [_info_text(i, "selected_ranks") for i in rows["info"]]
    rows["left dense"] = [_info_text(i, "left_dense") for i in rows["info"]]
    rows["layer latency ms"] = [_layer_latency_text(i) for i in rows["info"]]

    def distinct(values: pd.Series) -> str:
        return " / ".join(dict.fromkeys(values.astype(str)))

    table = rows.groupby(LAYER_KEYS, sort=True, dropna=False).agg(
        budget=("max_params", "mean"), params=("params", "mean"), **{"layer method": ("layer method", distinct)},
        rank=("rank", distinct), selected=("selected", distinct), **{"left dense": ("left dense", distinct)},
        **{"layer latency ms": ("layer latency ms", distinct)},
        recon=("recon_error", "mean"), seeds=("seed", "nunique")).reset_index()
    table["budget"] = table["budget"].round(0).astype("Int64")
    table["params"] = table["params"].round(0).astype("Int64")
    table["ratio"] = table["ratio"].map(_value)
    table["recon error"] = table.pop("recon").map(lambda v: "–" if pd.isna(v) else f"{v:.3f}")
    return table


def dense_baselines(cells: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy of the dense baseline per model, dataset and seed (empty when no cell measured one)."""
    columns = ["model", "dataset", "seed", "accuracy %"]
    if cells.empty or "acc_baseline" not in cells.columns or cells["acc_baseline"].isna().all():
        return pd.DataFrame(columns=columns)
    measured = cells.dropna(subset=["acc_baseline"]).groupby(["model", "dataset", "seed"])["acc_baseline"].first()
    return measured.reset_index().rename(columns={"acc_baseline": "accuracy %"})[columns]


def _value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def constant_columns(frame: pd.DataFrame, candidates: tuple[str, ...] = CONSTANT_CANDIDATES
                     ) -> tuple[pd.DataFrame, dict[str, str]]:
    """``frame`` without the candidate columns that hold one value in every row, and those values.

    A table of fewer than two rows keeps every column (nothing repeats there).
    """
    if frame is None or len(frame) < 2:
        return frame, {}
    constant = {c: _value(frame[c].iloc[0]) for c in frame.columns
                if c in candidates and frame[c].nunique(dropna=False) == 1}
    return frame.drop(columns=list(constant)), constant


def same_in_every_row(constant: dict[str, str]) -> str:
    """"Same in every row: model lenet5; dataset mnist." or "" when nothing is constant."""
    # An empty value (e.g. tensorize "" = the default shapes) is dropped without a word.
    shown = {k: v for k, v in constant.items() if v not in ("", None)}
    return ("Same in every row: " + "; ".join(f"{k} {v}" for k, v in shown.items()) + ".") if shown else ""


def _listed(values: pd.Series, prefix: str = "") -> str:
    return ", ".join(f"{prefix}{_value(v)}" for v in sorted(values.dropna().unique()))


def _span(values: pd.Series, fmt: str) -> str:
    """"83%" when every seed gives the same (as shown), else "82%–84%"."""
    low, high = format(values.min(), fmt), format(values.max(), fmt)
    return low if low == high else f"{low}–{high}"


def budget_deviations(cells: pd.DataFrame) -> pd.DataFrame:
    """Comparable configurations whose decomposed layers use less than BUDGET_FILL of their budget.

    One row per backend, model, method, target, init and ratio, with the number of seeds
    that deviate and the fill (params / budget) as a percentage, a range when seeds differ.
    A cell over its budget is not comparable (status ``over_budget``) and is listed with the failed cells.
    """
    columns = ["backend", "model", "method", "target", "init", "ratio", "seeds", "params", "budget", "fill"]
    ok = decomposed_ok(cells)
    if ok.empty:
        return pd.DataFrame(columns=columns)
    ok = ok.assign(params=pd.to_numeric(ok["params"], errors="coerce"),
                   budget=pd.to_numeric(ok["budget"], errors="coerce"))
    ok = ok.assign(budget_fill=ok["params"] / ok["budget"])
    off = ok[(ok["budget_fill"] > 1) | (ok["budget_fill"] < BUDGET_FILL)]
    rows = [{**dict(zip(columns[:6], key)), "seeds": group["seed"].nunique(), "params": _span(group["params"], ".0f"),
             "budget": _span(group["budget"], ".0f"), "fill": _span(group["budget_fill"], ".0%")}
            for key, group in off.groupby(columns[:6], sort=True)]
    table = pd.DataFrame(rows, columns=columns)
    table["ratio"] = table["ratio"].map(_value)
    return table


def failed_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells that errored, timed out, diverged or broke their budget, one row each (unsupported cells are in
    :func:`unsupported_table`)."""
    rest = cells[~cells["status"].isin([Status.OK, Status.UNSUPPORTED])]
    return ordered_columns(rest.copy(), FAILED_COLUMNS)[FAILED_COLUMNS].assign(ratio=lambda f: f["ratio"].map(_value))


def unsupported_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Unsupported cells grouped by backend, model, method, target and reason: count, ratios and seeds covered."""
    columns = UNSUPPORTED_KEYS[:-1] + ["reason", "cells", "ratios", "seeds"]
    gaps = cells[cells["status"] == Status.UNSUPPORTED].assign(error=lambda f: f["error"].fillna("–"))
    rows = [{**dict(zip(UNSUPPORTED_KEYS[:-1], key[:-1])), "reason": key[-1], "cells": len(group),
             "ratios": _listed(group["ratio"], "×"), "seeds": _listed(group["seed"])}
            for key, group in gaps.groupby(UNSUPPORTED_KEYS, sort=True)]
    return pd.DataFrame(rows, columns=columns)


def unsupported_summary(groups: pd.DataFrame) -> str:
    """"99 unsupported cells in 33 groups (declared gaps of the backends)"."""
    cells = int(groups["cells"].sum()) if not groups.empty else 0
    return (f"{cells} unsupported cell{'s' if cells != 1 else ''} in {len(groups)} "
            f"group{'s' if len(groups) != 1 else ''} (declared gaps of the backends)")


