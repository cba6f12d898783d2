"""Built-in report plugin: tidy CSV and Parquet tables, a Markdown summary and the terminal summary.

Writes ``cells.csv`` (one row per cell), ``epochs.csv`` (one row per cell and
fine-tuning epoch), ``layers.csv`` (one row per decomposed layer), their Parquet copies
when pyarrow is installed, and ``report.md`` (per backend, method and ratio: mean ± std
over seeds, with the seed count; the dense control rows in a section of their own;
budget deviations one row per configuration with its seed count and budget fill; failed
cells one by one and unsupported cells grouped by backend, method, target and reason)
into the run directory, all rebuilt from the store. Stability metrics are shown with 3
decimals, seconds with 3 significant digits, the rest with 2; a key column holding one
value in every row is left out and its value stated above the table
(:func:`constant_columns`). The same summary table is printed when a run ends. The tables
themselves are built by the host (:mod:`harness.results.tables`), as the HTML report builds its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from tabulate import tabulate

import harness
from harness import (BUDGET_FILL, CELL_COLUMNS, EPOCH_COLUMNS, TABLES, TERMINAL_ROWS, RunResults, budget_deviations,
                     constant_columns, control_table, dense_baselines, failed_table, not_planned_summary,
                     ordered_columns, same_in_every_row, summary_table, unsupported_summary, unsupported_table)

def _as_text(value: object) -> str | None:
    missing = value is None or (isinstance(value, float) and value != value)  # noqa: PLR0124 - NaN test
    return None if missing else str(value)


def _arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding several types (e.g. bool and str) as text, so Parquet gets one type per column."""
    frame = frame.copy()
    for column in [c for c in frame.columns if frame[c].dtype == object]:
        kinds = {type(v) for v in frame[column].dropna()}
        if len(kinds) > 1 or not kinds <= {str, bool, int, float}:
            frame[column] = frame[column].map(_as_text)
    return frame


