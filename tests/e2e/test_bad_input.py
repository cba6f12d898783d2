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
    raise AssertionError(case)


CASES = ["out is a file", "out under a file", "out unwritable",
         "resume header", "resume middle", "resume tail", "report header", "report middle", "report tail",
         "binary config", "cell-timeout nan", "cell-timeout inf", "cell-timeout -1",
         "toml cell_timeout nan", "toml epochs list", "toml seeds twice", "seeds twice",
         "ratio too large", "ray settings without ray", "gpus per cell on cpu", "compare csv unwritable"]


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
