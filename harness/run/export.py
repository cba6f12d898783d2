"""Deployable files from a run's kept networks: a torch.export program, TorchScript or ONNX, checked on the test set.

``harness run --save-models`` keeps every ok cell's fine-tuned network in the run directory (``models/``: its tensors
as data, rebuilt through the cell's backend by :mod:`harness.run.networks`). This module turns one into a file that needs
neither harness nor that library: ``pt`` is a :func:`torch.export.export` program (``torch.export.load(FILE).module()``
gives an ``nn.Module``), ``torchscript`` a traced module (``torch.jit.load(FILE)``) and ``onnx`` an ONNX graph for
ONNX Runtime. Every file is read back from disk and run on the test set beside the kept network; the largest absolute
difference of their float32 outputs is the verdict (within :data:`MATCH_TOLERANCE` or not). A network a format cannot
express is reported in one line naming the innermost of its non-stock layers that fails on its own (found by exporting
those layers one by one with the inputs they saw), never with the exporter's traceback; an export still running after
:data:`EXPORT_TIME_LIMIT` seconds is abandoned, in one line too.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.deadline import deadline

FORMATS = ("pt", "torchscript", "onnx")
MODELS = "models"
# Float32 outputs of an exported network and the network it came from may differ by rounding only.
MATCH_TOLERANCE = 1e-4
# An export still running after this long is abandoned: the ONNX exporter's passes take minutes on graphs of
# thousands of small ops (TedNet's CP Linear at x4 on LeNet-5 ran for more than six).
EXPORT_TIME_LIMIT = 60.0


class ExportFailed(Exception):
    """A network that a format cannot express; the message is one line naming the layer that fails."""


class ExportTimedOut(ExportFailed):
    """An export abandoned at its time limit: a network of the same structure would take as long again."""


class _OutOfTime(BaseException):  # not an Exception: exporters that catch those must not swallow it
    pass


def model_path(run_dir: str | os.PathLike, cell_id: str) -> Path:
    """Where ``--save-models`` keeps a cell's fine-tuned network: the file name it had in the latency phase."""
    from harness.run.networks import network_path

    return Path(run_dir) / MODELS / network_path(run_dir, cell_id).name


# The exporters warn and log at length about things that do not concern the user (deprecations, graph breaks they
# handled); their errors still raise.
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def quiet(logger_names: tuple[str, ...] = EXPORTER_LOGGERS):
    """Only errors from the named loggers, no warnings and nothing printed, for the block."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The network as a torch.export program with a dynamic batch size: the ``pt`` file, and what the ONNX graph is
    translated from (so ONNX never falls back to a draft export that would freeze data-dependent values)."""
    return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))


def _write(model: nn.Module, example: torch.Tensor, fmt: str, path: Path) -> None:
    with quiet(), torch.no_grad():
        if fmt == "pt":
            # Through a buffer: torch.export.save warns about any file name not ending in .pt2 (--out is the user's).
            buffer = io.BytesIO()
            torch.export.save(_program(model, example), buffer)
            path.write_bytes(buffer.getvalue())
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, (example,), check_trace=False), str(path))
        elif fmt == "onnx":
            # One self-contained file (no weights.onnx.data beside it): what a user copies is what runs.
            torch.onnx.export(_program(model, example), (example,), str(path), dynamo=True, input_names=["input"],
                              output_names=["output"], external_data=False, verbose=False)
        else:
            raise ValueError(f"unknown format {fmt!r}")


def load_exported(path: Path, fmt: str, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network in an exported file as a function of a batch, loaded the way a user would load it."""
    if fmt == "pt":
        module = torch.export.load(io.BytesIO(path.read_bytes())).module()
        return lambda batch: module(batch)
    if fmt == "torchscript":
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice: TorchScript is what was asked for
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path)).eval()
        return lambda batch: module(batch)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: torch.from_numpy(session.run(None, {name: batch.detach().cpu().numpy()})[0])


# Classes from these packages are the stock layers exporters know; a failure comes from the other layers.
STOCK_PACKAGES = ("torch.", "torchvision.")
# Layers tried one by one to name the one that fails (on a failure only; each try is an export).
MAX_LAYERS_TRIED = 40


def _layers_to_try(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The submodules that are not stock layers (what a backend put in, the user's own blocks), innermost first:
    an inner layer that fails makes every block around it fail too, and the inner one is the news."""
    found = [(name, module) for name, module in model.named_modules()
             if name and not type(module).__module__.startswith(STOCK_PACKAGES)]
    return sorted(found, key=lambda item: -item[0].count("."))[:MAX_LAYERS_TRIED]


def _failing_layer(model: nn.Module, example: torch.Tensor, fmt: str, scratch: Path) -> str | None:
    """``path (Type from module)`` of the innermost non-stock layer that the format cannot express on its own."""
    layers = _layers_to_try(model)
    inputs: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, output: Any) -> None:  # returns None: the output stays
            inputs.setdefault(name, args[0] if args else None)
        return record

    hooks = [layer.register_forward_hook(recorder(name)) for name, layer in layers]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for name, layer in layers:
        if name not in inputs or not isinstance(inputs[name], torch.Tensor):
            continue
        try:
            with deadline(EXPORT_TIME_LIMIT, _OutOfTime):
                _write(copy.deepcopy(layer), inputs[name], fmt, scratch)
        except (Exception, _OutOfTime):  # noqa: BLE001 - any exporter error marks this layer as the one that fails
            return f"{name} ({type(layer).__name__} from {type(layer).__module__})"
        finally:
            scratch.unlink(missing_ok=True)
    return None


