"""The dense control cell, divergence, skip patterns, presets and comparing two runs."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from harness.cli.main import main
from harness.config.settings import build_config, load_preset, preset_names
from harness.results.store import load_results


def _run(out, fast_args, *extra) -> int:
    args = [a for a in fast_args if a != "--no-dense-control"]
    return main(["-p", "fake_backend", "run", "--backends", "fake", "--targets", "linear", "--executor", "inprocess",
                 "--out", str(out), *args, *extra])


def test_dense_control_is_a_fine_tuned_baseline_per_seed(tmp_path, fast_args):
    out = tmp_path / "run"
    assert _run(out, fast_args, "--methods", "lowrank", "--seeds", "0,1", "--epochs", "2") == 0
    results = load_results(out)
    control = results.cells[results.cells["backend"] == "dense"].set_index("seed")
    assert sorted(control.index) == [0, 1]
    assert (control["status"] == "ok").all() and (control["init"] == "control").all()
    assert (control["target"] == "none").all() and (control["ratio"] == 1).all()
    # Nothing was replaced: no drop, compression 1, the whole network's parameters.
    assert (control["acc_decomposed"] == control["acc_baseline"]).all()
    assert (control["acc_drop"] == 0).all() and (control["compression"] == 1).all()
    assert (control["params"] == control["model_params_dense"]).all()
    assert control["last_k_std"].notna().all()
    epochs = results.epochs[results.epochs["backend"] == "dense"]
    assert len(epochs) == 4  # 2 seeds x 2 epochs, stored like any cell's
    assert results.layers[results.layers["backend"] == "dense"].empty


def test_no_dense_control_and_skip_patterns(tmp_path, fast_args, capsys):
    out = tmp_path / "run"
    assert _run(out, fast_args, "--methods", "lowrank,nope", "--no-dense-control",
                "--skip", "fake/*/*/nope/*") == 0
    cells = load_results(out).cells
    assert cells["cell_id"].tolist() == ["fake/lenet5/mnist-embedded/lowrank/linear/x4/s0"]
    assert "1 cells left out by skip patterns fake/*/*/nope/*" in capsys.readouterr().out


def test_divergence_marks_the_cell_and_the_run_goes_on(tmp_path, fast_args):
    out = tmp_path / "run"  # a diverged cell is a failed one: exit 1, as the README defines it
    assert _run(out, fast_args, "--methods", "explode,lowrank", "--no-dense-control", "--epochs", "3") == 1
    results = load_results(out)
    cells = results.cells.set_index("method")
    assert cells.loc["explode", "status"] == "diverged"
    assert "NaN or infinite" in cells.loc["explode", "error"]
    assert cells.loc["lowrank", "status"] == "ok"
    exploded = results.epochs[results.epochs["method"] == "explode"]
    assert len(exploded) == 1  # training stops at the first non-finite epoch
    assert pd.isna(exploded["train_loss"].iloc[0])  # stored as NULL, not as a bogus number


def test_shipped_presets_are_valid_configs():
    assert "long-run" in preset_names()
    values = load_preset("long-run")
    config = build_config(values)
    assert config.seeds == [0, 1, 2] and config.epochs >= 20 and config.dense_control
    assert config.fine_tune_settings().schedule == "constant"


def test_unknown_lr_schedule_is_one_line(capsys):
    assert main(["run", "--lr-schedule", "linear"]) == 2
    assert "unknown lr schedule 'linear'" in capsys.readouterr().err


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_is_a_valid_config_with_a_description(name):
    from harness.config.settings import preset_description

    from harness.run.names import validate_names
    from harness.run.host import load_host

    assert preset_description(name)
    config = build_config(load_preset(name))
    # A study without spread over seeds answers nothing; a data-free speed study trains nothing a seed would move.
    assert len(config.seeds) >= 3 or config.no_train
    # Every name in it (backends, methods, mixes, rank selections) is known to the host that ships it.
    host = load_host()
    validate_names(config, host.backends, host.models, host.datasets, host.rank_selectors)


def test_unknown_preset_is_one_line(capsys):
    assert main(["run", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown preset 'nope'" in err and "long-run" in err and "\n" not in err


def test_list_shows_presets(capsys):
    assert main(["list"]) == 0
    assert "long-run" in capsys.readouterr().out


def test_compare_two_runs_flags_changed_cells(tmp_path, fast_args, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert _run(first, fast_args, "--methods", "lowrank,nope", "--no-dense-control") == 0
    assert _run(second, fast_args, "--methods", "lowrank", "--no-dense-control") == 0
    capsys.readouterr()
    # Accuracy and compression are deterministic across the two runs; latency on a shared
    # machine is not, so the relative threshold is loose enough to ignore its noise.
    assert main(["compare", str(first), str(second), "--relative-threshold", "5"]) == 0
    out = capsys.readouterr().out
    assert "1 cells in both runs: 0 changed" in out and "only in A: fake/lenet5/mnist-embedded/nope" in out

    # Plant a change of 2 accuracy points and a 10x higher compression in B.
    with sqlite3.connect(second / "results.sqlite") as conn:
        (metrics,) = conn.execute("SELECT metrics FROM cells").fetchone()
        planted = json.loads(metrics)
        conn.execute("UPDATE cells SET metrics = json_set(metrics, '$.acc_final', ?, '$.compression', ?)",
                     (planted["acc_final"] + 2.0, planted["compression"] * 10))
    csv = tmp_path / "cmp.csv"
    assert main(["report", str(first), str(second), "--csv", str(csv), "--relative-threshold", "5"]) == 0
    out = capsys.readouterr().out
    assert "1 changed" in out and "acc_final +2.00 pts" in out and "compression +900%" in out
    table = pd.read_csv(csv)
    assert table["changed"].tolist() == [True]
    # A looser threshold makes the same difference no change at all.
    assert main(["compare", str(first), str(second), "--threshold", "3", "--relative-threshold", "20"]) == 0
    assert "0 changed" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["report", "a", "b", "c"], ["compare", "only-one"]])
def test_compare_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_compare_of_a_non_run_directory_is_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
