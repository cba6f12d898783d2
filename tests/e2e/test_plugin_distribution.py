"""The plugin author's path, for real: the guide's example backend, run as the guide says.

The module in plugins/example_plugin is the one docs/plugins.md prints, whole, in at
most 25 lines of code. Uninstalled, ``harness -p harness_lowrank`` from its folder lists
and runs it and the conformance kit passes with ``plugin_module``. Then it is built and
installed with pip into a private target folder (so the test environment is left as it
was); with that folder on the path, entry-point discovery finds it, ``harness list``
shows it, ``harness run`` uses it, and its own conformance test passes.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pandas as pd
import pytest
from paths import ROOT

EXAMPLE = ROOT / "plugins" / "example_plugin"
GUIDE = ROOT / "docs" / "plugins.md"


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    lines: set[int] = set()
    previous = tokenize.NEWLINE
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
            previous = token.type if token.type != tokenize.COMMENT else previous
            continue
        docstring = token.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        previous = token.type
        if not docstring:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines)


def test_the_guide_prints_the_whole_example_and_it_is_short():
    source = (EXAMPLE / "harness_lowrank.py").read_text()
    section = GUIDE.read_text().split("## The smallest complete backend", 1)[1]
    printed = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    body = source.split('"""', 2)[2].lstrip("\n")  # the module without its docstring
    assert printed == body
    assert code_lines(source) <= 25
    assert code_lines("x = 1\n# note\n\ndef f():\n    \"\"\"Doc.\"\"\"\n    return 2\n") == 3


def test_the_example_runs_from_its_folder_with_p(tmp_path, cache_dir):
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    (folder / "tests" / "test_uninstalled.py").write_text(
        "from harness.testing import BackendConformance\n\n\n"
        "class TestLowrankUninstalled(BackendConformance):\n"
        "    backend = 'lowrank'\n    plugin_module = 'harness_lowrank'\n")
    env = dict(os.environ)
    listed = subprocess.run([sys.executable, "-m", "harness.cli.main", "-p", "harness_lowrank", "list"], cwd=folder,
                            env=env, capture_output=True, text=True, timeout=600)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"  harness_lowrank +\(loaded with -p\): harness_register_backends", listed.stdout)  # its name once, aligned
    out = tmp_path / "run"
    ran = subprocess.run([sys.executable, "-m", "harness.cli.main", "-p", "harness_lowrank", "run", "--backends",
                          "lowrank", "--targets", "linear", "--ratios", "4", "--epochs", "1", "--baseline-epochs",
                          "1", "--no-dense-control", "--latency-passes", "1", "--cache-dir", str(cache_dir), "--out",
                          str(out)],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    cells = pd.read_csv(out / "cells.csv")
    assert cells["status"].tolist() == ["ok"] and cells["compression"].iloc[0] >= 4
    kit = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(folder / "tests" / "test_uninstalled.py")], cwd=folder, env=env, capture_output=True,
                         text=True, timeout=600)
    assert kit.returncode == 0, kit.stdout[-3000:]
    assert re.search(r"\b1[0-9] passed", kit.stdout), kit.stdout[-500:]


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
    return subprocess.run([sys.executable, "-m", "harness.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_installed_plugin_is_discovered_and_listed(installed):
    result = harness(installed["env"], "list")
    assert result.returncode == 0
    assert "lowrank" in result.stdout and "harness-lowrank 0.1.0" in result.stdout
    blocked = harness(installed["env"], "-p", "no:lowrank", "plugins")
    line = next(line for line in blocked.stdout.splitlines() if "harness_lowrank" in line)
    assert "entry point of harness-lowrank 0.1.0" in line and line.endswith("blocked (-p no:NAME)")


def test_installed_plugin_runs(installed, tmp_path, cache_dir):
    out = tmp_path / "run"
    result = harness(installed["env"], "run", "--backends", "lowrank", "--targets", "linear", "--ratios", "4",
                     "--epochs", "1", "--baseline-epochs", "1", "--no-dense-control", "--latency-passes", "1",
                     "--cache-dir", str(cache_dir),
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
