"""What the plots share: sizes, markers and colours, empty figures, panels, axes, dense lines, clipping."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterable

import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from harness.config.tensorize import Tensorization
from harness.results.aggregate import CONTROL_BACKEND, MIXED, control_ok

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


def summary_single_seed(ok: pd.DataFrame) -> bool:
    """True when no configuration has more than one seed (so there is no spread to draw)."""
    keys = ["backend", "model", "dataset", "method", "target", "init", "ratio", "rank_selection", "tensorize"]
    return ok.groupby(keys).size().max() <= 1


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


def _modes(label: object) -> tuple[float, bool]:
    """(number of modes d, padded) of a ``tensorize`` label; d is NaN for explicit shapes (d per layer) or junk."""
    try:
        setting = Tensorization.parse(label if isinstance(label, str) else "")
    except ValueError:
        return math.nan, False
    return (math.nan if setting.explicit else float(setting.d)), setting.pad
