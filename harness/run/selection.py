"""The rank selection of one cell: its selector's parameter budget (or "keep dense", or a method) for each planned
layer, chosen once from the trained weights before any layer is replaced.

A data-driven selector gets a loss probe on a fixed batch of training images; a latency-aware one gets the layers'
latency tables and the dense network's latency from the cache the profiling phase filled
(:mod:`harness.run.latency_tables`), with the correction the check of the cell's plan on the whole network found.
A matched selection (``SEL@REF``) spends the total its reference chooses. The cell's metrics record the selector,
its seconds, and where the tables cover every budget, the predicted speedup.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from harness.config.settings import RunConfig
from harness.contract.backend import layer_kind
from harness.contract.selection import (
    LayerBudget,
    RankSelector,
    SelectionError,
    SelectionInput,
    SelectionLayer,
    layer_budgets,
    matched_budgets,
    needs_latency,
    parse_spec,
    split_match,
)
from harness.measure.metrics import count_params
from harness.plan.cells import Cell
from harness.run.baseline import run_baseline_path
from harness.run.data import Data
from harness.run.latency_tables import cell_tables, with_table
from harness.run.training import evaluate

if TYPE_CHECKING:  # the runner's context, which imports this module
    from harness.run.runner import CellContext

# Training images a data-driven rank selector probes the loss on: the first ones of the training split, the same for
# every cell, so budgets do not depend on the backend; enough to rank layers, few enough to probe many ranks.
SELECTION_BATCH = 512


def _loss_probe(model: nn.Module, layers: list[tuple[str, nn.Module]], data: Data
                ) -> Callable[[int, torch.Tensor], float]:
    """``loss_with(i, weight)``: the model's loss on the selection batch with layer ``i``'s weight swapped in."""
    x, y = data.head("train", SELECTION_BATCH)

    def loss_with(index: int, weight: torch.Tensor) -> float:
        layer = layers[index][1]
        original = layer.weight.data
        try:
            layer.weight.data = weight.to(original.device, original.dtype).reshape(original.shape)
            return evaluate(model, x, y)[0]
        finally:  # the dense weight goes back whatever happened: the backends decompose it next
            layer.weight.data = original

    return loss_with


def select_budgets(cell: Cell, ctx: CellContext, model: nn.Module, layers: list[tuple[str, nn.Module]],
                   metrics: dict[str, Any], correction: float | None = None
                   ) -> tuple[list[LayerBudget], list[float | None]]:
    """The cell's rank selector's budget for each of ``layers``, chosen before any layer is replaced, and each dense
    layer's latency where the layers' latency tables were measured (None otherwise). ``correction`` overrides the
    cached check of the plan (the profiling phase's check passes the one it tries)."""
    own, reference = split_match(cell.rank_selection)
    name, argument = parse_spec(own)
    selector = _rank_selector(ctx, name)
    wanted = needs_latency(cell.rank_selection, ctx.host.rank_selectors)
    timed = wanted or ctx.config.layer_latency
    tables, network_ms, cached = (
        cell_tables(cell, ctx.config, ctx.host.backends[cell.backend].library_version, ctx.device,
                    ctx.data(cell.dataset), model, layers, _baseline_file(cell, ctx.config)) if timed
        else (None, None, 1.0))
    correction = correction or cached
    selection = SelectionInput(
        argument=argument, ratio=cell.ratio if selector.uses_ratio and reference is None else None,
        method=cell.method,
        layers=[SelectionLayer(path, layer_kind(layer), layer.weight.detach(), count_params(layer),
                               getattr(layer, "bias", None) is not None) for path, layer in layers],
        loss_with=_loss_probe(model, layers, ctx.data(cell.dataset)),
        latency=tables if wanted else None, network_ms=network_ms if wanted else None,
        latency_correction=correction)
    start = time.perf_counter()
    if reference is None:
        budgets = layer_budgets(selector, selection)
    else:
        reference_name, reference_argument = parse_spec(reference)
        budgets, total = matched_budgets(selector, _rank_selector(ctx, reference_name), selection,
                                         reference_argument)
        metrics.update(matched_to=reference, matched_total=total)
    metrics.update(rank_selector=name, selection_s=time.perf_counter() - start)
    if tables is not None:
        budgets = [with_table(budget, table) for budget, table in zip(budgets, tables)]
        if all(b.predicted_ms is not None for b in budgets):  # a budget off the tables' grid has no prediction
            predicted = network_ms - sum(t.dense_ms for t in tables) + sum(b.predicted_ms for b in budgets)
            # The tables' prediction, and the prediction once the plan's check is applied (the same without one).
            metrics.update(latency_network_table_ms=network_ms, latency_predicted_ms=predicted * correction,
                           latency_correction=correction,
                           predicted_speedup_tables=network_ms / predicted if predicted > 0 else None,
                           predicted_speedup=network_ms / (predicted * correction) if predicted > 0 else None)
        return budgets, [table.dense_ms for table in tables]
    return budgets, [None] * len(budgets)


def _baseline_file(cell: Cell, config: RunConfig) -> str:
    """The name of the cell's dense baseline in the cache: which weights a plan was made from."""
    return run_baseline_path(config, cell.model, cell.dataset, cell.seed).name


def _rank_selector(ctx: CellContext, name: str) -> RankSelector:
    selector = ctx.host.rank_selectors.get(name)
    if selector is None:
        raise SelectionError(f"no plugin registers the rank selector {name!r}")
    return selector
