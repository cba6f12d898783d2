"""The built-in rank selectors (ratio, energy, vbmf, budget, sensitivity, latency), registered as a plugin.

Each turns a cell's trained weights into per-layer parameter budgets that every backend then fills with its own
method, so they are priced in one *reference structure* per layer kind, independent of the cell's method: a Linear
layer is judged by the truncated SVD of its weight, a Conv2d by Tucker-2 on its output- and input-channel modes
(the mode-0 and mode-1 unfoldings, Kim et al. 2016), with the parameter formulas of :mod:`harness.tensor.structures`.
``ratio`` is the uniform rule, floor(dense/ratio) per layer. ``energy:SHARE`` keeps, per layer, the fewest reference
ranks holding SHARE of the spectral energy and ``vbmf`` the ranks empirical VBMF finds above the noise
(:mod:`harness.tensor.spectra`); either's reference parameter count, capped at the dense count, is the budget.
``budget`` spends the uniform rule's total over the layers with a knapsack that maximises the summed retained energy,
so a layer whose spectrum decays fast gives parameters to one whose spectrum does not. ``sensitivity`` solves the
same knapsack on measured loss instead of energy: per layer and candidate rank, the training loss of the dense network
with only that layer truncated to the reference structure (the runner's ``loss_with``). Held to another selector's
total (``ratio@vbmf``, ``budget@vbmf``), ratio and budget run at the ratio that gives that total, and ``energy@vbmf``
searches the largest energy share, the same for every layer, whose budgets fit it. ``latency:S`` (or
``latency:Lms``) chooses per layer a measured candidate or "keep dense" from the layers' latency tables
(:mod:`harness.run.latency_tables`) so that the network's predicted latency meets a speedup ``S`` over dense (or
``L`` milliseconds) with the least summed relative reconstruction error of the reference structure at each
candidate's budget: a multiple-choice knapsack over latency. A candidate slower than its dense layer is never chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import torch

import harness
from harness.contract.selection import LayerBudget, LayerLatency, RankSelector, SelectionInput, SelectionLayer
from harness.tensor import spectra as rank_selection
from harness.tensor import structures

DEFAULT_ENERGY_SHARE = "0.9"
# Candidate (R_out, R_in) pairs per conv layer for the knapsack; beyond this the rank grid is thinned, because
# pricing every pair of a 512-channel conv (262k) would cost seconds for options the knapsack barely tells apart.
MAX_TUCKER2_CANDIDATES = 8192
# Ranks per layer whose loss the sensitivity selector measures: each costs one forward pass of the selection batch.
MAX_PROBES = 48


# ----------------------------------------------------------------------------- reference structures


def _reference_method(layer: SelectionLayer) -> str:
    return "svd" if layer.kind == "linear" else "tucker2"


def _conv_shape(layer: SelectionLayer) -> SimpleNamespace:
    # structures' Tucker-2 formulas read these attributes off an nn.Conv2d; the weight alone determines them.
    cout, cin, kh, kw = layer.weight.shape
    return SimpleNamespace(out_channels=cout, in_channels=cin, kernel_size=(kh, kw),
                           bias=True if layer.has_bias else None)


def reference_params(layer: SelectionLayer, ranks: int | tuple[int, int]) -> int:
    """Parameters of ``layer``'s reference structure at ``ranks``: SVD rank for Linear, (R_out, R_in) for Conv2d."""
    if layer.kind == "linear":
        out_features, in_features = layer.weight.shape
        return structures.svd_params(in_features, out_features, int(ranks), layer.has_bias)
    return structures.tucker2_params(_conv_shape(layer), *ranks)


def _reference_max_ranks(layer: SelectionLayer) -> int | tuple[int, int]:
    if layer.kind == "linear":
        return min(layer.weight.shape)
    return structures.tucker2_max_ranks(_conv_shape(layer))


def _weight(layer: SelectionLayer) -> torch.Tensor:
    # On the CPU in float64 so that the budgets, and hence every backend's ranks, do not depend on the device.
    return layer.weight.detach().to("cpu", torch.float64)


# ----------------------------------------------------------------------------- per-layer rules


