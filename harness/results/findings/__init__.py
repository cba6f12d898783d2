"""Findings: the run's answers, computed from its tables, each one or two sentences with numbers.

Every finding is a pure function of a run's tables (cells, epochs, layers): which backend
won where (accuracy, measured speed, stability), whether decomposing conv or linear
layers paid off, whether decomposing trained weights beat training the format from
scratch, whether the decomposed networks train more or less steadily than the dense
control, how close measured speedups come to the FLOP bound, and which backend
decomposes fastest and recovers most often; where the run measured latency tables, which
replaced layers run slower than the dense layer they replace and how well the tables
predicted the measured speedup. Where the run holds the studies, also: which
rank selection was most accurate at equal total parameters (a selector and those matched
to its total with ``SEL@REF``, or ratio-based selectors at the same ratio), and how
mixed networks (a method per layer: a mix or ``auto``, the category "mixed" beside the
conv / linear / all targets) compare with single-method ones, and where the run quantized its networks
(``--quantize int8``) whether decomposition still pays off in accuracy and latency once both the decomposed and the
dense network are INT8; a run without a study gets no finding about it. Numbers are means over seeds of ok cells,
stated with their spread and count; a finding whose data the run lacks says what is
missing instead of guessing. Nothing here is written by hand.

Numbers are compared at the precision they are shown with (accuracies 2 decimals,
stability metrics 3, see :data:`harness.results.aggregate.STABILITY_DIGITS`): when every backend
of a comparison shows the same value, the comparison is called a tie and nobody wins it.
Each finding's table is for reading, so its cells are text with one format per kind of
number (accuracies and pp 2 decimals, speedups 2 decimals with ×, seconds 3 significant
digits, shares as %) and the unit in the header; the raw values are in ``numbers``.

The package holds one module per finder (``backends``, ``targets``, ``rank_selection``, ``mixed``, ``regime``,
``stability``, ``speed``, ``quantized``, ``layer_speed``, ``latency_prediction``, ``measurement``,
``decomposition_time``, ``recovery``), the answer table's rows (``networks``) and what they share (``common``);
:func:`all_findings` runs every finder of :data:`FINDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.results.aggregate import MIXED, categories
from harness.results.findings.backends import best_backends
from harness.results.findings.common import SINGLE_SEED_TIE_PP, Finding, above_bound, at_chance, trusted_speedups
from harness.results.findings.decomposition_time import decomposition_time
from harness.results.findings.latency_prediction import latency_prediction
from harness.results.findings.layer_speed import slower_layers
from harness.results.findings.measurement import measurement_problems
from harness.results.findings.mixed import mixed_vs_single
from harness.results.findings.networks import WITHIN_DENSE_PP, best_networks, faster_than_dense_sentence, verdict_lines
from harness.results.findings.quantized import int8_payoff
from harness.results.findings.rank_selection import rank_selection_at_equal_params
from harness.results.findings.recovery import recovery
from harness.results.findings.regime import regime
from harness.results.findings.speed import speedup_vs_flops
from harness.results.findings.stability import control_stability
from harness.results.findings.targets import target_payoff
from harness.results.store import RunResults

__all__ = ["FINDERS", "MIXED", "SINGLE_SEED_TIE_PP", "WITHIN_DENSE_PP", "Finding", "above_bound", "all_findings",
           "at_chance", "best_backends", "best_networks", "categories", "control_stability", "decomposition_time",
           "faster_than_dense_sentence", "int8_payoff", "latency_prediction", "measurement_problems",
           "mixed_vs_single", "rank_selection_at_equal_params", "recovery", "regime", "slower_layers",
           "speedup_vs_flops", "target_payoff", "trusted_speedups", "verdict_lines"]


FINDERS: list[Callable[[RunResults], list[Finding]]] = [
    lambda r: best_backends(r.comparable, _libraries(r.meta), _libraries(r.meta, "modules")),
    lambda r: target_payoff(r.comparable),
    lambda r: mixed_vs_single(r.comparable),
    lambda r: rank_selection_at_equal_params(r.comparable),
    lambda r: regime(r.comparable),
    lambda r: control_stability(r.comparable, r.epochs),
    lambda r: speedup_vs_flops(r.comparable),
    lambda r: int8_payoff(r.comparable, r.data_free),
    lambda r: decomposition_time(r.comparable),
    lambda r: recovery(r.comparable),
    lambda r: slower_layers(r.comparable, r.layers),
    lambda r: latency_prediction(r.comparable),
    lambda r: measurement_problems(r.comparable),
]


def _libraries(meta: dict[str, Any], field: str = "library") -> dict[str, str]:
    """Backend -> library name (or another field of its entry, e.g. its ``modules``), from the run's metadata."""
    return {name: entry.get(field) for name, entry in (meta.get("libraries") or {}).items()
            if isinstance(entry, dict) and entry.get(field)}


# Findings about accuracy alone: a data-free run (no accuracy measured) leaves them out rather than say "no winner".
ACCURACY_ONLY = frozenset({"best_accuracy", "best_stability", "control_stability", "recovery"})


def all_findings(results: RunResults) -> list[Finding]:
    """Every finding of a run; one that fails to compute says so instead of taking the others down."""
    found: list[Finding] = []
    for index, finder in enumerate(FINDERS):
        try:
            found += finder(results)
        except Exception as exc:  # noqa: BLE001 - a report must survive one odd table
            found.append(Finding(f"failed_{index}", "A finding could not be computed",
                                 f"{type(exc).__name__}: {exc}"))
    if results.data_free:
        found = [finding for finding in found if finding.key not in ACCURACY_ONLY]
    return found
