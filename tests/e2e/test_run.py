"""End to end through the CLI with the test backend: statuses, store, reports, timeouts, resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from paths import PLUGINS

from harness.cli.main import main
from harness.results.store import load_results

REQUIRED_CELL_COLUMNS = [
    "backend", "method", "model", "dataset", "target", "ratio", "seed", "init", "status", "error", "params_dense",
    "params", "compression", "model_params_dense", "model_params", "flops_dense", "flops", "latency_dense_ms",
    "latency_ms", "speedup", "decompose_s", "acc_baseline", "acc_decomposed", "acc_final", "acc_best", "recon_error",
]
REQUIRED_EPOCH_COLUMNS = ["backend", "method", "model", "dataset", "target", "ratio", "seed", "epoch", "train_loss",
                          "test_loss", "test_acc", "epoch_s"]


def test_run_records_ok_error_and_unsupported_cells_and_writes_reports(tmp_path, fast_args, capsys):
    out = tmp_path / "run"
    code = main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank,boom,nope",
                 "--targets", "conv,linear", "--executor", "inprocess", "--out", str(out), *fast_args])
    assert code == 1  # the boom cells errored
    for name in ("results.sqlite", "cells.csv", "epochs.csv", "report.md"):
        assert (out / name).is_file(), name
    cells = pd.read_csv(out / "cells.csv")
    assert set(REQUIRED_CELL_COLUMNS) <= set(cells.columns)
    status = dict(zip(cells["method"] + "/" + cells["target"], cells["status"]))
    assert status == {"lowrank/conv": "ok", "lowrank/linear": "ok", "boom/conv": "error", "boom/linear": "error",
                      "nope/conv": "unsupported", "nope/linear": "unsupported"}
    boom = cells[cells["method"] == "boom"].iloc[0]
    assert boom["error"] == "ValueError: planned failure"
    ok = cells[cells["status"] == "ok"]
    assert (ok["params"] <= ok["params_dense"] / ok["ratio"]).all()
    assert (ok["compression"] == ok["params_dense"] / ok["params"]).all()
    assert (ok["model_params"] < ok["model_params_dense"]).all()
    assert (ok["flops"] < ok["flops_dense"]).all()
    assert ok["latency_ms"].gt(0).all() and ok["latency_dense_ms"].gt(0).all()
    assert ok["recon_error"].between(0, 1).all()
    assert ok["acc_baseline"].gt(50).all()
    assert (ok["acc_drop"] - (ok["acc_baseline"] - ok["acc_decomposed"])).abs().max() < 1e-9
    assert {"recovery_epoch", "overfit_drop", "last_k_std"} <= set(cells.columns)
    epochs = pd.read_csv(out / "epochs.csv")
    assert set(REQUIRED_EPOCH_COLUMNS) <= set(epochs.columns)
    assert len(epochs) == len(ok)  # one fine-tuning epoch per ok cell
    report = (out / "report.md").read_text()
    assert "FlopCounterMode" in report and "planned failure" in report
    printed = capsys.readouterr().out
    assert "acc final" in printed and "cells: 2 error, 2 ok, 2 unsupported" in printed

    # The store alone rebuilds every report.
    for name in ("cells.csv", "epochs.csv", "report.md"):
        (out / name).unlink()
    assert main(["-p", "fake_backend", "report", str(out)]) == 1
    assert pd.read_csv(out / "cells.csv").shape == cells.shape
    assert (out / "report.md").read_text() == report


def test_store_metadata_records_versions_and_command(tmp_path, fast_args):
    out = tmp_path / "run"
    main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
          "--executor", "inprocess", "--out", str(out), *fast_args])
    meta = load_results(out).meta
    for key in ("command", "python", "torch", "libraries", "device_name", "threads", "seeds", "git_commit",
                "config", "flop_convention"):
        assert key in meta
    assert meta["libraries"]["fake"]["library"] == "torch"
    assert "--methods lowrank" in meta["command"]


def test_declared_conv_gap_becomes_unsupported_before_backend_runs(tmp_path, fast_args):
    out = tmp_path / "run"
    code = main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "conv",
                 "--models", "dilated", "-p", "dilated_model", "--executor", "inprocess", "--out", str(out),
                 *[a for a in fast_args if a != "lenet5" and a != "--models"]])
    assert code == 0
    cells = pd.read_csv(out / "cells.csv")
    assert cells["status"].tolist() == ["unsupported"]
    assert "cannot handle conv dilation" in cells["error"].iloc[0]


def test_cell_timeout_stops_the_cell_and_the_run_goes_on(tmp_path, fast_args):
    out = tmp_path / "run"
    code = main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "hang,lowrank", "--targets",
                 "linear", "--cell-timeout", "20", "--out", str(out), *fast_args])
    assert code == 1
    cells = pd.read_csv(out / "cells.csv").set_index("method")
    assert cells.loc["hang", "status"] == "timeout"
    # 20 s, not less: on a loaded 2-core machine a fresh worker's imports and one LeNet epoch took over 10 s.
    assert "time limit of 20 s" in cells.loc["hang", "error"]
    assert cells.loc["lowrank", "status"] == "ok"


def test_resume_with_retry_runs_timed_out_cells_again(tmp_path, fast_args, capsys):
    import sqlite3

    out = tmp_path / "run"
    assert main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
                 "--executor", "inprocess", "--out", str(out), *fast_args]) == 0
    # As if the machine had been busy: the cell is stored as a timeout.
    with sqlite3.connect(out / "results.sqlite") as conn:
        conn.execute("UPDATE cells SET status = 'timeout', error = 'cell exceeded the time limit of 1 s'")
    capsys.readouterr()
    assert main(["-p", "fake_backend", "run", "--resume", str(out)]) == 1  # a plain resume keeps the timeout
    assert "1 already done, 0 to run" in capsys.readouterr().out
    assert main(["-p", "fake_backend", "run", "--resume", str(out), "--retry", "timeout,error"]) == 0
    assert "0 already done, 1 to run, 1 of them again (timeout, error)" in capsys.readouterr().out
    cells = pd.read_csv(out / "cells.csv")
    assert list(cells["status"]) == ["ok"] and cells["error"].isna().all()
    # --retry only with --resume, and only for statuses a rerun can change: one line, exit 2.
    for args, message in ((["--resume", str(out), "--retry", "ok"], "--retry takes timeout and/or error"),
                          (["--backends", "fake", "--retry", "timeout"], "--retry goes with --resume")):
        assert main(["-p", "fake_backend", "run", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_existing_run_directory_is_not_overwritten(tmp_path, fast_args, capsys):
    out = tmp_path / "run"
    args = ["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
            "--executor", "inprocess", "--out", str(out), *fast_args]
    main(args)
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err


def _count_cells(path: Path) -> int:
    try:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkill_then_resume_keeps_finished_cells(tmp_path, cache_dir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS),
                                                        os.environ.get("PYTHONPATH", "")]))
    base = [sys.executable, "-m", "harness.cli.main", "-p", "fake_backend", "run", "--backends", "fake", "--methods",
            "lowrank", "--targets", "conv,linear", "--ratios", "2,4,8", "--epochs", "1", "--baseline-epochs", "1",
            "--latency-passes", "1", "--cache-dir", str(cache_dir)]
    expected = 7  # 6 decomposed cells and the dense control (an uninterrupted run stores as many)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    store = killed / "results.sqlite"
    deadline = time.monotonic() + 300
    while _count_cells(store) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-run
    proc.wait()
    with sqlite3.connect(store) as conn:
        before = dict(conn.execute("SELECT cell_id, finished_at FROM cells"))
    assert 3 <= len(before) < expected

    resumed = subprocess.run([*base[:5], "run", "--resume", str(killed)], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(before)} already done" in resumed.stdout
    with sqlite3.connect(store) as conn:
        after = dict(conn.execute("SELECT cell_id, finished_at FROM cells"))
        epochs = conn.execute("SELECT COUNT(*), COUNT(DISTINCT cell_id || '/' || epoch) FROM epochs").fetchone()
    assert len(after) == expected
    assert all(after[cell] == stamp for cell, stamp in before.items())  # not recomputed
    assert epochs[0] == epochs[1] == expected  # no duplicate rows


@pytest.mark.slow
def test_default_native_run_is_all_ok(tmp_path, cache_dir):
    """The documented main job restricted to the native backend: every cell ok."""
    out = tmp_path / "run"
    assert main(["run", "--backends", "native", "--out", str(out), "--cache-dir", str(cache_dir)]) == 0
    cells = pd.read_csv(out / "cells.csv")
    # conv: cp, tucker2, tt, svd; linear: svd, tt; all: svd, tt (declared for both kinds); x3 ratios; the control
    assert len(cells) == 25 and (cells["status"] == "ok").all()
    assert (cells["params"] <= cells["params_dense"] / cells["ratio"]).all()


def test_resume_refuses_other_settings_and_takes_the_same_ones(tmp_path, fast_args, capsys):
    out = tmp_path / "run"
    common = ["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
              "--executor", "inprocess"]
    assert main([*common, "--out", str(out), *fast_args]) == 0
    capsys.readouterr()
    # The same settings given again (as a preset or config would) resume; nothing is left to run.
    assert main([*common, "--resume", str(out), *fast_args]) == 0
    assert "1 cells, 1 already done, 0 to run" in capsys.readouterr().out
    # A setting that changes what is measured is refused in one line, not silently dropped.
    assert main([*common, "--resume", str(out), *fast_args, "--rank-selection", "vbmf", "--ratios", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "with other settings (rank_selection, ratios)" in err


def test_latency_is_measured_in_a_quiet_phase_and_a_killed_phase_resumes(tmp_path, fast_args, monkeypatch):
    from harness.run import session
    from harness.run.latency import ROUNDS_PER_PASS
    from harness.run.networks import NETWORKS, network_path

    out = tmp_path / "run"
    args = ["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
            "--out", str(out), *fast_args]
    assert main(args) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert not (out / NETWORKS).exists()  # every saved network was timed, then removed
    row = cells.iloc[0]
    assert row["latency_pending"] == False and row["latency_rounds"] == ROUNDS_PER_PASS  # noqa: E712 - a CSV cell
    assert row["latency_threads"] == 1  # --latency-threads defaults to one
    assert row["latency_iqr_ms"] >= 0 and row["speedup"] > 0 and row["speedup_iqr"] >= 0
    # A run killed after its cells but before the phase: the cell is pending and its network is on disk, as data.
    killed = tmp_path / "killed"

    def kill(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(session, "_latency_phase", kill)
    assert main([*args[:-len(fast_args) - 2], "--out", str(killed), *fast_args]) == 130
    monkeypatch.undo()
    assert network_path(killed, row["cell_id"]).is_file()
    assert main(["-p", "fake_backend", "run", "--resume", str(killed)]) == 0
    resumed = pd.read_csv(killed / "cells.csv").iloc[0]
    assert resumed["latency_pending"] == False and resumed["speedup"] > 0  # noqa: E712
    assert not (killed / NETWORKS).exists()


def test_in_memory_format_puts_conv_weights_and_a_4d_batch_in_nhwc():
    import torch
    from torch import nn

    from harness.run.latency import in_memory_format
    from harness.run.models import lenet5

    model, x = lenet5((3, 32, 32), 10).eval(), torch.randn(2, 3, 32, 32)  # one channel would be NHWC already
    with torch.inference_mode():
        expected = model(x)
        same, batch = in_memory_format(model, x, "channels_last")
        conv = next(m for m in same.modules() if isinstance(m, nn.Conv2d))
        assert same is model and batch.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(
            memory_format=torch.channels_last)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(same(batch), expected)
        flat = torch.randn(2, 784)
        assert in_memory_format(nn.Linear(784, 10), flat, "channels_last")[1] is flat


def test_channels_last_latency_is_recorded_on_every_timed_cell(tmp_path, fast_args):
    out = tmp_path / "run"
    assert main(["run", "--backends", "native", "--methods", "tucker2", "--targets", "conv", "--memory-format",
                 "channels_last", "--out", str(out), *fast_args]) == 0
    row = pd.read_csv(out / "cells.csv").iloc[0]
    assert row["status"] == "ok" and row["latency_memory_format"] == "channels_last" and row["speedup"] > 0


def test_latency_threads_time_the_phase_and_are_given_back(tmp_path, fast_args):
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "run"
    assert main(["run", "--backends", "native", "--methods", "svd", "--targets", "linear", "--latency-threads", "2",
                 "--executor", "inprocess", "--out", str(out), *fast_args]) == 0
    assert pd.read_csv(out / "cells.csv").iloc[0]["latency_threads"] == 2
    assert torch.get_num_threads() == before


def test_a_run_without_a_terminal_prints_a_line_per_finished_cell(tmp_path, cache_dir):
    import re

    plugins = PLUGINS
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "stderr.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "harness", "-p", "fake_backend", "run", "--backends", "fake",
                               "--methods", "lowrank", "--targets", "linear", "--models", "lenet5", "--ratios", "2,4",
                               "--no-train", "--datasets", "random:1x28x28", "--latency-passes", "1", "--executor",
                               "inprocess", "--cache-dir", str(cache_dir), "--out", str(tmp_path / "run")],
                              env=env, stdout=subprocess.DEVNULL, stderr=log)
    assert done.returncode == 0
    text = (tmp_path / "stderr.log").read_text()
    lines = [line for line in text.splitlines() if line.startswith("[")]
    assert len(lines) == 2, text
    assert re.fullmatch(r"\[1/2\] ok fake/lenet5/random:1x28x28/lowrank/linear/x2/s0 \(\d+ s so far, about \d+ s left\)",
                        lines[0]), lines[0]
    assert re.fullmatch(r"\[2/2\] ok fake/\S+/x4/s0 \(\d+ s so far\)", lines[1]), lines[1]
    assert "latency pass 1/1 done" in text