def _ratio_budgets(selection: SelectionInput) -> list[int]:
    return [math.floor(layer.dense_params / selection.ratio) for layer in selection.layers]


def _rule_budgets(rule: str) -> Callable[[SelectionInput], list[LayerBudget]]:
    """Budgets from the reference ranks ``rule`` (a :func:`harness.tensor.spectra.rank_rule` name) picks per layer."""

    def budgets(selection: SelectionInput) -> list[LayerBudget]:
        chosen = []
        for layer in selection.layers:
            # selected_ranks keeps every rank >= 1 (a vbmf rank of 0, pure noise, becomes 1): a layer stays a layer.
            ranks = rank_selection.selected_ranks(_weight(layer), layer.kind, _reference_method(layer), rule)
            chosen.append(LayerBudget(min(reference_params(layer, ranks), layer.dense_params), ranks))
        return chosen

    return budgets


def _energy_budgets(selection: SelectionInput) -> list[LayerBudget]:
    return _rule_budgets(f"energy:{selection.argument or DEFAULT_ENERGY_SHARE}")(selection)


def _energy_at_total(selection: SelectionInput, total: int) -> list[LayerBudget]:
    """The energy rule at the largest share, common to all layers, whose budgets sum to at most ``total``."""
    spectra = [[rank_selection.singular_values(_weight(layer), mode) for mode in _reference_modes(layer)]
               for layer in selection.layers]

    def budgets_at(share: float) -> list[LayerBudget]:
        chosen = []
        for layer, layer_spectra in zip(selection.layers, spectra):
            ranks = tuple(max(1, rank_selection.energy_rank(s, share)) for s in layer_spectra)
            ranks = ranks[0] if layer.kind == "linear" else ranks
            chosen.append(LayerBudget(min(reference_params(layer, ranks), layer.dense_params), ranks))
        return chosen

    def spent(share: float) -> int:
        return sum(b.params for b in budgets_at(share))

    if spent(1.0) <= total:
        return budgets_at(1.0)
    # The total only grows with the share, so bisection finds the boundary; 40 halvings resolve shares to 1e-12,
    # far below the step between two ranks of any real spectrum.
    low, high = 1e-12, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) <= total else (low, middle)
    return budgets_at(low)


def _reference_modes(layer: SelectionLayer) -> tuple[int, ...]:
    # The unfoldings the reference structure truncates: the matrix itself (SVD) or the two channel modes (Tucker-2).
    return (0,) if layer.kind == "linear" else (0, 1)


def check_share(argument: str) -> None:
    """Raise ValueError unless ``argument`` is an energy share in (0, 1]."""
    rank_selection.parse_share(argument)


# ----------------------------------------------------------------------------- global budget


def _candidate_ranks(layer: SelectionLayer, cap: int) -> list[Any]:
    """The reference ranks of ``layer`` whose parameters fit ``cap``, rank 1 always included."""
    top = _reference_max_ranks(layer)
    if layer.kind == "linear":
        return [r for r in range(1, top + 1) if r == 1 or reference_params(layer, r) <= cap]
    max_out, max_in = top
    step = max(1, math.ceil(math.sqrt(max_out * max_in / MAX_TUCKER2_CANDIDATES)))

    def grid(top_rank: int) -> list[int]:
        return sorted({*range(1, top_rank + 1, step), top_rank})

    return [(ro, ri) for ro in grid(max_out) for ri in grid(max_in)
            if (ro, ri) == (1, 1) or reference_params(layer, (ro, ri)) <= cap]


def _pareto(options: list[tuple[int, float]], ranks: list[Any]) -> tuple[list[tuple[int, float]], list[Any]]:
    # An option that costs more and keeps no more energy than another is never chosen; dropping it shrinks the
    # knapsack without changing its answer.
    order = sorted(range(len(options)), key=lambda i: (options[i][0], -options[i][1]))
    kept, best = [], -math.inf
    for i in order:
        if options[i][1] > best:
            kept.append(i)
            best = options[i][1]
    return [options[i] for i in kept], [ranks[i] for i in kept]


