"""Safe and faithful: nothing in a run directory runs as code, a damaged network or store row is refused or skipped
in one line, the host counts every tensor a replacement holds, and a kill at any instant loses no finished cell.

One small kept run (module scope: native SVD of LeNet-5's Linear layers beside the dense control, --save-models)
is copied by the tests that tamper with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from paths import ROOT

from harness.cli.main import main
from harness.plan.cells import Cell
from harness.results.store import STORE_NAME, Store, journal_path, load_results
from harness.run.networks import NETWORKS, file_sha256, network_path


class PlantedCode:
    """Unpickling this runs a shell command that creates the marker file: what a hostile run directory carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path, as_torch_file: bool) -> None:
    """Replace ``path`` with a pickle that runs code: raw, or inside a torch zip file as torch.save writes it."""
    import torch

    if as_torch_file:
        torch.save({"state_dict": PlantedCode(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(PlantedCode(marker)))


def forge_hash(run_dir: Path, cell_id: str, path: Path) -> None:
    """What an attacker who edits the store too would do: record the planted file's own hash."""
    store = Store(run_dir)
    store.update_metrics(cell_id, {"network_sha256": file_sha256(path)})
    store.close()


def common(cache_dir) -> list[str]:
    return ["run", "--backends", "native", "--methods", "svd", "--targets", "linear", "--models", "lenet5",
            "--ratios", "4", "--epochs", "1", "--baseline-epochs", "1", "--latency-passes", "1", "--jobs", "1",
            "--cache-dir", str(cache_dir)]


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("safety") / "run"
    assert main([*common(cache_dir), "--save-models", "--executor", "inprocess", "--out", str(out)]) == 0
    cells = pd.read_csv(out / "cells.csv")
    decomposed = cells[cells["method"] == "svd"].iloc[0]
    return out, decomposed["cell_id"], out / decomposed["model_file"]


def copy_run(kept_run, tmp_path) -> tuple[Path, str, Path]:
    out, cell_id, model = kept_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy, cell_id, copy / model.relative_to(out)


def test_a_kept_network_is_data_with_its_hash_in_the_store(kept_run):
    import torch

    out, cell_id, model = kept_run
    row = load_results(out).cells.set_index("cell_id").loc[cell_id]
    assert row["network_sha256"] == file_sha256(model)
    content = torch.load(model, weights_only=True)  # tensors and numbers only
    assert set(content) == {"format", "state_dict", "probe_shape", "probe_output"}


@pytest.mark.parametrize("as_torch_file", [False, True], ids=["pickle", "torch-zip-with-forged-hash"])
def test_code_planted_in_models_is_never_run_by_export_or_report(kept_run, tmp_path, capsys, as_torch_file):
    run_dir, cell_id, model = copy_run(kept_run, tmp_path)
    marker = tmp_path / "ran"
    plant(model, marker, as_torch_file)
    if as_torch_file:
        forge_hash(run_dir, cell_id, model)
    capsys.readouterr()
    for fmt in ("pt", "onnx"):
        assert main(["export", str(run_dir), cell_id, "--format", fmt, "--out", str(tmp_path / f"net.{fmt}")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert ("cannot be read as data" if as_torch_file else "does not match the content hash") in err
    assert main(["report", str(run_dir)]) == 0
    assert not marker.exists()


def test_code_planted_in_networks_is_never_run_by_resume(tmp_path, cache_dir, monkeypatch, capsys):
    from harness.run import session

    run_dir = tmp_path / "killed"
    monkeypatch.setattr(session, "_latency_phase", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main([*common(cache_dir), "--no-dense-control", "--executor", "inprocess", "--out", str(run_dir)]) == 130
    monkeypatch.undo()
    cell_id = pd.read_sql_query("SELECT cell_id FROM cells", sqlite3.connect(run_dir / STORE_NAME))["cell_id"][0]
    pending = network_path(run_dir, cell_id)
    assert pending.is_file()
    marker = tmp_path / "ran"
    plant(pending, marker, as_torch_file=True)
    forge_hash(run_dir, cell_id, pending)
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir)]) == 0
    said = capsys.readouterr().out
    assert f"latency of {cell_id} could not be measured" in said and "cannot be read as data" in said
    assert not marker.exists()
    assert main(["report", str(run_dir)]) == 0 and not marker.exists()
    assert not (run_dir / NETWORKS).exists()


def test_a_kept_network_with_a_flipped_byte_is_refused(kept_run, tmp_path, capsys):
    run_dir, cell_id, model = copy_run(kept_run, tmp_path)
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    capsys.readouterr()
    out = tmp_path / "net.onnx"
    assert main(["export", str(run_dir), cell_id, "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match the content hash in the store" in err
    assert not out.exists()


def test_a_rebuild_that_builds_another_network_is_refused(kept_run, tmp_path, capsys):
    """The saved probe output is the last word: weights that load into the architecture but compute something
    else (here: the saved tensors changed in value, hash recorded anew) are not exported."""
    import torch

    run_dir, cell_id, model = copy_run(kept_run, tmp_path)
    content = torch.load(model, weights_only=True)
    name = next(k for k in content["state_dict"] if k.endswith("weight"))
    content["state_dict"][name] = content["state_dict"][name] + 1.0
    torch.save(content, model)
    forge_hash(run_dir, cell_id, model)
    capsys.readouterr()
    assert main(["export", str(run_dir), cell_id, "--format", "pt", "--out", str(tmp_path / "n.pt2")]) == 2
    assert "does not reproduce the saved one's output" in capsys.readouterr().err


def test_no_file_from_disk_is_unpickled_as_code():
    """Every torch.load in the project says weights_only=True; nothing calls pickle's loaders."""
    offenders = []
    for folder in ("harness", "plugins", "reports"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if "weights_only=False" in text or re.search(r"\b(c?pickle|dill|joblib)\.loads?\(", text):
                offenders.append(str(path))
            for match in re.finditer(r"torch\.load\(", text):
                call = text[match.end():match.end() + 300].split("\n\n")[0]
                if "weights_only=True" not in call:
                    offenders.append(f"{path}:{text[:match.start()].count(chr(10)) + 1}")
    assert offenders == []


# ----------------------------------------------------------------------------- the host counts every tensor


def test_a_kernel_hidden_in_a_buffer_is_over_budget(tmp_path, cache_dir):
    out = tmp_path / "run"
    code = main(["-p", "bad_backends", *common(cache_dir)[:2], "hoarder", *common(cache_dir)[3:], "--no-dense-control",
                 "--executor", "inprocess", "--out", str(out)])
    assert code == 1
    cell = pd.read_csv(out / "cells.csv").iloc[0]
    assert cell["status"] == "over_budget" and "over its budget" in cell["error"]


def test_the_kit_counts_buffers_too():
    import torch

    from harness.contract.backend import DecomposeRequest, OverBudget, check_budget, count_params
    from harness.testing import decompose

    layer = torch.nn.Linear(64, 48)
    request = DecomposeRequest("hoarder", "svd", "fc", "linear", ratio=4.0, dense_params=count_params(layer))
    with pytest.raises(OverBudget, match="over its budget"):
        decompose(layer, request, plugin_module="bad_backends")
    bn = torch.nn.BatchNorm2d(8)  # running statistics are not what a replacement holds
    assert count_params(bn) == 16
    replacement = torch.nn.Sequential(torch.nn.Linear(64, 2), torch.nn.Linear(2, 48))
    replacement.register_buffer("scratch", torch.zeros(10), persistent=False)
    assert check_budget(replacement, request) == count_params(replacement) == 64 * 2 + 2 + 2 * 48 + 48 + 10


# ----------------------------------------------------------------------------- kills, damaged rows, workers

WRITER = """
import dataclasses, json, os, signal, sys
from harness.plan.result import CellResult
from harness.results.store import Store
run_dir, kill_at, first, count, template = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
template = json.load(open(template))
store = Store(run_dir)
store.conn.execute("PRAGMA cache_size = 1")  # pages spill into the file before the commit: a hot journal's state
seen = 0
def trace(statement):
    global seen
    seen += 1
    if seen == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
store.conn.set_trace_callback(trace)
print("ready", flush=True)
for seed in range(first, first + count):
    result = CellResult.from_dict(template)
    result.cell = dataclasses.replace(result.cell, backend="synthetic", seed=seed)
    store.add_result(result)
    print(seed, seen, flush=True)
"""


def _template(run_dir: Path, cell_id: str, path: Path) -> None:
    """A stored cell as the runner's result, made heavier (long layer info) so its transaction spans many pages."""
    conn = sqlite3.connect(run_dir / STORE_NAME)
    spec, metrics = conn.execute("SELECT spec, metrics FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
    epochs = [dict(zip(("epoch", "train_loss", "test_loss", "test_acc", "epoch_s"), row)) for row in conn.execute(
        "SELECT epoch, train_loss, test_loss, test_acc, epoch_s FROM epochs WHERE cell_id = ?", (cell_id,))]
    layers = [{"layer": f"{layer}.{copy}", "kind": kind, "params_dense": pd_, "params": p, "max_params": mp,
               "recon_error": err, "decompose_s": s, "info": {**json.loads(info), "pad": "x" * 3000},
               "stdout": "y" * 2000}
              for layer, kind, pd_, p, mp, err, s, info in conn.execute(
                  "SELECT layer, kind, params_dense, params, max_params, recon_error, decompose_s, info FROM layers "
                  "WHERE cell_id = ?", (cell_id,)) for copy in range(3)]
    conn.close()
    result = {"cell_id": cell_id, "cell": json.loads(spec), "status": "ok", "error": None, "traceback": None,
              "metrics": json.loads(metrics), "epochs": epochs, "layers": layers}
    path.write_text(json.dumps(result))


def _writer(run_dir: Path, kill_at: int, first: int, count: int, template: Path) -> subprocess.Popen:
    script = run_dir.parent / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(run_dir), str(kill_at), str(first), str(count),
                             str(template)], stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _check_store(run_dir: Path, committed: set[str], maybe: set[str], layers_per_cell: int) -> None:
    """What report and --resume read: every committed cell whole, nothing half-written."""
    results = load_results(run_dir)
    stored = {c for c in results.cells["cell_id"] if c.startswith("synthetic/")}
    assert committed <= stored <= committed | maybe
    counts = results.layers[results.layers["cell_id"].str.startswith("synthetic/")].groupby("cell_id").size()
    assert (counts == layers_per_cell).all() and set(counts.index) == stored
    Store(run_dir).close()  # the resume side opens it read-write


def test_a_sigkill_anywhere_in_a_cells_commit_leaves_a_readable_store(kept_run, tmp_path, capsys):
    run_dir, cell_id, _ = copy_run(kept_run, tmp_path)
    template = tmp_path / "template.json"
    _template(run_dir, cell_id, template)
    stored = json.loads(template.read_text())
    layers_per_cell = len(stored["layers"])
    cell = Cell.from_dict(stored["cell"])

    def synthetic(seed: int | str) -> str:  # the id of the writer's copy of the cell with this seed
        return dataclasses.replace(cell, backend="synthetic", seed=int(seed)).cell_id

    # How many statements three cells take: a kill at each of them below.
    clean = _writer(run_dir, 0, 100, 3, template)
    lines = clean.communicate(timeout=120)[0].split()
    statements = int(lines[-1])
    assert statements >= 20
    committed: set[str] = {synthetic(seed) for seed in (100, 101, 102)}
    first, hot = 200, 0
    for kill_at in range(1, statements + 1):
        writer = _writer(run_dir, kill_at, first, 3, template)
        out = writer.communicate(timeout=120)[0].splitlines()
        assert writer.returncode == -signal.SIGKILL
        done = {synthetic(line.split()[0]) for line in out[1:]}
        hot += journal_path(run_dir / STORE_NAME).exists()
        _check_store(run_dir, committed | done, {synthetic(seed) for seed in range(first, first + 3)},
                     layers_per_cell)
        committed |= {c for c in load_results(run_dir).cells["cell_id"] if c.startswith("synthetic/")}
        first += 10
    # And at moments nobody chose, inside the commits' fsyncs and renames.
    for delay in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4):
        writer = _writer(run_dir, 0, first, 500, template)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        out = writer.communicate(timeout=60)[0].splitlines()
        done = {synthetic(line.split()[0]) for line in out}
        hot += journal_path(run_dir / STORE_NAME).exists()
        _check_store(run_dir, committed | done, {synthetic(seed) for seed in range(first, first + 500)},
                     layers_per_cell)
        committed |= {c for c in load_results(run_dir).cells["cell_id"] if c.startswith("synthetic/")}
        first += 1000
    assert hot >= 1  # the kills did leave hot journals behind, which the readers rolled back
    # Left with a hot journal once more, the commands read it as they are.
    writer = _writer(run_dir, 5, first, 1, template)
    writer.communicate(timeout=120)
    assert journal_path(run_dir / STORE_NAME).exists()
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    writer = _writer(run_dir, 5, first + 1, 1, template)
    writer.communicate(timeout=120)
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert "already done, 0 to run" in capsys.readouterr().out


def test_a_damaged_cell_row_is_one_warning_and_the_other_cells_report(kept_run, tmp_path, capsys):
    run_dir, cell_id, _ = copy_run(kept_run, tmp_path)
    other = copy_run(kept_run, tmp_path / "b")[0]
    with sqlite3.connect(run_dir / STORE_NAME) as conn:
        conn.execute("UPDATE cells SET metrics = ? WHERE cell_id = ?", ('{"acc_final": 9', cell_id))
    conn.close()
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 1  # a cell that cannot be read back counts as failed
    said = capsys.readouterr().out
    warnings = [line for line in said.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and cell_id in warnings[0] and "damaged" in warnings[0]
    cells = pd.read_csv(run_dir / "cells.csv").set_index("cell_id")
    assert cells.loc[cell_id, "status"] == "damaged"
    assert (cells.drop(index=cell_id)["status"] == "ok").all() and "control" in set(cells["init"])
    assert main(["compare", str(run_dir), str(other)]) == 0
    assert main(["run", "--resume", str(run_dir)]) == 1
    assert "0 to run" in capsys.readouterr().out


def test_a_worker_killed_while_starting_costs_one_cell_not_the_run(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_TEST_KILL_MARKER", str(tmp_path / "killed-once"))
    out = tmp_path / "run"
    code = main(["-p", "startup_killer", *common(cache_dir)[:-4], "--ratios", "2,4", "--no-train",
                 "--datasets", "random:1x28x28", "--jobs", "1", "--cache-dir", str(cache_dir), "--out", str(out)])
    assert code == 1
    cells = pd.read_csv(out / "cells.csv")
    assert sorted(cells["status"]) == ["error", "ok"]
    error = cells.loc[cells["status"] == "error", "error"].iloc[0]
    assert "worker process died while starting (exit code -9)" in error


# ----------------------------------------------------------------------------- every --models form exports

USER_MODEL = '''
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class MyNet(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.stem = nn.Conv2d(input_shape[0], 16, 3, padding=1)
        self.block = Residual(16)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.pool(self.block(torch.relu(self.stem(x)))))


def build_net(input_shape, num_classes):
    return MyNet(input_shape, num_classes)
'''

EXPORTER = """
import sys
from harness.cli.main import main
run_dir, folder, *cells = sys.argv[1:]
for index, cell_id in enumerate(cells):
    for fmt, suffix in (("pt", ".pt2"), ("torchscript", ".ts.pt"), ("onnx", ".onnx")):
        code = main(["export", run_dir, cell_id, "--format", fmt, "--out", f"{folder}/net{index}{suffix}"])
        print(f"exit {index} {fmt} {code}", flush=True)
"""


def test_kept_networks_of_every_models_form_export_in_a_fresh_process(tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("onnxruntime")
    work = tmp_path / "work"
    work.mkdir()
    (work / "mynet.py").write_text(USER_MODEL)
    monkeypatch.chdir(work)
    # The run's ONNX Runtime timing is not under test here (test_export has it): skipping it halves the run.
    from harness.run import session

    real_find_spec = session.importlib.util.find_spec
    monkeypatch.setattr(session.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    models = "torchvision:mobilenet_v3_small,./mynet.py:build_net,mynet:build_net"
    assert main(["run", "--no-train", "--datasets", "random:3x32x32", "--models", models, "--backends", "native",
                 "--methods", "svd", "--targets", "linear", "--ratios", "4", "--no-dense-control", "--latency-passes",
                 "1", "--executor", "inprocess", "--save-models", "--cache-dir", str(cache_dir), "--out", "run"]) == 0
    monkeypatch.undo()
    cells = pd.read_csv(work / "run" / "cells.csv")
    assert len(cells) == 3 and (cells["status"] == "ok").all()
    (work / "exporter.py").write_text(EXPORTER)
    # A process that has seen neither the run nor the user's classes: they come back from the stored spec alone.
    done = subprocess.run([sys.executable, str(work / "exporter.py"), str(work / "run"), str(tmp_path),
                           *cells["cell_id"]], capture_output=True, text=True, cwd=work, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for index in range(len(cells)):
        for fmt in ("pt", "torchscript", "onnx"):
            assert f"exit {index} {fmt} 0" in done.stdout, (index, done.stdout, done.stderr[-2000:])
    assert done.stdout.count("outputs match the kept network") == 9


def test_a_model_file_inside_the_run_directory_is_never_imported(kept_run, tmp_path, capsys):
    """A run directory that names a model file kept inside itself: export refuses to run it."""
    run_dir, cell_id, _ = copy_run(kept_run, tmp_path)
    marker = tmp_path / "ran"
    (run_dir / "net.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(shape, classes): pass\n")
    with sqlite3.connect(run_dir / STORE_NAME) as conn:
        (text,) = conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        config = json.loads(text)
        config["models"] = [f"{run_dir}/net.py:build"]
        conn.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(config),))
        conn.execute("UPDATE cells SET model = ? WHERE cell_id = ?", (f"{run_dir}/net.py:build", cell_id))
    conn.close()
    capsys.readouterr()
    assert main(["export", str(run_dir), cell_id, "--format", "pt", "--out", str(tmp_path / "n.pt2")]) == 2
    err = capsys.readouterr().err
    assert "never runs code from a run directory" in err and err.count("\n") == 1
    assert not marker.exists()
