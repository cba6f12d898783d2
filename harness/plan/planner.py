"""The planner: expands a run configuration into independent, serialisable cells.

A cell is one (backend, model, dataset, method, target, ratio, seed, rank selection); a
rank selector whose budgets ignore the ratio gets one cell per combination instead of
one per ratio, with the placeholder ratio 1. For each (model, dataset, seed) one more
cell, the dense control, fine-tunes the undecomposed baseline with the same recipe so
stability has a reference. Planning builds each model once (untrained) to see which
layers a target selects (``--layers`` globs pick them by path) and resolves each cell's
per-layer plan (:class:`LayerPlan`: layer path -> method, init, tensorized shape and
padding, or left dense and why), which the cell carries to the runner; a 1x1 conv gets
the SVD (two 1x1 convs) where the backend declares it for convs, and a conv whose
features the backend declared it cannot handle (a depthwise conv, say) is left dense on
its own while the rest of the cell is decomposed. A backend gets cells only for methods it declares for every
layer kind the cell decomposes: one method on target ``all`` means that method on every
targeted conv *and* Linear layer, so a backend that declares it for one kind only is not
planned there (a mix gives each kind its own method). Every combination left out this
way is recorded (:class:`NotPlanned`) and summed up in one line; ``unsupported`` cells
are reserved for a cell whose every targeted layer is ruled out by its features (groups,
dilation, ...), found here before any backend code runs, or refused by the library at run
time.
Combinations that make no sense for any backend (a Linear-only method on a conv target, a
target with no layers in the model) are not planned at all. A mix (see :mod:`harness.config.mixing`) is
planned like one more method, labelled ``mix-...``, on target ``all`` when the run has it
(else on each run target it maps a layer of), with its layer-to-method map checked layer
by layer; the method ``auto`` needs a decompose-init candidate per kind. A cell whose
Linear layers get a method the backend declares tensorized is planned once per tensorization of the run
(``--tt-d``, ``tensor_shapes``, ``--tt-pad``; see :mod:`harness.config.tensorize`), every other cell once; explicit
shapes are checked against the built model here.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from harness.config.mixing import AUTO, Mix, auto_candidates
from harness.config.settings import TARGET_KINDS, ConfigError, RunConfig
from harness.config.tensorize import DEFAULT as DEFAULT_TENSORIZE
from harness.config.tensorize import (
    Tensorization,
    check_tensor_shapes,
    governing_pattern,
    labels,
    layer_options,
    padding_for,
)
from harness.contract.backend import BackendInfo, conv_features, count_params, layer_kind
from harness.contract.selection import MATCH, RankSelector, uses_ratio
from harness.plan.cells import (
    CONTROL_BACKEND,
    CONTROL_INIT,
    CONTROL_TARGET,
    NO_RATIO,
    Cell,
    LayerPlan,
    NotPlanned,
    Plan,
)

def one_by_one(layer: nn.Module) -> bool:
    """A 1x1 convolution: a matrix applied at every pixel."""
    return isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) == (1, 1)


def target_layers(model: nn.Module, target: str, keep_edges_dense: bool = True,
                  patterns: tuple[str, ...] | list[str] = ()) -> list[tuple[str, nn.Module]]:
    """The (path, layer) pairs that ``target`` selects in ``model``, in module order.

    With ``keep_edges_dense`` the first conv (it sees the raw image and holds few
    parameters) and the last Linear (the classifier) stay dense, as is usual since
    Lebedev 2015 and Kim 2016. ``patterns`` (``--layers``), when given, picks the layers
    by path instead: only those matching a glob, edges included when they match.
    """
    layers = [(name, module) for name, module in model.named_modules() if layer_kind(module)]
    if patterns:
        layers = [(name, m) for name, m in layers if any(fnmatchcase(name, pattern) for pattern in patterns)]
    elif keep_edges_dense:
        convs = [name for name, m in layers if layer_kind(m) == "conv2d"]
        linears = [name for name, m in layers if layer_kind(m) == "linear"]
        edges = set(convs[:1]) | set(linears[-1:])
        layers = [(name, m) for name, m in layers if name not in edges]
    kinds = TARGET_KINDS[target]
    return [(name, m) for name, m in layers if layer_kind(m) in kinds]


def layer_methods(model: nn.Module, target: str, method: str, mix: str | None = None,
                  keep_edges_dense: bool = True, patterns: tuple[str, ...] | list[str] = ()
                  ) -> list[tuple[str, nn.Module, str]]:
    """The (path, layer, method) of each layer a cell decomposes: ``method`` on every targeted layer, or with
    ``mix`` each targeted layer's mapped method (layers the mix maps to nothing stay dense and are left out)."""
    layers = target_layers(model, target, keep_edges_dense, patterns)
    if mix is None:
        return [(path, layer, method) for path, layer in layers]
    parsed = Mix.parse(mix)
    assigned = [(path, layer, parsed.method_for(path, layer_kind(layer))) for path, layer in layers]
    return [(path, layer, m) for path, layer, m in assigned if m is not None]