def _knapsack_budgets(selection: SelectionInput,
                      options_of: Callable[[int, SelectionLayer, int], tuple[list[tuple[int, float]], list[Any]]]
                      ) -> list[LayerBudget]:
    """The ratio's total spread over the layers by the knapsack, on the ``(params, value)`` options and their ranks
    that ``options_of(index, layer, cap)`` gives per layer (ranks costing at most ``cap``)."""
    total = sum(math.floor(layer.dense_params / selection.ratio) for layer in selection.layers)
    all_options, all_ranks = [], []
    for index, layer in enumerate(selection.layers):
        options, ranks = _pareto(*options_of(index, layer, min(layer.dense_params, total)))
        all_options.append(options)
        all_ranks.append(ranks)
    picked = rank_selection.allocate_budget(all_options, total)
    return [LayerBudget(options[j][0], ranks[j]) for options, ranks, j in zip(all_options, all_ranks, picked)]


def _energy_options(index: int, layer: SelectionLayer, cap: int) -> tuple[list[tuple[int, float]], list[Any]]:
    ranks = _candidate_ranks(layer, cap)
    return rank_selection.energy_options(_weight(layer), layer.kind, _reference_method(layer),
                                         lambda r: reference_params(layer, r), ranks), ranks


def _global_budgets(selection: SelectionInput) -> list[LayerBudget]:
    return _knapsack_budgets(selection, _energy_options)


# ----------------------------------------------------------------------------- measured sensitivity


def _probe_ranks(layer: SelectionLayer, cap: int) -> list[Any]:
    """At most about :data:`MAX_PROBES` candidate reference ranks of ``layer`` within ``cap``, evenly spread."""
    candidates = _candidate_ranks(layer, cap)
    if len(candidates) <= MAX_PROBES:
        return candidates
    if layer.kind == "linear":
        step = math.ceil(len(candidates) / MAX_PROBES)
        return sorted({*candidates[::step], candidates[-1]})
    outs, ins = sorted({r for r, _ in candidates}), sorted({r for _, r in candidates})
    step = max(1, math.ceil(math.sqrt(len(outs) * len(ins) / MAX_PROBES)))
    keep_out, keep_in = {*outs[::step], outs[-1]}, {*ins[::step], ins[-1]}
    grid = [pair for pair in candidates if pair[0] in keep_out and pair[1] in keep_in]
    # The grid misses the pairs on the edge of the cap, the richest options a layer has; keep, per kept R_out, the
    # largest R_in that fits.
    edge: dict[int, int] = {}
    for rank_out, rank_in in candidates:
        if rank_out in keep_out:
            edge[rank_out] = max(edge.get(rank_out, 0), rank_in)
    return sorted({(1, 1), *grid, *edge.items()})


def _sensitivity_budgets(selection: SelectionInput) -> list[LayerBudget]:
    loss_with = selection.loss_with
    if loss_with is None:
        raise ValueError("sensitivity measures the training loss, and no training batch was given")

    def loss_options(index: int, layer: SelectionLayer, cap: int) -> tuple[list[tuple[int, float]], list[Any]]:
        ranks = _probe_ranks(layer, cap)
        reconstruct = rank_selection.truncation(_weight(layer), layer.kind, _reference_method(layer))
        # The knapsack maximises a sum, so each option's value is minus the loss with this layer alone truncated:
        # the loss increases of the layers are taken as adding up, the usual first-order assumption.
        return [(reference_params(layer, r), -loss_with(index, reconstruct(r))) for r in ranks], ranks

    return _knapsack_budgets(selection, loss_options)


# ----------------------------------------------------------------------------- measured latency

# Latencies enter the knapsack in units of this many milliseconds (0.1 microsecond): integer costs, rounded up.
LATENCY_UNIT_MS = 1e-4


def parse_target(argument: str) -> tuple[str, float]:
    """A latency target: ``"2"`` or ``"2x"`` as ``("speedup", 2.0)``, ``"3.5ms"`` as ``("ms", 3.5)``; ValueError
    for anything else, a speedup of 1 or less, or a latency that is not positive."""
    text = argument.strip().lower()
    kind = "ms" if text.endswith("ms") else "speedup"
    number = text[:-2] if kind == "ms" else text.removesuffix("x")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"the latency target {argument!r} is neither a speedup (2, 1.5x) nor a latency "
                         "(4.2ms)") from None
    if not math.isfinite(value) or value <= 0 or (kind == "speedup" and value <= 1):
        raise ValueError(f"the latency target {argument!r} must be a speedup above 1 or a positive latency")
    return kind, value


