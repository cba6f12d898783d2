"""Graceful unavailability: with the optional libraries missing, backends are listed
as unavailable with their install hint, `--backends all` skips them, and naming one is
a one-line error. The libraries are hidden in a subprocess (in the tox `minimal`
environment they are really absent, and the same checks hold)."""

from __future__ import annotations

import subprocess
import sys

HIDE = ("import sys\n"
        "for name in ('tensorly', 'tltorch', 'tednet', 'opt_einsum'):\n"
        "    sys.modules[name] = None  # makes `import name` raise ImportError\n"
        "from harness.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n")


def harness_without_libraries(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE, *args], capture_output=True, text=True, timeout=600)


def test_list_shows_missing_libraries_with_install_hints():
    result = harness_without_libraries("list")
    assert result.returncode == 0, result.stderr
    backends_section = result.stdout.split("models:")[0]
    lines = {line.split()[0]: line for line in backends_section.splitlines() if line.startswith("  ") and line.split()}
    assert "available" in lines["native"] and "unavailable" not in lines["native"]
    for backend, extra in (("tensorly", "tensorly"), ("tltorch", "tltorch"), ("tltorch-rec", "tltorch"),
                           ("tednet", "tednet")):
        assert "unavailable" in lines[backend], lines[backend]
        assert f'pip install -e ".[{extra}]"' in lines[backend]


def test_all_runs_what_is_available_and_says_what_it_skipped(tmp_path, cache_dir):
    result = harness_without_libraries(
        "run", "--backends", "all", "--methods", "svd", "--targets", "linear", "--ratios", "4", "--epochs", "1",
        "--baseline-epochs", "1", "--no-dense-control", "--latency-passes", "1", "--executor", "inprocess",
        "--cache-dir", str(cache_dir),
        "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    for backend in ("tensorly", "tltorch", "tednet"):
        assert f"skipping backend {backend}" in result.stdout
    assert "cells: 1 ok" in result.stdout


def test_naming_an_unavailable_backend_is_a_one_line_error():
    result = harness_without_libraries("run", "--backends", "tednet")
    assert result.returncode == 2
    assert "unavailable" in result.stderr and len(result.stderr.strip().splitlines()) == 1
