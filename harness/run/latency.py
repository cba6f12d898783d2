"""The quiet latency phase: every network's speed measured serially, after all training, in the driver alone.

A latency measured while other workers train is noise (identical networks differed by ±0.5× beside a
training worker), so cells do not time anything: each ok cell saves its fine-tuned network into the run
directory (``networks/``, as data: :mod:`harness.run.networks`) and is stored with ``latency_pending``. When every cell has finished, the driver —
one process, nothing else running — makes three passes over the pending networks, each time rebuilding a network
(kept in memory between passes while they fit) beside its dense baseline and timing both in alternating rounds (:func:`harness.measure.metrics.latency_pairs`: warm-up and
one calibration, then each round a short block of each under ``inference_mode``, CUDA synchronised), with the same threads whatever ``--jobs`` was.
Spreading a network's rounds over the whole phase matters: on a shared machine the same network measured minutes
apart differed by half. The medians, their interquartile ranges, the speedup (the median of the paired
dense/network ratios) and its IQR go to the store, one transaction per cell, and the saved networks are deleted. A run killed before or during the phase keeps the pending cells; ``--resume``
(or ``harness run --resume`` with nothing else to run) measures them.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.plan.result import PendingNetwork, ResultStore
from harness.run.networks import NETWORKS, held_bytes, network_path

__all__ = ["NETWORKS", "PASSES", "ROUNDS_PER_PASS", "Int8Data", "measure_ort", "measure_pending", "network_path"]
# Passes over all networks, and alternating rounds per network per pass: 21 paired rounds per network in all,
# each round two ~20 ms blocks (harness.measure.metrics.BLOCK_SECONDS), so a ms-scale network costs ~0.3 s per pass.
PASSES, ROUNDS_PER_PASS = 3, 7


# Rebuilt networks kept in memory between passes, up to this many bytes of tensors; past it, a network is rebuilt
# from its file on each pass (a replay costs the backend's structure-only decomposition).
KEEP_REBUILT_BYTES = 2 << 30

NetworkLoader = Callable[[PendingNetwork, Path], nn.Module]


class _Rebuilt:
    """The rebuilt networks of a phase, kept while they fit :data:`KEEP_REBUILT_BYTES`."""

    def __init__(self, load: NetworkLoader) -> None:
        self.load, self.kept, self.bytes = load, {}, 0

    def __call__(self, cell: PendingNetwork, path: Path) -> nn.Module:
        cell_id = cell.cell_id
        if cell_id in self.kept:
            return self.kept[cell_id]
        network = self.load(cell, path)
        size = held_bytes(network)
        if self.bytes + size <= KEEP_REBUILT_BYTES:
            self.kept[cell_id], self.bytes = network, self.bytes + size
        return network


def in_memory_format(module: nn.Module, batch: torch.Tensor, memory_format: str) -> tuple[nn.Module, torch.Tensor]:
    """``module`` (in place) and ``batch`` in ``memory_format`` (``contiguous`` or ``channels_last``); a batch that
    is not 4-D (no channels to put last) stays as it is, and so do the module's tensors that are not 4-D."""
    if memory_format == "contiguous":
        return module, batch
    layout = getattr(torch, memory_format)
    return module.to(memory_format=layout), batch.contiguous(memory_format=layout) if batch.dim() == 4 else batch


