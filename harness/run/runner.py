"""The runner: everything that happens to one cell, inside whichever worker runs it.

It loads the cached dense baseline, measures it, asks the cell's rank selector for each
planned layer's parameter budget (once, from the trained weights), and executes the
cell's per-layer plan (:class:`harness.plan.cells.LayerPlan`, resolved by the planner): each
layer is replaced through the host by the backend's answer within its budget, with its
own method and request options; an ``auto`` layer tries its candidates and keeps the one
closest to the dense weight; a padded Linear is decomposed as a zero-padded copy within
the original budget and wrapped so the network keeps its shapes. A layer the plan leaves
dense, or that the backend refuses (``Unsupported``), stays dense with its reason in its
row, and the cell goes on with the rest; a cell in which no layer could be decomposed is
``unsupported``. The runner then measures the decomposed network, fine-tunes it with the
shared training settings and measures it again (a ``--no-train`` study measures no
accuracy at all), and saves the network for the driver's quiet latency phase
(:mod:`harness.run.latency`): a cell never times anything beside other workers' training.
The dense control cell skips the decomposition and fine-tunes the baseline itself with
the same recipe. The result is plain data; only the driver
writes the store. The host holds every replacement to its request: one with more
parameters than its budget stops the cell as ``over_budget`` (the offending layer
recorded), so it never reaches a ranking. Any other exception makes the cell ``error``
with a one-line message (and the traceback kept beside it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
from typing import Any, Callable

import torch
from torch import nn

from harness.config.mixing import AUTO
from harness.config.settings import RunConfig
from harness.contract.backend import DecomposeRequest, OverBudget, Unsupported, check_budget
from harness.contract.selection import LayerBudget, SelectionError
from harness.core.allocator import keep_freed_memory
from harness.measure.metrics import count_flops, count_params, replacement_error
from harness.measure.stability import stability_metrics
from harness.plan.cells import Cell, LayerPlan
from harness.plan.result import CellResult, LayerResult
from harness.plan.status import Status
from harness.run.baseline import load_baseline, run_baseline_path
from harness.run.data import Data, resolve_dataset
from harness.run.host import Host, format_exception
from harness.run.models import resolve_model
from harness.run.selection import select_budgets
from harness.run.networks import network_path, save_network
from harness.run.training import evaluate_test, synchronize, train
from harness.tensor.structures import PaddedLinear, zero_padded

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class CellContext:
    """What a worker keeps between cells: the plugins, the config and datasets already loaded."""

    def __init__(self, config: RunConfig, host: Host):
        keep_freed_memory()  # every executor's cells train under the same allocation policy
        self.config = config
        self.host = host
        self.device = resolve_device(config.device)
        self._data: dict[str, Data] = {}

    def data(self, name: str) -> Data:
        if name not in self._data:
            from pathlib import Path

            spec = resolve_dataset(name, self.host.datasets, self.config.data_options())
            splits = spec.load(Path(self.config.data_dir) if self.config.data_dir else None, False)
            self._data[name] = splits.to(self.device)
        return self._data[name]

    def builder(self, model: str, dataset: str) -> Callable[[], nn.Module]:
        data = self.data(dataset)
        spec = resolve_model(model, self.host.models)
        return lambda: spec.build(data.input_shape, data.num_classes)


def replace_layer(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, new)


def _json_safe(info: Any) -> Any:
    if isinstance(info, dict):
        return {str(k): _json_safe(v) for k, v in info.items()}
    if isinstance(info, (list, tuple)):
        return [_json_safe(v) for v in info]
    if isinstance(info, torch.Tensor):
        return info.tolist()
    if isinstance(info, (bool, int, str)) or info is None:
        return info
    if isinstance(info, float):
        return info if math.isfinite(info) else None
    return str(info)


def run_cell(cell: Cell, ctx: CellContext, progress: Callable[[Any], None] | None = None) -> CellResult:
    """Run one cell and return its result (never raises for a backend's fault)."""
    started = time.perf_counter()
    result = CellResult(cell)
    try:
        _run(cell, ctx, result, progress)
    except Unsupported as exc:
        result.fail(Status.UNSUPPORTED, str(exc).splitlines()[0] if str(exc) else "unsupported")
    except OverBudget as exc:
        result.fail(Status.OVER_BUDGET, str(exc))
    except Exception as exc:
        result.fail(Status.ERROR, *format_exception(exc))
    result.metrics["cell_s"] = time.perf_counter() - started
    return result


def call_backend(ctx: CellContext | Host, layer: nn.Module, request: DecomposeRequest) -> tuple[nn.Module, float, str]:
    """The backend's replacement for ``layer`` (on the cell's device), the seconds it took and what it printed.

    ``ctx`` is a worker's context, or a bare host (a replay: on the CPU)."""
    host, device = (ctx.host, ctx.device) if hasattr(ctx, "device") else (ctx, torch.device("cpu"))
    captured = io.StringIO()
    synchronize(device)
    start = time.perf_counter()
    with contextlib.redirect_stdout(captured):
        replacement = host.decompose(layer, request)
    synchronize(device)
    seconds = time.perf_counter() - start
    return replacement.to(device), seconds, captured.getvalue()


def decompose_padded(ctx: CellContext | Host, layer: nn.Linear, request: DecomposeRequest,
                     padding: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[nn.Module, float, str]:
    """Decompose a zero-padded copy of ``layer`` with the padded factors as shapes and wrap it to ``layer``'s sizes.

    The request keeps the original layer's budget and dense count, so padding buys balanced shapes, not parameters.
    """
    in_factors, out_factors = padding
    padded_in, padded_out = math.prod(in_factors), math.prod(out_factors)
    # The padded factors are passed as explicit shapes (they say all that tt_d said).
    options = {k: v for k, v in request.options.items() if k != "tt_d"}
    request = dataclasses.replace(request, options={**options, "in_shape": list(in_factors),
                                                    "out_shape": list(out_factors)})
    inner, seconds, printed = call_backend(ctx, zero_padded(layer, padded_in, padded_out), request)
    wrapped = PaddedLinear(inner, layer.in_features, layer.out_features, padded_in)
    wrapped.decomposition_info = {
        **(getattr(inner, "decomposition_info", {}) or {}),
        "padded": {"in_features": layer.in_features, "out_features": layer.out_features,
                   "padded_in": padded_in, "padded_out": padded_out},
    }
    return wrapped, seconds, printed


def pick_best(candidates: list[tuple[str, float, bool]]) -> str:
    """The method of the best ``(method, relative error, within budget)`` candidate, in the order tried.

    A candidate within its budget beats one over it; then the lowest error wins (a NaN error counts as
    infinite); ties go to the first tried, i.e. the backend's declared order.
    """
    if not candidates:
        raise ValueError("no candidate to pick from")

    def key(item: tuple[int, tuple[str, float, bool]]) -> tuple[bool, float, int]:
        index, (_, error, within) = item
        return (not within, error if math.isfinite(error) else math.inf, index)

    return min(enumerate(candidates), key=key)[1][0]


def _auto(ctx: CellContext, layer: nn.Module, request: DecomposeRequest,
          candidates: tuple[str, ...]) -> tuple[nn.Module, float, str, dict[str, Any]]:
    """Decompose ``layer`` with each of the plan's ``candidates`` at the same budget and keep the lowest-error one.

    Returns the replacement, the seconds all candidates took together (auto's honest cost), their output and the
    record of the choice. A candidate raising ``Unsupported`` is skipped; when all do, so does the layer.
    """
    tried: list[tuple[str, float, bool]] = []
    errors: dict[str, float] = {}
    skipped: dict[str, str] = {}
    estimated: dict[str, dict[str, Any]] = {}  # the candidates whose error was estimated, not probed exactly
    best, seconds, printed = None, 0.0, []
    for method in candidates:
        start = time.perf_counter()
        try:
            replacement, _, out = call_backend(ctx, layer, dataclasses.replace(request, method=method))
        except Unsupported as exc:
            skipped[method] = str(exc).splitlines()[0] if str(exc) else "unsupported"
            continue
        finally:
            seconds += time.perf_counter() - start
        if out:
            printed.append(f"[{method}]\n{out}")
        error, estimate = replacement_error(replacement, layer)
        if estimate is not None:
            estimated[method] = estimate
        budget = request.max_params
        tried.append((method, error, budget is None or count_params(replacement) <= budget))
        errors[method] = error
        if pick_best(tried) == method:  # keep only the best replacement so far, not every candidate
            best = replacement
    if best is None:
        why = "; ".join(f"{m}: {reason}" for m, reason in skipped.items()) or "it offers no decompose-init method"
        raise Unsupported(f"auto: no method of {request.backend} decomposes {request.layer_path} ({why})")
    record = {"chosen": pick_best(tried), "errors": errors, "candidates": [m for m, _, _ in tried]}
    if skipped:
        record["skipped"] = skipped
    if estimated:
        record["estimated"] = estimated
    return best, seconds, "".join(printed), record


def _latency_info(budget: LayerBudget, dense_ms: float | None = None) -> dict[str, Any]:
    """What the layer's latency table says of its replacement, against the dense layer's ``dense_ms``, and why a
    latency-aware selector chose it."""
    info: dict[str, Any] = {}
    if budget.predicted_ms is not None:
        info["latency_predicted_ms"] = budget.predicted_ms
        if dense_ms is not None:
            info["latency_dense_layer_ms"] = dense_ms
            if budget.dense is None and budget.predicted_ms >= dense_ms:
                info["slower_than_dense"] = True
    if budget.why is not None:
        info["why"] = budget.why
    return info


def _dense_row(plan: LayerPlan, layer: nn.Module, budget: int | None, reason: str) -> LayerResult:
    """The row of a targeted layer left dense: its own parameters on both sides, and why."""
    params = count_params(layer)
    return LayerResult(plan.path, plan.kind, params, params, budget, info={"method": None, "left_dense": reason})


def layer_request(cell: Cell, plan: LayerPlan, layer: nn.Module, budget: int | None, device: str,
                  rebuild: bool = False) -> DecomposeRequest:
    """What the backend is asked for one planned layer: the same in a cell and in its replay."""
    return DecomposeRequest(backend=cell.backend, method=plan.method, layer_path=plan.path, kind=plan.kind,
                            ratio=cell.ratio, seed=cell.seed, device=device, options=dict(plan.options),
                            dense_params=count_params(layer), budget=budget, rebuild=rebuild)


def replay_plan(cell: Cell, host: Host, model: nn.Module, rows: list[LayerResult]) -> None:
    """Replace ``model``'s layers (on the CPU) as the finished ``cell`` did: each layer its rows record as decomposed
    is asked of the backend again, with the budget and the method (``auto``'s choice) the row records and
    ``rebuild`` set, so the backend may skip the fitting whose values the saved state dict replaces anyway."""
    recorded = {row.layer: row for row in rows}
    for plan in cell.layers:
        row = recorded.get(plan.path)
        if plan.dense is not None or row is None or row.left_dense is not None:
            continue
        layer = model.get_submodule(plan.path)
        replacement = rebuild_layer(cell, plan, host, layer, row.max_params, row.info.get("method") or plan.method)
        replace_layer(model, plan.path, replacement)


def rebuild_layer(cell: Cell, plan: LayerPlan, host: Host, layer: nn.Module, budget: int | None, method: str,
                  device: str = "cpu") -> nn.Module:
    """The backend's structure for one planned layer at ``budget`` with ``method``, ``rebuild`` set (its values do
    not matter: a saved state dict replaces them, or only its speed is measured), padded as the plan says."""
    request = dataclasses.replace(layer_request(cell, plan, layer, budget, device, rebuild=True), method=method)
    if plan.padding is not None and plan.method != AUTO:
        return decompose_padded(host, layer, request, plan.padding)[0]
    return call_backend(host, layer, request)[0]


def _decompose(cell: Cell, ctx: CellContext, model: nn.Module, result: CellResult,
               stage: Callable[[str], None] = lambda text: None) -> None:
    """Execute the cell's per-layer plan on ``model``, recording one row per targeted layer; ``stage`` hears which
    layer it is at."""
    device, metrics, rows = ctx.device, result.metrics, result.layers
    planned = cell.planned()
    layers = {plan.path: model.get_submodule(plan.path) for plan in cell.layers}
    stage(f"choosing ranks ({cell.rank_selection})")
    chosen, dense_ms = select_budgets(cell, ctx, model, [(plan.path, layers[plan.path]) for plan in planned], metrics)
    budgets = dict(zip([plan.path for plan in planned], chosen))
    dense_ms = dict(zip([plan.path for plan in planned], dense_ms))
    error_sq, weight_sq, decompose_s, refused = 0.0, 0.0, 0.0, []
    for plan in cell.layers:
        layer = layers[plan.path]
        budget = budgets.get(plan.path)
        if plan.dense is not None:
            rows.append(_dense_row(plan, layer, None, plan.dense))
            continue
        if budget.dense is not None:  # the selector keeps it dense, e.g. no candidate is faster than the layer
            row = _dense_row(plan, layer, None, budget.dense)
            row.info.update(_latency_info(budget, dense_ms[plan.path]))
            rows.append(row)
            continue
        if budget.method is not None and budget.method not in (plan.method, *plan.candidates):
            raise SelectionError(f"the rank selector asked layer {plan.path} for {budget.method!r}, which its plan "
                                 f"does not allow")
        plan = dataclasses.replace(plan, method=budget.method or plan.method)
        stage(f"decomposing layer {len(rows) + 1}/{len(cell.layers)} {plan.path} ({plan.method})")
        request = layer_request(cell, plan, layer, budget.params, str(device))
        method, init, auto = plan.method, plan.init, None
        try:
            if plan.method == AUTO:
                replacement, seconds, printed, auto = _auto(ctx, layer, request, plan.candidates)
                method = auto["chosen"]
            elif plan.padding is not None:
                replacement, seconds, printed = decompose_padded(ctx, layer, request, plan.padding)
            else:
                replacement, seconds, printed = call_backend(ctx, layer, request)
        except Unsupported as exc:  # this layer only: the cell goes on with the rest
            reason = str(exc).splitlines()[0] if str(exc) else "unsupported"
            refused.append(f"{reason} (layer {plan.path})")
            rows.append(_dense_row(plan, layer, request.max_params, reason))
            continue
        decompose_s += seconds
        dense_weight = layer.weight.detach()
        layer_weight_sq = float(dense_weight.pow(2).sum())
        estimate = None
        if auto is not None:  # auto already probed the replacement it chose
            layer_error_sq = auto["errors"][method] ** 2 * layer_weight_sq
        elif init == "decompose":
            layer_error, estimate = replacement_error(replacement, layer)
            layer_error_sq = layer_error ** 2 * layer_weight_sq
        else:  # a layer trained from scratch approximates nothing, and may not even be a linear map
            layer_error_sq = float("nan")
        error_sq += layer_error_sq
        weight_sq += layer_weight_sq
        info = {**_json_safe(getattr(replacement, "decomposition_info", {}) or {}), "method": method}
        if auto is not None:
            info["auto"] = _json_safe(auto)
        if estimate is not None:
            info["recon_error_estimate"] = estimate
        if budget.ranks is not None:  # the selector's reference ranks, beside the ranks the backend chose
            info = {**info, "selected_ranks": _json_safe(budget.ranks)}
        info.update(_latency_info(budget, dense_ms[plan.path]))
        rows.append(LayerResult(
            plan.path, plan.kind, request.dense_params, count_params(replacement), request.max_params,
            recon_error=math.sqrt(layer_error_sq / max(layer_weight_sq, 1e-30)), decompose_s=seconds, info=info,
            stdout=printed[-2000:] or None))
        # The host's check, whatever the backend promised: the row above keeps the offending layer on record.
        check_budget(replacement, request)
        replace_layer(model, plan.path, replacement)

    decomposed = [row for row in rows if row.left_dense is None]
    if not decomposed:
        kept = [f"{row.layer}: {row.left_dense}" for row in rows if row.left_dense]
        raise Unsupported(refused[0] if refused else f"no layer of {cell.model} was replaced ({'; '.join(kept)})"
                          if kept else f"no layer of {cell.model} could be decomposed")
    params_dense = sum(row.params_dense for row in rows)
    params = sum(row.params for row in rows)
    metrics.update(
        params_dense=params_dense, params=params, compression=params_dense / params if params else None,
        budget=sum(budget.params for budget in budgets.values()), budget_ok=all(
            row.params <= row.max_params for row in decomposed if row.max_params is not None),
        decompose_s=decompose_s, recon_error=math.sqrt(error_sq / max(weight_sq, 1e-30)),
        layers_targeted=len(rows), layers_decomposed=len(decomposed),
    )


def _run(cell: Cell, ctx: CellContext, result: CellResult, progress: Callable[[Any], None] | None) -> None:
    config, device = ctx.config, ctx.device
    stage = (lambda text: progress((cell.cell_id, text))) if progress else (lambda text: None)  # noqa: E731
    stage("loading the dense baseline")
    data = ctx.data(cell.dataset)
    build = ctx.builder(cell.model, cell.dataset)
    model = load_baseline(run_baseline_path(config, cell.model, cell.dataset, cell.seed), build, device)
    latency_input, _ = data.head("test", config.latency_batch)
    sample = latency_input[:1]
    # A data-free study measures no accuracy: its images are random and its network untrained.
    accuracy = (lambda net: None) if config.no_train else (lambda net: evaluate_test(net, data)[1])
    metrics = result.metrics
    metrics.update(
        device=str(device), threads=torch.get_num_threads(), latency_batch=len(latency_input),
        model_params_dense=count_params(model), flops_dense=count_flops(model, sample),
    )
    metrics["acc_baseline"] = accuracy(model)
    # Chance accuracy, so a report can tell a cell that learned nothing from a poor result (balanced classes).
    metrics["chance_acc"] = None if config.no_train else 100.0 / data.num_classes

    if cell.is_control:
        # Nothing is replaced: the control measures how the dense net itself behaves under fine-tuning.
        params = count_params(model)
        metrics.update(params_dense=params, params=params, compression=1.0, budget=params, budget_ok=True,
                       decompose_s=0.0, recon_error=0.0, acc_decomposed=metrics["acc_baseline"])
    else:
        _decompose(cell, ctx, model, result, stage)
        stage("evaluating the decomposed network")
        metrics["acc_decomposed"] = accuracy(model)

    if config.epochs:
        stage(f"fine-tuning for {config.epochs} epochs")
    records = result.epochs = train(model, data, config.fine_tune_settings(), seed=cell.seed, progress=progress)
    final_acc = records[-1].test_acc if records else metrics["acc_decomposed"]
    seen = [r.test_acc for r in records] + ([metrics["acc_decomposed"]] if metrics["acc_decomposed"] is not None
                                            else [])
    metrics.update(
        acc_final=final_acc,
        acc_best=max(seen) if seen else None,
        epoch_s=sum(r.epoch_s for r in records) / len(records) if records else None,
        model_params=count_params(model), flops=count_flops(model, sample),
    )
    # Timed later, in the quiet latency phase (harness.run.latency): never beside other workers' training.
    stage("saving the network")
    metrics["network_sha256"] = save_network(model, network_path(config.out, cell.cell_id), data.input_shape)
    metrics["latency_pending"] = True
    if metrics["acc_baseline"] is not None:
        metrics.update(stability_metrics(metrics["acc_baseline"], metrics["acc_decomposed"],
                                         [r.test_acc for r in records]))
    metrics["flop_speedup"] = metrics["flops_dense"] / metrics["flops"] if metrics["flops"] else None
    if records and not all(math.isfinite(r.train_loss) for r in records):
        result.fail(Status.DIVERGED, "training loss became NaN or infinite")
