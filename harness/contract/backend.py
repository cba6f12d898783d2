"""What a backend declares and what it is asked: the contract between host and backend plugins.

A backend plugin describes itself with a :class:`BackendInfo` (which library it wraps,
which methods it offers per layer kind, which conv features it cannot handle) and is
asked to decompose one layer at a time with a :class:`DecomposeRequest`. A backend may
declare one callable per (layer kind, method) in ``BackendInfo.methods`` and let the host
dispatch to it, or answer the ``harness_decompose_layer`` hook itself. Declared gaps
become ``unsupported`` cells before any backend code runs; a backend that finds a gap
only at decomposition time raises :class:`Unsupported`. The budget helpers
(:meth:`DecomposeRequest.pick_rank`, :func:`largest_fitting`) are shared by every
backend so that "the largest rank whose replacement fits dense/ratio parameters" means
the same thing everywhere, and :func:`check_budget` is how the host holds every
replacement to that promise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.measure.metrics import count_params  # noqa: F401 - part of the plugin API through this module

LAYER_KINDS = ("linear", "conv2d")

# Conv features a backend may declare it cannot handle; see conv_features().
CONV_FEATURES = ("groups", "dilation", "non_square_stride", "padding_mode", "padding_same")


FULL_RANK = "full"


class Unsupported(Exception):
    """Raised by a backend when it cannot decompose a layer as requested; the cell becomes `unsupported`."""


class OverBudget(Exception):
    """Raised by the host when a replacement has more parameters than its request allowed; the cell becomes
    ``over_budget`` and never enters a ranking."""


# The CP-ALS budget of every backend that fits CP by ALS (native, tensorly's parafac, tltorch's, TedNet's fills),
# unless a request's options say otherwise: CP then compares libraries, not numbers of sweeps.
CP_ALS = {"n_iter_max": 300, "tol": 1e-8}


def cp_options(request: "DecomposeRequest") -> dict[str, Any]:
    """CP-ALS's ``n_iter_max`` and ``tol`` for a request: its options over :data:`CP_ALS`, and one sweep when the
    host only rebuilds the structure (``request.rebuild``: the saved factors are loaded over the fit)."""
    options = request.options
    return {"n_iter_max": 1 if request.rebuild else int(options.get("n_iter_max", CP_ALS["n_iter_max"])),
            "tol": float(options.get("tol", CP_ALS["tol"]))}


# A backend's callable for one (layer kind, method): the layer and the request in, the replacement out.
Decompose = Callable[["nn.Module", "DecomposeRequest"], nn.Module]


@dataclass(frozen=True)
class BackendInfo:
    """A backend's self-description, given to the host by ``harness_register_backends``.

    ``methods`` maps a layer kind (``"linear"`` or ``"conv2d"``) to the method names the
    backend offers for it, either as a tuple (the plugin then answers
    ``harness_decompose_layer``) or as a dict from method name to a ``decompose(layer,
    request)`` callable that the host calls directly (no hook needed; the callables end up
    in ``implementations``). ``conv_unsupported`` names entries of :data:`CONV_FEATURES` the
    backend cannot handle. ``init`` is ``"decompose"`` when the backend starts from the
    trained weights and ``"scratch"`` when it builds the factorised layer from random
    init; ``init_per_method`` overrides it per method, keyed ``"method"`` or
    ``"kind/method"`` (e.g. ``"conv2d/tt": "scratch"``). ``available`` is False when the
    wrapped library cannot be imported; ``install_hint`` then says how to get it.
    ``tensorized_methods`` names the methods whose *Linear* replacement views the in and
    out features as tensors (TT-matrix, tensor ring, ...), so their shapes are a setting
    the host sweeps (``--tt-d``, ``tensor_shapes``, ``--tt-pad``); other methods are planned
    once, and conv layers are never affected. ``modules`` names what the replacements are
    built from when that is shared with other backends (native and tensorly both build
    ``harness.tensor.structures``): backends naming the same modules build identical networks for
    one factorisation, so a report calls their speed differences noise, not a result.
    """

    name: str
    library: str
    library_version: str | None
    methods: dict[str, tuple[str, ...]]
    conv_unsupported: frozenset[str] = frozenset()
    init: str = "decompose"
    init_per_method: dict[str, str] = field(default_factory=dict)
    available: bool = True
    install_hint: str = ""
    description: str = ""
    tensorized_methods: frozenset[str] = frozenset()
    modules: str = ""
    implementations: dict[tuple[str, str], Decompose] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # methods={"linear": {"svd": decompose_svd}} declares the names and the callables at once.
        names: dict[str, tuple[str, ...]] = {}
        implementations = dict(self.implementations)
        for kind, offered in self.methods.items():
            if isinstance(offered, Mapping):
                implementations.update({(kind, method): function for method, function in offered.items()})
            names[kind] = tuple(offered)
        object.__setattr__(self, "methods", names)
        object.__setattr__(self, "implementations", implementations)

    def implementation(self, kind: str, method: str) -> Decompose | None:
        """The callable declared for ``method`` on ``kind`` layers, or None when the plugin answers the hook."""
        return self.implementations.get((kind, method))

    def methods_for(self, kind: str) -> tuple[str, ...]:
        return tuple(self.methods.get(kind, ()))

    def all_methods(self) -> list[str]:
        seen: list[str] = []
        for names in self.methods.values():
            seen.extend(n for n in names if n not in seen)
        return seen

    def is_tensorized(self, method: str) -> bool:
        """True when ``method``'s Linear replacement takes tensorized shapes (``in_shape``/``out_shape``/``tt_d``)."""
        return method in self.tensorized_methods and method in self.methods_for("linear")

    def init_for(self, method: str, kind: str | None = None) -> str:
        """How the backend starts ``method`` on layers of ``kind``: ``"decompose"`` or ``"scratch"``."""
        if kind is not None and f"{kind}/{method}" in self.init_per_method:
            return self.init_per_method[f"{kind}/{method}"]
        return self.init_per_method.get(method, self.init)