def measure_pending(run_dir: Path, pending: list[PendingNetwork], store: ResultStore,
                    dense_for: Callable[[PendingNetwork], tuple[nn.Module, torch.Tensor]], load: NetworkLoader,
                    write: Callable[[str], None], progress: Callable[[int], None] | None = None,
                    passes: int = PASSES, rounds: int = ROUNDS_PER_PASS, keep: bool = False,
                    memory_format: str = "contiguous", spent: dict[str, float] | None = None) -> int:
    """Measure the ``pending`` cells (``store.pending_latency()``); returns how many were measured.

    ``dense_for(cell)`` gives the cell's dense baseline (on the device) and its latency input batch, and
    ``load(cell, path)`` the network saved at ``path``, rebuilt from data (:mod:`harness.run.networks`). The phase
    makes ``passes`` passes over all the networks, ``rounds`` alternating dense/network rounds per network per
    pass, so each network's rounds are spread over the whole phase and a slow minute of the machine touches
    every network alike instead of one. A network that cannot be loaded or run is recorded as a latency error
    on its cell, and the phase goes on. With ``keep`` (``--save-models``) each network moves to ``models/`` and
    its cell records the file (``model_file``, relative to the run directory) and its size (``model_bytes``).
    Both networks and the batch are timed in ``memory_format`` (:func:`in_memory_format`), recorded on the cell.
    ``spent`` receives the seconds the phase spent on each network (loading and timing, all passes).
    """
    from harness.measure.metrics import latency_pairs, latency_summary

    samples: dict[str, list[tuple[float, float]]] = {cell.cell_id: [] for cell in pending}
    failed: dict[str, str] = {}
    load = _Rebuilt(load)
    for _ in range(passes):
        for cell in pending:
            cell_id = cell.cell_id
            if cell_id in failed:
                continue
            began = time.perf_counter()
            try:
                dense, batch = in_memory_format(*dense_for(cell), memory_format)
                network = load(cell, network_path(run_dir, cell_id)).to(batch.device)
                network, _ = in_memory_format(network, batch, memory_format)
                samples[cell_id] += latency_pairs(dense, network, batch, rounds=rounds)
            except Exception as exc:  # noqa: BLE001 - one broken network must not stop the others' timing
                failed[cell_id] = f"{type(exc).__name__}: {str(exc)[:300]}"
                write(f"latency of {cell_id} could not be measured: {failed[cell_id]}")
            if spent is not None:
                spent[cell_id] = spent.get(cell_id, 0.0) + time.perf_counter() - began
            if progress:
                progress(1)
    measured = 0
    for cell in pending:
        cell_id = cell.cell_id
        if cell_id in failed:
            store.update_metrics(cell_id, {"latency_pending": False, "latency_error": failed[cell_id]})
        else:
            store.update_metrics(cell_id, {**latency_summary(samples[cell_id]), "latency_pending": False,
                                           "latency_threads": torch.get_num_threads(),
                                           "latency_memory_format": memory_format})
            measured += 1
        if keep:
            _keep(run_dir, cell_id, store)
        network_path(run_dir, cell_id).unlink(missing_ok=True)
    folder = Path(run_dir) / NETWORKS
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return measured


def _keep(run_dir: Path, cell_id: str, store: ResultStore) -> None:
    """Move a measured network to ``models/`` (``--save-models``) and record where it is and its size."""
    from harness.run.export import model_path

    source, kept = network_path(run_dir, cell_id), model_path(run_dir, cell_id)
    if not source.is_file():
        return
    kept.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, kept)
    store.update_metrics(cell_id, {"model_file": kept.relative_to(run_dir).as_posix(),
                                   "model_bytes": kept.stat().st_size})


def _fallback_format(network: nn.Module, batch: torch.Tensor, onnx_file: Path) -> str | None:
    """The first of ``pt`` and ``torchscript`` that ``network`` exports to (written beside ``onnx_file`` and removed
    again), or None when neither does."""
    from harness.run.export import ExportFailed, export_network

    for fmt in ("pt", "torchscript"):
        trial = onnx_file.with_name(f".{onnx_file.stem}.{fmt}-trial")
        try:
            export_network(network, batch, fmt, trial)
        except ExportFailed:
            continue
        finally:
            trial.unlink(missing_ok=True)
        return fmt
    return None