def _offered(info: BackendInfo, method: str, kind: str) -> bool:
    return bool(auto_candidates(info, kind)) if method == AUTO else method in info.methods_for(kind)


def _applicable(method: str, kinds: tuple[str, ...], backends: dict[str, BackendInfo]) -> bool:
    """True when some backend of the run offers ``method`` for every kind of the target."""
    return any(all(_offered(info, method, kind) for kind in kinds) for info in backends.values())


def undeclared_kind(info: BackendInfo, assigned: list[tuple[str, nn.Module, str]]) -> tuple[str, str] | None:
    """The first (method, layer kind) of ``assigned`` that the backend does not declare (for ``auto``: has no
    decompose-init candidate for), or None when it declares every one: such a cell is not planned."""
    for method in dict.fromkeys(m for _, _, m in assigned):
        for kind in sorted({layer_kind(layer) for _, layer, m in assigned if m == method}):
            if not _offered(info, method, kind):
                return method, kind
    return None


def _layer_init(info: BackendInfo, method: str, kind: str) -> str:
    # auto only ever tries methods that start from the trained weights.
    return "decompose" if method == AUTO else info.init_for(method, kind)


# The method a 1x1 conv gets in place of a conv method whose extra factors would only cost parameters there.
POINTWISE = "svd"


def layer_method(info: BackendInfo, layer: nn.Module, method: str) -> str:
    """The method ``layer`` gets when its cell asks for ``method``: a 1x1 conv is a matrix, so a conv method
    (CP, Tucker-2, TT, ...) becomes the SVD (two 1x1 convs) where the backend declares it for convs."""
    if (one_by_one(layer) and method not in (POINTWISE, AUTO) and POINTWISE in info.methods_for("conv2d")
            and info.init_for(method, "conv2d") == "decompose"):
        return POINTWISE
    return method


def resolve_layers(config: RunConfig, info: BackendInfo, assigned: list[tuple[str, nn.Module, str]],
                   tensorize: str) -> tuple[LayerPlan, ...]:
    """The per-layer plan of a cell decomposing ``assigned`` (path, layer, method) with backend ``info`` under the
    tensorization label ``tensorize``: each layer's method (1x1 convs: :func:`layer_method`), init, ``auto``
    candidates, request options and padding, or why it stays dense (a conv feature the backend cannot handle)."""
    setting = Tensorization.parse(tensorize) if tensorize else None
    plans = []
    for path, layer, requested in assigned:
        kind = layer_kind(layer)
        method = layer_method(info, layer, requested)
        gaps = conv_features(layer) & set(info.conv_unsupported) if isinstance(layer, nn.Conv2d) else set()
        if gaps:
            plans.append(LayerPlan(path, kind, method, dense=f"{info.name} cannot handle conv "
                                                             f"{', '.join(sorted(gaps))}"))
            continue
        options: dict[str, Any] = {}
        padding = None
        if setting is not None and tensorized_layer(info, layer, method):
            options = layer_options(tensorize, config.tensor_shapes, path)
            # Explicit shapes are the user's; auto's candidates include untensorized methods that padding would skew.
            if setting.pad and "tt_d" in options and method != AUTO:
                padding = padding_for(layer, setting.d)
        plans.append(LayerPlan(path, kind, method, init=_layer_init(info, method, kind),
                               candidates=auto_candidates(info, kind) if method == AUTO else (),
                               options=options, padding=padding))
    return tuple(plans)


def cell_plan(layers: tuple[LayerPlan, ...]) -> tuple[str, str | None]:
    """The init of a cell with the per-layer plan ``layers`` (``"mixed"`` when its decomposed layers differ) and
    why it cannot run (every targeted layer left dense: the first one's reason, with its path), else None."""
    decomposed = [layer for layer in layers if layer.dense is None]
    if not decomposed:
        first = layers[0]
        return "decompose", f"{first.dense} (layer {first.path})"
    inits = {layer.init for layer in decomposed}
    return (inits.pop() if len(inits) == 1 else "mixed"), None


