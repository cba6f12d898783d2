"""harness: compare tensor-decomposition backends for compressing neural networks.

The package is the host: hook specifications, the plugin manager, the CLI, the
planner, runner, executors, results store, models, data, training and metrics.
Backends and reports are plugins found through the ``harness`` entry-point group.
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

from harness.backends import FULL_RANK, BackendInfo, DecomposeRequest, Unsupported, fill_ranks, largest_fitting
from harness.selection import LayerBudget, RankSelector, SelectionInput, SelectionLayer

hookimpl = pluggy.HookimplMarker("harness")

try:
    __version__ = version("tensor-harness")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "FULL_RANK",
    "BackendInfo",
    "DecomposeRequest",
    "LayerBudget",
    "RankSelector",
    "SelectionInput",
    "SelectionLayer",
    "Unsupported",
    "__version__",
    "hookimpl",
    "fill_ranks",
    "largest_fitting",
]
