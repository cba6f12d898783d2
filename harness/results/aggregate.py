"""Seed aggregation shared by every report: mean, spread and count over seeds of comparable cells.

A configuration (backend, method, target, ratio, ...) is run once per seed; every
report states its numbers as a mean with the sample standard deviation across seeds
and the number of seeds behind it, so a difference smaller than the spread is visible
as such. Numbers are shown with a fixed precision per quantity: accuracies and pp with 2
decimals, stability metrics (last-k std, best−last drop, spread across seeds) with 3
(:data:`STABILITY_DIGITS`), seconds with 3 significant digits. The dense control rows
(the dense network fine-tuned like the decomposed ones) are told apart here once, so
that no report counts them as a backend, and so are mixed networks (:func:`categories`),
so that no report counts them as one more target.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from harness.config.mixing import AUTO, MIX_PREFIX
from harness.plan.cells import CONTROL_BACKEND, CONTROL_INIT
from harness.results.store import comparable_cells

STABILITY_DIGITS = 3  # last-k std and best−last drop are ~0.01 pp after a long cosine schedule
SECONDS_FORMAT = ".3g"  # seconds: 3 significant digits (0.0131 s, 8.31 s)

__all__ = [
    "CONTROL_BACKEND",
    "CONTROL_INIT",
    "MIXED",
    "SECONDS_FORMAT",
    "STABILITY_DIGITS",
    "categories",
    "control_ok",
    "decomposed_ok",
    "format_summary",
    "is_control",
    "layer_info",
    "mean_std",
    "seed_summary",
    "with_delta",
]

MIXED = "mixed"  # the category of a cell whose method is chosen per layer (a mix or auto), beside its target


def categories(cells: pd.DataFrame) -> pd.Series:
    """Which layers each cell decomposes and how: its target, or :data:`MIXED` for a method chosen per layer.

    A mix (``mix-...``) or ``auto`` gives different layers different methods, so it is kept apart from
    networks with one method throughout, whatever layers it targets.
    """
    method = cells["method"].astype(str)
    return cells["target"].where(~(method.str.startswith(MIX_PREFIX) | (method == AUTO)), MIXED)


def layer_info(text: object) -> dict:
    """A layer row's ``info`` JSON as a dict; anything unreadable is an empty dict (the row is then skipped)."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def is_control(cells: pd.DataFrame) -> pd.Series:
    """True for the dense control rows."""
    return (cells["init"] == CONTROL_INIT) | (cells["backend"] == CONTROL_BACKEND)


def decomposed_ok(cells: pd.DataFrame) -> pd.DataFrame:
    """Comparable cells (ok and within budget, :func:`harness.results.store.comparable_cells`) of decomposed networks."""
    comparable = comparable_cells(cells)
    if comparable.empty:
        return comparable
    return comparable[~is_control(comparable)]


def control_ok(cells: pd.DataFrame) -> pd.DataFrame:
    """Comparable dense control rows."""
    comparable = comparable_cells(cells)
    if comparable.empty:
        return comparable
    return comparable[is_control(comparable)]


def with_delta(cells: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``delta`` = final accuracy − dense baseline accuracy (percentage points)."""
    out = cells.copy()
    out["delta"] = pd.to_numeric(out.get("acc_final"), errors="coerce") - pd.to_numeric(
        out.get("acc_baseline"), errors="coerce")
    return out


def numeric_column(cells: pd.DataFrame, column: str) -> pd.Series:
    """``column`` as numbers, NaN where a row holds none or the run did not record it (a phase it did not run)."""
    if column not in cells.columns:
        return pd.Series(math.nan, index=cells.index, dtype=float)
    return pd.to_numeric(cells[column], errors="coerce")


def with_numbers(cells: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` exists and holds a number in some row (a phase the run did not run leaves it out)."""
    return bool(numeric_column(cells, column).notna().any())


def seed_summary(cells: pd.DataFrame, metrics: list[str], group: list[str]) -> pd.DataFrame:
    """Per group of ok cells: ``<metric>_mean``, ``<metric>_std`` (ddof=1, NaN for one seed) and ``n``."""
    columns = group + [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + ["n"]
    ok = comparable_cells(cells)
    if ok.empty:
        return pd.DataFrame(columns=columns)
    # Metrics stored as None (e.g. a recovery that never happened) arrive as objects; numbers are needed.
    values = pd.DataFrame({m: pd.to_numeric(ok[m], errors="coerce") if m in ok.columns else math.nan
                           for m in metrics}, index=ok.index)
    grouped = pd.concat([ok[group], values], axis=1).groupby(group, sort=True, dropna=False)
    table = grouped[metrics].agg(["mean", "std"])  # pandas' std is the sample std (ddof=1)
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    table["n"] = grouped.size()
    return table.reset_index()[columns]


def _fixed(value: float, digits: int | str) -> str:
    """``value`` with ``digits`` decimals, or with a format spec such as ".3g"."""
    return format(value, digits if isinstance(digits, str) else f".{digits}f")


def mean_std(mean: float, std: float | None, n: float | None, digits: int | str = 2, unit: str = "") -> str:
    """"97.10 ± 0.21 (n=3)", "97.10 (n=1)"; n=None leaves the count out; a missing mean gives "–".

    ``digits`` is a number of decimals or a format spec (".3g" for 3 significant digits; the
    std then gets the decimals the mean shows).
    """
    if mean is None or not math.isfinite(float(mean)):
        return "–"
    count = None if n is None or not math.isfinite(float(n)) else int(n)
    text = _fixed(mean, digits)
    if std is not None and math.isfinite(float(std)) and (count is None or count > 1):
        # With significant digits the spread gets as many decimals as the mean shows: "0.00501 ± 0.00041".
        places = len(text.partition(".")[2]) if isinstance(digits, str) and "e" not in text else digits
        text += f" ± {_fixed(std, places)}"
    text += unit
    return text if count is None else f"{text} (n={count})"


def format_summary(summary: pd.DataFrame, group: list[str], labels: dict[str, str],
                   digits: int | str | dict[str, int | str] = 2, seeds_label: str = "seeds") -> pd.DataFrame:
    """A :func:`seed_summary` table as text: one "mean ± std" column per metric, one seed-count column.

    ``digits`` applies to every metric, or maps a metric to its own precision (others get 2).
    """
    out = summary[group].copy()
    for metric, label in labels.items():
        places = digits.get(metric, 2) if isinstance(digits, dict) else digits
        out[label] = [mean_std(m, s, None, places)
                      for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])]
    out[seeds_label] = summary["n"].astype(int)
    return out