def tensorized_layer(info: BackendInfo, layer: nn.Module, method: str) -> bool:
    """True when the backend's ``method`` (for ``auto``: any of its candidates) gives ``layer`` tensorized shapes."""
    if layer_kind(layer) != "linear":
        return False
    if method == AUTO:
        return any(info.is_tensorized(candidate) for candidate in auto_candidates(info, "linear"))
    return info.is_tensorized(method)


def tensorize_labels(config: RunConfig, info: BackendInfo, assigned: list[tuple[str, nn.Module, str]]) -> list[str]:
    """The ``tensorize`` labels of a cell decomposing ``assigned`` with backend ``info``: one per tensorization of
    the run when some Linear layer's method is tensorized, else only the default."""
    shaped = [path for path, layer, method in assigned if tensorized_layer(info, layer, method)]
    if not shaped:
        return [DEFAULT_TENSORIZE]
    explicit = any(governing_pattern(config.tensor_shapes, path) is not None for path in shaped)
    return labels(config.tt_d, config.tt_pad, explicit)


def mix_targets(targets: list[str]) -> list[str]:
    """The targets mixes are planned on: ``all`` when the run has it, else each of the run's targets."""
    return ["all"] if "all" in targets else list(targets)


def _selection_ratios(config: RunConfig, selectors: dict[str, RankSelector] | None) -> list[tuple[str, list[float]]]:
    """Each rank selection of the run with the ratios it is planned at: all of them, or just the placeholder."""
    planned = []
    for spec in config.rank_selection:
        ratio_based = uses_ratio(spec, selectors) if selectors is not None else MATCH not in spec
        planned.append((spec, list(config.ratios) if ratio_based else [NO_RATIO]))
    return planned


def check_ratios(ratios: list[float], model_name: str, layers: list[tuple[str, nn.Module]]) -> None:
    """Refuse a ratio that leaves some targeted layer a budget below one parameter: no method could meet it, and
    every cell at that ratio would fail at run time instead of now."""
    if not ratios or not layers:
        return
    path, smallest = min(((path, count_params(layer)) for path, layer in layers), key=lambda item: item[1])
    if max(ratios) > smallest:
        raise ConfigError(f"ratio {max(ratios):g} leaves layer {path!r} of {model_name} ({smallest:,} parameters) "
                          f"a budget below one parameter; ratios up to {smallest:,} can be met there")


