"""Hook specifications: every extension point of the harness, in one file.

Plugins implement these with ``@harness.hookimpl`` and are found through the
``harness`` entry-point group (built-ins included). Each spec says when it is called,
what it receives, what it returns and whether the first non-None result wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import argparse

    from torch import nn

    from harness.config.settings import RunConfig
    from harness.contract.backend import BackendInfo, DecomposeRequest
    from harness.contract.selection import RankSelector
    from harness.results.store import RunResults
    from harness.run.data import DatasetSpec
    from harness.run.models import ModelSpec

hookspec = pluggy.HookspecMarker("harness")


@hookspec(historic=True)
def harness_addoption(parser: argparse.ArgumentParser) -> None:
    """Add command-line options to ``harness run``.

    Called once when the CLI is built, before arguments are parsed; historic, so a
    plugin registered later still gets the call. Options added here are also accepted
    as keys of the ``--config`` TOML file. Returns nothing.
    """


@hookspec(historic=True)
def harness_configure(config: RunConfig) -> None:
    """Inspect the validated run configuration before any cell is planned.

    Called once per ``harness run`` (historic). ``config.plugin_options`` holds the
    values of options added by :func:`harness_addoption`. Returns nothing.
    """


@hookspec
def harness_register_backends(register: Callable[[BackendInfo], None]) -> None:
    """Declare the backends this plugin provides.

    Called once when the plugin manager starts. Call ``register(BackendInfo(...))`` once
    per backend: its name, wrapped library and version, methods per layer kind, the
    conv features it cannot handle and whether it starts from trained weights. Methods
    given as a dict ``{"svd": decompose}`` name the callable ``decompose(layer, request)
    -> nn.Module`` the host calls for them (then :func:`harness_decompose_layer` is not
    needed); given as a tuple of names, the plugin answers that hook. A backend whose
    library is missing still registers, with ``available=False`` and an install hint.
    Returns nothing.
    """


@hookspec(firstresult=True)
def harness_decompose_layer(layer: nn.Module, request: DecomposeRequest) -> nn.Module | None:
    """Return a drop-in replacement for ``layer`` (an ``nn.Linear`` or ``nn.Conv2d``).

    Called once per targeted layer of a cell, inside the worker that runs the cell, for
    backends that declared method names without callables (a declared callable is called
    instead, with the same arguments and contract). The host calls it only for a method
    the backend declares for the layer's kind, never for a conv feature it declared it
    cannot handle. Only the plugin that owns ``request.backend`` answers; every other
    plugin returns None (``firstresult``: the first non-None module wins). The replacement takes the
    same input and gives an output of the same shape; with ``request.ratio`` (or
    ``request.budget``) set its parameter count (bias included) must not exceed
    ``request.max_params`` (the host counts it after the call: over budget, the cell is
    ``over_budget`` and never ranked); with
    ``request.rank`` set it uses that rank (``"full"``: the largest the format allows,
    at which SVD, Tucker and TT formats reproduce the layer). It may carry
    a ``decomposition_info`` dict attribute (e.g. ``{"rank": ..., "n_iter": ...,
    "converged": ...}``) that the store keeps per layer. Raise
    :class:`harness.Unsupported` for a request the backend cannot meet; any other
    exception marks the cell ``error`` with its message.
    """


@hookspec
def harness_register_rank_selectors(register: Callable[[RankSelector], None]) -> None:
    """Declare rank selectors: call ``register(RankSelector(...))`` once per selector.

    Called once when the plugin manager starts. A selector chooses every targeted layer's
    parameter budget from the trained weights, the same for every backend and method:
    ``harness run --rank-selection NAME[:ARG]`` picks it, and in the worker, before the
    first layer is decomposed, the runner calls its ``budgets(SelectionInput)`` once per
    cell and passes each layer's answer as ``DecomposeRequest.budget``. ``budgets`` returns
    one positive int (or :class:`harness.contract.selection.LayerBudget`) per layer; an exception
    there marks the cell ``error``. Returns nothing.
    """


@hookspec
def harness_register_models(register: Callable[[ModelSpec], None]) -> None:
    """Declare models: call ``register(ModelSpec(name, build, description))`` for each.

    Called once when the plugin manager starts. ``build(input_shape, num_classes)``
    returns an untrained ``nn.Module``. Returns nothing.
    """


@hookspec
def harness_register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    """Declare datasets: call ``register(DatasetSpec(name, load, description))`` for each.

    Called once when the plugin manager starts. ``load(data_dir, download)`` returns
    :class:`harness.run.data.DataSplits` (train and test tensors in memory) or raises
    :class:`harness.run.data.DataUnavailable` with a one-line explanation. Returns nothing.
    """


@hookspec
def harness_report(results: RunResults, run_dir: str) -> list[str] | None:
    """Write report files for a finished (or rebuilt) run into ``run_dir``.

    Called after ``harness run`` ends and by ``harness report RUN_DIR``; every report
    plugin runs (not firstresult). ``results`` is read from the run's store alone.
    Returns the paths written, or None.
    """


@hookspec
def harness_terminal_summary(results: RunResults, write: Callable[[str], None]) -> None:
    """Print a summary of the run with ``write(line)``.

    Called after every :func:`harness_report` call has returned, when ``harness run``
    ends and by ``harness report``. Returns nothing.
    """


def _all_hook_names() -> list[str]:
    return [name for name in globals() if name.startswith("harness_")]


HOOK_NAMES: list[str] = _all_hook_names()
__all__: list[Any] = ["hookspec", "HOOK_NAMES"]
