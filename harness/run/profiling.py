"""The quiet profiling phase: every latency table the cells' selectors need, measured before any cell runs.

A cell whose rank selector ``needs_latency`` (``--rank-selection latency:S``) reads, per targeted layer, the
latency of the dense layer and of the backend's candidate structures (:mod:`harness.run.latency_tables`). They are
measured here, in the driver alone, after the baselines are trained and before the executor starts, with the latency
phase's threads and memory format and nothing else running: timing beside training workers is noise. Each layer is
timed at the input shape it sees in the network at the latency batch; the untrained planning networks serve, since
a structure's speed does not depend on its values. What the cache already holds is not measured again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from harness.config.settings import RunConfig
from harness.plan.cells import Cell, LayerPlan
from harness.run.data import Data
from harness.run.host import Host
from harness.run.latency import in_memory_format
from harness.run.latency_tables import (
    TableCache,
    device_name,
    layer_inputs,
    layer_methods,
    network_key,
    network_latency,
    profile_layer,
    table_context,
)
from harness.run.runner import rebuild_layer


def needs_tables(cells: list[Cell], host: Host, every_cell: bool = False) -> list[Cell]:
    """The cells whose rank selector asks for latency tables, or every decomposed cell (``--layer-latency``)."""
    from harness.contract.selection import needs_latency

    return [cell for cell in cells
            if not cell.is_control and (every_cell or needs_latency(cell.rank_selection, host.rank_selectors))]


def profile_cells(config: RunConfig, host: Host, data: dict[str, Data], networks: dict[str, Any], cells: list[Cell],
                  device: torch.device, write: Callable[[str], None]) -> None:
    """Measure (or find in the cache) the latency tables of every planned layer of ``cells``; ``networks`` are the
    planning networks by ``model@dataset``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.latency_threads)
    cache = TableCache(config.cache_dir, write)
    start, measured, layers = time.perf_counter(), 0, 0
    label = device_name(device)
    try:
        jobs = _jobs(cells)
        write(f"measuring latency tables of {sum(len(plans) for *_, plans in jobs)} layers, nothing else running "
              f"({config.latency_threads} thread{'s' if config.latency_threads != 1 else ''}, batch "
              f"{config.latency_batch}, {config.memory_format}); what the cache holds is reused")
        with tqdm(total=sum(len(plans) for *_, plans in jobs), desc="latency tables", unit="layer",
                  dynamic_ncols=True, disable=None) as bar:
            for cell, plans in jobs:
                network = networks[f"{cell.model}@{cell.dataset}"].to(device).eval()
                batch = data[cell.dataset].to(device).head("test", config.latency_batch)[0]
                shapes = layer_inputs(network, batch, [plan.path for plan in plans])
                dense, whole = in_memory_format(network, batch, config.memory_format)
                network_latency(cache, network_key(cell.model, tuple(batch.shape), config.latency_threads, label,
                                                   config.memory_format), dense, whole)
                info = host.backends[cell.backend]
                for plan in plans:
                    layer = network.get_submodule(plan.path)
                    x = torch.randn(shapes[plan.path], device=device)
                    layer, x = in_memory_format(layer, x, config.memory_format)
                    context = table_context(layer, shapes[plan.path], cell.backend, info.library_version,
                                            config.latency_threads, label, config.memory_format)

                    def build(method: str, budget: int, plan=plan, layer=layer, x=x) -> torch.nn.Module:
                        candidate = rebuild_layer(cell, plan, host, layer, budget, method, str(device))
                        return in_memory_format(candidate.to(device), x, config.memory_format)[0]

                    layer_start = time.perf_counter()
                    count = profile_layer(cache, context, layer, x, layer_methods(plan), build)
                    measured, layers = measured + count, layers + 1
                    bar.update(1)
                    if bar.disable and count:  # no terminal: a line per layer timed, so a long phase is never silent
                        write(f"latency table {layers}/{bar.total}: {cell.model} {plan.path} "
                              f"({', '.join(layer_methods(plan))}): {count} candidates measured in "
                              f"{time.perf_counter() - layer_start:.1f} s")
    finally:
        cache.close()
        torch.set_num_threads(threads)
    write(f"latency tables of {layers} layers: {measured} candidates measured, the rest from the cache "
          f"({time.perf_counter() - start:.1f} s)")


def _jobs(cells: list[Cell]) -> list[tuple[Cell, list[LayerPlan]]]:
    """One (cell, planned layers) per distinct model, dataset, backend and layer plan: cells that differ only in
    seed or ratio share their tables."""
    seen, jobs = set(), []
    for cell in cells:
        plans = []
        for plan in cell.planned():
            key = (cell.model, cell.dataset, cell.backend, repr(plan.to_dict()))
            if key not in seen:
                seen.add(key)
                plans.append(plan)
        if plans:
            jobs.append((cell, plans))
    return jobs