def _family(store: ResultStore, cell: PendingNetwork) -> tuple[str, ...]:
    """(backend, method, target) of a stored cell: networks of one family export alike."""
    record = store.cell_record(cell.cell_id)
    spec = (record.spec if record is not None else None) or {}
    return tuple(str(spec.get(key, cell.cell_id)) for key in ("backend", "method", "target"))


@dataclass(frozen=True)
class Int8Data:
    """What ``--quantize int8`` needs of a cell's dataset: its calibration images (the same for every cell of the
    dataset, :func:`harness.run.quantize.calibration_sample`) and its test batches of (images, labels)."""

    calibration: Callable[[PendingNetwork], torch.Tensor]
    test_batches: Callable[[PendingNetwork], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def _renamed(summary: dict[str, float], names: dict[str, str]) -> dict[str, float]:
    return {names[key]: value for key, value in summary.items() if key in names}


# latency_summary's keys for the INT8 pairs (INT8 dense against INT8 network) and the FP32/INT8 pairs of a network.
INT8_NAMES = {"latency_dense_ms": "int8_dense_latency_ms", "latency_ms": "int8_latency_ms",
              "latency_dense_iqr_ms": "int8_dense_latency_iqr_ms", "latency_iqr_ms": "int8_latency_iqr_ms",
              "speedup": "int8_speedup", "speedup_iqr": "int8_speedup_iqr", "latency_rounds": "int8_latency_rounds"}
INT8_VS_FP32_NAMES = {"speedup": "int8_vs_fp32_speedup", "speedup_iqr": "int8_vs_fp32_speedup_iqr"}


def measure_ort(run_dir: Path, kept: list[PendingNetwork], store: ResultStore,
                dense_for: Callable[[PendingNetwork], tuple[nn.Module, torch.Tensor]], load: NetworkLoader,
                write: Callable[[str], None], progress: Callable[[int], None] | None = None,
                passes: int = PASSES, rounds: int = ROUNDS_PER_PASS, int8: Int8Data | None = None) -> int:
    """Time the ``kept`` cells' networks and their dense baselines in ONNX Runtime; returns how many were timed.

    Each network is exported to ONNX once, into ``models/`` beside the kept network (the deployable file), and
    each dense baseline once into ``models/dense-*.onnx``; then, as in the eager phase, ``passes`` passes over all
    networks time the dense and the decomposed graph in alternating rounds on the CPU execution provider with
    torch's thread count. The medians, IQRs and the speedup go to the cell with an ``ort_`` prefix; a network that
    ONNX cannot express gets ``ort_error`` (the one line naming its layer) and ``export_format``, the first of pt and
    torchscript that it does export to (None: neither), and the phase goes on.

    With ``int8`` (``--quantize int8``) every graph is also quantized (:func:`harness.run.quantize.quantize_int8`,
    ``*.int8.onnx`` beside it), both precisions of both networks are evaluated on the test set in ONNX Runtime
    (``ort_acc``, ``ort_dense_acc``, ``int8_acc``, ``int8_dense_acc``), and each pass also times the INT8 dense
    graph against the INT8 network (``int8_latency_ms``, ``int8_speedup``, ...) and the network's FP32 graph against
    its INT8 graph (``int8_vs_fp32_speedup``), in alternating rounds as above. A graph that cannot be quantized gives
    its cell ``int8_error`` (naming the node) and leaves its FP32 timing as it is.
    """
    from harness.measure.metrics import latency_summary, paired_rounds
    from harness.run.export import (
        EXPORT_TIME_LIMIT,
        ExportFailed,
        ExportTimedOut,
        export_network,
        load_exported,
        model_path,
    )
    from harness.run.networks import NetworkInvalid

    threads = torch.get_num_threads()
    graphs: dict[str, tuple[Path, Path]] = {}
    failed: dict[str, str] = {}
    dense_graphs: dict[str, Path] = {}
    fallbacks: dict[str, str | None] = {}
    quantized = _Int8Graphs(int8, threads, write) if int8 is not None else None
    # (backend, method, target) whose export ran past its time limit: the reason, and the cell that did
    too_slow: dict[tuple[str, ...], tuple[str, str]] = {}
    for index, cell in enumerate(kept, 1):
        cell_id, family, started = cell.cell_id, _family(store, cell), time.perf_counter()
        if family in too_slow:  # the same structure again: it would burn the limit again
            failed[cell_id], first = too_slow[family]
            fallbacks[cell_id] = fallbacks.get(first)  # and exports to what the first one exports to
            write(f"[{index}/{len(kept)}] ONNX Runtime latency of {cell_id} not measured: {failed[cell_id]}")
            continue
        try:
            dense, batch = dense_for(cell)
            key = "/".join(str(getattr(cell, k)) for k in ("model", "dataset", "seed"))
            if key not in dense_graphs:
                dense_file = Path(run_dir) / "models" / f"dense-{hashlib.sha1(key.encode()).hexdigest()[:16]}.onnx"
                export_network(dense, batch, "onnx", dense_file)
                dense_graphs[key] = dense_file
            dense_file = dense_graphs[key]
            network_file = model_path(run_dir, cell_id).with_suffix(".onnx")
            network = load(cell, model_path(run_dir, cell_id))
            try:
                export_network(network, batch, "onnx", network_file)
            except ExportFailed:
                fallbacks[cell_id] = _fallback_format(network, batch, network_file)
                raise
            graphs[cell_id] = (dense_file, network_file)
            write(f"[{index}/{len(kept)}] exported {cell_id} to ONNX ({time.perf_counter() - started:.1f} s)")
        except (ExportFailed, NetworkInvalid, OSError, RuntimeError) as exc:
            failed[cell_id] = str(exc) if isinstance(exc, ExportFailed) else f"{type(exc).__name__}: {str(exc)[:300]}"
            write(f"[{index}/{len(kept)}] ONNX Runtime latency of {cell_id} not measured: {failed[cell_id]} "
                  f"({time.perf_counter() - started:.1f} s)")
            if isinstance(exc, ExportTimedOut):
                too_slow[family] = (f"skipped: the onnx export of {cell_id}, of the same backend, method and "
                                    f"target, did not finish in {EXPORT_TIME_LIMIT:g} s", cell_id)
            continue
        if quantized is not None:
            quantized.add(cell, key, *graphs[cell_id], index, len(kept))
    samples: dict[str, list[tuple[float, float]]] = {cell_id: [] for cell_id in graphs}
    int8_samples: dict[str, list[tuple[float, float]]] = {cell_id: [] for cell_id in graphs}
    int8_vs_fp32: dict[str, list[tuple[float, float]]] = {cell_id: [] for cell_id in graphs}
    for _ in range(passes):
        for cell in kept:
            cell_id = cell.cell_id
            if cell_id in graphs and cell_id not in failed:
                batch = dense_for(cell)[1].cpu()
                dense_run, network_run = (load_exported(path, "onnx", threads) for path in graphs[cell_id])
                samples[cell_id] += paired_rounds(lambda: dense_run(batch), lambda: network_run(batch), rounds)
                if quantized is not None and cell_id in quantized.pairs:
                    dense_int8, network_int8 = (load_exported(path, "onnx", threads)
                                                for path in quantized.pairs[cell_id])
                    int8_samples[cell_id] += paired_rounds(lambda: dense_int8(batch), lambda: network_int8(batch),
                                                           rounds)
                    int8_vs_fp32[cell_id] += paired_rounds(lambda: network_run(batch), lambda: network_int8(batch),
                                                           rounds)
            if progress:
                progress(1)
    for cell in kept:
        cell_id = cell.cell_id
        if cell_id in failed:
            # Where ONNX cannot express the network, the format that can (if any), so the report offers that one.
            values = {"ort_error": failed[cell_id], "export_format": fallbacks.get(cell_id)}
            if quantized is not None:  # no FP32 graph, so no INT8 one: counted among the networks not quantized
                values["int8_error"] = f"no ONNX graph to quantize: {failed[cell_id]}"
            store.update_metrics(cell_id, values)
            continue
        values = ({f"ort_{key}": value for key, value in latency_summary(samples[cell_id]).items()}
                  | {"onnx_file": graphs[cell_id][1].relative_to(run_dir).as_posix()})
        if quantized is not None:
            values |= quantized.metrics.get(cell_id, {})
            if int8_samples[cell_id]:
                values |= (_renamed(latency_summary(int8_samples[cell_id]), INT8_NAMES)
                           | _renamed(latency_summary(int8_vs_fp32[cell_id]), INT8_VS_FP32_NAMES)
                           | {"int8_file": quantized.pairs[cell_id][1].relative_to(run_dir).as_posix()})
        store.update_metrics(cell_id, values)
    return len(samples)


class _Int8Graphs:
    """The INT8 graphs of a phase: each dense baseline's once, each network's, their test-set accuracies, and per
    cell the (dense, network) INT8 pair to time or the reason there is none."""

    def __init__(self, data: Int8Data, threads: int, write: Callable[[str], None]) -> None:
        from harness.run.quantize import cpu_scheme

        self.data, self.threads, self.write, self.scheme = data, threads, write, cpu_scheme()
        self.dense: dict[str, dict[str, Any]] = {}
        self.pairs: dict[str, tuple[Path, Path]] = {}
        self.metrics: dict[str, dict[str, Any]] = {}

    def _quantized(self, cell: PendingNetwork, fp32: Path) -> dict[str, Any]:
        """The INT8 graph of ``fp32`` and both graphs' accuracies, or the error."""
        from harness.run.quantize import QuantizeFailed, onnx_accuracy, quantize_int8

        out = fp32.with_suffix(".int8.onnx")
        try:
            made = quantize_int8(fp32, out, self.data.calibration(cell), self.scheme)
        except QuantizeFailed as exc:
            return {"error": str(exc)}
        return {"file": made.path, "mode": made.mode, "static_error": made.static_error,
                "int8_acc": onnx_accuracy(made.path, self.data.test_batches(cell), self.threads),
                "fp32_acc": onnx_accuracy(fp32, self.data.test_batches(cell), self.threads)}

    def add(self, cell: PendingNetwork, key: str, dense_fp32: Path, network_fp32: Path, index: int,
            total: int) -> None:
        started = time.perf_counter()
        if key not in self.dense:
            self.dense[key] = self._quantized(cell, dense_fp32)
        dense, network = self.dense[key], self._quantized(cell, network_fp32)
        values: dict[str, Any] = {"int8_scheme": f"QDQ {self.scheme.name}",
                                  "int8_calibration_images": len(self.data.calibration(cell))}
        if "error" in dense:
            values["int8_error"] = f"the dense baseline cannot be quantized: {dense['error']}"
        if "error" in network:
            values["int8_error"] = network["error"]
        if "error" not in dense:
            values |= {"int8_dense_acc": dense["int8_acc"], "ort_dense_acc": dense["fp32_acc"]}
        if "error" not in network:
            values |= {"int8_acc": network["int8_acc"], "ort_acc": network["fp32_acc"], "int8_mode": network["mode"],
                       "int8_static_error": network["static_error"]}
        if "int8_error" in values:
            self.write(f"[{index}/{total}] INT8 of {cell.cell_id} not measured: {values['int8_error']}")
        else:
            self.pairs[cell.cell_id] = (dense["file"], network["file"])
            self.write(f"[{index}/{total}] quantized {cell.cell_id} to INT8 ({network['mode']}; accuracy "
                       f"{network['fp32_acc']:.2f} % FP32, {network['int8_acc']:.2f} % INT8; "
                       f"{time.perf_counter() - started:.1f} s)")
        self.metrics[cell.cell_id] = values
