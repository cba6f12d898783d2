"""The plots of every run: accuracy and speedup against compression, epoch curves, decomposition time, targets."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.results.aggregate import CONTROL_BACKEND, MIXED, categories, control_ok, decomposed_ok, seed_summary
from harness.results.plots.common import (
    ACCURACY_WINDOW,
    CURVE_DODGE,
    EPOCH_MIN_SPAN,
    MAX_PANELS,
    TARGET_COLOURS,
    TARGET_MARKERS,
    _clip_accuracy,
    _curve,
    _dense_legend,
    _dense_lines,
    _draw_curve,
    _empty,
    _figure,
    _log_y,
    _markers,
    _note,
    _panels,
    _pareto,
    _ratio_axis,
    _share_y,
    _spread_notes,
    backend_colours,
)


def accuracy_vs_compression(cells: pd.DataFrame) -> Figure:
    """Final accuracy vs achieved compression per method, with each backend's Pareto front."""
    title = "Final accuracy vs compression of the decomposed layers\n(mean ± std over seeds; lines: each backend's Pareto front)"
    ok = decomposed_ok(cells)
    if ok.empty:
        return _empty(title, "No ok decomposed cells to plot.")
    colours = backend_colours(cells["backend"].unique())
    panels, notes = _panels(ok, ["method"])
    figure, axes = _figure(len(panels), 3, 3.0)
    clipped = 0
    for axis, (name, panel) in zip(axes, panels):
        summary = seed_summary(panel, ["compression", "acc_final"],
                               ["backend", "target", "init", "ratio", "rank_selection", "tensorize"])
        baseline = _dense_lines(axis, cells, panel)
        cut, floor = _clip_accuracy(axis, summary["acc_final_mean"], baseline)
        clipped += cut
        for (backend, target, init), points in summary.groupby(["backend", "target", "init"]):
            low = points["acc_final_mean"] < floor
            axis.errorbar(points["compression_mean"].where(~low), points["acc_final_mean"],
                          yerr=points["acc_final_std"], fmt=TARGET_MARKERS.get(target, "D"),
                          color=colours[backend], markerfacecolor="none" if init == "scratch" else colours[backend],
                          capsize=2, linestyle="none")
            # A collapsed cell is shown as an arrow at the lower edge rather than stretching the axis.
            axis.plot(points["compression_mean"][low], [floor] * int(low.sum()), "v", color=colours[backend],
                      linestyle="none")
        for backend, points in summary.groupby("backend"):
            front = _pareto(points, "compression_mean", "acc_final_mean")
            axis.step(front["compression_mean"], front["acc_final_mean"], where="pre", color=colours[backend],
                      alpha=0.6, linewidth=1.2)
        axis.set_title(name, fontsize=10)
        _ratio_axis(axis, "compression × (decomposed layers)", summary["compression_mean"], summary["ratio"])
        axis.set_ylabel("final test accuracy %")
        axis.grid(alpha=0.3)
    notes += _spread_notes(clipped, ok)
    handles = [Line2D([], [], color=colours[b], marker="o", linestyle="-", label=b) for b in sorted(ok["backend"].unique())]
    handles += [Line2D([], [], color="gray", marker=TARGET_MARKERS.get(t, "D"), linestyle="none", label=f"target {t}")
                for t in sorted(ok["target"].unique())]
    if (ok["init"] == "scratch").any():
        handles.append(Line2D([], [], color="gray", marker="o", markerfacecolor="none", linestyle="none",
                              label="from scratch"))
    figure.legend(handles=handles + _dense_legend(cells), loc="outside right upper", fontsize=8)
    figure.suptitle(title, fontsize=11)
    _note(figure, notes)
    return figure


