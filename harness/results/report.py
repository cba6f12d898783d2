"""Rebuilding a run's reports from its store: every report plugin, the terminal summary and the exit code.

The store is the only input (``harness report RUN_DIR`` and the end of ``harness run`` are the same call): each report
plugin's ``harness_report`` runs on :class:`harness.results.store.RunResults`, a failing plugin is one line and the
others still run, and the exit code is 1 when any cell failed (:data:`FAILED_STATUSES`) or a report plugin did, else 0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.core.errors import one_line
from harness.plan.status import FAILED
from harness.results.store import load_results

# Statuses that make `harness run` exit 1: the cell failed, its backend broke the budget it promised, or its stored
# row cannot be read back.
FAILED_STATUSES = FAILED


def report(run_dir: Path, host: Any, write: Callable[[str], None]) -> int:
    """Rebuild every report from the store and print the terminal summary; returns the exit code."""
    results = load_results(run_dir)
    for line in results.warnings:
        write(line)
    broken = 0
    for impl in host.pm.hook.harness_report.get_hookimpls():
        try:
            impl.function(results=results, run_dir=str(run_dir))
        except Exception as exc:  # one broken report plugin must not hide the others
            write(f"report plugin {impl.plugin_name!r} failed: {one_line(exc)}")
            broken += 1
    for impl in host.pm.hook.harness_terminal_summary.get_hookimpls():
        try:
            impl.function(results=results, write=write)
        except Exception as exc:
            write(f"summary of plugin {impl.plugin_name!r} failed: {one_line(exc)}")
            broken += 1
    failed = results.cells["status"].isin(FAILED_STATUSES).sum() if len(results.cells) else 0
    return 1 if failed or broken else 0
