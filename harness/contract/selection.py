"""The rank-selector contract: what a selector plugin declares, what it is given and how its answer is checked.

A rank selector chooses each targeted layer's parameter budget from the trained weights, before any backend runs,
so that every backend of a cell then fits its largest rank within the same per-layer budgets and rank choice is
never mixed up with library quality. A plugin declares one with a :class:`RankSelector` through
``harness_register_rank_selectors``; the runner calls its ``budgets`` once per cell with a :class:`SelectionInput`
and passes each answer on as ``DecomposeRequest.budget``. A user names a selector as ``NAME`` or ``NAME:ARG``
(:func:`parse_spec`); :func:`spec_label` turns that into the glob-friendly tag of the cell id. ``SEL@REF`` (e.g.
``ratio@vbmf``) *matches* two selectors: SEL spreads exactly the total that REF chose on the same layers
(:func:`matched_budgets`), so the two are compared at equal total parameters; SEL needs ``uses_ratio`` (it is then
run at the ratio dense total / REF's total) or an ``at_total``, and REF must choose its own total. A selector
that ``needs_latency`` (the built-in ``latency``) is also given each layer's latency table, measured on the target
before any cell runs (:class:`LayerLatency`), and may answer per layer a method, or "keep dense" with the reason.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # torch-free at import: the planner's cells and the reports read this module
    from torch import Tensor

DEFAULT_SELECTION = "ratio"
MATCH = "@"


class SelectionError(Exception):
    """A selector failed or answered nonsense; the cell becomes ``error`` with this one-line message."""


class SelectionLayer(NamedTuple):
    """One targeted layer as a selector sees it: its weight is detached, ``dense_params`` includes the bias."""

    path: str
    kind: str
    weight: Tensor
    dense_params: int
    has_bias: bool


@dataclass(frozen=True)
class LatencyOption:
    """One measured candidate replacement of a layer: the backend's structure for ``method`` at the parameter
    ``budget`` (``params`` counted on the built module, ``ranks`` as the backend reported them), and its latency
    ``ms`` at the cell's input shape, batch, threads, device and memory format, ``dense_ms`` the dense layer's
    in the same alternating rounds (so ``dense_ms / ms`` is the measured speedup)."""

    method: str
    budget: int
    params: int
    ms: float
    dense_ms: float
    ranks: Any = None


@dataclass(frozen=True)
class LayerLatency:
    """A targeted layer's latency table: the dense layer's latency and every measured candidate."""

    dense_ms: float
    options: tuple[LatencyOption, ...]


@dataclass(frozen=True)
class SelectionInput:
    """What ``RankSelector.budgets`` receives for one cell.

    ``argument`` is the text after ``NAME:`` (the selector's default when the user gave none, or None);
    ``ratio`` the cell's nominal compression ratio (None for selectors that do not use it); ``method`` the cell's
    method, for information only (budgets must not depend on the backend); ``layers`` the targeted layers in module
    order. ``loss_with(i, weight)``, when the runner has data at hand, is the dense network's mean cross-entropy on a
    fixed batch of *training* images with layer ``i``'s weight replaced by ``weight`` (the other layers dense): what a
    data-driven selector measures sensitivity with (never test data, which only the reports may see). For a selector
    that ``needs_latency``, ``latency`` holds one :class:`LayerLatency` per layer and ``network_ms`` the whole dense
    network's latency at the same batch, both measured quietly on the target before the cells ran.
    ``latency_correction`` is how much slower a whole planned network measured than its tables predicted (measured
    over predicted latency, from the profiling phase's check of this cell's plan; 1.0 when unchecked): a selector
    aiming at a measured latency L plans for L / latency_correction on the tables.
    """

    argument: str | None
    ratio: float | None
    method: str
    layers: list[SelectionLayer]
    loss_with: Callable[[int, Tensor], float] | None = None
    latency: Sequence[LayerLatency] | None = None
    network_ms: float | None = None
    latency_correction: float = 1.0


@dataclass(frozen=True)
class LayerBudget:
    """A selector's answer for one layer: its parameter budget and, for the record, the reference ranks behind it.

    ``dense``, when set, keeps the layer dense with that reason (``params`` is then its dense count); ``method``
    asks the backend for that method instead of the cell's (one the cell's plan allows); ``predicted_ms`` is the
    latency the selector expects of the layer and ``why`` a short reason for its choice, both recorded on the layer.
    """

    params: int
    ranks: Any = None
    dense: str | None = None
    method: str | None = None
    predicted_ms: float | None = None
    why: str | None = None


@dataclass(frozen=True)
class RankSelector:
    """A rank selector, given to the host by ``harness_register_rank_selectors``.

    ``budgets(SelectionInput)`` returns one budget per layer, in order: an ``int`` or a :class:`LayerBudget`.
    ``uses_ratio`` says whether the budgets depend on ``--ratios`` (if not, a run plans one cell per combination
    instead of one per ratio). ``takes_argument`` allows ``NAME:ARG``; ``default_argument`` stands in when the user
    gives none, and ``check_argument(arg)`` raises ``ValueError`` for an argument that is no good, so a typo is a
    usage error before anything runs. ``at_total(SelectionInput, total)``, optional, returns budgets summing to at
    most ``total`` parameters: what ``NAME@REF`` uses for a selector that does not use the ratio. ``needs_latency``
    asks the host to measure every targeted layer's latency table before the cells run and pass it in.
    """

    name: str
    description: str
    uses_ratio: bool
    takes_argument: bool
    budgets: Callable[[SelectionInput], Sequence[int | LayerBudget]]
    default_argument: str | None = None
    check_argument: Callable[[str], None] | None = None
    at_total: Callable[[SelectionInput, int], Sequence[int | LayerBudget]] | None = None
    needs_latency: bool = False

    @property
    def matchable(self) -> bool:
        """Whether the selector can be held to another selector's total (``NAME@REF``)."""
        return self.uses_ratio or self.at_total is not None