@dataclass(frozen=True)
class DecomposeRequest:
    """One layer to decompose: passed to ``harness_decompose_layer``.

    Exactly one of ``ratio`` and ``rank`` drives the size: with ``ratio`` the backend
    picks the largest rank whose replacement has at most ``max_params`` parameters
    (bias included); ``rank`` is an explicit rank in the backend's own notion.
    ``budget``, when set, is the layer's parameter budget chosen by the cell's rank
    selector (see :mod:`harness.contract.selection`); ``max_params`` is then ``budget`` and
    ``ratio`` stays filled for information only. ``options`` carries method-specific
    settings (e.g. tensorized shapes). ``rebuild`` is set when the host only needs the
    replacement's structure, to load a saved state dict into (a kept network being
    rebuilt for export or timing): a backend may then skip fitting work, such as CP-ALS
    sweeps, as long as every parameter and buffer gets the name and shape a real
    decomposition of this request would give it.
    """

    backend: str
    method: str
    layer_path: str
    kind: str
    ratio: float | None = None
    rank: Any = None
    seed: int = 0
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    dense_params: int = 0
    budget: int | None = None
    rebuild: bool = False

    def pick_rank(self, param_count: Callable[[int], int], full: int | None) -> int:
        """The rank of a one-rank format this request asks for, given the replacement's ``param_count(rank)``.

        An explicit ``rank`` (capped at ``full``); ``"full"``, i.e. ``full`` (:class:`Unsupported` when
        ``full`` is None: the format has no finite full rank, like CP); otherwise the largest rank whose
        replacement fits :attr:`max_params` (:class:`Unsupported` when not even rank 1 fits).
        """
        if self.rank == FULL_RANK:
            if full is None:
                raise Unsupported(f"{self.method} has no finite full rank")
            return full
        if self.rank is not None:
            return int(self.rank) if full is None else min(int(self.rank), full)
        budget = param_budget(self)
        return largest_fitting(param_count, budget, upper=full if full is not None else max(1, budget))

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with the cell's seed, for randomized methods: the same seed gives the same
        factors on any device, whatever else has drawn from the global RNG."""
        return torch_generator(self.seed)

    @property
    def max_params(self) -> int | None:
        """Parameter budget of the replacement: ``budget`` when a rank selector set it, else
        floor(dense_params / ratio), or None for an explicit rank."""
        if self.budget is not None:
            return self.budget
        if self.ratio is None:
            return None
        return math.floor(self.dense_params / self.ratio)


def layer_kind(layer: nn.Module) -> str | None:
    if isinstance(layer, nn.Linear):
        return "linear"
    if isinstance(layer, nn.Conv2d):
        return "conv2d"
    return None


def conv_features(layer: nn.Conv2d) -> set[str]:
    """The entries of :data:`CONV_FEATURES` that this conv layer uses."""
    used: set[str] = set()
    if layer.groups != 1:
        used.add("groups")
    if tuple(layer.dilation) != (1, 1):
        used.add("dilation")
    if layer.stride[0] != layer.stride[1]:
        used.add("non_square_stride")
    if layer.padding_mode != "zeros":
        used.add("padding_mode")
    if isinstance(layer.padding, str):
        used.add("padding_same")
    return used


def largest_fitting(param_count: Callable[[int], int], budget: int, upper: int, lower: int = 1) -> int:
    """Largest integer ``r`` in ``[lower, upper]`` with ``param_count(r) <= budget``.

    ``param_count`` must be non-decreasing in ``r``. Raises :class:`Unsupported` when even
    ``lower`` does not fit, so a budget that no rank meets is reported, never exceeded.
    """
    if param_count(lower) > budget:
        raise Unsupported(
            f"the smallest rank ({lower}) needs {param_count(lower)} parameters, over the budget of {budget}"
        )
    lo, hi = lower, max(lower, upper)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if param_count(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fill_ranks(caps: list[int], param_count: Callable[[list[int]], int], budget: int) -> list[int]:
    """Per-bond ranks (each ``<= cap``) that fill ``budget`` as closely as possible without exceeding it.

    First the largest uniform rank (capped per bond) that fits, then the leftover budget
    is spent one rank at a time on the lowest bond that still fits, so formats with many
    bonds (TT, TR) are not stuck one coarse uniform step below the budget.
    ``param_count`` must be non-decreasing in every rank.
    """
    caps = [max(1, int(c)) for c in caps]
    rank = largest_fitting(lambda r: param_count([min(r, c) for c in caps]), budget, max(caps, default=1))
    ranks = [min(rank, c) for c in caps]
    while True:
        candidates = []
        for i in sorted(range(len(ranks)), key=lambda i: ranks[i]):
            if ranks[i] < caps[i]:
                bumped = ranks[:i] + [ranks[i] + 1] + ranks[i + 1:]
                if param_count(bumped) <= budget:
                    candidates.append(bumped)
                    break
        if not candidates:
            return ranks
        ranks = candidates[0]


def methods_table(pairs: Iterable[tuple[str, str]], run: Callable[..., Any]) -> dict[str, dict[str, Callable]]:
    """``BackendInfo.methods`` for a backend whose one callable ``run(layer, request)`` serves every
    ``(layer kind, method)`` of ``pairs`` (it reads ``request.method``)."""
    methods: dict[str, dict[str, Callable]] = {}
    for kind, method in pairs:
        methods.setdefault(kind, {})[method] = run
    return methods


def check_budget(replacement: nn.Module, request: DecomposeRequest) -> int:
    """The replacement's parameter count; :class:`OverBudget` when it exceeds the request's budget."""
    params = count_params(replacement)
    budget = request.max_params
    if budget is not None and params > budget:
        raise OverBudget(f"{request.backend}/{request.method} replaced {request.layer_path} with {params} parameters, "
                         f"over its budget of {budget} (dense {request.dense_params})")
    return params


def param_budget(request: DecomposeRequest) -> int:
    """The replacement's parameter budget; a request with neither rank nor ratio cannot be sized."""
    budget = request.max_params
    if budget is None:
        raise ValueError(f"{request.layer_path}: the request gives neither a rank nor a ratio")
    return budget


def weight64(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a detached float64 tensor on the device where it will be decomposed."""
    weight = layer.weight.detach()
    # MPS has no float64; a one-off decomposition is better accurate on the CPU than fast there.
    if weight.device.type == "mps":
        weight = weight.cpu()
    return weight.to(torch.float64)


def describe_info(info: BackendInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "library": info.library,
        "library_version": info.library_version,
        "methods": {k: list(v) for k, v in info.methods.items()},
        "conv_unsupported": sorted(info.conv_unsupported),
        "init": info.init,
        "tensorized_methods": sorted(info.tensorized_methods),
        "available": info.available,
    }


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
