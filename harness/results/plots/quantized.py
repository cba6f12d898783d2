"""The plot of a run that quantized its networks (``--quantize int8``): each network in FP32 and in INT8, in ORT.

Every decomposed configuration (mean over the seeds that were quantized) is two points joined by a line: its FP32
graph in ONNX Runtime (filled marker: ``ort_latency_ms`` against ``ort_acc``, else ``acc_final``) and its INT8 graph
(hollow marker: ``int8_latency_ms`` against ``int8_acc``), so the line shows what quantization did to that network;
the dense baseline's two graphs are black stars joined the same way, so a decomposed INT8 point left of the hollow
star is faster than the INT8 dense network. One panel per model and dataset. A data-free run has no accuracy worth
plotting (random inputs), so it draws the whole-model compression (1 for dense) against the same two latencies: the
lines are then horizontal and show the latencies alone. A run without INT8 latencies gets a note, not a plot.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.results.aggregate import decomposed_ok, numeric_column, seed_summary
from harness.results.plots.common import (
    TARGET_MARKERS,
    _clip_accuracy,
    _empty,
    _figure,
    _note,
    _panels,
    backend_colours,
)

# Latencies spanning more than this factor in one panel are drawn on a log axis, or the small networks bunch up.
WIDE_LATENCY_RANGE = 10.0
CONFIGURATION = ["backend", "method", "target", "init", "ratio", "rank_selection", "tensorize"]


def _points(axis, x: pd.Series, y: pd.Series, floor: float, marker: str, colour: str, hollow: bool,
            size: float = 6) -> None:
    """Markers at (x, y); a y below ``floor`` (a network that collapsed) is a ▼ at the lower edge instead."""
    low = y < floor
    axis.plot(x[~low], y[~low], marker, color=colour, markerfacecolor="white" if hollow else colour,
              linestyle="none", markersize=size, zorder=3)
    if low.any():
        axis.plot(x[low], [floor] * int(low.sum()), "v", color=colour, linestyle="none", zorder=3)


def int8_accuracy_vs_latency(cells: pd.DataFrame, data_free: bool = False) -> Figure:
    """Accuracy (whole-model compression in a data-free run) against ONNX Runtime latency, FP32 and INT8 joined."""
    ok = decomposed_ok(cells)
    data_free = data_free or ok.empty or numeric_column(ok, "acc_final").isna().all()
    what = "Whole-model compression" if data_free else "Accuracy"
    title = f"{what} vs ONNX Runtime latency: FP32 (filled) → INT8 (hollow), mean over seeds"
    if not ok.empty:
        ok = ok[numeric_column(ok, "int8_latency_ms").notna()]
    if ok.empty:
        return _empty(title, "No network was quantized and timed in INT8 (harness run --save-models --quantize int8).")
    if data_free:
        compression = numeric_column(ok, "model_params_dense") / numeric_column(ok, "model_params")
        ok = ok.assign(fp32_y=compression, int8_y=compression, dense_fp32_y=1.0, dense_int8_y=1.0)
        y_label = "compression × (whole model)"
    else:
        ok = ok.assign(fp32_y=numeric_column(ok, "ort_acc").fillna(numeric_column(ok, "acc_final")),
                       int8_y=numeric_column(ok, "int8_acc"),
                       dense_fp32_y=numeric_column(ok, "ort_dense_acc").fillna(numeric_column(ok, "acc_baseline")),
                       dense_int8_y=numeric_column(ok, "int8_dense_acc"))
        y_label = "test accuracy % (ONNX Runtime)"
    colours = backend_colours(cells["backend"].unique())
    panels, notes = _panels(ok, [])
    figure, axes = _figure(len(panels), 2, 3.8)
    clipped = 0
    for axis, (name, panel) in zip(axes, panels):
        summary = seed_summary(panel, ["ort_latency_ms", "int8_latency_ms", "fp32_y", "int8_y"], CONFIGURATION)
        dense = seed_summary(panel, ["ort_latency_dense_ms", "int8_dense_latency_ms", "dense_fp32_y", "dense_int8_y"],
                             ["model", "dataset"]).iloc[0]
        ys = pd.concat([summary["fp32_y_mean"], summary["int8_y_mean"]])
        baseline = dense["dense_fp32_y_mean"]
        cut, floor = ((0, -math.inf) if data_free or pd.isna(baseline) else _clip_accuracy(axis, ys, baseline))
        clipped += cut
        for _, row in summary.iterrows():
            colour, marker = colours[row["backend"]], TARGET_MARKERS.get(row["target"], "D")
            x = pd.Series([row["ort_latency_ms_mean"], row["int8_latency_ms_mean"]])
            y = pd.Series([row["fp32_y_mean"], row["int8_y_mean"]])
            axis.plot(x, y.clip(lower=floor), color=colour, linewidth=0.9, alpha=0.6, zorder=2)
            _points(axis, x[:1], y[:1], floor, marker, colour, hollow=False)
            _points(axis, x[1:], y[1:], floor, marker, colour, hollow=True)
        x = pd.Series([dense["ort_latency_dense_ms_mean"], dense["int8_dense_latency_ms_mean"]])
        y = pd.Series([dense["dense_fp32_y_mean"], dense["dense_int8_y_mean"]])
        axis.plot(x, y.clip(lower=floor), color="black", linestyle="--", linewidth=1.0, zorder=2)
        _points(axis, x[:1], y[:1], floor, "*", "black", hollow=False, size=11)
        _points(axis, x[1:], y[1:], floor, "*", "black", hollow=True, size=11)
        latencies = pd.concat([summary["ort_latency_ms_mean"], summary["int8_latency_ms_mean"], x]).dropna()
        latencies = latencies[latencies > 0]
        if not latencies.empty and latencies.max() / latencies.min() > WIDE_LATENCY_RANGE:
            axis.set_xscale("log")
            axis.set_xlabel("latency ms (whole network, ONNX Runtime, log)")
        else:
            axis.set_xlabel("latency ms (whole network, ONNX Runtime)")
        axis.set_title(name, fontsize=10)
        axis.set_ylabel(y_label)
        axis.grid(alpha=0.3)
    if clipped:
        notes.append(f"{clipped} point(s) far below the dense baseline are drawn as ▼ at the lower edge.")
    if data_free:
        notes.append("A data-free run: accuracies on random inputs mean nothing, so only latency is compared.")
    backends = sorted(ok["backend"].unique())
    handles = [Line2D([], [], color=colours[b], marker="o", linestyle="-", label=b) for b in backends]
    handles += [Line2D([], [], color="gray", marker=TARGET_MARKERS.get(t, "D"), linestyle="none", label=f"target {t}")
                for t in sorted(ok["target"].unique())]
    handles += [Line2D([], [], color="gray", marker="o", linestyle="none", label="FP32 (ONNX Runtime)"),
                Line2D([], [], color="gray", marker="o", markerfacecolor="white", linestyle="none", label="INT8"),
                Line2D([], [], color="black", marker="*", markersize=9, linestyle="--", label="dense FP32 → INT8")]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    figure.suptitle(title, fontsize=11)
    _note(figure, notes)
    return figure
