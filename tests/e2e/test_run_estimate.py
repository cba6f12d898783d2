"""A run says how long it will take before it starts, from the cost model in the cache, and records its cells
there so the next run's estimate comes from this machine."""

from __future__ import annotations

import re
import sqlite3

from harness.cli.main import main
from harness.run.estimate import COST_FILE


def _estimate(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("estimate: about ")]
    assert len(lines) == 1, text
    return lines[0]


def test_a_run_says_its_estimate_first_and_the_next_run_estimates_from_its_cells(tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["run", "--models", "lenet5", "--datasets", "mnist-embedded", "--backends", "native", "--methods", "svd,cp",
            "--targets", "conv,linear", "--ratios", "4", "--epochs", "1", "--baseline-epochs", "1",
            "--no-dense-control", "--latency-passes", "1", "--executor", "inprocess", "--cache-dir", str(cache)]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    first = capsys.readouterr().out
    line = _estimate(first)
    # A fresh cache: the baseline is to train, and the cells are estimated from the shipped reference records.
    assert "baselines" in line and "3 cells" in line and "3 from reference" in line
    assert first.index("estimate: about") < first.index("trained dense baseline")  # before anything runs
    with sqlite3.connect(cache / COST_FILE) as conn:
        rows = conn.execute("SELECT method, target, train_s, decompose_s, latency_s FROM cells").fetchall()
    assert sorted((m, t) for m, t, *_ in rows) == [("cp", "conv"), ("svd", "conv"), ("svd", "linear")]
    assert all(train > 0 and decompose > 0 and latency > 0 for *_, train, decompose, latency in rows)

    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    line = _estimate(capsys.readouterr().out)
    # The baseline is cached now, and both cells are estimated from the records the first run left.
    assert "baselines" not in line and "3 from this machine" in line and "latency phase" in line
    assert re.search(r"about (\d+ min )?\d+ s", line)
