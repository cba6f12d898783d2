"""The plugin author's path, for real: build and pip-install the example plugin, then use it.

The example in plugins/example_plugin is built and installed with pip into a private
target folder (so the test environment is left as it was); with that folder on the path,
entry-point discovery finds it, ``harness list`` shows it, ``harness run`` uses it, and
its own conformance test passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLE = Path(__file__).parent.parent / "plugins" / "example_plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(EXAMPLE, source)
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    assert list(target.glob("harness_lowrank-*.dist-info"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")])))
    return {"env": env, "source": str(source)}


def harness(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_installed_plugin_is_discovered_and_listed(installed):
    result = harness(installed["env"], "list")
    assert result.returncode == 0
    assert "lowrank" in result.stdout and "harness-lowrank 0.1.0" in result.stdout
    blocked = harness(installed["env"], "-p", "no:lowrank", "list")
    assert "harness_lowrank" not in blocked.stdout


def test_installed_plugin_runs(installed, tmp_path, cache_dir):
    out = tmp_path / "run"
    result = harness(installed["env"], "run", "--backends", "lowrank", "--targets", "linear", "--ratios", "4",
                     "--epochs", "1", "--baseline-epochs", "1", "--no-dense-control", "--cache-dir", str(cache_dir),
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    cells = pd.read_csv(out / "cells.csv")
    assert cells["status"].tolist() == ["ok"] and cells["backend"].tolist() == ["lowrank"]


def test_installed_plugin_passes_the_conformance_kit(installed):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(Path(installed["source"]) / "tests")], env=installed["env"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout
