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
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from harness.plan.result import PendingNetwork, ResultStore
from harness.run.networks import NETWORKS, held_bytes, network_path

__all__ = ["NETWORKS", "PASSES", "ROUNDS_PER_PASS", "measure_ort", "measure_pending", "network_path"]
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


def measure_ort(run_dir: Path, kept: list[PendingNetwork], store: ResultStore,
                dense_for: Callable[[PendingNetwork], tuple[nn.Module, torch.Tensor]], load: NetworkLoader,
                write: Callable[[str], None], progress: Callable[[int], None] | None = None,
                passes: int = PASSES, rounds: int = ROUNDS_PER_PASS) -> int:
    """Time the ``kept`` cells' networks and their dense baselines in ONNX Runtime; returns how many were timed.

    Each network is exported to ONNX once, into ``models/`` beside the kept network (the deployable file), and
    each dense baseline once into ``models/dense-*.onnx``; then, as in the eager phase, ``passes`` passes over all
    networks time the dense and the decomposed graph in alternating rounds on the CPU execution provider with
    torch's thread count. The medians, IQRs and the speedup go to the cell with an ``ort_`` prefix; a network that
    ONNX cannot express gets ``ort_error`` (the one line naming its layer) and ``export_format``, the first of pt and
    torchscript that it does export to (None: neither), and the phase goes on.
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
    samples: dict[str, list[tuple[float, float]]] = {cell_id: [] for cell_id in graphs}
    for _ in range(passes):
        for cell in kept:
            cell_id = cell.cell_id
            if cell_id in graphs and cell_id not in failed:
                batch = dense_for(cell)[1].cpu()
                dense_run, network_run = (load_exported(path, "onnx", threads) for path in graphs[cell_id])
                samples[cell_id] += paired_rounds(lambda: dense_run(batch), lambda: network_run(batch), rounds)
            if progress:
                progress(1)
    for cell in kept:
        cell_id = cell.cell_id
        if cell_id in failed:
            # Where ONNX cannot express the network, the format that can (if any), so the report offers that one.
            store.update_metrics(cell_id, {"ort_error": failed[cell_id], "export_format": fallbacks.get(cell_id)})
        else:
            store.update_metrics(cell_id, {f"ort_{key}": value for key, value in latency_summary(samples[cell_id]).items()}
                                 | {"onnx_file": graphs[cell_id][1].relative_to(run_dir).as_posix()})
    return len(samples)