def speedup_vs_compression(cells: pd.DataFrame) -> Figure:
    """Measured latency speedup vs compression per target, against the FLOP-reduction bound."""
    title = "Measured latency speedup vs compression (mean ± std over seeds)"
    ok = decomposed_ok(cells)
    if ok.empty or pd.to_numeric(ok["speedup"], errors="coerce").notna().sum() == 0:
        return _empty(title, "No ok decomposed cells with a measured speedup.")
    colours = backend_colours(cells["backend"].unique())
    methods = _markers(ok["method"].unique())
    panels, notes = _panels(ok, ["target"])
    figure, axes = _figure(len(panels), 3, 3.6)
    for axis, (name, panel) in zip(axes, panels):
        summary = seed_summary(panel, ["compression", "speedup", "flop_speedup"],
                               ["backend", "method", "init", "ratio", "rank_selection", "tensorize"])
        bound = summary.groupby("ratio")[["compression_mean", "flop_speedup_mean"]].median().sort_values(
            "compression_mean")
        axis.plot(bound["compression_mean"], bound["flop_speedup_mean"], color="gray", linestyle="--",
                  marker="x", linewidth=1.2)
        axis.axhline(1.0, color="black", linewidth=0.8)
        for (backend, method), points in summary.groupby(["backend", "method"]):
            axis.errorbar(points["compression_mean"], points["speedup_mean"], yerr=points["speedup_std"],
                          fmt=methods[method], color=colours[backend], capsize=2, linestyle="none", markersize=5)
        _log_y(axis)
        axis.set_title(f"target {name}", fontsize=10)
        _ratio_axis(axis, "compression × (decomposed layers)", summary["compression_mean"], summary["ratio"])
        axis.set_ylabel("speedup × (dense / decomposed latency)")
        axis.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[b], marker="o", linestyle="none", label=b)
               for b in sorted(ok["backend"].unique())]
    handles += [Line2D([], [], color="gray", marker=m, linestyle="none", label=f"method {name}")
                for name, m in methods.items()]
    handles += [Line2D([], [], color="gray", linestyle="--", marker="x", label="FLOP bound (median per ratio)"),
                Line2D([], [], color="black", linewidth=0.8, label="as fast as dense")]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    figure.suptitle(title)
    _note(figure, notes)
    return figure


def accuracy_vs_latency(cells: pd.DataFrame) -> Figure:
    """Final accuracy (whole-model compression in a data-free run) against measured whole-network latency, one panel
    per model and dataset, with the dense network's latency and accuracy as black lines: what is left of the dense
    line is faster, what is above the dotted one more accurate."""
    ok = decomposed_ok(cells)
    has_accuracy = not ok.empty and pd.to_numeric(ok.get("acc_final"), errors="coerce").notna().any()
    y_name = "final test accuracy %" if has_accuracy else "compression × (whole model)"
    title = f"{'Final accuracy' if has_accuracy else 'Whole-model compression'} vs measured latency (mean over seeds)"
    if ok.empty or pd.to_numeric(ok.get("latency_ms"), errors="coerce").notna().sum() == 0:
        return _empty(title, "No ok decomposed cells with a measured latency.")
    ok = ok.assign(model_compression=pd.to_numeric(ok["model_params_dense"], errors="coerce")
                   / pd.to_numeric(ok["model_params"], errors="coerce"))
    y = "acc_final" if has_accuracy else "model_compression"
    colours = backend_colours(cells["backend"].unique())
    panels, notes = _panels(ok, ["model", "dataset"])
    figure, axes = _figure(len(panels), 3, 3.2)
    for axis, (name, panel) in zip(axes, panels):
        summary = seed_summary(panel, ["latency_ms", "latency_dense_ms", y],
                               ["backend", "method", "target", "init", "ratio", "rank_selection", "tensorize"])
        axis.axvline(summary["latency_dense_ms_mean"].median(), color="black", linewidth=0.9)
        if has_accuracy:
            _dense_lines(axis, cells, panel, control=False)
        for (backend, target), points in summary.groupby(["backend", "target"]):
            axis.plot(points["latency_ms_mean"], points[f"{y}_mean"], TARGET_MARKERS.get(target, "D"),
                      color=colours[backend], linestyle="none", markersize=5)
        axis.set_xscale("log")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("latency ms (whole network, log)")
        axis.set_ylabel(y_name)
        axis.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[b], marker="o", linestyle="none", label=b)
               for b in sorted(ok["backend"].unique())]
    handles += [Line2D([], [], color="gray", marker=TARGET_MARKERS.get(t, "D"), linestyle="none", label=f"target {t}")
                for t in sorted(ok["target"].unique())]
    handles.append(Line2D([], [], color="black", linewidth=0.9, label="dense latency"))
    figure.legend(handles=handles + (_dense_legend(cells)[:1] if has_accuracy else []), loc="outside right upper",
                  fontsize=8)
    figure.suptitle(title, fontsize=11)
    _note(figure, notes)
    return figure


