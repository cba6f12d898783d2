"""The rank-selector contract: what a selector plugin declares, what it is given and how its answer is checked.

A rank selector chooses each targeted layer's parameter budget from the trained weights, before any backend runs,
so that every backend of a cell then fits its largest rank within the same per-layer budgets and rank choice is
never mixed up with library quality. A plugin declares one with a :class:`RankSelector` through
``harness_register_rank_selectors``; the runner calls its ``budgets`` once per cell with a :class:`SelectionInput`
and passes each answer on as ``DecomposeRequest.budget``. A user names a selector as ``NAME`` or ``NAME:ARG``
(:func:`parse_spec`); :func:`spec_label` turns that into the glob-friendly tag of the cell id.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

DEFAULT_SELECTION = "ratio"


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
class SelectionInput:
    """What ``RankSelector.budgets`` receives for one cell.

    ``argument`` is the text after ``NAME:`` (the selector's default when the user gave none, or None);
    ``ratio`` the cell's nominal compression ratio (None for selectors that do not use it); ``method`` the cell's
    method, for information only (budgets must not depend on the backend); ``layers`` the targeted layers in module
    order.
    """

    argument: str | None
    ratio: float | None
    method: str
    layers: list[SelectionLayer]


@dataclass(frozen=True)
class LayerBudget:
    """A selector's answer for one layer: its parameter budget and, for the record, the reference ranks behind it."""

    params: int
    ranks: Any = None


@dataclass(frozen=True)
class RankSelector:
    """A rank selector, given to the host by ``harness_register_rank_selectors``.

    ``budgets(SelectionInput)`` returns one budget per layer, in order: an ``int`` or a :class:`LayerBudget`.
    ``uses_ratio`` says whether the budgets depend on ``--ratios`` (if not, a run plans one cell per combination
    instead of one per ratio). ``takes_argument`` allows ``NAME:ARG``; ``default_argument`` stands in when the user
    gives none, and ``check_argument(arg)`` raises ``ValueError`` for an argument that is no good, so a typo is a
    usage error before anything runs.
    """

    name: str
    description: str
    uses_ratio: bool
    takes_argument: bool
    budgets: Callable[[SelectionInput], Sequence[int | LayerBudget]]
    default_argument: str | None = None
    check_argument: Callable[[str], None] | None = None


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"energy:0.9"`` as ``("energy", "0.9")``, ``"vbmf"`` as ``("vbmf", None)``."""
    name, sep, argument = spec.strip().partition(":")
    return name.strip(), (argument.strip() if sep else None)


def spec_label(spec: str) -> str:
    """The cell-id tag of a selection, e.g. ``r-energy0.9``; characters special to paths and globs become ``_``."""
    name, argument = parse_spec(spec)
    return "r-" + re.sub(r"[^A-Za-z0-9._+-]", "_", name + (argument or ""))


def normalize_spec(spec: str, selectors: dict[str, RankSelector]) -> str:
    """The canonical ``NAME`` or ``NAME:ARG`` of a user's selection; raises ``ValueError`` with a one-line reason."""
    name, argument = parse_spec(spec)
    if name not in selectors:
        raise ValueError(f"unknown rank selector {name!r} (known: {', '.join(sorted(selectors)) or 'none'})")
    selector = selectors[name]
    if argument == "":
        argument = None
    if argument is not None and not selector.takes_argument:
        raise ValueError(f"rank selector {name!r} takes no argument, got {spec!r}")
    if argument is None:
        argument = selector.default_argument
    if argument is not None and selector.check_argument is not None:
        try:
            selector.check_argument(argument)
        except ValueError as exc:
            raise ValueError(f"rank selection {spec!r}: {exc}") from None
    return name if argument is None else f"{name}:{argument}"


def layer_budgets(selector: RankSelector, selection: SelectionInput) -> list[LayerBudget]:
    """Call ``selector`` and check its answer: one positive integer budget per layer, or :class:`SelectionError`."""
    try:
        answer = list(selector.budgets(selection))
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
        budgets.append(LayerBudget(int(params), budget.ranks))
    return budgets
