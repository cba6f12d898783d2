"""--executor ray on a local Ray: the same cells and values as the other executors, a dead worker costs one cell.

Skipped where Ray is not installed (it is part of ``.[all]``). Each test starts its own local Ray with two CPUs
and shuts it down.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from paths import PLUGINS

from harness.cli.main import main

ray = pytest.importorskip("ray")

GRID = ["-p", "fake_backend", "run", "--backends", "fake,native", "--methods", "lowrank,svd", "--targets", "linear",
        "--ratios", "4", "--epochs", "1", "--baseline-epochs", "1", "--latency-passes", "1", "--no-dense-control"]
COMPARED = ["status", "params", "compression", "recon_error", "acc_decomposed", "acc_final", "layers_decomposed"]


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 [str(PLUGINS), os.environ.get("PYTHONPATH", "")])}})
    yield
    ray.shutdown()


def test_ray_gives_the_cells_and_values_of_the_other_executors(tmp_path, cache_dir, local_ray):
    # In-process, as in a worker: one torch thread (the test session's), one thread per Ray task.
    assert main([*GRID, "--executor", "inprocess", "--cache-dir", str(cache_dir),
                 "--out", str(tmp_path / "process")]) == 0
    assert main([*GRID, "--executor", "ray", "--cpus-per-cell", "1", "--cache-dir", str(cache_dir),
                 "--out", str(tmp_path / "ray")]) == 0
    process = pd.read_csv(tmp_path / "process" / "cells.csv").set_index("cell_id").sort_index()
    on_ray = pd.read_csv(tmp_path / "ray" / "cells.csv").set_index("cell_id").sort_index()
    assert list(on_ray.index) == list(process.index) and len(on_ray) == 2  # fake lowrank and native svd
    pd.testing.assert_frame_equal(on_ray[COMPARED], process[COMPARED])


def _ray_task_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::_run_cell_task"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_ray_worker_costs_its_cell_and_resume_completes(tmp_path, cache_dir, local_ray, capsys):
    out = tmp_path / "run"
    args = ["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank,hang", "--targets", "linear",
            "--ratios", "4", "--no-train", "--datasets", "random:1x28x28", "--latency-passes", "1",
            "--executor", "ray", "--cache-dir", str(cache_dir), "--out", str(out)]

    def kill_the_hanging_task() -> None:
        """Once the quick cell is stored, the one task still running is the hanging one: kill its worker."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            store = out / "results.sqlite"
            busy = _ray_task_pids()
            if store.exists() and _finished(store) >= 1 and busy:
                for pid in busy:
                    os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_the_hanging_task, daemon=True)
    killer.start()
    assert main(args) == 1  # the killed cell is an error; the run went on and reported
    killer.join()
    cells = pd.read_csv(out / "cells.csv").set_index("method")
    assert cells.loc["lowrank", "status"] == "ok"
    assert cells.loc["hang", "status"] == "error" and "Ray task failed" in cells.loc["hang", "error"]
    capsys.readouterr()
    assert main(["-p", "fake_backend", "run", "--resume", str(out)]) == 1
    assert "2 already done, 0 to run" in capsys.readouterr().out


def _finished(store: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]



def test_epochs_finished_on_ray_move_the_epoch_bar(tmp_path, cache_dir, local_ray, monkeypatch):
    from tqdm import tqdm

    import harness.run.session

    epochs: list[int] = []

    class RecordingBar(tqdm):
        def __init__(self, *args, desc="", **kwargs):
            self.counts_epochs = desc == "fine-tune epochs"
            super().__init__(*args, desc=desc, **kwargs)

        def update(self, n=1):
            if self.counts_epochs:
                epochs.append(n)
            return super().update(n)

    monkeypatch.setattr(harness.run.session, "tqdm", RecordingBar)
    assert main([*GRID, "--executor", "ray", "--cpus-per-cell", "1", "--cache-dir", str(cache_dir),
                 "--out", str(tmp_path / "ray")]) == 0
    assert sum(epochs) == 2  # two cells of one fine-tune epoch each, reported from the Ray workers


def test_a_cluster_that_cannot_be_joined_is_one_line(tmp_path, cache_dir, capsys):
    code = main([*GRID, "--executor", "ray", "--ray-address", "127.0.0.1:1", "--cache-dir", str(cache_dir),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot join the Ray cluster" in err
    assert not (tmp_path / "run").exists()  # refused: no store left behind to refuse the same --out next time
