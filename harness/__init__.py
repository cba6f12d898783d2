"""harness: compare tensor-decomposition backends for compressing neural networks.

The package is the host: hook specifications, the plugin manager, the CLI, the
planner, runner, executors, results store, models, data, training and metrics.
Backends and reports are plugins found through the ``harness`` entry-point group.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("harness")

# The plugin API, imported on first use: the modules behind it import torch, which `harness --help` never needs.
_LAZY = {name: "harness.contract.backend" for name in
         ("FULL_RANK", "BackendInfo", "DecomposeRequest", "Unsupported", "fill_ranks", "largest_fitting")}
_LAZY.update({name: "harness.contract.selection" for name in ("LayerBudget", "RankSelector", "SelectionInput", "SelectionLayer")})


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