def write_parquet(tables: dict[str, pd.DataFrame], out: Path) -> list[str]:
    """``<name>.parquet`` for each table when pyarrow is importable; nothing otherwise."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return []
    paths = []
    for name, frame in tables.items():
        path = out / f"{name}.parquet"
        _arrow_safe(frame).to_parquet(path, index=False)
        paths.append(str(path))
    return paths


NUMBER = re.compile(r"^[×+\-−]?\d|^–$")  # a number or "mean ± std" text: right-aligned


def _format(table: pd.DataFrame, fmt: str) -> str:
    """``table`` as text: float columns with 2 decimals, text cells exactly as formatted (3-decimal stability
    metrics, 3-significant-digit seconds), number columns right-aligned."""
    shown = table.astype(object).copy()
    for column in table.columns:
        if pd.api.types.is_float_dtype(table[column]):
            shown[column] = [f"{v:.2f}" for v in table[column]]
    shown = shown.where(table.notna(), "–")
    align = ["right" if all(NUMBER.match(str(v)) for v in shown[c]) else "left" for c in shown.columns]
    return tabulate(shown, headers="keys", tablefmt=fmt, showindex=False, disable_numparse=True,
                    colalign=align or None)


def _md_table(frame: pd.DataFrame) -> list[str]:
    """A Markdown table with its constant key columns stated above it."""
    shown, constant = constant_columns(frame)
    caption = same_in_every_row(constant)
    return ([caption, ""] if caption else []) + [_format(shown, "github")]


@harness.hookimpl
def harness_report(results: RunResults, run_dir: str) -> list[str]:
    out = Path(run_dir)
    cells = ordered_columns(results.cells.copy(), CELL_COLUMNS)
    tables = {"cells": cells, "epochs": ordered_columns(results.epochs.copy(), EPOCH_COLUMNS), "layers": results.layers}
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)

    meta = results.meta
    counts = cells["status"].value_counts().to_dict()
    baselines = dense_baselines(cells)
    lines = [
        "# Compression report", "",
        f"- command: `{meta.get('command', '?')}`",
        (f"- started: {meta.get('started_at', '?')}; harness {meta.get('harness_version', '?')}"
         f" (git {meta.get('git_commit') or 'unknown'})"),
        f"- python {meta.get('python', '?')}, torch {meta.get('torch', '?')}; libraries: "
        + ", ".join(f"{n}={v['library']} {v['version']}" for n, v in meta.get("libraries", {}).items()),
        (f"- device: {meta.get('device', '?')} ({meta.get('device_name', '?')}), threads per worker: "
         f"{meta.get('threads', '?')}; seeds: {meta.get('seeds', '?')}"),
        "- cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        f"- FLOPs: {meta.get('flop_convention', '?')}",
        ("- compression = dense params / params of the decomposed layers only (bias included); "
         "speedup = dense latency / decomposed latency, whole network, both timed after all training, serially, "
         "in alternating rounds (median); "
         "Δ vs dense = final accuracy − dense baseline accuracy (percentage points); "
         "a ± b = mean ± sample std over seeds"),
        "",
        "## Dense baselines", "",
        _format(baselines, "github") if not baselines.empty else "No baseline accuracy in this run.",
        "",
        "## Decomposed networks (mean ± std over seeds)", "",
        *_md_table(summary_table(cells)),
        "",
    ]
    control = control_table(cells)
    if not control.empty:
        lines += ["## Dense control (mean ± std over seeds)", "",
                  ("The dense network fine-tuned for the same epochs with the same optimiser: the reference "
                   "for the decomposed networks' accuracy and stability."), "",
                  *_md_table(control), ""]
    deviations = budget_deviations(cells)
    if not deviations.empty:
        lines += ["## Budget deviations", "",
                  (f"Configurations whose decomposed layers use less than {BUDGET_FILL:.0%} of the budget dense/ratio "
                   "(the format's rank steps are too coarse to get closer; a replacement over its budget makes its "
                   "cell over_budget, listed under Cells not ok); seeds = how many seeds deviate, "
                   "fill = params / budget:"), "",
                  *_md_table(deviations), ""]
    failed, gaps = failed_table(cells), unsupported_table(cells)
    if not failed.empty or not gaps.empty:
        lines += ["## Cells not ok", ""]
    if not failed.empty:
        lines += [("Cells that failed, timed out, diverged or broke their parameter budget (over_budget: never "
                   "compared or ranked), one by one:"), "", *_md_table(failed), ""]
    if not gaps.empty:
        lines += [unsupported_summary(gaps) + ":", "", *_md_table(gaps), ""]
    not_planned = not_planned_summary(meta.get("not_planned") or [])
    if not_planned:
        lines += ["## Not planned", "", not_planned + ".", ""]
    (out / "report.md").write_text("\n".join(lines))
    written = [str(out / f"{name}.csv") for name in TABLES] + [str(out / "report.md")]
    return written + write_parquet(tables, out)


@harness.hookimpl
def harness_terminal_summary(results: RunResults, write: Callable[[str], None]) -> None:
    cells = results.cells
    if cells.empty:
        write("no cells finished")
        return
    write("")
    summary = summary_table(cells)
    for column in ("rank_selection", "tensorize"):
        if column in summary.columns and summary[column].nunique() <= 1:
            summary = summary.drop(columns=column)  # one value: the column says nothing in a terminal
    if len(summary) > TERMINAL_ROWS:
        # A screen, not the whole table: the best configurations, and where the rest is.
        by = "acc final %" if "acc final %" in summary.columns else "speedup ×"
        order = pd.to_numeric(summary[by].astype(str).str.extract(r"^\s*(-?\d+(?:\.\d+)?)")[0], errors="coerce")
        write(f"top {TERMINAL_ROWS} of {len(summary)} configurations by {by} (every one: report.md, report.html, "
              "cells.csv):")
        summary = summary.loc[order.sort_values(ascending=False, na_position="last").index[:TERMINAL_ROWS]]
    write(_format(summary, "simple"))
    control = control_table(cells)
    if not control.empty:
        write("")
        write("dense control:")
        write(_format(control, "simple"))
    verdict = harness.verdict_lines(results.comparable)
    if verdict:
        write("")
        write("verdict (the best compressed networks; report.html has the table):")
        for line in verdict:
            write(f"  {line}")
    counts = cells["status"].value_counts().to_dict()
    not_planned = not_planned_summary(results.meta.get("not_planned") or [])
    if not_planned:
        write("")
        write(f"not planned: {not_planned}")
    write("")
    write("cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; reports in {results.run_dir}")
