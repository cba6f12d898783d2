"""``harness export``: one kept network written as pt, TorchScript or ONNX and checked on the test set."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cli.common import EXIT_FAILED, EXIT_OK, UsageError, _echo
from harness.plan.status import Status

if TYPE_CHECKING:  # the host loads plugins, which import torch: only commands that need them load it
    from harness.run.host import Host


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if count < 1000 or unit == "MB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def _export_choice(args: argparse.Namespace, cells: Any, run_dir: Path) -> Any:
    """The cell ``harness export`` writes: by id, or the best kept decomposed network within the constraints."""
    from harness.results.aggregate import decomposed_ok, with_delta
    from harness.run.export import pick_cell

    constraints = {"min_compression": args.min_compression, "max_latency_ms": args.max_latency_ms,
                   "min_speedup": args.min_speedup, "max_drop_pp": args.max_drop}
    if (args.cell_id is None) == (args.best is None):
        raise UsageError("harness export: give a CELL_ID or --best METRIC, one of the two")
    if args.cell_id is not None:
        if any(value is not None for value in constraints.values()):
            raise UsageError("harness export: --min-compression, --min-speedup, --max-latency-ms and --max-drop go "
                             "with --best, not with a CELL_ID")
        match = cells[cells["cell_id"] == args.cell_id]
        if match.empty:
            raise UsageError(f"harness export: no cell {args.cell_id!r} in {run_dir} (the ids are in its cells.csv)")
        cell = match.iloc[0]
        if cell["status"] != Status.OK:
            raise UsageError(f"harness export: cell {args.cell_id!r} is {cell['status']}, not ok: nothing to export")
        return cell
    kept = with_delta(decomposed_ok(cells))
    if args.best not in kept.columns or not _numeric(kept[args.best]):
        raise UsageError(f"harness export: --best {args.best!r} is not a numeric metric of this run (e.g. "
                         f"acc_final, speedup, compression{', ort_speedup' if 'ort_speedup' in kept.columns else ''})")
    kept = kept[kept["model_file"].notna()] if "model_file" in kept.columns else kept.iloc[0:0]
    if kept.empty:
        raise UsageError(f"harness export: {run_dir} kept no decomposed network (run it with --save-models)")
    cell = pick_cell(kept, args.best, **constraints)
    if cell is None:
        given = ", ".join(f"{name} {value:g}" for name, value in constraints.items() if value is not None)
        raise UsageError(f"harness export: no kept decomposed network of {run_dir} meets the constraints ({given})")
    return cell


def _numeric(column: Any) -> bool:
    """A column of numbers (a text column such as ``status`` would rank cells arbitrarily)."""
    import pandas as pd

    values = column.dropna()
    if pd.api.types.is_bool_dtype(values):
        return False
    return len(values) > 0 and bool(pd.to_numeric(values, errors="coerce").notna().all())


def cmd_export(host: Host, args: argparse.Namespace) -> int:
    from harness.results.store import load_results, read_cell
    from harness.run import export, session
    from harness.run.models import ModelUnavailable
    from harness.run.networks import NetworkInvalid

    run_dir = Path(args.run_dir)
    results = load_results(run_dir)
    for line in results.warnings:
        print(line, file=sys.stderr)
    cell = _export_choice(args, results.cells, run_dir)
    cell_id = cell["cell_id"]
    model_file = cell.get("model_file")
    if not isinstance(model_file, str):
        raise UsageError(f"harness export: cell {cell_id!r} has no kept network: {run_dir} was run without "
                         "--save-models")
    path = run_dir / model_file
    if not path.is_file():
        raise UsageError(f"harness export: the kept network of {cell_id!r} is missing ({path})")
    try:
        model, data = session.kept_network(run_dir, results.meta, read_cell(run_dir, cell_id), host, path)
    except NetworkInvalid as exc:
        raise UsageError(f"harness export: {exc}") from None
    except ModelUnavailable as exc:
        raise UsageError(f"harness export: the model of {cell_id!r} cannot be built here: {exc}") from None
    int8 = args.quantize == "int8"
    if int8:
        _check_int8_request(args, cell)
    out = Path(args.out) if args.out else export.default_out(cell, "int8" if int8 else args.fmt)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"harness export: cannot write into {str(out.parent)!r}: {exc.strerror or exc}") from None
    if out.is_dir() or not os.access(out.parent, os.W_OK):
        raise UsageError(f"harness export: cannot write {str(out)!r}")
    if int8:
        return _export_int8(run_dir, results.meta, cell, model, data, out)
    example = data.head("test", 2)[0]
    # The ONNX graph the run timed in ONNX Runtime is this very export: copied, then checked like a new one.
    timed = run_dir / cell["onnx_file"] if args.fmt == "onnx" and isinstance(cell.get("onnx_file"), str) else None
    try:
        check = export.export_and_check(model, example, args.fmt, out, (x for x, _ in data.test_batches(256)), timed)
    except export.ExportFailed as exc:
        print(f"harness export: {cell_id}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _echo(f"wrote {out} ({args.fmt}, {_size(check['bytes'])}) from cell {cell_id}")
    verdict = "match" if check["match"] else "do NOT match"
    bound = "≤" if check["match"] else ">"
    _echo(f"read back from the file, its outputs {verdict} the kept network on {check['inputs']} test inputs: max abs "
          f"difference {check['max_abs_diff']:.2e} {bound} {export.MATCH_TOLERANCE:g}")
    return EXIT_OK if check["match"] else EXIT_FAILED


def _check_int8_request(args: argparse.Namespace, cell: Any) -> None:
    """A UsageError unless the cell has an INT8 accuracy to check the written graph against."""
    import pandas as pd

    if args.fmt != "onnx":
        raise UsageError("harness export: --quantize int8 writes an ONNX graph: use --format onnx")
    if pd.isna(pd.to_numeric(cell.get("int8_acc"), errors="coerce")):
        error = cell.get("int8_error")
        why = f": it could not be quantized ({error})" if isinstance(error, str) else \
            " (run it with --save-models --quantize int8)"
        raise UsageError(f"harness export: cell {cell['cell_id']!r} has no INT8 accuracy to check against{why}")


def _export_int8(run_dir: Path, meta: dict[str, Any], cell: Any, model: Any, data: Any, out: Path) -> int:
    """Write the cell's INT8 graph (the one the run measured, or quantized again the same way when that file is
    gone) and check its test-set accuracy in ONNX Runtime against the run's ``int8_acc``: the same graph, runtime,
    threads and images give the same number, so anything else is a mismatch."""
    import shutil
    import tempfile

    from harness.run import export
    from harness.core.errors import one_line
    from harness.run.quantize import QuantizeFailed, calibration_sample, onnx_accuracy, quantize_int8

    cell_id, stored = cell["cell_id"], float(cell["int8_acc"])
    threads = (meta.get("config") or {}).get("latency_threads")
    measured = run_dir / cell["int8_file"] if isinstance(cell.get("int8_file"), str) else None
    try:
        if measured is not None and measured.is_file():
            shutil.copyfile(measured, out)
            made = "the graph the run measured"
        else:
            with tempfile.TemporaryDirectory() as scratch:
                fp32 = Path(scratch) / "fp32.onnx"
                export.export_network(model, data.head("test", 2)[0], "onnx", fp32)
                mode = quantize_int8(fp32, out, calibration_sample(data)).mode
            made = f"quantized again ({mode}): the run's INT8 graph is gone"
    except (export.ExportFailed, QuantizeFailed) as exc:
        print(f"harness export: {cell_id}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        accuracy = onnx_accuracy(out, data.test_batches(), threads)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's error on a damaged file, in one line
        out.unlink(missing_ok=True)
        print(f"harness export: {cell_id}: the INT8 graph {out} does not run in ONNX Runtime: {one_line(exc)}",
              file=sys.stderr)
        return EXIT_FAILED
    _echo(f"wrote {out} (INT8 onnx, {_size(out.stat().st_size)}) from cell {cell_id}, {made}")
    verdict = "matches" if accuracy == stored else "does NOT match"
    _echo(f"read back from the file, its test accuracy in ONNX Runtime {accuracy:.2f} % {verdict} the run's "
          f"int8_acc {stored:.2f} %")
    return EXIT_OK if accuracy == stored else EXIT_FAILED
