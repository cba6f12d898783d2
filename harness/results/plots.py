"""Plots of a run: matplotlib figures built from the cells, epochs and layers frames, no global state.

Each function takes the frames of a run and returns a :class:`matplotlib.figure.Figure`
(created directly, never through pyplot, so plotting is thread-safe and backend-free);
:func:`to_png` renders one. A backend keeps one colour in every plot
(:func:`backend_colours`), the dense control is always black: in the epoch curves it is
the black dashed "dense control (fine-tuned)" curve with its seed band in every panel,
the dotted line is the dense baseline. Points are means over seeds of ok cells with the
seed std as error bar or band. Compression axes are log 2 with ticks only at the run's
nominal ratios and powers of two (:func:`_ratio_axis`), so nearby achieved
compressions do not print their labels on top of each other. Missing data (one seed, no
control rows, no "all" target, no ok cells) never raises: a plot draws what exists and
says in a note what is not there.

Besides the plots every run gets, three belong to studies a run may or may not hold: the
rank-selection study (accuracy and speedup against compression per rank selection, so
selectors matched to the same total line up vertically), the tensorized-shapes sweep
(accuracy, parameters and speedup against the number of modes d) and accuracy against
each layer's rank (from the layers frame). Conv-only, linear-only, both and mixed
networks (a mix or ``auto``: a method chosen per layer) are compared at equal
whole-model compression. A plot with nothing to draw for a run returns a small note
figure that :func:`nothing_to_show` recognises, so a report can fold it away instead of
showing empty panels. :data:`PLOTS` lists every plot with its caption.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from collections.abc import Callable, Iterable

import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    NullFormatter,
    NullLocator,
)

from harness.results.aggregate import CONTROL_BACKEND, MIXED, categories, control_ok, decomposed_ok, seed_summary
from harness.plan.planner import NO_RATIO
from harness.results.store import KEY_COLUMNS, RunResults
from harness.config.tensorize import EXPLICIT, Tensorization

DPI = 100
WIDTH = 11.0  # inches: 1100 px at DPI
MAX_PANELS = 16
ACCURACY_WINDOW = 15.0  # percentage points shown below the dense baseline; lower points are marked at the edge
TARGET_MARKERS = {"conv": "o", "linear": "s", "all": "^", MIXED: "D"}
TARGET_COLOURS = {"conv": "#1b9e77", "linear": "#d95f02", "all": "#7570b3", MIXED: "#e7298a"}
MARKERS = "osD^vP*X<>"
RATIO_STYLES = ["-", "--", ":", "-."]
DODGE = 0.012  # log2 units between neighbouring rank selections drawn at the same compression
CURVE_DODGE = 0.06  # epochs between neighbouring backends' epoch curves, so identical curves stay visible
EPOCH_MIN_SPAN = 4.0  # accuracy points: the least y-range of the epoch panels (a 1-point wiggle is not a cliff)
# The attribute by which a note figure (nothing to plot for this run) is told apart from a plot.
NOTHING_TO_SHOW = "harness_nothing_to_show"


def backend_colours(backends: Iterable[str]) -> dict[str, str]:
    """One tab10 colour per backend (sorted by name), the dense control black."""
    colours = _colours([b for b in backends if b != CONTROL_BACKEND], palette="tab10")
    colours[CONTROL_BACKEND] = "#000000"
    return colours


def to_png(figure: Figure) -> bytes:
    """The figure as PNG bytes at :data:`DPI`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _figure(panels: int, columns: int, height: float) -> tuple[Figure, list]:
    columns = max(1, min(columns, panels))
    rows = -(-panels // columns)
    figure = Figure(figsize=(WIDTH, 0.8 + rows * height), dpi=DPI, layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _empty(title: str, note: str) -> Figure:
    figure = Figure(figsize=(WIDTH, 2.0), dpi=DPI, layout="constrained")
    figure.suptitle(title)
    axis = figure.add_subplot()
    axis.axis("off")
    axis.text(0.5, 0.5, note, ha="center", va="center", fontsize=11, color="dimgray", wrap=True)
    # Marked so a report can fold the note away (a study the run did not hold is not worth a full figure).
    setattr(figure, NOTHING_TO_SHOW, note)
    return figure


def nothing_to_show(figure: Figure) -> str | None:
    """The note of a figure that has nothing to plot for its run (it only says why), else None."""
    return getattr(figure, NOTHING_TO_SHOW, None)


def _colours(names: Iterable[str], palette: str = "Dark2") -> dict[str, str]:
    """One colour per name (sorted); the default palette is not the backends' (tab10), so the two are not confused."""
    colours = colormaps[palette].colors
    return {name: to_hex(colours[i % len(colours)]) for i, name in enumerate(sorted({str(n) for n in names}))}


def _markers(names: Iterable[str]) -> dict[str, str]:
    return {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(sorted({str(n) for n in names}))}


def _note(figure: Figure, notes: list[str]) -> None:
    if notes:
        figure.supxlabel(textwrap.fill("Note: " + " ".join(notes), 150), fontsize=9, color="dimgray")


def _panels(frame: pd.DataFrame, by: list[str], limit: int = MAX_PANELS
            ) -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """Groups of ``frame`` by ``by`` (model/dataset added when the run has several), capped at ``limit``."""
    several = frame[["model", "dataset"]].drop_duplicates().shape[0] > 1
    keys = (["model", "dataset"] if several else []) + by
    if not keys:
        return [("", frame)], []
    groups = [(" / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,))), group)
              for key, group in frame.groupby(keys, sort=True)]
    notes = [f"{len(groups) - limit} more panels left out."] if len(groups) > limit else []
    return groups[:limit], notes


def _ratio_axis(axis, label: str, values: pd.Series, nominal: Iterable[float] = ()) -> None:
    """Log-2 x axis with major ticks only at the run's nominal ratios and at powers of two, as plain numbers.

    Achieved compressions scatter around their nominal ratio (4, 4.1, 4.2, 4.3), so a tick
    per value would print on top of each other; ticks go only to ``nominal`` ratios (first)
    and powers of two inside the data's range, neighbours at least a seventh of the axis
    apart; the axis spans the data and the nominal ratios. No minor ticks, no 10^x labels.
    A range holding none of them gets one tick at its middle, rounded to two significant digits.
    """
    axis.set_xscale("log", base=2)
    axis.set_xlabel(label)
    axis.xaxis.set_minor_locator(NullLocator())
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    values = pd.to_numeric(values, errors="coerce")
    values = values[values > 0]
    if values.empty:
        return
    nominal = sorted({float(r) for r in nominal if pd.notna(r) and float(r) > 0})
    # The nominal ratios stay in view, so a format that overshoots (×4 asked, ×4.8 reached) shows it.
    low, high = min([values.min(), *nominal]) / 1.12, max([values.max(), *nominal]) * 1.12
    axis.set_xlim(low, high)
    candidates = nominal + [2.0 ** k for k in range(-6, 16)]
    gap = math.log2(high / low) / 7
    ticks: list[float] = []
    for tick in candidates:
        if low <= tick <= high and all(abs(math.log2(tick / kept)) >= gap for kept in ticks):
            ticks.append(tick)
    if not ticks:
        middle = math.sqrt(low * high)
        ticks = [float(f"{middle:.2g}")]
    axis.xaxis.set_major_locator(FixedLocator(sorted(ticks)))


def _log_y(axis) -> None:
    axis.set_yscale("log")
    axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_formatter(NullFormatter())


def _dense_lines(axis, cells: pd.DataFrame, panel: pd.DataFrame, control: bool = True) -> float | None:
    """Dense baseline (dotted) and, with ``control``, the fine-tuned dense control's final accuracy (dashed)."""
    mine = cells.merge(panel[["model", "dataset"]].drop_duplicates(), on=["model", "dataset"])
    baseline = pd.to_numeric(mine["acc_baseline"], errors="coerce").mean()
    if pd.notna(baseline):
        axis.axhline(baseline, color="black", linestyle=":", linewidth=1)
    final = pd.to_numeric(control_ok(mine)["acc_final"], errors="coerce").mean() if control and not mine.empty else None
    if final is not None and pd.notna(final):
        axis.axhline(final, color="black", linestyle="--", linewidth=1)
    return baseline if pd.notna(baseline) else None


def _clip_accuracy(axis, values: pd.Series, baseline: float | None) -> tuple[int, float]:
    """Keep the axis near the baseline so a collapsed cell does not squash the rest.

    Returns the number of values cut off and the floor (-inf when nothing is cut).
    """
    values = values.dropna()
    if baseline is None or values.empty or values.min() >= baseline - ACCURACY_WINDOW:
        return 0, -float("inf")
    floor = baseline - ACCURACY_WINDOW
    top = max(values.max(), baseline) + 0.5
    axis.set_ylim(floor - 0.04 * (top - floor), top)
    return int((values < floor).sum()), floor


def _dense_legend(cells: pd.DataFrame) -> list[Line2D]:
    handles = [Line2D([], [], color="black", linestyle=":", label="dense baseline")]
    if not control_ok(cells).empty:
        handles.append(Line2D([], [], color="black", linestyle="--", label="dense control (fine-tuned)"))
    return handles


def _pareto(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not beaten by another with both more ``x`` and more ``y``, sorted by ``x``."""
    ordered = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[False, False])
    front = ordered[ordered[y] > ordered[y].cummax().shift(fill_value=-float("inf"))]
    return front.sort_values(x)


def _spread_notes(clipped: int, ok: pd.DataFrame | None = None) -> list[str]:
    """Notes on what an accuracy plot could not show: points below the window, and error bars with one seed."""
    notes = []
    if clipped:
        notes.append(f"{clipped} point(s) more than {ACCURACY_WINDOW:g} pp below the dense baseline are drawn "
                     "as ▼ at the lower edge.")
    if ok is not None and summary_single_seed(ok):
        notes.append("One seed: no error bars.")
    return notes


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


def summary_single_seed(ok: pd.DataFrame) -> bool:
    """True when no configuration has more than one seed (so there is no spread to draw)."""
    keys = ["backend", "model", "dataset", "method", "target", "init", "ratio", "rank_selection", "tensorize"]
    return ok.groupby(keys).size().max() <= 1


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


def _curve(cells: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of test accuracy per epoch; epoch 0 is the accuracy right after decomposition."""
    start = pd.DataFrame({"cell_id": cells["cell_id"], "epoch": 0,
                          "test_acc": pd.to_numeric(cells["acc_decomposed"], errors="coerce")})
    rows = epochs.loc[epochs["cell_id"].isin(cells["cell_id"]), ["cell_id", "epoch", "test_acc"]]
    return pd.concat([start, rows]).dropna().groupby("epoch")["test_acc"].agg(["mean", "std"])


def _draw_curve(axis, curve: pd.DataFrame, colour: str, style: str, width: float = 1.4, zorder: float = 2,
                marker: str | None = None, offset: float = 0.0) -> None:
    """A mean curve with its ± std band; ``offset`` (epochs) and ``marker`` keep identical curves apart."""
    x = curve.index + offset
    axis.plot(x, curve["mean"], color=colour, linestyle=style, linewidth=width, zorder=zorder, marker=marker,
              markersize=4, markerfacecolor="none" if marker else None)
    if curve["std"].notna().any():
        axis.fill_between(x, curve["mean"] - curve["std"], curve["mean"] + curve["std"],
                          color=colour, alpha=0.15, linewidth=0, zorder=zorder - 0.5)


def _share_y(axes: list, min_span: float) -> None:
    """One y-range for every panel, at least ``min_span`` tall, so panels compare by eye and a 1-point wiggle is
    not drawn as a cliff."""
    limits = [axis.get_ylim() for axis in axes]
    if not limits:
        return
    low, high = min(lo for lo, _ in limits), max(hi for _, hi in limits)
    if high - low < min_span:
        middle = (high + low) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    for axis in axes:
        axis.set_ylim(low, high)


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


def _info(text: object) -> dict:
    """A layer row's ``info`` JSON as a dict; anything unreadable is an empty dict (the row is then skipped)."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _rank_scalar(rank: object) -> float:
    """A layer's rank as one number: an int as is, a list (Tucker-2's two ranks, a TT chain) by its largest entry.

    NaN for anything else (a missing or non-numeric rank), so such a layer is left out rather than guessed.
    """
    if isinstance(rank, bool):
        return math.nan
    if isinstance(rank, int | float):
        return float(rank) if math.isfinite(rank) and rank > 0 else math.nan
    if isinstance(rank, list | tuple):
        entries = [_rank_scalar(entry) for entry in rank]
        entries = [entry for entry in entries if not math.isnan(entry)]
        return max(entries) if entries else math.nan
    return math.nan


def _accuracy_points(axis, x, points: pd.DataFrame, floor: float, **style) -> None:
    """Mean accuracy with its seed std; a point more than the window below the baseline is a ▼ at the edge."""
    low = points["acc_final_mean"] < floor
    axis.errorbar(x.where(~low), points["acc_final_mean"].where(~low), yerr=points["acc_final_std"].where(~low),
                  capsize=2, **style)
    if low.any():
        axis.plot(x[low], [floor] * int(low.sum()), "v", color=style.get("color"), linestyle="none")


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
    infos = [_info(text) for text in rows["info"]]
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


def _modes(label: object) -> tuple[float, bool]:
    """(number of modes d, padded) of a ``tensorize`` label; d is NaN for explicit shapes (d per layer) or junk."""
    try:
        setting = Tensorization.parse(label if isinstance(label, str) else "")
    except ValueError:
        return math.nan, False
    return (math.nan if setting.explicit else float(setting.d)), setting.pad


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


PLOTS: dict[str, tuple[Callable[[RunResults], Figure], str]] = {
    "accuracy_vs_compression": (lambda r: accuracy_vs_compression(r.comparable),
                                ("Final accuracy against the achieved compression of the decomposed layers, one "
                                "panel per method; lines are each backend's Pareto front.")),
    "speedup_vs_compression": (lambda r: speedup_vs_compression(r.comparable),
                               ("Measured whole-network latency speedup against compression, one panel per target; "
                               "the grey dashed line is the speedup the FLOP reduction alone would give.")),
    "epoch_curves": (lambda r: epoch_curves(r.comparable, r.epochs),
                     ("Test accuracy per fine-tuning epoch at the median ratio, decomposed backends against the "
                     "dense control (black dashed); bands are ± one std over seeds.")),
    "decomposition_time": (lambda r: decomposition_time(r.comparable),
                           "Seconds per cell spent decomposing, per backend and method (log scale)."),
    "target_comparison": (lambda r: target_comparison(r.comparable),
                          ("Conv-only, linear-only and both (and mixed networks, a method per layer, where the run "
                           "has them) at equal whole-model compression: best final accuracy and best measured speedup "
                           "reachable at or above each compression.")),
    "rank_selection_study": (lambda r: rank_selection_study(r.comparable),
                             ("Rank selections compared: final accuracy and measured speedup against the achieved "
                              "compression of the decomposed layers, one row per method and target, one colour per "
                              "selection; a selection matched to another's total (SEL@REF) sits at the same "
                              "compression, so the two compare vertically.")),
    "accuracy_vs_rank": (lambda r: accuracy_vs_rank(r.comparable, r.layers),
                         ("Final accuracy against the rank each decomposed layer got (the largest entry when the rank "
                          "is a list, as for Tucker-2 or a TT chain), one panel per layer and target, one line per "
                          "layer method, each point pooling the backends, rank selections, ratios and seeds that gave "
                          "the layer that rank. The same rank costs different parameters in different formats, so "
                          "read along one colour; the per-layer table gives each layer's size.")),
    "tensorize_sweep": (lambda r: tensorize_sweep(r.comparable),
                        ("Tensorized Linear layers: final accuracy, parameters of the decomposed layers and measured "
                         "speedup against the number of modes d, one line per backend and method, linestyle per "
                         "ratio; only pairs that ran at two or more d.")),
}
