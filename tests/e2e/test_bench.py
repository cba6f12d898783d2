"""`harness bench`'s account of where a run's wall time went, read back from a real run's store."""

from __future__ import annotations

import time

import pandas as pd

from harness.cli.bench import time_breakdown
from harness.cli.main import main


def test_time_breakdown_accounts_for_every_cell_second(tmp_path, fast_args):
    out = tmp_path / "run"
    start = time.perf_counter()
    assert main(["run", "--backends", "native", "--methods", "svd,tucker2", "--targets", "conv", "--out", str(out),
                 *fast_args]) == 0
    wall = time.perf_counter() - start
    rows = {row["part"]: row for row in time_breakdown(out, wall)}
    cells = pd.read_csv(out / "cells.csv")

    assert rows["wall"]["seconds"] == wall
    phase = rows["cells phase (2 cells, 1 worker)"]["seconds"]
    assert 0 < phase < wall
    assert rows["the rest: baselines, latency phase, report"]["seconds"] == wall - phase
    assert abs(rows["cell-seconds, all cells"]["seconds"] - cells["cell_s"].sum()) < 1e-9
    # One worker runs its cells back to back: the phase is their sum plus the gaps between them.
    assert -0.01 < rows["  worker-seconds left idle in it"]["seconds"] < phase
    groups = [row for part, row in rows.items() if part.startswith("  native ")]
    assert sorted(row["part"] for row in groups) == ["  native svd (1 cell)", "  native tucker2 (1 cell)"]
    assert abs(sum(row["share"] for row in groups) - 1) < 1e-9
    assert groups[0]["seconds"] >= groups[1]["seconds"]  # largest first
