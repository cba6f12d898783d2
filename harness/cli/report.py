"""``harness report`` and ``harness compare``: rebuild a run's reports, or compare two runs cell by cell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.common import EXIT_OK, UsageError, _echo, report

if TYPE_CHECKING:  # the host loads plugins, which import torch: only commands that need them load it
    from harness.run.host import Host


def cmd_report(host: Host, args: argparse.Namespace) -> int:

    if len(args.run_dirs) == 1:
        return report(Path(args.run_dirs[0]), host, _echo)
    if len(args.run_dirs) != 2:
        raise UsageError("harness report: give one RUN_DIR to rebuild its reports, or two to compare them")
    return cmd_compare(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.results.compare import compare_runs
    from harness.results.store import load_results

    if not (0 <= args.threshold < float("inf") and 0 <= args.relative_threshold < float("inf")):
        raise UsageError("harness compare: thresholds must be finite numbers, not negative")
    first, second = (load_results(path) for path in args.run_dirs)
    for line in first.warnings + second.warnings:
        print(line, file=sys.stderr)
    comparison = compare_runs(first, second, args.threshold, args.relative_threshold)
    changed = comparison.changed
    _echo(f"A = {args.run_dirs[0]}  ({first.meta.get('command', '?')})")
    _echo(f"B = {args.run_dirs[1]}  ({second.meta.get('command', '?')})")
    _echo(f"{len(comparison.table)} cells in both runs: {len(changed)} changed "
          f"(accuracy > {args.threshold:g} points, speedup/compression/error > {args.relative_threshold:.0%}); "
          f"{len(comparison.only_a)} only in A, {len(comparison.only_b)} only in B")
    if not changed.empty:
        shown = changed[["cell_id", "status_a", "status_b", "acc_final_a", "acc_final_b", "speedup_a", "speedup_b",
                         "why"]]
        _echo(tabulate(shown, headers="keys", tablefmt="simple", showindex=False, floatfmt=".2f"))
    for label, ids in (("only in A", comparison.only_a), ("only in B", comparison.only_b)):
        for cell_id in ids:
            _echo(f"{label}: {cell_id}")
    if args.csv:
        try:
            comparison.table.to_csv(args.csv, index=False)
        except OSError as exc:
            raise UsageError(f"harness compare: cannot write {args.csv!r}: {exc.strerror or exc}") from None
        _echo(f"comparison written to {args.csv}")
    return EXIT_OK
