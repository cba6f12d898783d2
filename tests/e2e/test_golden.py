"""A golden run: the same command gives the same cells.csv and layers.csv values, timing columns aside.

Recorded before the host was restructured into layers (issue 25) and kept since, so a refactoring that changes what
the harness computes — a budget, a rank, an accuracy, an error — fails here, however the code is laid out. Four
backends on LeNet-5's conv layers at x4 with one fine-tuning epoch and the dense control, values
compared exactly up to float rounding. The run trains its own baseline with one thread in this process (a baseline
trained with two threads sums in another order and differs in the last bits, and so does everything after it).
After a change that is meant to change results, record the run anew: ``python tests/e2e/test_golden.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

GOLDEN = Path(__file__).parent / "golden"
COMMAND = ["run", "--backends", "native,tensorly,tltorch,tednet", "--models", "lenet5", "--ratios", "4", "--epochs",
           "1", "--baseline-epochs", "1", "--targets", "conv", "--latency-passes", "1"]
KEYS = {"cells": ["cell_id"], "layers": ["cell_id", "layer"]}


def timing(column: str) -> bool:
    """Columns that measure time (or hash a file), which no two runs share."""
    return (column.endswith(("_s", "_ms")) or column.startswith(("speedup", "latency_")) or
            column in ("finished_at", "network_sha256", "traceback"))


def values(table: pd.DataFrame, name: str) -> pd.DataFrame:
    kept = table[[c for c in table.columns if not timing(c)]]
    return kept.sort_values(KEYS[name]).reset_index(drop=True)


def same_value(want: object, have: object) -> bool:
    """Equal, numbers up to float rounding (rtol 1e-9), JSON text (a layer's ``info``) compared as data."""
    if isinstance(want, str) and isinstance(have, str) and want[:1] in "{[" and have[:1] in "{[":
        try:
            return same_value(json.loads(want), json.loads(have))
        except ValueError:
            return want == have
    if isinstance(want, dict) and isinstance(have, dict):
        return want.keys() == have.keys() and all(same_value(want[k], have[k]) for k in want)
    if isinstance(want, list) and isinstance(have, list):
        return len(want) == len(have) and all(same_value(a, b) for a, b in zip(want, have))
    if isinstance(want, float) and isinstance(have, (int, float)) and not isinstance(have, bool):
        return bool(np.isclose(want, have, rtol=1e-9, atol=0, equal_nan=True))
    return want == have


def differences(golden: pd.DataFrame, got: pd.DataFrame) -> list[str]:
    if len(golden) != len(got):
        return [f"{len(got)} rows where {len(golden)} were recorded"]
    found = []
    for column in golden.columns:
        if column not in got.columns:
            found.append(f"{column}: missing")
            continue
        want, have = golden[column], got[column]
        if pd.api.types.is_numeric_dtype(want) and pd.api.types.is_numeric_dtype(have):
            same = np.isclose(want.astype(float), have.astype(float), rtol=1e-9, atol=0, equal_nan=True)
        else:
            same = np.array([same_value(a, b) for a, b in zip(want.fillna("").astype(str), have.fillna("").astype(str))])
        if not same.all():
            row = int(np.flatnonzero(~same)[0])
            found.append(f"{column}: {want.iloc[row]!r} recorded, {have.iloc[row]!r} now ({golden.iloc[row, 0]})")
    return found


def golden_run(folder: Path) -> Path:
    """The golden command into ``folder``, with a cache of its own, one thread in this process."""
    import torch

    from harness.cli.main import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*COMMAND, "--cache-dir", str(folder / "cache"), "--out", str(folder / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    return folder / "run"


def test_the_golden_run_gives_the_recorded_values(tmp_path):
    pytest.importorskip("tltorch")
    pytest.importorskip("tednet")
    out = golden_run(tmp_path)
    for name in ("cells", "layers"):
        golden = pd.read_csv(GOLDEN / f"lenet5-x4.{name}.csv")
        got = values(pd.read_csv(out / f"{name}.csv"), name)
        assert differences(golden, got) == [], name


if __name__ == "__main__":  # record: python tests/e2e/test_golden.py
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    run_dir = golden_run(Path(tempfile.mkdtemp()))
    for name in ("cells", "layers"):
        values(pd.read_csv(run_dir / f"{name}.csv"), name).to_csv(GOLDEN / f"lenet5-x4.{name}.csv", index=False)