def export_network(model: nn.Module, example: torch.Tensor, fmt: str, path: Path,
                   time_limit: float = EXPORT_TIME_LIMIT) -> None:
    """Write ``model`` (in eval mode, on the CPU) to ``path`` in ``fmt``; :class:`ExportFailed` when it cannot be.

    The exporters work on a copy, so that whatever a failed export leaves behind stays out of the network that
    is measured and compared afterwards; an export past ``time_limit`` seconds is abandoned (one line too)."""
    model = model.eval().cpu()
    example = example.cpu()
    if len(example) < 2:  # torch.export specialises a batch dimension of 1, and the file would take no other batch
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with deadline(time_limit, _OutOfTime):
            _write(copy.deepcopy(model), example, fmt, path)
    except _OutOfTime:
        path.unlink(missing_ok=True)
        raise ExportTimedOut(f"{fmt} export of the network did not finish in {time_limit:g} s") from None
    except Exception as exc:  # noqa: BLE001 - the exporters raise anything; the user gets one line
        path.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        layer = _failing_layer(model, example, fmt, path.with_name(f".{path.name}.layer"))
        where = f"layer {layer}" if layer else "the network"
        raise ExportFailed(f"{fmt} cannot express {where}: {type(exc).__name__}: {first}") from None


def max_difference(model: nn.Module, exported: Callable[[torch.Tensor], torch.Tensor],
                   batches: Iterable[torch.Tensor]) -> tuple[float, int]:
    """The largest absolute difference between the two networks' float32 outputs over ``batches`` (infinite when an
    output has another shape, as a trace that froze its batch size gives), and how many inputs were compared;
    :class:`ExportFailed` when the exported network does not run on them."""
    worst, count = 0.0, 0
    model = model.eval().cpu()
    with torch.inference_mode():
        for batch in batches:
            batch = batch.detach().cpu().float()
            expected = model(batch).float()
            try:
                got = exported(batch).float()
            except Exception as exc:  # noqa: BLE001 - a runtime's error, in one line
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise ExportFailed(f"the exported file does not run on a test batch of {len(batch)}: "
                                   f"{type(exc).__name__}: {first}") from None
            count += len(batch)
            if got.shape != expected.shape:
                return float("inf"), count
            worst = max(worst, (expected - got).abs().max().item())
    return worst, count


def export_and_check(model: nn.Module, example: torch.Tensor, fmt: str, path: Path,
                     batches: Iterable[torch.Tensor], written: Path | None = None) -> dict[str, Any]:
    """Export (or copy ``written``, the same export made earlier, e.g. the ONNX graph the run timed), read the file
    back and compare it with ``model`` on ``batches``: the file's size, the largest difference, how many inputs and
    whether it is within :data:`MATCH_TOLERANCE`."""
    if written is not None and written.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written, path)
    else:
        export_network(model, example, fmt, path)
    difference, count = max_difference(model, load_exported(path, fmt), batches)
    return {"bytes": path.stat().st_size, "max_abs_diff": difference, "inputs": count,
            "match": difference <= MATCH_TOLERANCE}


# What --best may rank by: higher is better except for these.
MINIMISED = {"latency_ms", "ort_latency_ms", "int8_latency_ms", "params", "flops"}
SUFFIXES = {"pt": ".pt2", "torchscript": ".torchscript.pt", "onnx": ".onnx", "int8": ".int8.onnx"}


def pick_cell(cells: Any, metric: str, min_compression: float | None = None, max_latency_ms: float | None = None,
              min_speedup: float | None = None, max_drop_pp: float | None = None) -> Any:
    """The best row of ``cells`` by ``metric`` (ties: the more compressed) among those meeting every constraint
    given, or ``None``. ``max_drop_pp`` bounds the accuracy lost against the dense baseline (the ``delta``
    column of :func:`harness.results.aggregate.with_delta`)."""
    keep = cells[cells[metric].notna()] if metric in cells.columns else cells.iloc[0:0]
    for column, bound, at_least in (("compression", min_compression, True), ("latency_ms", max_latency_ms, False),
                                    ("speedup", min_speedup, True),
                                    ("delta", None if max_drop_pp is None else -max_drop_pp, True)):
        if bound is None:
            continue
        if column not in keep.columns:
            return None
        values = keep[column].astype(float)
        keep = keep[values >= bound] if at_least else keep[values <= bound]
    if keep.empty:
        return None
    ordered = keep.sort_values([metric, "compression"], ascending=[metric in MINIMISED, False], kind="stable")
    return ordered.iloc[0]


def default_out(cell: Any, fmt: str) -> Path:
    """``backend-method-target-xRATIO-sSEED`` plus the format's usual suffix (``int8``: ``.int8.onnx``), in the
    current directory."""
    ratio = f"x{float(cell['ratio']):g}" if float(cell["ratio"]) > 0 else "auto"
    name = "-".join([str(cell["backend"]), str(cell["method"]), str(cell["target"]), ratio, f"s{int(cell['seed'])}"])
    return Path(name.replace("/", "_") + SUFFIXES[fmt])
