"""Per-layer latency tables, measured on the target before the cells run, cached on disk and read by the cells.

A latency-aware rank selector (``--rank-selection latency:S``) needs, for every targeted layer, how fast the dense
layer runs and how fast each candidate replacement runs, at the layer's own input shape, batch, threads, device and
memory format. The driver measures them in a quiet phase after the baselines and before any cell starts
(:func:`profile_cells`): for each planned layer and method, the backend builds its structure at a grid of parameter
budgets (fixed ratios and the budgets of hardware-friendly reference ranks, multiples of 8 and 16) with
``DecomposeRequest.rebuild`` set, since the factor values do not change the speed, and each candidate is timed
against the dense layer in alternating rounds (:func:`harness.measure.metrics.latency_pairs`). Each entry goes to an
SQLite file in the cache directory as soon as it is measured, keyed by the layer's signature, input shape, threads,
device, memory format, torch version, backend, library version, method and budget, so a second run, another
selector or a killed run measures nothing twice. The cells read their tables from that file (:func:`read_tables`);
an entry whose value is not a finite positive measurement is treated as absent, and a file SQLite cannot read is
replaced with a warning, never used.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sqlite3
import time
from statistics import median
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.config.settings import RunConfig
from harness.contract.backend import Unsupported, layer_kind
from harness.contract.selection import LatencyOption, LayerBudget, LayerLatency, SelectionError
from harness.measure.metrics import count_params, latency_pairs, measure_latency
from harness.plan.cells import Cell, LayerPlan
from harness.tensor import structures

TABLES_FILE = "latency-tables.sqlite"
# Parameter ratios every candidate grid holds; the hardware-friendly reference ranks are added to them.
GRID_RATIOS = (1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0)
# At most this many candidates per layer and method: each costs a structure-only build and a few timed rounds.
MAX_CANDIDATES = 16
# Alternating dense/candidate rounds per candidate: the median of their ratios is the candidate's speedup.
ROUNDS = 5
# Seconds one layer and method may spend taking new candidates (the one under way finishes): a 224x224 layer at
# batch 32 takes seconds per forward, and its full grid would take many minutes.
LAYER_SECONDS = 30.0

_SCHEMA = """CREATE TABLE IF NOT EXISTS entries (
    context TEXT NOT NULL, budget INTEGER NOT NULL, method TEXT NOT NULL, value TEXT NOT NULL, described TEXT,
    PRIMARY KEY (context, method, budget));
