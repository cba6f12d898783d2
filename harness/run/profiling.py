"""The quiet profiling phase: every latency table the cells' selectors need, measured before any cell runs.

A cell whose rank selector ``needs_latency`` (``--rank-selection latency:S``) reads, per targeted layer, the
latency of the dense layer and of the backend's candidate structures (:mod:`harness.run.latency_tables`). They are
measured here, in the driver alone, after the baselines are trained and before the executor starts, with the latency
phase's threads and memory format and nothing else running: timing beside training workers is noise. Each layer is
timed at the input shape it sees in the network at the latency batch; the untrained planning networks serve, since
a structure's speed does not depend on its values. What the cache already holds is not measured again.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from statistics import quantiles
from typing import Any

import torch
from tqdm import tqdm

from harness.config.settings import RunConfig
from harness.measure.metrics import latency_pairs
from harness.plan.cells import Cell, LayerPlan
from harness.run.data import Data
from harness.run.host import Host
from harness.run.latency import in_memory_format
from harness.run.latency_tables import (
    TableCache,
    check_key,
    device_name,
    layer_inputs,
    layer_methods,
    network_key,
    network_latency,
    profile_layer,
    table_context,
)
from harness.run.runner import CellContext, rebuild_layer, replace_layer
from harness.run.selection import select_budgets


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
        write(f"latency tables of {layers} layers: {measured} candidates measured, the rest from the cache "
              f"({time.perf_counter() - start:.1f} s)")
        check_plans(config, host, data, cells, device, cache, write)
    finally:
        cache.close()
        torch.set_num_threads(threads)


# The plan check: paired rounds per whole-network measurement (fewer where they would take longer than
# CHECK_SECONDS: a quartile of three rounds of a network that takes a second per forward let a plan through that the
# phase then measured 3-5 % short), plans tried per cell, and the overshoot accepted.
CHECK_ROUNDS = 8
CHECK_SECONDS = 15.0
CHECK_ATTEMPTS = 3
CHECK_OVERSHOOT = 1.08


def check_plans(config: RunConfig, host: Host, data: dict[str, Data], cells: list[Cell], device: torch.device,
                cache: TableCache, write: Callable[[str], None]) -> None:
    """Check each latency-target cell's plan on the whole network, before the cell runs: plan as the cell will (its
    baseline's weights, the tables), build the planned structure, and time it against the dense network in
    alternating rounds. A layer timed alone is not a layer in a network (activations in and out of cache, the rest
    of the graph), so where the plan misses its target, or beats it by more than 8 %, it is planned again with the
    factor measured over predicted, up to three plans; the factor of the plan that meets the target most closely
    is cached for the cell (:func:`~harness.run.latency_tables.check_key`), and the cell plans with it. A plan is
    measured by the lower quartile of its rounds' speedups, not their median: the latency phase times the network
    again later, and a plan at the target by the median misses it there about every other time where the rounds
    spread widely (two threads on two cores)."""
    from harness.contract.selection import parse_spec, split_match
    from harness.run.baseline import load_baseline, run_baseline_path
    from harness.run.models import resolve_model
    from harness.run.selectors import parse_target

    ctx = CellContext(config, host)
    ctx._data = {name: splits.to(device) for name, splits in data.items()}
    label, done, start = device_name(device), set(), time.perf_counter()
    for cell in cells:
        own = split_match(cell.rank_selection)[0]
        name, argument = parse_spec(own)
        selector = host.rank_selectors.get(name)
        if cell.is_control or selector is None or not selector.needs_latency:
            continue
        splits = ctx.data(cell.dataset)
        batch = splits.head("test", config.latency_batch)[0]
        network = network_key(cell.model, tuple(batch.shape), config.latency_threads, label, config.memory_format)[0]
        path = run_baseline_path(config, cell.model, cell.dataset, cell.seed)
        key, described = check_key(network, cell, host.backends[cell.backend].library_version, path.name)
        if key in done or cache.correction(key) is not None:
            continue
        done.add(key)
        spec = resolve_model(cell.model, host.models)
        model = load_baseline(path, lambda: spec.build(splits.input_shape, splits.num_classes), device)
        layers = [(plan.path, model.get_submodule(plan.path)) for plan in cell.planned()]
        kind, value = parse_target(argument or selector.default_argument or "")
        dense, x = in_memory_format(copy.deepcopy(model), batch, config.memory_format)
        correction, met = 1.0, []
        for attempt in range(1, CHECK_ATTEMPTS + 1):
            metrics: dict[str, Any] = {}
            budgets, _ = select_budgets(cell, ctx, model, layers, metrics, correction=correction)
            tables_speedup = metrics.get("predicted_speedup_tables")
            if not tables_speedup:
                break
            planned = copy.deepcopy(model)
            for plan, budget in zip(cell.planned(), budgets):
                if budget.dense is None:
                    replace_layer(planned, plan.path, rebuild_layer(
                        cell, plan, host, planned.get_submodule(plan.path), budget.params,
                        budget.method or plan.method, str(device)))
            planned = in_memory_format(planned.to(device), x, config.memory_format)[0]
            pairs = latency_pairs(dense, planned, x, rounds=CHECK_ROUNDS, rounds_seconds=CHECK_SECONDS)
            measured = lower_quartile([d / o for d, o in pairs])
            target = value if kind == "speedup" else metrics["latency_network_table_ms"] / value
            write(f"plan check {attempt}/{CHECK_ATTEMPTS} of {cell.cell_id}: {tables_speedup:.2f}x on the tables"
                  f"{f' (planned with correction {correction:.3f})' if correction != 1.0 else ''}, "
                  f"{measured:.2f}x measured (lower quartile of {len(pairs)} rounds), target {target:.2f}x")
            if measured >= target:
                met.append((measured, correction))
                if measured <= target * CHECK_OVERSHOOT:
                    break
            # Next: plan with the factor this plan measured at (its latency over the tables' prediction).
            correction = tables_speedup / measured
        chosen = min(met)[1] if met else correction
        cache.add_correction(key, chosen, described)
    if done:
        write(f"plan checks of {len(done)} cells on the whole network ({time.perf_counter() - start:.1f} s)")


def lower_quartile(values: list[float]) -> float:
    """The first quartile of ``values`` (the one value, when there is one)."""
    return quantiles(values, n=4, method="inclusive")[0] if len(values) > 1 else values[0]


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
