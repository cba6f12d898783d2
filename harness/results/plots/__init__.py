"""Plots of a run: matplotlib figures built from the cells, epochs and layers frames, no global state.

Each function takes the frames of a run and returns a :class:`matplotlib.figure.Figure`
(created directly, never through pyplot, so plotting is thread-safe and backend-free);
:func:`to_png` renders one. A backend keeps one colour in every plot
(:func:`backend_colours`), the dense control is always black: in the epoch curves it is
the black dashed "dense control (fine-tuned)" curve with its seed band in every panel,
the dotted line is the dense baseline. Points are means over seeds of ok cells with the
seed std as error bar or band. Compression axes are log 2 with ticks only at the run's
nominal ratios and powers of two (:func:`_ratio_axis`), so nearby achieved
compressions do not print their labels on top of each other. Missing data (one seed, no
control rows, no "all" target, no ok cells) never raises: a plot draws what exists and
says in a note what is not there.

Besides the plots every run gets, three belong to studies a run may or may not hold: the
rank-selection study (accuracy and speedup against compression per rank selection, so
selectors matched to the same total line up vertically), the tensorized-shapes sweep
(accuracy, parameters and speedup against the number of modes d) and accuracy against
each layer's rank (from the layers frame); a run that quantized its networks (``--quantize int8``) also gets accuracy
against ONNX Runtime latency with each network's FP32 and INT8 graphs joined. Conv-only, linear-only, both and mixed
networks (a mix or ``auto``: a method chosen per layer) are compared at equal
whole-model compression. A plot with nothing to draw for a run returns a small note
figure that :func:`nothing_to_show` recognises, so a report can fold it away instead of
showing empty panels. :data:`PLOTS` lists every plot with its caption.

One module per family of figures (``overview``, ``studies``, ``quantized``) and what they share (``common``);
:data:`PLOTS` names every figure a report draws.
"""

from __future__ import annotations

from collections.abc import Callable

from matplotlib.figure import Figure

from harness.results.plots.common import _rank_scalar  # noqa: F401 - the rank a layer row's info gives, for tests
from harness.results.plots.common import (
    EPOCH_MIN_SPAN,
    NOTHING_TO_SHOW,
    _empty,
    backend_colours,
    nothing_to_show,
    summary_single_seed,
    to_png,
)
from harness.results.plots.overview import (
    accuracy_vs_compression,
    accuracy_vs_latency,
    decomposition_time,
    epoch_curves,
    speedup_vs_compression,
    target_comparison,
)
from harness.results.plots.quantized import int8_accuracy_vs_latency
from harness.results.plots.studies import accuracy_vs_rank, rank_selection_study, tensorize_sweep
from harness.results.store import RunResults

__all__ = ["EPOCH_MIN_SPAN", "NOTHING_TO_SHOW", "PLOTS", "accuracy_vs_compression", "accuracy_vs_latency",
           "accuracy_vs_rank", "backend_colours", "decomposition_time", "epoch_curves", "int8_accuracy_vs_latency",
           "nothing_to_show", "rank_selection_study", "speedup_vs_compression", "summary_single_seed",
           "target_comparison", "tensorize_sweep", "to_png"]


def _with_accuracy(draw: Callable[[RunResults], Figure], title: str) -> Callable[[RunResults], Figure]:
    """``draw`` for a run that measured accuracy; for a data-free one, a note that there is none to plot."""
    def guarded(results: RunResults) -> Figure:
        if results.data_free:
            return _empty(title, "a data-free run (--no-train): no accuracy was measured")
        return draw(results)
    return guarded


PLOTS: dict[str, tuple[Callable[[RunResults], Figure], str]] = {
    "accuracy_vs_compression": (_with_accuracy(lambda r: accuracy_vs_compression(r.comparable),
                                               "Accuracy against compression"),
                                ("Final accuracy against the achieved compression of the decomposed layers, one "
                                "panel per method; lines are each backend's Pareto front.")),
    "accuracy_vs_latency": (lambda r: accuracy_vs_latency(r.comparable),
                            ("Final accuracy (whole-model compression in a data-free run) against the measured latency "
                             "of the whole network; the black vertical line is the dense network's latency: a point "
                             "left of it is faster than dense.")),
    "int8_accuracy_vs_latency": (lambda r: int8_accuracy_vs_latency(r.comparable, r.data_free),
                                 ("Accuracy against whole-network latency in ONNX Runtime (--quantize int8): each "
                                  "decomposed network's FP32 graph (filled) and INT8 graph (hollow) joined by a line, "
                                  "the dense baseline's as black stars; a hollow point left of the hollow star is "
                                  "faster than the INT8 dense network. A data-free run shows whole-model compression "
                                  "instead of accuracy.")),
    "speedup_vs_compression": (lambda r: speedup_vs_compression(r.comparable),
                               ("Measured whole-network latency speedup against compression, one panel per target; "
                               "the grey dashed line is the speedup the FLOP reduction alone would give.")),
    "epoch_curves": (_with_accuracy(lambda r: epoch_curves(r.comparable, r.epochs), "Accuracy per epoch"),
                     ("Test accuracy per fine-tuning epoch at the median ratio, decomposed backends against the "
                     "dense control (black dashed); bands are ± one std over seeds.")),
    "decomposition_time": (lambda r: decomposition_time(r.comparable),
                           "Seconds per cell spent decomposing, per backend and method (log scale)."),
    "target_comparison": (lambda r: target_comparison(r.comparable),
                          ("Conv-only, linear-only and both (and mixed networks, a method per layer, where the run "
                           "has them) at equal whole-model compression: best final accuracy and best measured speedup "
                           "reachable at or above each compression.")),
    "rank_selection_study": (lambda r: rank_selection_study(r.comparable),
                             ("Rank selections compared: final accuracy and measured speedup against the achieved "
                              "compression of the decomposed layers, one row per method and target, one colour per "
                              "selection; a selection matched to another's total (SEL@REF) sits at the same "
                              "compression, so the two compare vertically.")),
    "accuracy_vs_rank": (_with_accuracy(lambda r: accuracy_vs_rank(r.comparable, r.layers), "Accuracy against rank"),
                         ("Final accuracy against the rank each decomposed layer got (the largest entry when the rank "
                          "is a list, as for Tucker-2 or a TT chain), one panel per layer and target, one line per "
                          "layer method, each point pooling the backends, rank selections, ratios and seeds that gave "
                          "the layer that rank. The same rank costs different parameters in different formats, so "
                          "read along one colour; the per-layer table gives each layer's size.")),
    "tensorize_sweep": (lambda r: tensorize_sweep(r.comparable),
                        ("Tensorized Linear layers: final accuracy, parameters of the decomposed layers and measured "
                         "speedup against the number of modes d, one line per backend and method, linestyle per "
                         "ratio; only pairs that ran at two or more d.")),
}
