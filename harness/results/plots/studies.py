"""The plots of studies a run may hold: rank selections, accuracy against rank, tensorized shapes."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from harness.config.tensorize import EXPLICIT
from harness.plan.cells import NO_RATIO
from harness.results.aggregate import categories, decomposed_ok, layer_info, seed_summary
from harness.results.plots.common import (
    DODGE,
    MAX_PANELS,
    RATIO_STYLES,
    _accuracy_points,
    _clip_accuracy,
    _colours,
    _dense_legend,
    _dense_lines,
    _empty,
    _figure,
    _log_y,
    _markers,
    _modes,
    _note,
    _panels,
    _rank_scalar,
    _ratio_axis,
    _spread_notes,
    backend_colours,
)
from harness.results.store import KEY_COLUMNS


def rank_selection_study(cells: pd.DataFrame) -> Figure:
    """Final accuracy and measured speedup against compression, one colour per rank selection, per (method, target).

    Matched selections (``SEL@REF``) spend exactly the total REF chose, so they sit at REF's compression and
    compare vertically; ratio-based ones (ratio, budget) spend Σ dense/ratio and line up per ratio.
    """
    title = "Rank selections compared at their achieved compression (mean ± std over seeds)"
    ok = decomposed_ok(cells)
    selections = sorted(ok["rank_selection"].unique()) if not ok.empty else []
    if len(selections) < 2:
        used = f"only the rank selection {selections[0]!r}" if selections else "no rank selection with ok cells"
        return _empty(title, f"This run has {used}; comparing rank selections needs two or more.")
    several = ok.groupby(["method", "target"])["rank_selection"].transform("nunique") > 1
    notes = []
    if not several.all():
        left = ok.loc[~several, ["method", "target"]].drop_duplicates().shape[0]
        notes.append(f"{left} (method, target) pair(s) ran under one rank selection only and are left out.")
    ok = ok[several]
    if ok.empty:
        return _empty(title, "No (method, target) ran under two or more rank selections.")
    colours = _colours(selections)
    markers = _markers(ok["backend"].unique())
    groups, more = _panels(ok, ["method", "target"], limit=MAX_PANELS // 2)
    notes += more
    figure, axes = _figure(2 * len(groups), 2, 3.2)
    clipped = 0
    for index, (name, frame) in enumerate(groups):
        summary = seed_summary(frame, ["compression", "acc_final", "speedup"],
                               ["backend", "rank_selection", "init", "tensorize", "ratio"])
        summary = summary.sort_values("compression_mean")
        accuracy, speed = axes[2 * index: 2 * index + 2]
        baseline = _dense_lines(accuracy, cells, frame)
        cut, floor = _clip_accuracy(accuracy, summary["acc_final_mean"], baseline)
        clipped += cut
        speed.axhline(1.0, color="black", linewidth=0.8)
        for (backend, selection, init, _), points in summary.groupby(["backend", "rank_selection", "init",
                                                                       "tensorize"]):
            # A line joins one selection's points across ratios; a selector with its own total is one point.
            style = dict(fmt=markers[backend] + "-", color=colours[selection], linewidth=0.8, markersize=5,
                         markerfacecolor="none" if init == "scratch" else colours[selection])
            # Selections at equal params (often the very same network) would hide each other: dodged sideways.
            x = points["compression_mean"] * 2 ** (DODGE * (selections.index(selection) - (len(selections) - 1) / 2))
            _accuracy_points(accuracy, x, points, floor, **style)
            speed.errorbar(x, points["speedup_mean"], yerr=points["speedup_std"], capsize=2, **style)
        nominal = [r for r in summary["ratio"] if r != NO_RATIO]
        for axis, what in ((accuracy, "final accuracy"), (speed, "measured speedup")):
            _ratio_axis(axis, "compression × (decomposed layers)", summary["compression_mean"], nominal)
            axis.set_title(f"{name}: {what}", fontsize=10)
            axis.grid(alpha=0.3)
        accuracy.set_ylabel("final test accuracy %")
        speed.set_ylabel("speedup × (dense / decomposed latency)")
    notes += _spread_notes(clipped, ok)
    notes.append("SEL@REF spends exactly the total parameters REF chose on the same layers, so it sits at REF's "
                 "compression; vbmf and energy choose their own total (no ratio). Points of different selections "
                 "are nudged sideways a little so equal ones stay visible.")
    handles = [Line2D([], [], color=colours[s], marker="o", linestyle="-", label=s) for s in selections
               if s in set(ok["rank_selection"])]
    if len(markers) > 1:
        handles += [Line2D([], [], color="gray", marker=m, linestyle="none", label=b) for b, m in markers.items()]
    if (ok["init"] == "scratch").any():
        handles.append(Line2D([], [], color="gray", marker="o", markerfacecolor="none", linestyle="none",
                              label="from scratch"))
    figure.legend(handles=handles + _dense_legend(cells), loc="outside right upper", fontsize=8,
                  title="rank selection")
    figure.suptitle(title, fontsize=11)
    _note(figure, notes)
    return figure


def accuracy_vs_rank(cells: pd.DataFrame, layers: pd.DataFrame) -> Figure:
    """Final accuracy against the rank each decomposed layer got, one panel per layer and target, a line per method.

    x is the layer's rank as one number, the largest entry when the backend records a list (Tucker-2's
    output and input ranks, a TT chain). The colour is the layer's own method (in a mix or ``auto`` cell,
    the method that layer got). A point pools every cell in which that layer got that rank with that method
    (backends, rank selections, ratios and seeds alike), because the rank a budget buys is the same whichever
    backend fills it; panels keep the targets (and mixed cells) apart, since the other decomposed layers of
    a cell move its accuracy too. A rank counts different parameters in different formats: read along a
    colour, not across colours.
    """
    title = "Final accuracy against each decomposed layer's rank\n(mean ± std over the cells at that rank)"
    ok = decomposed_ok(cells)
    needed = {"cell_id", "layer", "info"}
    if ok.empty or layers is None or layers.empty or not needed <= set(layers.columns):
        return _empty(title, "No ok decomposed cells with per-layer records to plot.")
    keys = [c for c in KEY_COLUMNS if c in ok.columns]
    # The cell's keys come from the cells frame, so a layers frame without them still joins.
    rows = layers[["cell_id", "layer", "info"]].merge(ok[["cell_id", *keys, "acc_final"]], on="cell_id")
    infos = [layer_info(text) for text in rows["info"]]
    rows = rows.assign(rank_x=[_rank_scalar(info.get("rank")) for info in infos],
                       layer_method=[str(info.get("method") or method) for info, method in zip(infos, rows["method"])])
    rows = rows.dropna(subset=["rank_x"])
    if rows.empty:
        return _empty(title, "No decomposed layer of an ok cell records its rank.")
    rows = rows.assign(cells_of=categories(rows))
    colours = _colours(rows["layer_method"].unique())
    panels, notes = _panels(rows, ["layer", "cells_of"])
    figure, axes = _figure(len(panels), 3, 3.0)
    clipped = 0
    for axis, (name, panel) in zip(axes, panels):
        summary = seed_summary(panel, ["acc_final"], ["layer_method", "rank_x"]).sort_values("rank_x")
        baseline = _dense_lines(axis, cells, panel)
        cut, floor = _clip_accuracy(axis, summary["acc_final_mean"], baseline)
        clipped += cut
        for method, points in summary.groupby("layer_method"):
            _accuracy_points(axis, points["rank_x"], points, floor, fmt="o-", color=colours[method],
                             linewidth=1.0, markersize=4, alpha=0.85)
        layer, _, target = name.rpartition(" / ")
        axis.set_title(f"layer {layer} in {target} cells", fontsize=10)  # a bare path can read as a number
        _ratio_axis(axis, "layer rank (largest entry of a list)", summary["rank_x"])
        axis.set_ylabel("final test accuracy %")
        axis.grid(alpha=0.3)
    notes += _spread_notes(clipped)
    notes.append("Each point pools backends, rank selections, ratios and seeds at that rank; a rank means "
                 "different sizes in different formats: compare points of one colour.")
    handles = [Line2D([], [], color=colours[m], marker="o", linestyle="-", label=m) for m in colours]
    figure.legend(handles=handles + _dense_legend(cells), loc="outside right upper", fontsize=8,
                  title="layer method")
    figure.suptitle(title, fontsize=11)
    _note(figure, notes)
    return figure


def tensorize_sweep(cells: pd.DataFrame) -> Figure:
    """Final accuracy, decomposed-layer parameters and measured speedup against the number of modes d.

    Only (backend, method) pairs that ran at two or more d are drawn: one line per (backend, method)
    and configuration, linestyle per ratio, hollow markers for padded shapes (``-pad``).
    """
    title = "Tensorized Linear layers against their number of modes d"
    ok = decomposed_ok(cells)
    notes = []
    if not ok.empty:
        shapes = [_modes(label) for label in ok["tensorize"]]
        ok = ok.assign(d=[d for d, _ in shapes], pad=[pad for _, pad in shapes])
        if ok["tensorize"].astype(str).str.startswith(EXPLICIT).any():
            notes.append("Cells with explicit per-layer shapes have no single d and are left out.")
        ok = ok.dropna(subset=["d"])
        # A method a backend does not tensorize runs once (d does not apply to it), so it is not a sweep.
        where = ["backend", "method", "model", "dataset", "target"]
        ok = ok[ok.groupby(where)["d"].transform("nunique") > 1] if not ok.empty else ok
    if ok.empty:
        return _empty(title, "No (backend, method) ran at two or more numbers of modes d (--tt-d).")
    colours = backend_colours(cells["backend"].unique())
    markers = _markers(ok["method"].unique())
    ratios = sorted(ok["ratio"].unique())
    styles = {r: RATIO_STYLES[i % len(RATIO_STYLES)] for i, r in enumerate(ratios)}
    groups, more = _panels(ok, ["target"], limit=MAX_PANELS // 3)
    notes += more
    figure, axes = _figure(3 * len(groups), 3, 3.0)
    clipped = 0
    measures = [("acc_final", "final test accuracy %"), ("params", "params of the decomposed layers"),
                ("speedup", "speedup × (dense / decomposed latency)")]
    series = ["backend", "method", "init", "rank_selection", "ratio", "pad"]
    for index, (name, frame) in enumerate(groups):
        summary = seed_summary(frame, [m for m, _ in measures], series + ["d"]).sort_values("d")
        row = axes[3 * index: 3 * index + 3]
        baseline = _dense_lines(row[0], cells, frame)
        cut, floor = _clip_accuracy(row[0], summary["acc_final_mean"], baseline)
        clipped += cut
        row[2].axhline(1.0, color="black", linewidth=0.8)
        for (backend, method, init, _, ratio, pad), points in summary.groupby(series):
            style = dict(fmt=markers[method] + styles[ratio], color=colours[backend], linewidth=1.0, markersize=5,
                         markerfacecolor="none" if pad or init == "scratch" else colours[backend])
            _accuracy_points(row[0], points["d"], points, floor, **style)
            for axis, metric in zip(row[1:], ("params", "speedup")):
                axis.errorbar(points["d"], points[f"{metric}_mean"], yerr=points[f"{metric}_std"], capsize=2,
                              **style)
        for axis, (metric, label) in zip(row, measures):
            if metric == "params":  # parameters fall roughly geometrically with d; speedup stays linear near 1
                _log_y(axis)
            axis.set_xticks(sorted(summary["d"].unique()))
            axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_xlabel("modes d of the tensorized Linear layers", fontsize=9)
            axis.set_ylabel(label, fontsize=9)
            axis.set_title(f"{name + ': ' if name else ''}{label.split(' (')[0]}", fontsize=10)
            axis.grid(alpha=0.3)
    notes += _spread_notes(clipped, ok)
    handles = [Line2D([], [], color=colours[b], marker="o", linestyle="none", label=b)
               for b in sorted(ok["backend"].unique())]
    handles += [Line2D([], [], color="gray", marker=m, linestyle="none", label=f"method {n}")
                for n, m in markers.items()]
    handles += [Line2D([], [], color="gray", linestyle=styles[r],
                       label="selector's own total" if r == NO_RATIO else f"ratio ×{r:g}") for r in ratios]
    if ok["pad"].any():
        handles.append(Line2D([], [], color="gray", marker="o", markerfacecolor="none", linestyle="none",
                              label="padded shapes (or from scratch)"))
    figure.legend(handles=handles + _dense_legend(cells), loc="outside right upper", fontsize=8)
    figure.suptitle(title + "\n(mean ± std over seeds; only (backend, method) pairs run at ≥ 2 values of d)",
                    fontsize=11)
    _note(figure, notes)
    return figure