def split_match(spec: str) -> tuple[str, str | None]:
    """``"ratio@vbmf"`` as ``("ratio", "vbmf")``, ``"vbmf"`` as ``("vbmf", None)``."""
    own, sep, reference = spec.strip().partition(MATCH)
    return own.strip(), (reference.strip() if sep else None)


def uses_ratio(spec: str, selectors: dict[str, RankSelector]) -> bool:
    """Whether a canonical selection's budgets depend on the cell's ratio (a matched one takes REF's total)."""
    own, reference = split_match(spec)
    return reference is None and selectors[parse_spec(own)[0]].uses_ratio


def needs_latency(spec: str, selectors: dict[str, RankSelector]) -> bool:
    """Whether a selection (``NAME[:ARG]`` or ``SEL@REF``) asks for latency tables, its own or its reference's."""
    return any(getattr(selectors.get(parse_spec(part)[0]), "needs_latency", False)
               for part in split_match(spec) if part is not None)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"energy:0.9"`` as ``("energy", "0.9")``, ``"vbmf"`` as ``("vbmf", None)``."""
    name, sep, argument = spec.strip().partition(":")
    return name.strip(), (argument.strip() if sep else None)


def spec_label(spec: str) -> str:
    """The cell-id tag of a selection, e.g. ``r-energy0.9``; characters special to paths and globs become ``_``."""
    own, reference = split_match(spec)
    if reference is not None:
        return spec_label(own) + MATCH + spec_label(reference)[2:]
    name, argument = parse_spec(spec)
    return "r-" + re.sub(r"[^A-Za-z0-9._+-]", "_", name + (argument or ""))


def normalize_spec(spec: str, selectors: dict[str, RankSelector]) -> str:
    """The canonical ``NAME``, ``NAME:ARG`` or ``SEL@REF`` of a user's selection; ``ValueError`` (one line) if bad."""
    own, reference = split_match(spec)
    if reference is not None:
        return _normalize_match(spec, own, reference, selectors)
    return _normalize_one(spec, selectors)


