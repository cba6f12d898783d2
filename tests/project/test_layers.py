"""The layering and the plugin boundary are checked, not hoped for: import-linter's contracts in pyproject.toml.

``lint-imports`` must keep all three: the host's layers only import downwards, plugins import only the public API
(``harness`` itself), and no plugin imports another. A planted upward import must break the first, so the check
can fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT


def lint(cwd: Path) -> subprocess.CompletedProcess:
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    paths = [str(cwd), str(cwd / "plugins"), str(cwd / "reports")]
    return subprocess.run([sys.executable, "-c", script, "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin"})


def test_every_import_contract_is_kept():
    pytest.importorskip("importlinter")
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    pytest.importorskip("importlinter")
    copy = tmp_path / "tree"
    for part in ("harness", "plugins", "reports"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    files = copy / "harness" / "core" / "files.py"
    files.write_text(files.read_text() + "\nfrom harness.results.store import STORE_NAME  # noqa: E402\n")
    done = lint(copy)
    assert done.returncode == 1
    assert "harness.core is not allowed to import harness.results" in done.stdout
