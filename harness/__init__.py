"""harness: compare tensor-decomposition backends for compressing neural networks.

The package is the host, in layers (``core``, ``measure``, ``contract``, ``tensor``, ``config``, ``plan``, ``run``,
``results``, ``cli``; an import only ever points down, which ``lint-imports`` checks). Backends and reports are
plugins found through the ``harness`` entry-point group. This module is the public API: everything a backend,
rank-selector, model, dataset or report plugin may use is importable from ``harness`` (``from harness import
DecomposeRequest, cp_conv_module``) and listed in :data:`__all__`, grouped as below; the rest is the host's own
and may change. ``harness.hookspecs`` documents the hooks and ``harness.testing`` is the conformance kit.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("harness")

# The plugin API, by the module that implements each name; imported on first use, since the modules behind it
# import torch, which `harness --help` never needs.
API = {
    # what a backend declares, is asked and may raise; the host's budget rules
    "harness.contract.backend": (
        "FULL_RANK", "CP_ALS", "cp_options", "BackendInfo", "DecomposeRequest", "Unsupported", "OverBudget", "fill_ranks",
        "largest_fitting", "param_budget", "weight64", "check_budget", "layer_kind", "conv_features", "methods_table"),
    # what a rank selector is given and returns
    "harness.contract.selection": (
        "LayerBudget", "RankSelector", "SelectionInput", "SelectionLayer", "LayerLatency", "LatencyOption"),
    # models and datasets
    "harness.run.models": ("ModelSpec",),
    "harness.run.data": ("Data", "DatasetSpec"),
    # measuring
    "harness.measure.metrics": ("count_params", "relative_error"),
    # tensor kernels and the stock factorised structures, written once for every backend
    "harness.tensor.algebra": ("cp_als", "cp_to_tensor", "unfold", "mode_dot", "leading_left_singular_vectors"),
    "harness.tensor.decompositions": (
        "TuckerResult", "tucker", "tt_sweep", "tt_svd", "tt_to_tensor", "ring_to_tensor"),
    "harness.tensor.shapes": ("tensorized_shapes",),
    "harness.tensor.structures": (
        "stock_method", "stock_methods", "ranks_arg", "tt_max_ranks", "TTMatrixLinear", "cp_budget_rank", "cp_conv_module",
        "tucker2_max_ranks", "tucker2_budget_ranks", "tucker2_conv_module", "tt_conv_max_ranks",
        "tt_conv_budget_ranks", "tt_conv_module", "svd_budget_rank", "svd_linear_module", "tt_linear_max_ranks",
        "tt_linear_budget_ranks", "tt_matrix_linear_module"),
    # what a report reads and the tables, findings and plots every report shows alike
    "harness.results.store": ("RunResults",),
    "harness.plan.cells": ("not_planned_summary",),
    "harness.results.findings": (
        "Finding", "all_findings", "best_networks", "faster_than_dense_sentence", "verdict_lines"),
    "harness.results.plots": ("PLOTS", "nothing_to_show", "to_png"),
    "harness.results.tables": (
        "BUDGET_FILL", "CELL_COLUMNS", "EPOCH_COLUMNS", "TABLES", "TERMINAL_ROWS", "budget_deviations",
        "constant_columns", "control_table", "dense_baselines", "failed_table", "layer_ranks_table",
        "ordered_columns", "same_in_every_row", "summary_table", "unsupported_summary", "unsupported_table"),
}
_LAZY = {name: module for module, names in API.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


try:
    __version__ = version("tensor-harness")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "hookimpl", *_LAZY]