def epoch_curves(cells: pd.DataFrame, epochs: pd.DataFrame) -> Figure:
    """Test accuracy per epoch at the run's median ratio, decomposed backends vs the dense control."""
    ok = decomposed_ok(cells)
    if ok.empty:
        return _empty("Test accuracy per epoch", "No ok decomposed cells to plot.")
    ratios = sorted(ok["ratio"].unique())
    ratio = ratios[(len(ratios) - 1) // 2]
    title = f"Test accuracy per epoch at ratio ×{ratio:g} (median ratio of the run; band: ± std over seeds)"
    colours = backend_colours(cells["backend"].unique())
    control = control_ok(cells)
    panels, notes = _panels(ok[ok["ratio"] == ratio], ["target", "method"])
    figure, axes = _figure(len(panels), 4, 2.6)
    backends = sorted(ok["backend"].unique())
    markers = _markers(backends)
    offsets = {b: (i - (len(backends) - 1) / 2) * CURVE_DODGE for i, b in enumerate(backends)}
    clipped = False
    for axis, (name, panel) in zip(axes, panels):
        # The control is drawn as its whole curve below, so only the baseline gets a horizontal line.
        baseline = _dense_lines(axis, cells, panel, control=False)
        mine = control.merge(panel[["model", "dataset"]].drop_duplicates(), on=["model", "dataset"])
        lows = []
        for (backend, init), group in panel.groupby(["backend", "init"]):
            curve = _curve(group, epochs)
            # Backends with the same curve would hide each other: each is nudged sideways and has its marker.
            _draw_curve(axis, curve, colours[backend], ":" if init == "scratch" else "-", marker=markers[backend],
                        offset=offsets[backend])
            lows.append(curve["mean"])
        if not mine.empty:  # last and on top, so no backend's curve hides it
            curve = _curve(mine, epochs)
            _draw_curve(axis, curve, colours[CONTROL_BACKEND], "--", width=1.6, zorder=4)
            lows.append(curve["mean"])
        clipped |= _clip_accuracy(axis, pd.concat(lows) if lows else pd.Series(dtype=float), baseline)[0] > 0
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("epoch (0 = after decomposition)", fontsize=8)
        axis.set_ylabel("test accuracy %", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
    _share_y(list(axes), EPOCH_MIN_SPAN)
    if control.empty:
        notes.append("No dense control rows in this run.")
    if clipped:
        notes.append(f"Axes cut {ACCURACY_WINDOW:g} pp below the dense baseline.")
    handles = [Line2D([], [], color=colours[b], marker=markers[b], markerfacecolor="none", markersize=4, label=b)
               for b in backends]
    if (ok["init"] == "scratch").any():
        handles.append(Line2D([], [], color="gray", linestyle=":", label="from scratch"))
    labels = [h.get_label() for h in handles]
    if not control.empty:
        handles.append((Patch(color="black", alpha=0.15, linewidth=0),
                        Line2D([], [], color="black", linestyle="--", linewidth=1.6)))
        labels.append("dense control (fine-tuned)")
    handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1))
    labels.append("dense baseline")
    figure.legend(handles=handles, labels=labels, loc="outside right upper", fontsize=8)
    figure.suptitle(title, fontsize=11)
    _note(figure, notes)
    return figure


def decomposition_time(cells: pd.DataFrame) -> Figure:
    """Seconds per cell spent decomposing, per backend and method (median, bar: min–max), log scale."""
    title = "Decomposition time per cell (median over ratios and seeds; bar: min–max)"
    ok = decomposed_ok(cells)
    if not ok.empty:
        ok = ok[ok["init"] != "scratch"].assign(decompose_s=pd.to_numeric(ok["decompose_s"], errors="coerce"))
        ok = ok[ok["decompose_s"] > 0]
    if ok.empty:
        return _empty(title, "No ok decomposed cell records a decomposition time.")
    colours = backend_colours(cells["backend"].unique())
    backends = sorted(ok["backend"].unique())
    panels, notes = _panels(ok, ["target"])
    figure, axes = _figure(len(panels), 2, 3.4)
    width = 0.8 / len(backends)
    for axis, (name, panel) in zip(axes, panels):
        methods = sorted(panel["method"].unique())
        stats = panel.groupby(["method", "backend"])["decompose_s"].agg(["median", "min", "max"]).reset_index()
        for index, backend in enumerate(backends):
            mine = stats[stats["backend"] == backend]
            offset = (index - (len(backends) - 1) / 2) * width
            x = [methods.index(method) + offset for method in mine["method"]]
            axis.errorbar(x, mine["median"], yerr=[mine["median"] - mine["min"], mine["max"] - mine["median"]],
                          fmt="o", color=colours[backend], capsize=2, linestyle="none")
        axis.set_xticks(range(len(methods)), methods, fontsize=9)
        _log_y(axis)
        axis.set_title(f"target {name}", fontsize=10)
        axis.set_xlabel("method")
        axis.set_ylabel("decomposition time per cell, s")
        axis.grid(alpha=0.3, which="major", axis="y")
    handles = [Line2D([], [], color=colours[b], marker="o", linestyle="none", label=b) for b in backends]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    figure.suptitle(title)
    _note(figure, notes)
    return figure