def plan_cells(
    config: RunConfig,
    backends: dict[str, BackendInfo],
    models: dict[str, nn.Module],
    selectors: dict[str, RankSelector] | None = None,
) -> Plan:
    """All cells of the run, notes for the user and the combinations not planned.

    ``models`` maps ``(model, dataset)`` names joined by ``"@"`` to an untrained
    instance built for that dataset's input shape. ``selectors`` (the host's rank
    selectors) says which selections ignore the ratio; without it every selection is
    planned once per ratio.
    """
    run_backends = {name: backends[name] for name in config.backends}
    selections = _selection_ratios(config, selectors)
    ratio_budgets = sorted({ratio for _, ratios in selections for ratio in ratios if ratio != NO_RATIO})
    cells: list[Cell] = []
    notes: list[str] = []
    matched: set[tuple[str, str]] = set()  # the --layers and --mix globs that match a layer somewhere
    partly: list[tuple[tuple[str, str], str]] = []  # (glob, note) where a glob misses one model's layers
    not_planned: list[NotPlanned] = []

    def add(backend: str, model_name: str, dataset: str, method: str, target: str,
            assigned: list[tuple[str, nn.Module, str]], mix: str | None = None) -> None:
        missing = undeclared_kind(run_backends[backend], assigned)
        if missing is not None:
            record = NotPlanned(backend, model_name, method, target, kind=missing[1], lacks=missing[0])
            if record not in not_planned:  # a model planned on several datasets would repeat it
                not_planned.append(record)
            return
        for tensorize in tensorize_labels(config, run_backends[backend], assigned):
            layers = resolve_layers(config, run_backends[backend], assigned, tensorize)
            init, reason = cell_plan(layers)
            for selection, ratios in selections:
                for ratio in ratios:
                    for seed in config.seeds:
                        cells.append(Cell(backend, model_name, dataset, method, target, ratio, seed, init=init,
                                          unsupported=reason, rank_selection=selection, mix=mix,
                                          tensorize=tensorize, layers=layers))

    for model_name in config.models:
        for dataset in config.datasets:
            model = models[f"{model_name}@{dataset}"]
            if config.tensor_shapes:
                notes += check_tensor_shapes(config.tensor_shapes, model_name,
                                             target_layers(model, "linear", config.keep_edges_dense, config.layers))
            if config.layers:
                paths = [name for name, module in model.named_modules() if layer_kind(module)]
                for pattern in config.layers:
                    if any(fnmatchcase(path, pattern) for path in paths):
                        matched.add(("layers", pattern))
                    else:
                        partly.append((("layers", pattern),
                                       f"--layers {pattern!r} matches no conv or Linear layer of {model_name}"))
            for target in config.targets:
                layers = target_layers(model, target, config.keep_edges_dense, config.layers)
                if not layers:
                    notes.append(f"{model_name} has no {target} layers to decompose; skipped")
                    continue
                check_ratios(ratio_budgets, model_name, layers)
                kinds = TARGET_KINDS[target]
                for method in config.methods:
                    if not _applicable(method, kinds, run_backends):
                        continue
                    assigned = [(path, layer, method) for path, layer in layers]
                    for backend in run_backends:
                        add(backend, model_name, dataset, method, target, assigned)
            for spec in config.mix:
                mix = Mix.parse(spec)
                for target in mix_targets(config.targets):
                    layers = target_layers(model, target, config.keep_edges_dense, config.layers)
                    assigned = layer_methods(model, target, mix.label, spec, config.keep_edges_dense, config.layers)
                    if not assigned:
                        notes.append(f"mix {spec} maps no {target} layer of {model_name}; skipped")
                        continue
                    check_ratios(ratio_budgets, model_name, [(path, layer) for path, layer, _ in assigned])
                    for pattern, _ in mix.patterns:
                        if any(fnmatchcase(path, pattern) for path, _ in layers):
                            matched.add(("mix", pattern))
                        else:
                            partly.append((("mix", pattern), f"mix {spec}: {pattern!r} matches no {target} layer "
                                           f"of {model_name} (targeted: {', '.join(path for path, _ in layers)})"))
                    for backend in run_backends:
                        add(backend, model_name, dataset, mix.label, target, assigned, mix=spec)
            if config.dense_control and config.epochs > 0:
                cells += [control_cell(model_name, dataset, seed) for seed in config.seeds]
    notes += [note for key, note in partly if key in matched]  # the rest are warnings below
    notes = list(dict.fromkeys(notes))  # a model planned on several datasets repeats its notes
    warnings = _unmatched(config, matched, cells)
    kept = [c for c in cells if not any(fnmatchcase(c.cell_id, pattern) for pattern in config.skip)]
    if len(kept) < len(cells):
        notes.append(f"{len(cells) - len(kept)} cells left out by skip patterns {', '.join(config.skip)}")
    return Plan(kept, notes, not_planned, warnings)


def _unmatched(config: RunConfig, matched: set[tuple[str, str]], cells: list[Cell]) -> list[str]:
    """One warning per ``--layers`` or ``--mix`` glob that matches no layer of any model and per ``--skip`` glob
    that matches no planned cell: the run goes on (a grid's patterns may be defensive, naming a backend not
    installed here), but a typo is named, never silently run around. (A glob matching some models only is a note.)"""
    warnings = [f"--layers {pattern!r} matches no conv or Linear layer of {', '.join(config.models)} (paths as in "
                "model.named_modules(), e.g. 'features.*')" for pattern in config.layers
                if ("layers", pattern) not in matched]
    warnings += [f"mix {spec}: {pattern!r} matches no targeted layer of {', '.join(config.models)} (paths as in "
                 "model.named_modules())" for spec in config.mix for pattern, _ in Mix.parse(spec).patterns
                 if ("mix", pattern) not in matched]
    ids = [c.cell_id for c in cells]
    example = f" (cell ids look like {ids[0]!r})" if ids else ""
    warnings += [f"--skip {pattern!r} matches no planned cell{example}" for pattern in config.skip
                 if not any(fnmatchcase(cell_id, pattern) for cell_id in ids)]
    return warnings


def control_cell(model: str, dataset: str, seed: int) -> Cell:
    """The dense baseline of (model, dataset, seed), fine-tuned like the decomposed networks."""
    return Cell(CONTROL_BACKEND, model, dataset, CONTROL_BACKEND, CONTROL_TARGET, 1.0, seed, init=CONTROL_INIT)
