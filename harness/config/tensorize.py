"""How a cell tensorizes its Linear layers: the swept setting, its label, and the per-layer options it implies.

Methods a backend declares in ``BackendInfo.tensorized_methods`` view a Linear layer's
features as tensors, so the shapes are a setting of the comparison, swept like ratios:
``--tt-d 2,3`` plans one cell per number of modes (labelled ``d2``, ``d3``), a
``tensor_shapes`` table of explicit per-layer shapes adds a cell labelled ``explicit``,
and ``--tt-pad`` (label suffix ``-pad``) zero-pads sizes that factor badly up to sizes
that factor evenly (:func:`harness.tensor.shapes.padded_factors`). The label is the cell's
``tensorize`` field and its id tag ``/t-LABEL``; the empty label is today's default
(balanced, ``d = 3``, no padding), so runs from before the setting keep their ids.
The runner executes a padded layer with :class:`harness.tensor.structures.PaddedLinear`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at import: a cell's tensorization label is read by the reports
    from torch import nn

from harness.config.settings import ConfigError
from harness.tensor.shapes import padded_factors

DEFAULT = ""  # balanced d = 3, no padding: the setting every run used before this one existed
DEFAULT_D = 3
EXPLICIT = "explicit"
PAD_SUFFIX = "-pad"


@dataclass(frozen=True)
class Tensorization:
    """A parsed ``tensorize`` label: the number of modes, whether explicit shapes apply, whether to pad."""

    d: int = DEFAULT_D
    explicit: bool = False
    pad: bool = False

    @classmethod
    def parse(cls, label: str) -> Tensorization:
        base, _, suffix = label.partition("-")
        pad = suffix == PAD_SUFFIX[1:]
        if base in ("", EXPLICIT):
            return cls(DEFAULT_D, base == EXPLICIT, pad)
        if base.startswith("d") and base[1:].isdigit() and int(base[1:]) >= 1:
            return cls(int(base[1:]), False, pad)
        raise ValueError(f"unknown tensorize label {label!r}")


def labels(tt_d: Sequence[int], tt_pad: bool, explicit: bool) -> list[str]:
    """The ``tensorize`` labels a tensorized cell is planned with: one per ``tt_d`` (or the default), plus
    ``explicit`` when some of its Linear layers have explicit shapes."""
    bases = [f"d{d}" for d in tt_d] if tt_d else ([f"d{DEFAULT_D}"] if tt_pad else [DEFAULT])
    if explicit:
        bases.append(EXPLICIT)
    return [base + PAD_SUFFIX if tt_pad else base for base in bases]


def cell_tag(label: str) -> str:
    """The cell-id tag of a label (``/t-d2``); empty for the default so old runs resume under their ids."""
    return f"/t-{label}" if label else ""


def governing_pattern(tensor_shapes: Mapping[str, Any], path: str) -> str | None:
    """The ``tensor_shapes`` key that sets the layer at ``path``: the path itself, else the first glob matching it."""
    if path in tensor_shapes:
        return path
    return next((pattern for pattern in tensor_shapes if fnmatchcase(path, pattern)), None)


def check_tensor_shapes(tensor_shapes: Mapping[str, Mapping[str, list[int]]], model_name: str,
                        layers: Sequence[tuple[str, nn.Module]]) -> list[str]:
    """Check explicit shapes against the built model's Linear ``layers``: a ``ConfigError`` when the modes do not
    multiply out to a matched layer's features, notes for patterns that match none."""
    from torch import nn

    notes = []
    linears = [(path, layer) for path, layer in layers if isinstance(layer, nn.Linear)]
    for pattern in tensor_shapes:
        matched = [(p, layer) for p, layer in linears if governing_pattern(tensor_shapes, p) == pattern]
        if not matched:
            notes.append(f"tensor_shapes {pattern!r} matches no decomposed Linear layer of {model_name} "
                         f"(those are: {', '.join(p for p, _ in linears) or 'none'})")
        for path, layer in matched:
            shapes = tensor_shapes[pattern]
            if math.prod(shapes["in"]) != layer.in_features or math.prod(shapes["out"]) != layer.out_features:
                raise ConfigError(
                    f"tensor_shapes {pattern!r}: in {shapes['in']} x out {shapes['out']} do not multiply out to "
                    f"{model_name} layer {path} ({layer.in_features} -> {layer.out_features} features)")
    return notes


def layer_options(label: str, tensor_shapes: Mapping[str, Mapping[str, list[int]]], path: str) -> dict[str, Any]:
    """The ``DecomposeRequest.options`` a Linear layer gets under ``label`` (before any padding)."""
    if not label:
        return {}
    setting = Tensorization.parse(label)
    pattern = governing_pattern(tensor_shapes, path) if setting.explicit else None
    if pattern is not None:
        return {"in_shape": list(tensor_shapes[pattern]["in"]), "out_shape": list(tensor_shapes[pattern]["out"])}
    return {"tt_d": setting.d}


def padding_for(layer: nn.Linear, d: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Balanced (possibly padded) in and out factors of ``layer`` for ``d`` modes, or None when no side needs padding."""
    in_factors = padded_factors(layer.in_features, d)
    out_factors = padded_factors(layer.out_features, d)
    if math.prod(in_factors) == layer.in_features and math.prod(out_factors) == layer.out_features:
        return None
    return in_factors, out_factors
