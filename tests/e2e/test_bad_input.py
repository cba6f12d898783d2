"""Every user-caused failure is exit 2 and one line, and leaves every file as it was.

One table of bad inputs (the ones a tester tried: unusable ``--out`` paths, damaged stores, a binary config,
non-finite numbers, duplicated or mis-shaped values, a ratio no layer can meet); each runs ``harness`` in-process
and is checked for exit 2, exactly one line on stderr, no traceback, and an unchanged directory tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.cli.main import main

# A quick valid run of the test backend, without data-dependent work: its store is what the damaged-store cases damage.
QUICK = ["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
         "--models", "lenet5", "--ratios", "4", "--no-train", "--datasets", "random:1x28x28", "--latency-passes", "1",
         "--executor", "inprocess"]
PAGE = 4096


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("good") / "run"
    assert main([*QUICK, "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    return out


def _damage(store: Path, where: str) -> None:
    data = bytearray(store.read_bytes())
    if where == "header":
        data[:16] = b"not a database!!"
    elif where == "middle":  # a b-tree page header in the middle of the file
        page = (len(data) // PAGE) // 2 * PAGE or PAGE
        data[page:page + 12] = bytes(b ^ 0xA5 for b in data[page:page + 12])
    else:  # tail: the last pages cut off, as a disk-full write would leave it
        data = data[: len(data) - PAGE - PAGE // 2]
    store.write_bytes(bytes(data))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in sorted(root.rglob("*"))}


def _case_args(case: str, tmp: Path, good_run: Path, cache: Path) -> list[str]:
    """Set up ``tmp`` for ``case`` and return its command line."""
    run = [*QUICK, "--cache-dir", str(cache)]
    if case == "out is a file":
        (tmp / "file").write_text("x")
        return [*run, "--out", str(tmp / "file")]
    if case == "out under a file":
        (tmp / "file").write_text("x")
        return [*run, "--out", str(tmp / "file" / "run")]
    if case == "out unwritable":
        return [*run, "--out", "/sys/harness-cannot-write-here"]
    if case.startswith(("resume", "report")):
        target = tmp / "damaged"
        shutil.copytree(good_run, target)
        _damage(target / "results.sqlite", case.split()[-1])
        return ["-p", "fake_backend", "run", "--resume", str(target)] if case.startswith("resume") else \
            ["report", str(target)]
    if case == "binary config":
        (tmp / "config.toml").write_bytes(bytes(range(256)) * 4)
        return [*run, "--config", str(tmp / "config.toml"), "--out", str(tmp / "run")]
    if case.startswith("cell-timeout"):
        return [*run, "--cell-timeout", case.split()[-1], "--out", str(tmp / "run")]
    if case.startswith("toml"):
        line = {"toml cell_timeout nan": "cell_timeout = nan", "toml epochs list": "epochs = [1, 2]",
                "toml seeds twice": "seeds = [0, 0]"}[case]
        (tmp / "config.toml").write_text(f"[run]\n{line}\n")
        return [*run, "--config", str(tmp / "config.toml"), "--out", str(tmp / "run")]
    if case == "seeds twice":
        return [*run, "--seeds", "0,0", "--out", str(tmp / "run")]
    if case == "ratio too large":
        return [*run, "--ratios", "4,1e9", "--out", str(tmp / "run")]
    if case == "ray settings without ray":
        return [*run, "--cpus-per-cell", "2", "--out", str(tmp / "run")]
    if case == "gpus per cell on cpu":
        return [*run, "--executor", "ray", "--gpus-per-cell", "1", "--device", "cpu", "--out", str(tmp / "run")]
    if case == "compare csv unwritable":
        return ["compare", str(good_run), str(good_run), "--csv", "/sys/harness-cannot-write-here.csv"]
    return _user_case_args(case, tmp, good_run, run)


MODEL_FILE = """
import sys
import torch.nn as nn


def net(shape, classes):
    return nn.Sequential(nn.Conv2d(shape[0], 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 32), nn.ReLU(),
                         nn.Linear(32, classes))


class Pair(nn.Module):  # returns a tuple, as models with auxiliary heads do
    def __init__(self, shape, classes):
        super().__init__()
        self.body = net(shape, classes)

    def forward(self, x):
        return self.body(x), x.mean()


def five(shape, classes):  # a classifier for 5 classes, whatever the data has
    return net(shape, 5)


def pair(shape, classes):
    return Pair(shape, classes)
