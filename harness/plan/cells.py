"""The planner's data: a cell, its per-layer plans, and the combinations left out, as plain serialisable values.

A :class:`Cell` is one unit of work (backend, model, dataset, method, target, ratio, seed, rank selection and
tensorization) carrying its resolved per-layer plan (:class:`LayerPlan` per targeted layer), so any executor can
ship it to a worker and the store can keep it to rebuild the network from. This module imports no torch: the
reports, the store and the executors read cells without building a model.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.config.mixing import AUTO
from harness.config.tensorize import DEFAULT as DEFAULT_TENSORIZE
from harness.config.tensorize import cell_tag
from harness.contract.selection import DEFAULT_SELECTION, spec_label

KIND_NAMES = {"linear": "Linear", "conv2d": "Conv2d"}
# The dense control's cell: backend and method "dense", target "none", init "control", ratio 1.
CONTROL_BACKEND = "dense"
# The ratio recorded for cells whose rank selector ignores --ratios (user ratios must exceed 1, so it cannot clash).
NO_RATIO = 1.0
CONTROL_INIT = "control"
CONTROL_TARGET = "none"


# A model or dataset name longer than this, or holding a '/', is shown short in cell ids and file names.
SHORT_NAME_LIMIT = 40


def short_name(spec: str) -> str:
    """A model or dataset as cell ids and cache file names show it: the name itself where it is short and has no
    '/' (``lenet5``, ``torchvision:resnet50``, ``random:3x224x224``), else a readable part and a hash of the whole
    spec (``./nets/mynet.py:build_net`` is ``mynet.build_net-3f2a1c``, ``folder:/data/pets`` is
    ``folder:pets-9b0e4d``), so an id stays short and has one '/' per field, as ``--skip`` globs expect. The full
    spec is the cell's ``model`` or ``dataset``."""
    if "/" not in spec and len(spec) <= SHORT_NAME_LIMIT:
        return spec
    digest = hashlib.sha256(spec.encode()).hexdigest()[:6]
    prefix, colon, rest = spec.partition(":")
    if colon and prefix.isidentifier():  # folder:PATH, random:..., a plugin's scheme
        return f"{prefix}:{_last_part(rest)}-{digest}"
    location, colon, attribute = spec.rpartition(":")
    if not colon:
        return f"{_last_part(spec)}-{digest}"
    module = _last_part(location).removesuffix(".py").rpartition(".")[2]  # a file's stem, a module's last part
    return f"{module}.{attribute}-{digest}"


def _last_part(path: str) -> str:
    parts = [part for part in path.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    return (parts[-1] if parts else "root")[-SHORT_NAME_LIMIT:]


@dataclass(frozen=True)
class Cell:
    """One unit of work; plain data, so any executor can ship it to a worker."""

    backend: str
    model: str
    dataset: str
    method: str
    target: str
    ratio: float
    seed: int
    init: str = "decompose"
    unsupported: str | None = None
    rank_selection: str = DEFAULT_SELECTION
    # The canonical spec of a mixed cell (its method is then the mix's label); None for one method throughout.
    mix: str | None = None
    # How the cell's tensorized Linear layers are shaped (a harness.config.tensorize label, e.g. "d2"); "" is the default.
    tensorize: str = DEFAULT_TENSORIZE
    # The resolved per-layer plan the runner executes, in module order (empty for the dense control).
    layers: tuple[LayerPlan, ...] = ()

    @property
    def is_control(self) -> bool:
        return self.init == CONTROL_INIT

    @property
    def cell_id(self) -> str:
        # The selection tag is left out for the default, so run directories from before selectors still resume.
        tag = "" if self.rank_selection == DEFAULT_SELECTION else f"/{spec_label(self.rank_selection)}"
        return (f"{self.backend}/{short_name(self.model)}/{short_name(self.dataset)}/{self.method}/{self.target}"
                f"/x{self.ratio:g}/s{self.seed}{tag}{cell_tag(self.tensorize)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        layers = tuple(LayerPlan.from_dict(layer) for layer in data.get("layers", ()))
        return cls(**{**data, "layers": layers})

    def planned(self) -> list[LayerPlan]:
        """The layers the runner asks the backend to decompose (not those planned dense)."""
        return [layer for layer in self.layers if layer.dense is None]


@dataclass(frozen=True)
class LayerPlan:
    """What a cell does to one targeted layer, resolved by the planner so the runner only executes it.

    ``method`` is the method the backend is asked for (``auto``: the runner tries ``candidates`` and keeps the
    lowest-error one); ``init`` how it starts; ``options`` the request's options (tensorized shapes);
    ``padding`` the (in, out) factors of a zero-padded copy to decompose instead; ``dense`` why the layer is
    left dense instead (a conv feature the backend declared it cannot handle), None when it is decomposed; the
    layer's budget comes from the cell's rank selection, from the trained weights, in the worker.
    """

    path: str
    kind: str
    method: str
    init: str = "decompose"
    candidates: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    padding: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    dense: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | LayerPlan) -> LayerPlan:
        if isinstance(data, LayerPlan):
            return data
        padding = data.get("padding")
        return cls(**{**data, "candidates": tuple(data.get("candidates", ())),
                      "padding": tuple(tuple(side) for side in padding) if padding else None})


@dataclass(frozen=True)
class NotPlanned:
    """A (backend, model, method, target) the planner left out: the backend does not declare ``lacks`` (the
    method itself, or one a mix maps) for ``kind`` layers, which the target holds."""

    backend: str
    model: str
    method: str
    target: str
    kind: str
    lacks: str

    @property
    def reason(self) -> str:
        if self.lacks == AUTO:
            return f"{self.backend} has no decompose-init method for {KIND_NAMES[self.kind]} layers for auto"
        return f"{self.backend} declares no {self.lacks} for {KIND_NAMES[self.kind]} layers"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def not_planned_summary(records: list[dict[str, str]] | list[NotPlanned]) -> str:
    """One line: how many (backend, model, method, target) combinations were not planned, and why.

    E.g. "12 combinations not planned, the backend does not declare the method for a targeted layer kind:
    native: cp, tucker2 (Linear); tltorch: svd (Linear)"; "" when there are none.
    """
    rows = [r if isinstance(r, NotPlanned) else NotPlanned(**r) for r in records]
    if not rows:
        return ""
    by_backend: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        methods = by_backend[row.backend][KIND_NAMES.get(row.kind, row.kind)]
        if row.lacks not in methods:
            methods.append(row.lacks)
    parts = ["{}: {}".format(backend, "; ".join(f"{', '.join(sorted(methods))} ({kind})"
                                                for kind, methods in sorted(kinds.items())))
             for backend, kinds in sorted(by_backend.items())]
    count = len(rows)
    return (f"{count} combination{'s' if count != 1 else ''} not planned, the backend does not declare the method "
            f"for a targeted layer kind: {' | '.join(parts)}")


@dataclass
class Plan:
    """The planner's answer: the cells to run, notes for the user, and the combinations left out and why;
    ``warnings`` name the patterns the user gave that matched nothing (a typo, or a defensive pattern)."""

    cells: list[Cell]
    notes: list[str] = field(default_factory=list)
    not_planned: list[NotPlanned] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