def _reference_error(layer: SelectionLayer, method: str) -> Callable[[int], float]:
    """The relative error of ``layer``'s reference structure filling a parameter budget: SVD for Linear layers and
    for the svd method, Tucker-2 on the channel modes for other conv methods (the same proxy for every backend)."""
    weight = _weight(layer)
    reference = "svd" if layer.kind == "linear" or method == "svd" else "tucker2"
    reconstruct = rank_selection.truncation(weight, layer.kind, reference)
    norm = float(weight.norm())
    if reference == "svd":
        out_features, in_features = weight.flatten(1).shape
        top = min(out_features, in_features)

        def ranks_at(budget: int) -> Any:
            return harness.largest_fitting(
                lambda r: structures.svd_params(in_features, out_features, r, layer.has_bias), budget, top)
    else:
        def ranks_at(budget: int) -> Any:
            return structures.tucker2_budget_ranks(_conv_shape(layer), budget)

    def error(budget: int) -> float:
        try:
            ranks = ranks_at(budget)
        except harness.Unsupported:
            return 1.0
        return float((weight - reconstruct(ranks)).norm()) / max(norm, 1e-30)

    return error


def _latency_budgets(selection: SelectionInput) -> list[LayerBudget]:
    return _latency_plan(selection, None)


def _latency_ratio_budgets(selection: SelectionInput) -> list[LayerBudget]:
    return _latency_plan(selection, sum(math.floor(layer.dense_params / selection.ratio) for layer in selection.layers))


def _latency_plan(selection: SelectionInput, max_params: int | None) -> list[LayerBudget]:
    """Per layer a measured candidate or dense, meeting the latency target with the least summed reference error;
    with ``max_params``, also within that many parameters in all (a Lagrange multiplier on parameters, searched)."""
    tables, network_ms = selection.latency, selection.network_ms
    if tables is None or network_ms is None:
        raise ValueError("latency needs the layers' latency tables, and none were measured")
    kind, value = parse_target(selection.argument or "")
    layers_ms = sum(table.dense_ms for table in tables)
    rest = max(0.0, network_ms - layers_ms)  # what the targeted layers do not cost: the rest of the network
    # The measured target, on the tables' scale: a plan the check found slower than its tables aims lower.
    target = (network_ms / value if kind == "speedup" else value) / selection.latency_correction
    choices, options = zip(*(_layer_options(layer, table, max_params is not None)
                             for layer, table in zip(selection.layers, tables)))
    total = math.floor((target - rest) / LATENCY_UNIT_MS)
    fastest = [min(range(len(o)), key=lambda j: (o[j][0], -o[j][1])) for o, _ in options]
    if sum(o[j][0] for (o, _), j in zip(options, fastest)) > total:
        # Out of reach on this machine: the fastest option everywhere, which says so on every layer.
        return _answer(choices, fastest, "the latency target is out of reach: the fastest option")
    scale = sum(layer.dense_params for layer in selection.layers)

    def allocate(multiplier: float) -> tuple[list[int], int]:
        priced = [[(ms, value - multiplier * p / scale) for (ms, value), p in zip(o, params)] for o, params in options]
        picked = rank_selection.allocate_budget(priced, total, buckets=1 << 15)
        return picked, sum(params[j] for (_, params), j in zip(options, picked))

    picked, spent = allocate(0.0)
    if max_params is None or spent <= max_params:
        return _answer(choices, picked, None)
    high = 1.0
    fitting, spent = allocate(high)
    while spent > max_params and high < 1e9:
        high *= 4
        fitting, spent = allocate(high)
    if spent > max_params:
        return _answer(choices, fitting, "the parameter budget is out of reach at this latency target")
    low = high / 4 if high > 1.0 else 0.0
    for _ in range(30):  # the smallest multiplier that fits: the least error the parameter budget allows
        middle = (low + high) / 2
        picked, spent = allocate(middle)
        if spent > max_params:
            low = middle
        else:
            high, fitting = middle, picked
    return _answer(choices, fitting, None)