"""


def _image_folder(root: Path, damage: str) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for index in range(3):
                Image.new("L", (28, 28), 40 * index).save(root / split / label / f"{index}.png")
    broken = root / "train" / "b" / "1.png"
    if damage == "corrupt":
        broken.write_bytes(b"these bytes are no image" * 10)
    else:  # truncated: the header and the start of the pixels, as an interrupted copy leaves it
        broken.write_bytes(broken.read_bytes()[:40])
    return root


def _user_case_args(case: str, tmp: Path, good_run: Path, run: list[str]) -> list[str]:
    """The inputs of a user's own model, data and settings (issue 27's list)."""
    import torch

    out = ["--out", str(tmp / "run")]
    if case.startswith("config "):
        line = {"config ratios nan": "ratios = nan", "config ratios inf": "ratios = inf",
                "config ratios nested": "ratios = [[2, 4]]", "config lr true": "lr = true",
                "config cache_dir table": "cache_dir = { path = '/tmp' }",
                "config key beside run": "epoch = 3\n[run]\nseeds = [0]"}[case]
        text = line if "[run]" in line else f"[run]\n{line}\n"
        (tmp / "config.toml").write_text(text)
        return [*run, "--config", str(tmp / "config.toml"), *out]
    if case == "device cudaX":
        return [*run, "--device", "cudaX", *out]
    if case == "cache dir is a file":
        (tmp / "cachefile").write_text("x")
        return [*QUICK, "--cache-dir", str(tmp / "cachefile"), *out]
    if case.startswith("weights"):
        path = tmp / "weights.pt"
        state = {k: v.clone() for k, v in _lenet().state_dict().items()}
        if case == "weights non-finite":
            next(iter(state.values())).view(-1)[0] = float("nan")
        if case == "weights not a checkpoint":
            path.write_text("not a checkpoint")
        else:
            torch.save(state, path)
        return [*run, "--weights", str(path), *out]
    if case.startswith("model") or case.startswith("corrupt") or case.startswith("truncated"):
        (tmp / "mynet.py").write_text(MODEL_FILE)
        builder = {"model wrong classes": "five", "model returns a tuple": "pair"}.get(case, "net")
        data = "random:1x28x28:10"
        if case.endswith("image"):
            data = f"folder:{_image_folder(tmp / 'images', case.split()[0])}"
        if case == "model file exits at import":
            (tmp / "mynet.py").write_text("import sys\nsys.exit(0)\n")
        models = ["--models", f"{tmp / 'mynet.py'}:{builder}", "--datasets", data, "--image-size", "28"]
        return [*QUICK[:QUICK.index("--models")], *models, "--ratios", "4", "--epochs", "0",
                "--baseline-epochs", "1", "--no-dense-control", "--latency-passes", "1", "--executor", "inprocess",
                "--cache-dir", str(tmp / "cache"), *out] if case.endswith("image") else \
            [*QUICK[:QUICK.index("--models")], *models, "--ratios", "4", "--no-train", "--latency-passes", "1",
             "--executor", "inprocess", "--cache-dir", str(tmp / "cache"), *out]
    if case == "plugin exits at import":
        (tmp / "exiting.py").write_text("import sys\nsys.exit(0)\n")
        return ["-p", str(tmp / "exiting.py"), *run[2:], *out]
    if case.endswith(("damaged meta", "odd meta")):
        import sqlite3

        target = tmp / "damaged"
        shutil.copytree(good_run, target)
        conn = sqlite3.connect(target / "results.sqlite")
        damaged = """'{"seeds": [0'""" if case.endswith("damaged meta") else "'[1, 2]'"
        conn.execute(f"UPDATE meta SET value = {damaged} WHERE key = 'config'")
        conn.commit()
        conn.close()
        command = case.split()[0]
        return {"resume": ["-p", "fake_backend", "run", "--resume", str(target)], "report": ["report", str(target)],
                "compare": ["compare", str(good_run), str(target)]}[command]
    if case == "export best non-numeric":
        return ["-p", "fake_backend", "export", str(good_run), "--best", "status", "--format", "pt",
                "--out", str(tmp / "net.pt")]
    raise AssertionError(case)


def _lenet():
    from harness.run.models import lenet5

    return lenet5((1, 28, 28), 1000)


CASES = ["out is a file", "out under a file", "out unwritable",
         "resume header", "resume middle", "resume tail", "report header", "report middle", "report tail",
         "binary config", "cell-timeout nan", "cell-timeout inf", "cell-timeout -1",
         "toml cell_timeout nan", "toml epochs list", "toml seeds twice", "seeds twice",
         "ratio too large", "ray settings without ray", "gpus per cell on cpu", "compare csv unwritable"]
# A user's own model, data and settings: each case and a word its one line must hold.
USER_CASES = {"config ratios nan": "ratio", "config ratios inf": "ratio", "config ratios nested": "ratio",
              "config lr true": "lr", "config cache_dir table": "cache_dir", "config key beside run": "epoch",
              "device cudaX": "cudaX", "cache dir is a file": "cache",
              "weights non-finite": "non-finite", "weights not a checkpoint": "weights.pt",
              "model wrong classes": "5 outputs", "model returns a tuple": "tuple",
              "model file exits at import": "exit", "plugin exits at import": "exit",
              "corrupt image": "1.png", "truncated image": "1.png",
              "resume damaged meta": "results.sqlite", "report damaged meta": "results.sqlite",
              "compare damaged meta": "results.sqlite", "resume odd meta": "results.sqlite",
              "report odd meta": "results.sqlite", "compare odd meta": "results.sqlite",
              "export best non-numeric": "numeric"}
CASES += list(USER_CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2_and_changes_nothing(case, tmp_path, good_run, cache_dir, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run directory would land here, and be seen
    args = _case_args(case, tmp_path, good_run, cache_dir)
    before, good_before = _tree(tmp_path), _tree(good_run)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("harness"), err
    assert USER_CASES.get(case, "") in lines[0], err
    assert "Traceback" not in err and "internal error" not in err
    assert _tree(tmp_path) == before and _tree(good_run) == good_before
    assert not Path("/sys/harness-cannot-write-here").exists()


def test_a_store_killed_before_its_configuration_is_started_again(tmp_path, cache_dir, capsys):
    """A store with its schema but no metadata (a kill between the two, by older versions) is not a dead end."""
    import sqlite3

    from harness.results.store import SCHEMA

    out = tmp_path / "run"
    out.mkdir()
    conn = sqlite3.connect(out / "results.sqlite")
    conn.executescript(SCHEMA)
    conn.close()
    assert main(["-p", "fake_backend", "run", "--resume", str(out)]) == 2
    assert f"start it again with --out {out}" in capsys.readouterr().err
    assert main([*QUICK, "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    assert "held a store without a configuration" in capsys.readouterr().out


def test_a_new_store_is_made_whole_or_not_at_all(tmp_path):
    from harness.results.store import STORE_NAME, Store

    store = Store.create(tmp_path / "run", {"config": {"seeds": [0]}})
    assert store.meta() == {"config": {"seeds": [0]}}
    store.close()
    assert sorted(os.listdir(tmp_path / "run")) == [STORE_NAME]


def test_a_failing_report_plugin_is_exit_1(tmp_path, cache_dir, capsys):
    """A report that could not be written is a failure the exit code tells (README: 1, something failed)."""
    plugin = tmp_path / "broken_report.py"
    plugin.write_text("import harness\n\n@harness.hookimpl\ndef harness_report(results, run_dir):\n"
                      "    raise ValueError('no room for this table')\n")
    code = main(["-p", str(plugin), *QUICK, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "run")])
    assert code == 1
    assert "report plugin" in capsys.readouterr().out


def test_disk_full_in_a_cell_says_so(tmp_path, cache_dir, monkeypatch):
    """torch.save's zip writer reports a full disk as 'file write failed' from inline_container.cc: the cell's
    error says what it most likely means."""
    from harness.results.store import load_results
    from harness.run import runner

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(runner, "save_network", full)
    out = tmp_path / "run"
    assert main([*QUICK, "--cache-dir", str(cache_dir), "--save-models", "--out", str(out)]) == 1
    (error,) = load_results(out).cells["error"].tolist()
    assert error.startswith("a file write failed, most likely because the disk is full"), error


def test_the_in_process_executor_says_what_it_cannot_contain(tmp_path, cache_dir, capsys):
    assert main([*QUICK, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "note: the in-process executor cannot contain plugin 'fake_backend'" in printed


@pytest.mark.parametrize("flag, pattern", [("--mix", "linear=lowrank,fc9*=lowrank"), ("--layers", "2,classifer.*"),
                                           ("--skip", "fake/lenet/*")])
def test_a_glob_that_matches_nothing_is_a_warning_that_names_it(flag, pattern, tmp_path, cache_dir, capsys):
    """The documented rule for --mix, --layers and --skip alike: the run goes on (a grid's patterns may be
    defensive), and each glob that matched nothing is named in a warning line."""
    assert main([*QUICK, "--cache-dir", str(cache_dir), flag, pattern, "--out", str(tmp_path / "run")]) == 0
    missed = pattern.split(",")[-1].split("=")[0]
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{missed!r} matches no" in warnings[0], warnings


def test_layers_that_match_nothing_at_all_leave_nothing_to_run(tmp_path, cache_dir, capsys):
    assert main([*QUICK, "--cache-dir", str(cache_dir), "--layers", "classifer.*", "--out", str(tmp_path / "run")]) == 2
    assert "nothing to run" in capsys.readouterr().err and not (tmp_path / "run").exists()
