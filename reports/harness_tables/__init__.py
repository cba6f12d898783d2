"""Built-in report plugin: tidy CSV and Parquet tables, a Markdown summary and the terminal summary.

Writes ``cells.csv`` (one row per cell), ``epochs.csv`` (one row per cell and
fine-tuning epoch), ``layers.csv`` (one row per decomposed layer), their Parquet copies
when pyarrow is installed, and ``report.md`` (per backend, method and ratio: mean ± std
over seeds, with the seed count; the dense control rows in a section of their own) into
the run directory, all rebuilt from the store. The same summary table is printed when a
run ends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from tabulate import tabulate

import harness
from harness.aggregate import (
    control_ok,
    decomposed_ok,
    format_summary,
    seed_summary,
    with_delta,
)
from harness.store import RunResults

CELL_COLUMNS = [
    "backend", "method", "model", "dataset", "target", "ratio", "seed", "init", "status", "error",
    "params_dense", "params", "compression", "budget", "budget_ok", "model_params_dense", "model_params",
    "flops_dense", "flops", "flop_speedup", "latency_dense_ms", "latency_ms", "speedup", "latency_batch",
    "threads", "device", "decompose_s", "acc_baseline", "acc_decomposed", "acc_final", "acc_best", "recon_error",
    "acc_drop", "recovery_epoch", "overfit_drop", "last_k_std",
    "epoch_s", "cell_s", "cell_id",
]
EPOCH_COLUMNS = ["backend", "method", "model", "dataset", "target", "ratio", "seed", "init", "epoch", "train_loss",
                 "test_loss", "test_acc", "epoch_s", "cell_id"]
BUDGET_FILL = 0.9
GROUP = ["model", "dataset", "target", "init", "backend", "method", "ratio"]
SUMMARY = {
    "compression": "compression",
    "acc_decomposed": "acc after decomp",
    "acc_final": "acc final",
    "delta": "Δ vs dense",
    "speedup": "speedup",
    "decompose_s": "decomp s",
}
CONTROL_GROUP = ["model", "dataset"]
CONTROL_SUMMARY = {
    "acc_baseline": "acc dense",
    "acc_final": "acc final",
    "delta": "Δ vs dense",
    "overfit_drop": "best−last",
    "last_k_std": "last-k std",
    "speedup": "speedup",
}
TABLES = ("cells", "epochs", "layers")


def _ordered(frame: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    for column in first:
        if column not in frame.columns:
            frame[column] = None
    return frame[first + [c for c in frame.columns if c not in first]]


def summary_table(cells: pd.DataFrame, summary: dict[str, str] = SUMMARY) -> pd.DataFrame:
    """Per model, dataset, target, backend, method and ratio: mean ± std over seeds of the ok decomposed cells."""
    return format_summary(seed_summary(with_delta(decomposed_ok(cells)), list(summary), GROUP), GROUP, summary)


def control_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per model and dataset: mean ± std over seeds of the dense control (the dense net fine-tuned alike)."""
    summary = seed_summary(with_delta(control_ok(cells)), list(CONTROL_SUMMARY), CONTROL_GROUP)
    return format_summary(summary, CONTROL_GROUP, CONTROL_SUMMARY)


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


def _format(table: pd.DataFrame, fmt: str) -> str:
    return tabulate(table, headers="keys", tablefmt=fmt, showindex=False, floatfmt=".2f")


def budget_deviations(cells: pd.DataFrame) -> pd.DataFrame:
    """Ok cells whose parameters are above the budget or below BUDGET_FILL of it."""
    ok = cells[cells["status"] == "ok"].copy()
    if ok.empty:
        return ok
    ok["budget_fill"] = ok["params"] / ok["budget"]
    off = ok[(ok["budget_fill"] > 1) | (ok["budget_fill"] < BUDGET_FILL)]
    return off[["backend", "model", "method", "target", "ratio", "seed", "params", "budget", "budget_fill"]]


def not_ok_table(cells: pd.DataFrame) -> pd.DataFrame:
    rest = cells[cells["status"] != "ok"]
    return rest[["backend", "model", "method", "target", "ratio", "seed", "status", "error"]]


@harness.hookimpl
def harness_report(results: RunResults, run_dir: str) -> list[str]:
    out = Path(run_dir)
    cells = _ordered(results.cells.copy(), CELL_COLUMNS)
    tables = {"cells": cells, "epochs": _ordered(results.epochs.copy(), EPOCH_COLUMNS), "layers": results.layers}
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)

    meta = results.meta
    counts = cells["status"].value_counts().to_dict()
    baselines = cells.dropna(subset=["acc_baseline"]).groupby(["model", "dataset", "seed"])["acc_baseline"].first()
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
         "speedup = dense latency / decomposed latency, whole network, measured in the same process; "
         "Δ vs dense = final accuracy − dense baseline accuracy (percentage points); "
         "a ± b = mean ± sample std over seeds"),
        "",
        "## Dense baselines", "",
        _format(baselines.reset_index().rename(columns={"acc_baseline": "accuracy %"}), "github"),
        "",
        "## Decomposed networks (mean ± std over seeds)", "",
        _format(summary_table(cells), "github"),
        "",
    ]
    control = control_table(cells)
    if not control.empty:
        lines += ["## Dense control (mean ± std over seeds)", "",
                  ("The dense network fine-tuned for the same epochs with the same optimiser: the reference "
                   "for the decomposed networks' accuracy and stability."), "",
                  _format(control, "github"), ""]
    deviations = budget_deviations(cells)
    if not deviations.empty:
        lines += ["## Budget deviations", "",
                  (f"Cells whose decomposed layers use less than {BUDGET_FILL:.0%} of the budget dense/ratio "
                   "(the format's rank steps are too coarse to get closer) or more than all of it:"), "",
                  _format(deviations, "github"), ""]
    rest = not_ok_table(cells)
    if not rest.empty:
        lines += ["## Cells not ok", "", _format(rest, "github"), ""]
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
    write(_format(summary_table(cells), "simple"))
    control = control_table(cells)
    if not control.empty:
        write("")
        write("dense control:")
        write(_format(control, "simple"))
    counts = cells["status"].value_counts().to_dict()
    write("")
    write("cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; reports in {results.run_dir}")