CREATE TABLE IF NOT EXISTS networks (key TEXT PRIMARY KEY, ms REAL NOT NULL, described TEXT);
CREATE TABLE IF NOT EXISTS corrections (key TEXT PRIMARY KEY, factor REAL NOT NULL, described TEXT);"""


def layer_signature(layer: nn.Module) -> str:
    """What makes two layers time alike: their class and every hyper-parameter that shapes the computation."""
    if isinstance(layer, nn.Conv2d):
        return (f"Conv2d(in={layer.in_channels},out={layer.out_channels},k={tuple(layer.kernel_size)},"
                f"stride={tuple(layer.stride)},padding={layer.padding},dilation={tuple(layer.dilation)},"
                f"groups={layer.groups},bias={layer.bias is not None},mode={layer.padding_mode})")
    if isinstance(layer, nn.Linear):
        return f"Linear(in={layer.in_features},out={layer.out_features},bias={layer.bias is not None})"
    return type(layer).__name__


def device_name(device: torch.device) -> str:
    """The device as timing depends on it: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class TableCache:
    """The SQLite file of measured latency entries in the cache directory (see the module docstring)."""

    def __init__(self, cache_dir: str | Path, write: Callable[[str], None] | None = None) -> None:
        self.path = Path(cache_dir) / TABLES_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = self._open()
        except sqlite3.DatabaseError as exc:
            if write:
                write(f"warning: the latency-table cache {self.path} cannot be read ({exc}): measuring anew")
            self.path.unlink(missing_ok=True)
            self.conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60)
        try:
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self.conn.close()

    def options(self, context: str) -> list[LatencyOption]:
        rows = self.conn.execute("SELECT method, budget, value FROM entries WHERE context = ? ORDER BY method, budget",
                                 (context,)).fetchall()
        return [option for method, budget, value in rows if (option := _option(method, budget, value)) is not None]

    def add(self, context: str, option: LatencyOption, described: str) -> None:
        value = {"params": option.params, "ms": option.ms, "dense_ms": option.dense_ms, "ranks": option.ranks}
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                              (context, option.budget, option.method, json.dumps(value), described))

    def network_ms(self, key: str) -> float | None:
        row = self.conn.execute("SELECT ms FROM networks WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row and _positive(row[0]) else None

    def add_network(self, key: str, ms: float, described: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO networks VALUES (?, ?, ?)", (key, ms, described))

    def correction(self, key: str) -> float | None:
        """The measured-over-predicted factor the profiling phase's check of a plan found (see :func:`check_key`)."""
        row = self.conn.execute("SELECT factor FROM corrections WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row and _positive(row[0]) else None

    def add_correction(self, key: str, factor: float, described: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO corrections VALUES (?, ?, ?)", (key, factor, described))


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _option(method: str, budget: int, text: str) -> LatencyOption | None:
    """A stored entry as an option, or None where it is not a whole, finite measurement (a damaged row)."""
    try:
        value = json.loads(text)
        if not (_positive(value["ms"]) and _positive(value["dense_ms"]) and _positive(value["params"])):
            return None
        return LatencyOption(method, int(budget), int(value["params"]), float(value["ms"]), float(value["dense_ms"]),
                             value.get("ranks"))
    except (TypeError, ValueError, KeyError):
        return None


def _key(parts: dict[str, Any]) -> tuple[str, str]:
    described = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest(), described


# How a check measures a plan; a correction the check found by another measure is not reused.
CHECK_MEASURE = "lower quartile of up to 8 paired speedups in 15 s"


def check_key(network: str, cell: Cell, library_version: str | None, weights: str) -> tuple[str, str]:
    """The key of a latency plan's check (:func:`harness.run.profiling.check_plans`): the dense network's key, the
    backend and library version, the latency selection (a matched cell shares its reference's), the cell's ratio, the
    layers' methods, the weights it planned from (``weights``: the baseline file) and :data:`CHECK_MEASURE`."""
    from harness.contract.selection import split_match

    own, reference = split_match(cell.rank_selection)
    latency = reference or own
    return _key({"network": network, "backend": cell.backend, "library": library_version, "selection": latency,
                 "ratio": cell.ratio, "weights": weights, "measure": CHECK_MEASURE,
                 "methods": [[plan.path, *layer_methods(plan)] for plan in cell.planned()]})


def table_context(layer: nn.Module, input_shape: Sequence[int], backend: str, library_version: str | None,
                  threads: int, device: str, memory_format: str) -> tuple[str, str]:
    """The key of one layer's table (every entry of a backend at that layer, input, threads, device, format and
    versions) and its description."""
    return _key({"layer": layer_signature(layer), "input": list(input_shape), "backend": backend,
                 "library": library_version, "threads": threads, "device": device, "memory_format": memory_format,
                 "torch": torch.__version__})


def network_key(model: str, input_shape: Sequence[int], threads: int, device: str,
                memory_format: str) -> tuple[str, str]:
    """The key of a whole dense network's latency."""
    return _key({"network": model, "input": list(input_shape), "threads": threads, "device": device,
                 "memory_format": memory_format, "torch": torch.__version__})


def layer_inputs(model: nn.Module, batch: torch.Tensor, paths: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """The input shape each of ``paths`` sees when ``model`` runs on ``batch``."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for path in paths:
        def hook(module: nn.Module, args: tuple, path: str = path) -> None:
            shapes.setdefault(path, tuple(args[0].shape))
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model.eval()(batch)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _hardware_ranks(top: int) -> list[int]:
    step = 8 if top <= 128 else 16
    return list(range(step, top + 1, step))


def candidate_budgets(layer: nn.Module, method: str) -> list[int]:
    """The parameter budgets a layer's table measures for ``method``: :data:`GRID_RATIOS` of the dense count and the
    reference structure's budgets at hardware-friendly ranks (SVD rank, or Tucker-2 ranks in the channels'
    proportion, multiples of 8 or 16), below the dense count, thinned to :data:`MAX_CANDIDATES`."""
    dense = count_params(layer)
    budgets = {math.floor(dense / ratio) for ratio in GRID_RATIOS}
    if layer_kind(layer) == "linear" or method == "svd":
        out_features, in_features = layer.weight.flatten(1).shape
        bias = layer.bias is not None
        budgets |= {structures.svd_params(in_features, out_features, rank, bias)
                    for rank in _hardware_ranks(min(in_features, out_features))}
    else:
        max_out, max_in = structures.tucker2_max_ranks(layer)
        for rank_out in _hardware_ranks(max_out):
            step = 8 if max_in <= 128 else 16
            rank_in = min(max_in, max(step, round(rank_out * layer.in_channels / layer.out_channels / step) * step))
            budgets.add(structures.tucker2_params(layer, rank_out, rank_in))
    budgets = sorted(b for b in budgets if 0 < b < dense)
    if len(budgets) > MAX_CANDIDATES:
        # Evenly thinned in log-space, so small and large budgets alike stay represented.
        picks = {round(i * (len(budgets) - 1) / (MAX_CANDIDATES - 1)) for i in range(MAX_CANDIDATES)}
        budgets = [budgets[i] for i in sorted(picks)]
    return budgets


def layer_methods(plan: LayerPlan) -> tuple[str, ...]:
    """The methods a layer's table measures: its candidates for ``auto``, else its one method."""
    return tuple(plan.candidates) if plan.candidates else (plan.method,)


def coarse_to_fine(items: Sequence[Any]) -> list[Any]:
    """``items`` reordered so that every prefix spreads over the whole range: both ends, the middle, the quarters..."""
    if len(items) <= 2:
        return list(items)
    order, seen, parts = [0, len(items) - 1], {0, len(items) - 1}, 2
    while len(order) < len(items):
        for k in range(1, parts, 2):
            index = round(k * (len(items) - 1) / parts)
            if index not in seen:
                seen.add(index)
                order.append(index)
        parts *= 2
    return [items[i] for i in order]


def profile_layer(cache: TableCache, context: tuple[str, str], layer: nn.Module, batch: torch.Tensor,
                  methods: Sequence[str], build: Callable[[str, int], nn.Module], rounds: int = ROUNDS,
                  seconds: float = LAYER_SECONDS) -> int:
    """Measure ``layer``'s missing candidates (``build(method, budget)`` gives one) on ``batch``; returns how many
    were measured. A budget the backend refuses is skipped; a built structure already timed (the same parameter
    count for the same method) is recorded under the new budget without timing it again. Candidates are taken
    coarse to fine (:func:`coarse_to_fine`) and a method stops taking new ones after ``seconds``, so an expensive
    layer gets a thinner grid over the same range; a later run measures what is missing."""
    key, described = context
    cached = cache.options(key)
    known = {(o.method, o.budget) for o in cached}
    measured = 0
    for method in methods:
        timed: dict[int, LatencyOption] = {o.params: o for o in cached if o.method == method}
        start, timed_before = time.perf_counter(), len(timed)
        for budget in coarse_to_fine(candidate_budgets(layer, method)):
            if (method, budget) in known:
                continue
            if len(timed) > timed_before and time.perf_counter() - start > seconds:
                break
            try:
                candidate = build(method, budget)
            except Unsupported:
                continue
            params = count_params(candidate)
            info = getattr(candidate, "decomposition_info", {}) or {}
            ranks = info.get("rank", info.get("ranks"))
            if params in timed:
                same = timed[params]
                option = LatencyOption(method, budget, params, same.ms, same.dense_ms, same.ranks)
            else:
                pairs = latency_pairs(layer, candidate.to(batch.device), batch, rounds=rounds)
                dense_ms = median([d for d, _ in pairs])
                speedup = median([d / o for d, o in pairs])
                option = LatencyOption(method, budget, params, dense_ms / speedup, dense_ms, _plain(ranks))
                timed[params] = option
                measured += 1
            cache.add(key, option, described)
    return measured


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


def network_latency(cache: TableCache, key: tuple[str, str], model: nn.Module, batch: torch.Tensor) -> float:
    """The whole dense network's latency on ``batch``, from the cache or measured (and cached) now."""
    known = cache.network_ms(key[0])
    if known is not None:
        return known
    ms = measure_latency(model, batch)
    cache.add_network(key[0], ms, key[1])
    return ms


def read_tables(cache: TableCache, contexts: Sequence[str], methods: Sequence[Sequence[str]]) -> list[LayerLatency]:
    """The tables of a cell's layers, one per context and limited to that layer's ``methods``, or ``LookupError``
    naming the first layer without one."""
    tables = []
    for index, (context, allowed) in enumerate(zip(contexts, methods)):
        options = [option for option in cache.options(context) if option.method in allowed]
        if not options:
            raise LookupError(f"no latency table for targeted layer {index} ({', '.join(allowed)}): the profiling "
                              "phase did not measure it")
        dense_ms = median([o.dense_ms for o in options])
        tables.append(LayerLatency(dense_ms, tuple(options)))
    return tables


def cell_tables(cell: Cell, config: RunConfig, library_version: str | None, device: torch.device, data: Any,
                model: nn.Module, layers: Sequence[tuple[str, nn.Module]], weights: str = ""
                ) -> tuple[list[LayerLatency], float, float]:
    """A cell's latency tables, one per layer of ``layers`` (paths and modules of ``model`` on ``device``), the
    dense network's latency and the correction the profiling phase's check of the cell's plan found (1.0 where none
    was checked), as the profiling phase cached them; :class:`SelectionError` when a table is missing."""
    batch = data.head("test", config.latency_batch)[0]
    shapes = layer_inputs(model, batch, [path for path, _ in layers])
    label = device_name(device)
    cache = TableCache(config.cache_dir)
    try:
        network = network_key(cell.model, tuple(batch.shape), config.latency_threads, label, config.memory_format)[0]
        network_ms = cache.network_ms(network)
        correction = cache.correction(check_key(network, cell, library_version, weights)[0]) or 1.0
        contexts = [table_context(layer, shapes[path], cell.backend, library_version, config.latency_threads, label,
                                  config.memory_format)[0] for path, layer in layers]
        plans = {plan.path: plan for plan in cell.layers}
        try:
            tables = read_tables(cache, contexts, [layer_methods(plans[path]) for path, _ in layers])
        except LookupError as exc:
            raise SelectionError(str(exc)) from None
    finally:
        cache.close()
    if network_ms is None:
        raise SelectionError("no latency of the dense network: the profiling phase did not measure it")
    return tables, network_ms, correction


def with_table(budget: LayerBudget, table: LayerLatency) -> LayerBudget:
    """``budget`` with the latency its layer's table measured for it, where the selector did not say: the candidate
    of the same parameter budget (and method, where the selector named one), or the dense layer's for a layer kept
    dense; unchanged where the table has no such candidate."""
    if budget.predicted_ms is not None:
        return budget
    if budget.dense is not None:
        return replace(budget, predicted_ms=table.dense_ms)
    same = [o for o in table.options if o.budget == budget.params and budget.method in (None, o.method)]
    return replace(budget, predicted_ms=same[0].ms) if same else budget