def _normalize_match(spec: str, own: str, reference: str, selectors: dict[str, RankSelector]) -> str:
    if MATCH in reference:
        raise ValueError(f"rank selection {spec!r}: match to one selector, e.g. ratio@vbmf")
    reference = _normalize_one(reference, selectors)
    if selectors[parse_spec(reference)[0]].uses_ratio:
        raise ValueError(f"rank selection {spec!r}: {reference!r} takes its total from --ratios; match to a selector "
                         "that chooses its own total (e.g. vbmf)")
    name, argument = parse_spec(own)
    if name in selectors and not selectors[name].matchable:
        raise ValueError(f"rank selection {spec!r}: {name!r} cannot be held to another selector's total")
    if argument is not None:
        raise ValueError(f"rank selection {spec!r}: the match sets {name!r}'s total, so it takes no argument here")
    # The default argument is not filled in either: a matched selector's knob is what the match sets.
    own = _normalize_one(own, selectors, fill_default=False)
    if own == parse_spec(reference)[0] or own == reference:
        raise ValueError(f"rank selection {spec!r} matches a selector to itself")
    return f"{own}{MATCH}{reference}"


def _normalize_one(spec: str, selectors: dict[str, RankSelector], fill_default: bool = True) -> str:
    name, argument = parse_spec(spec)
    if name not in selectors:
        raise ValueError(f"unknown rank selector {name!r} (known: {', '.join(sorted(selectors)) or 'none'})")
    selector = selectors[name]
    if argument == "":
        argument = None
    if argument is not None and not selector.takes_argument:
        raise ValueError(f"rank selector {name!r} takes no argument, got {spec!r}")
    if argument is None and fill_default:
        argument = selector.default_argument
    if argument is not None and selector.check_argument is not None:
        try:
            selector.check_argument(argument)
        except ValueError as exc:
            raise ValueError(f"rank selection {spec!r}: {exc}") from None
    return name if argument is None else f"{name}:{argument}"


def matched_budgets(selector: RankSelector, reference: RankSelector, selection: SelectionInput,
                    reference_argument: str | None) -> tuple[list[LayerBudget], int]:
    """``selector``'s budgets held to the total ``reference`` chooses on the same layers, and that total.

    A selector with ``at_total`` is asked for budgets within the total; one that uses the ratio is run at the ratio
    dense total / reference total, so its own rule (uniform, knapsack, ...) spreads the same parameters.
    """
    total = sum(b.params for b in layer_budgets(reference, replace(selection, argument=reference_argument,
                                                                   ratio=None)))
    if selector.at_total is not None:
        budgets = layer_budgets(selector, selection, total)
    else:
        dense = sum(layer.dense_params for layer in selection.layers)
        budgets = layer_budgets(selector, replace(selection, ratio=dense / total))
    spent = sum(b.params for b in budgets)
    if spent > total:
        raise SelectionError(f"rank selector {selector.name!r} spent {spent} parameters, over the {total} "
                             f"of {reference.name!r} it was matched to")
    return budgets, total


def layer_budgets(selector: RankSelector, selection: SelectionInput, total: int | None = None) -> list[LayerBudget]:
    """Call ``selector`` (its ``at_total`` with ``total`` when given) and check its answer: one positive integer
    budget per layer, or :class:`SelectionError`."""
    try:
        if total is None:
            answer = list(selector.budgets(selection))
        else:
            answer = list(selector.at_total(selection, total))
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise SelectionError(f"rank selector {selector.name!r} failed: {type(exc).__name__}: "
                             f"{lines[0] if lines else ''}".rstrip(": ")) from exc
    if len(answer) != len(selection.layers):
        raise SelectionError(f"rank selector {selector.name!r} gave {len(answer)} budgets "
                             f"for {len(selection.layers)} layers")
    budgets = []
    for layer, item in zip(selection.layers, answer):
        budget = item if isinstance(item, LayerBudget) else LayerBudget(item)
        try:
            # operator.index takes numpy integers but refuses floats, which would leak into every backend's
            # integer rank search; bool is refused by hand since it is an int subclass.
            params = operator.index(budget.params)
        except TypeError:
            params = None
        if params is None or isinstance(budget.params, bool) or params < 1:
            raise SelectionError(f"rank selector {selector.name!r} gave layer {layer.path} the budget "
                                 f"{budget.params!r}; budgets are positive integers")
        budgets.append(replace(budget, params=int(params)))
    return budgets
