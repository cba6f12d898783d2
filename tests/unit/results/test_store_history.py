"""Stores written before a key column existed still load, resume and take new cells.

Each key column added since the first release (``rank_selection``, then ``tensorize``)
must read, in an old store, as the value that meant "the default" then, so an old run
keeps its cells under their old ids and can be resumed by the current harness.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from harness.plan.cells import Cell
from harness.plan.result import CellResult
from harness.results.store import STORE_NAME, Store, load_results

BASE_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cells (
    cell_id TEXT PRIMARY KEY, backend TEXT, model TEXT, dataset TEXT, method TEXT, target TEXT,
    ratio REAL, seed INTEGER, init TEXT, status TEXT NOT NULL, error TEXT, traceback TEXT,
    metrics TEXT NOT NULL, finished_at REAL NOT NULL{extra});
CREATE TABLE epochs (
    cell_id TEXT NOT NULL, epoch INTEGER NOT NULL, train_loss REAL, test_loss REAL, test_acc REAL, epoch_s REAL,
    PRIMARY KEY (cell_id, epoch));
CREATE TABLE layers (
    cell_id TEXT NOT NULL, layer TEXT NOT NULL, kind TEXT, params_dense INTEGER, params INTEGER, max_params INTEGER,
    recon_error REAL, decompose_s REAL, info TEXT, stdout TEXT, PRIMARY KEY (cell_id, layer));
"""

# (extra columns of that era's cells table, their values for the old row, the column added next,
#  what it reads as in the old row, and a new cell that uses it)
HISTORY = [
    ("", (), "rank_selection", "ratio", {"rank_selection": "vbmf", "ratio": 1.0}),
    (", rank_selection TEXT NOT NULL DEFAULT 'ratio'", ("ratio",), "tensorize", "", {"tensorize": "d2"}),
]


@pytest.mark.parametrize(("extra", "extra_values", "column", "old_value", "new_fields"), HISTORY,
                         ids=[h[2] for h in HISTORY])
def test_old_store_loads_resumes_and_takes_new_cells(tmp_path, extra, extra_values, column, old_value, new_fields):
    old_cell = Cell("native", "lenet5", "mnist-embedded", "tt", "linear", 4.0, 0)
    conn = sqlite3.connect(tmp_path / STORE_NAME)
    conn.executescript(BASE_TABLES.format(extra=extra))
    extra_marks = ", ?" * len(extra_values)
    conn.execute(f"INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', NULL, NULL, ?, 0{extra_marks})",
                 (old_cell.cell_id, "native", "lenet5", "mnist-embedded", "tt", "linear", 4.0, 0, "decompose",
                  json.dumps({"params": 10}), *extra_values))
    conn.execute("INSERT INTO layers VALUES (?, 'fc1', 'linear', 100, 10, 25, 0.1, 0.0, '{}', NULL)",
                 (old_cell.cell_id,))
    conn.commit()
    conn.close()

    old = load_results(tmp_path)  # read-only: the missing column is filled with what it meant
    assert list(old.cells[column]) == [old_value] and list(old.layers[column]) == [old_value]

    store = Store(tmp_path)  # writing adds the column; the old cell stays done under its old id
    assert store.finished_ids() == {old_cell.cell_id}
    new_cell = Cell("native", "lenet5", "mnist-embedded", "tt", "linear", **{"ratio": 4.0, "seed": 0, **new_fields})
    store.add_result(CellResult(new_cell, metrics={"params": 5}))
    store.close()
    both = load_results(tmp_path).cells.set_index("cell_id")
    assert both.loc[old_cell.cell_id, column] == old_value
    assert both.loc[new_cell.cell_id, column] == new_fields[column]
    assert not both.columns.duplicated().any()