def _layer_options(layer: SelectionLayer, table: LayerLatency, with_slower: bool
                   ) -> tuple[list[LayerBudget], tuple[list[tuple[int, float]], list[int]]]:
    """A layer's choices (dense first) and their knapsack options ``(latency units, -error)`` with their parameters.
    A candidate slower than the dense layer is a choice only when a parameter budget may need it (``with_slower``)."""
    faster = [o for o in table.options if o.ms < table.dense_ms]
    usable = sorted(table.options if with_slower else faster, key=lambda o: (o.ms, -o.budget))
    reason = "the target is met without replacing it" if faster else "every candidate is slower than the dense layer"
    choices = [LayerBudget(layer.dense_params, dense=reason, predicted_ms=table.dense_ms)]
    options, params = [(_units(table.dense_ms), 0.0)], [layer.dense_params]
    errors = {method: _reference_error(layer, method) for method in {o.method for o in usable}}
    for option in usable:
        slower = " (slower than dense: taken for the parameter budget)" if option.ms >= table.dense_ms else ""
        why = (f"{option.method} at {option.params} params: {option.ms:.3g} ms against {table.dense_ms:.3g} ms "
               f"dense ({table.dense_ms / option.ms:.2f}x){slower}")
        choices.append(LayerBudget(option.budget, option.ranks, method=option.method, predicted_ms=option.ms,
                                   why=why))
        options.append((_units(option.ms), -errors[option.method](option.budget)))
        params.append(option.params)
    return choices, (options, params)


def _answer(choices: Sequence[list[LayerBudget]], picked: Sequence[int], note: str | None) -> list[LayerBudget]:
    answer = []
    for layer_choices, j in zip(choices, picked):
        chosen = layer_choices[j]
        answer.append(replace(chosen, why=f"{note}; {chosen.why or chosen.dense}" if note else chosen.why))
    return answer


def _units(ms: float) -> int:
    return math.ceil(ms / LATENCY_UNIT_MS)


def check_target(argument: str) -> None:
    """Raise ValueError unless ``argument`` is a latency target (see :func:`parse_target`)."""
    parse_target(argument)


# ----------------------------------------------------------------------------- registration


SELECTORS = (
    RankSelector("ratio", "floor(dense params / ratio) for every layer alike", uses_ratio=True,
                 takes_argument=False, budgets=_ratio_budgets),
    RankSelector("energy", "per layer, the SVD (Linear) or Tucker-2 (Conv2d) ranks keeping the share ARG of the "
                 f"spectral energy [{DEFAULT_ENERGY_SHARE}]", uses_ratio=False, takes_argument=True,
                 budgets=_energy_budgets, default_argument=DEFAULT_ENERGY_SHARE, check_argument=check_share,
                 at_total=_energy_at_total),
    RankSelector("vbmf", "per layer, the SVD (Linear) or Tucker-2 (Conv2d) ranks empirical VBMF keeps above the noise",
                 uses_ratio=False, takes_argument=False, budgets=_rule_budgets("vbmf")),
    RankSelector("budget", "the ratio's total budget spread over the layers to keep the most spectral energy",
                 uses_ratio=True, takes_argument=False, budgets=_global_budgets),
    RankSelector("sensitivity", "the ratio's total budget spread over the layers to keep the training loss lowest, "
                 "measured per layer and rank on a batch of training images", uses_ratio=True, takes_argument=False,
                 budgets=_sensitivity_budgets),
    RankSelector("latency", "per layer a candidate measured on this machine, or dense, for a network ARG times "
                 "faster than dense (2, or 4.5ms for a latency) with the least reconstruction error", uses_ratio=False,
                 takes_argument=True, budgets=_latency_budgets, default_argument="2", check_argument=check_target,
                 needs_latency=True),
    RankSelector("latency-ratio", "as latency, and within the ratio's parameter total (dense / ratio over the "
                 "layers)", uses_ratio=True, takes_argument=True, budgets=_latency_ratio_budgets,
                 default_argument="2", check_argument=check_target, needs_latency=True),
)


@harness.hookimpl
def harness_register_rank_selectors(register: Callable[[RankSelector], None]) -> None:
    for selector in SELECTORS:
        register(selector)