def target_comparison(cells: pd.DataFrame) -> Figure:
    """Conv-only vs linear-only vs both (vs mixed methods), compared at equal whole-model compression.

    A mixed cell (a mix, or ``auto`` choosing the method per layer) is its own category beside the
    targets, so a network with one method everywhere and one with a method per layer stay apart.
    """
    ok = decomposed_ok(cells)
    mixed = not ok.empty and (categories(ok) == MIXED).any()
    # With mixed networks the longer list needs a shorter phrasing, or the title runs under the legend.
    title = ("Conv vs linear vs both vs mixed networks at equal whole-model compression" if mixed else
             "Which layers to decompose: conv vs linear vs both, at equal whole-model compression")
    if ok.empty:
        return _empty(title, "No ok decomposed cells to plot.")
    ok = ok.assign(model_compression=pd.to_numeric(ok["model_params_dense"], errors="coerce")
                   / pd.to_numeric(ok["model_params"], errors="coerce"), category=categories(ok))
    groups, notes = _panels(ok, [], limit=MAX_PANELS // 2)
    figure, axes = _figure(2 * len(groups), 2, 3.4)
    measures = [("acc_final", "final test accuracy %", "best final accuracy"),
                ("speedup", "speedup × (dense / decomposed latency)", "best measured speedup")]
    for index, (name, frame) in enumerate(groups):
        summary = seed_summary(frame, ["model_compression", "acc_final", "speedup"],
                               ["category", "target", "backend", "method", "init", "ratio", "rank_selection",
                                "tensorize"])
        for (metric, label, what), axis in zip(measures, axes[2 * index: 2 * index + 2]):
            baseline = _dense_lines(axis, cells, frame) if metric == "acc_final" else None
            if metric == "speedup":
                axis.axhline(1.0, color="black", linewidth=0.8)
            clipped = _clip_accuracy(axis, summary[f"{metric}_mean"], baseline)[0] if baseline else 0
            for category, points in summary.groupby("category"):
                colour = TARGET_COLOURS.get(category, "gray")
                axis.scatter(points["model_compression_mean"], points[f"{metric}_mean"], color=colour, alpha=0.35,
                             s=14, marker=TARGET_MARKERS.get(category, "D"))
                front = _pareto(points, "model_compression_mean", f"{metric}_mean")
                axis.step(front["model_compression_mean"], front[f"{metric}_mean"], where="pre", color=colour,
                          linewidth=1.8)
            if clipped:
                notes.append(f"{clipped} accuracy point(s) far below the baseline are off the axis.")
            _ratio_axis(axis, "whole-model compression ×\n(dense / decomposed model params)",
                        summary["model_compression_mean"])
            axis.set_ylabel(label)
            axis.set_title(f"{name + ': ' if name else ''}{what} at ≥ this compression", fontsize=10)
            axis.grid(alpha=0.3)
    shown = sorted(ok["category"].unique(), key=lambda c: (c == MIXED, c))  # mixed last, beside the targets
    if "all" not in shown:
        notes.append("No cells decompose conv and linear layers together with one method (target 'all').")
    notes.append("Equal compression = the same share of the whole network's parameters removed, not the same ratio.")
    handles = [Line2D([], [], color=TARGET_COLOURS.get(c, "gray"), marker=TARGET_MARKERS.get(c, "D"),
                      label="mixed (a method per layer)" if c == MIXED else c) for c in shown] + _dense_legend(cells)
    figure.legend(handles=handles, loc="outside right upper", fontsize=8, title="layers decomposed")
    figure.suptitle(title + "\n(dots: backend × method × ratio, mean over seeds; line: best at ≥ compression)",
                    fontsize=11)
    _note(figure, notes)
    return figure
