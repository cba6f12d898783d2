"""The quiet latency phase: every network's speed measured serially, after all training, in the driver alone.

A latency measured while other workers train is noise (identical networks differed by ±0.5× beside a
training worker), so cells do not time anything: each ok cell saves its fine-tuned network into the run
directory (``networks/``) and is stored with ``latency_pending``. When every cell has finished, the driver —
one process, nothing else running — makes three passes over the pending networks, each time loading a network
beside its dense baseline and timing both in alternating rounds (:func:`harness.metrics.latency_pairs`: warm-up,
each round a median under ``inference_mode``, CUDA synchronised), with the same threads whatever ``--jobs`` was.
Spreading a network's rounds over the whole phase matters: on a shared machine the same network measured minutes
apart differed by half. The medians, their interquartile ranges, the speedup (the median of the paired
dense/network ratios) and its IQR go to the store, one transaction per cell, and the saved networks are deleted. A run killed before or during the phase keeps the pending cells; ``--resume``
(or ``harness run --resume`` with nothing else to run) measures them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.files import write_atomically

NETWORKS = "networks"
# Passes over all networks, and alternating rounds per network per pass: 9 paired rounds per network in all.
PASSES, ROUNDS_PER_PASS = 3, 3


def network_path(run_dir: str | os.PathLike, cell_id: str) -> Path:
    """Where a cell's fine-tuned network waits for the latency phase."""
    return Path(run_dir) / NETWORKS / f"{hashlib.sha1(cell_id.encode()).hexdigest()[:16]}.pt"


def save_network(model: nn.Module, path: Path) -> None:
    """The whole module (architecture and weights, any backend's layers) on the CPU, written atomically."""
    device = next(model.parameters()).device
    write_atomically(path, lambda handle: torch.save(model.cpu(), handle))
    model.to(device)


def load_network(path: Path, device: torch.device) -> nn.Module:
    # A file this run wrote itself: the module's classes (tltorch's, TedNet's) need a full unpickle.
    return torch.load(path, map_location=device, weights_only=False).eval()


def measure_pending(run_dir: Path, pending: list[dict[str, Any]], store: Any,
                    dense_for: Callable[[dict[str, Any]], tuple[nn.Module, torch.Tensor]],
                    write: Callable[[str], None], progress: Callable[[int], None] | None = None,
                    passes: int = PASSES, rounds: int = ROUNDS_PER_PASS) -> int:
    """Measure the ``pending`` cells (``store.pending_latency()``); returns how many were measured.

    ``dense_for(cell)`` gives the cell's dense baseline (on the device) and its latency input batch. The phase
    makes ``passes`` passes over all the networks, ``rounds`` alternating dense/network rounds per network per
    pass, so each network's rounds are spread over the whole phase and a slow minute of the machine touches
    every network alike instead of one. A network that cannot be loaded or run is recorded as a latency error
    on its cell, and the phase goes on.
    """
    from harness.metrics import latency_pairs, latency_summary

    samples: dict[str, list[tuple[float, float]]] = {cell["cell_id"]: [] for cell in pending}
    failed: dict[str, str] = {}
    for _ in range(passes):
        for cell in pending:
            cell_id = cell["cell_id"]
            if cell_id in failed:
                continue
            try:
                dense, batch = dense_for(cell)
                network = load_network(network_path(run_dir, cell_id), batch.device)
                samples[cell_id] += latency_pairs(dense, network, batch, rounds=rounds)
            except Exception as exc:  # noqa: BLE001 - one broken network must not stop the others' timing
                failed[cell_id] = f"{type(exc).__name__}: {str(exc)[:300]}"
                write(f"latency of {cell_id} could not be measured: {failed[cell_id]}")
            if progress:
                progress(1)
    measured = 0
    for cell in pending:
        cell_id = cell["cell_id"]
        if cell_id in failed:
            store.update_metrics(cell_id, {"latency_pending": False, "latency_error": failed[cell_id]})
        else:
            store.update_metrics(cell_id, {**latency_summary(samples[cell_id]), "latency_pending": False,
                                           "latency_threads": torch.get_num_threads()})
            measured += 1
        network_path(run_dir, cell_id).unlink(missing_ok=True)
    folder = Path(run_dir) / NETWORKS
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return measured
