"""Measurements of a network and its layers: parameters, FLOPs, latency, reconstruction error.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` for one input sample,
where one multiply-add counts as two FLOPs and only matrix multiplications and
convolutions are counted (activations, pooling and normalisation are not). Latency uses
``torch.utils.benchmark`` (which synchronises CUDA) under ``inference_mode`` after a
warm-up, and reports the median; :func:`latency_pairs` alternates two networks over
many short blocks and :func:`latency_summary` reports each one's median and interquartile
range and the speedup as the median of the paired ratios. The reconstruction error of a replacement is measured
by probing it, so it needs nothing from the backend beyond the module itself.
"""

from __future__ import annotations

import logging
import math
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on CPU-only machines.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
import torch.utils.benchmark as benchmark  # noqa: E402
from torch import nn
from torch.utils.benchmark.utils.timer import timer as synchronised_clock  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode

FLOP_CONVENTION = (
    "FLOPs per input sample counted by torch.utils.flop_counter.FlopCounterMode: "
    "a multiply-add is 2 FLOPs; only matmul and convolution are counted"
)


def _is_normalisation(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


def count_params(module: nn.Module) -> int:
    """The numbers ``module`` holds: its parameters and its buffers, except the running statistics of
    normalisation layers (BatchNorm's mean and variance, which every network carries alike).

    A buffer counts, persistent or not: a replacement that keeps the dense kernel in ``register_buffer`` holds it
    as surely as one that trains it, and is held to its budget for it."""
    held = sum(p.numel() for p in module.parameters())
    for owner in module.modules():
        if not _is_normalisation(owner):
            held += sum(b.numel() for b in owner.buffers(recurse=False) if b is not None)
    return held


def count_flops(model: nn.Module, sample: torch.Tensor) -> int:
    """FLOPs of one forward pass on a single sample (see :data:`FLOP_CONVENTION`)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(sample[:1])
    return int(counter.get_total_flops())


def time_call(forward: Callable[[], object], min_run_time: float = 0.25, warmup: int = 3) -> float:
    """Median wall time of ``forward()`` after ``warmup`` calls, in milliseconds (``torch.utils.benchmark``)."""
    for _ in range(warmup):
        forward()
    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return measurement.median * 1e3


def measure_latency(model: nn.Module, batch: torch.Tensor, min_run_time: float = 0.25, warmup: int = 3) -> float:
    """Median wall time of one forward pass over ``batch``, in milliseconds."""
    model.eval()

    def forward() -> None:
        with torch.inference_mode():
            model(batch)

    return time_call(forward, min_run_time=min_run_time, warmup=warmup)


# One timed block lasts about this long: long enough that a ms-scale network runs tens of calls in it, short
# enough that many alternating blocks fit in the time one blocked_autorange per round used to take.
BLOCK_SECONDS = 0.02
# Bounds for networks whose one forward takes seconds (TedNet's CP convs on ResNet-50 at 224x224: 6.7 s): warm-up
# stops after this long (one call at least), and a pair's rounds stop once this long has gone by (one at least).
WARMUP_SECONDS = 1.0
ROUNDS_SECONDS = 4.0


def _warm_up(call: Callable[[], object], calls: int, seconds: float) -> None:
    start = time.perf_counter()
    for _ in range(calls):
        call()
        if time.perf_counter() - start > seconds:
            return


def paired_rounds(dense: Callable[[], object], other: Callable[[], object], rounds: int = 3,
                  block_seconds: float = BLOCK_SECONDS, warmup: int = 3, warmup_seconds: float = WARMUP_SECONDS,
                  rounds_seconds: float = ROUNDS_SECONDS) -> list[tuple[float, float]]:
    """Up to ``rounds`` alternating (dense ms, other ms) timings of two calls, each the mean call time over a block.

    Each call is warmed up, then both are calibrated back to back (how many calls fill ``block_seconds``), then the
    rounds alternate one block of each, so a drift in machine load (a frequency change) lands on both sides of a
    ratio alike. Calibrating once instead of per round (``blocked_autorange``) makes a round cost two blocks, so a
    phase can afford several times the rounds for the same time, and the median over rounds rejects the blocks an
    interruption spoiled. Where a single call fills a block on both sides the calibration is the first round, and
    rounds stop after ``rounds_seconds`` (one at least), so a network that takes seconds per forward costs a few
    calls per pass, not dozens. The clock is ``torch.utils.benchmark``'s, which synchronises CUDA.
    """
    timers = []
    for call in (dense, other):
        _warm_up(call, warmup, warmup_seconds)
        # The standard library's timeit (garbage collection off while timing) with torch.utils.benchmark's clock,
        # which synchronises the accelerator; benchmark.Timer.timeit would add two warm-up calls to every block.
        timers.append(timeit.Timer(stmt=call, timer=synchronised_clock))
    start = time.perf_counter()
    once = [timer.timeit(1) for timer in timers]
    numbers = [max(1, int(block_seconds / seconds)) if seconds > 0 else 1 for seconds in once]
    pairs = [(once[0] * 1e3, once[1] * 1e3)] if numbers == [1, 1] else []
    while len(pairs) < rounds and not (pairs and time.perf_counter() - start > rounds_seconds):
        pairs.append(tuple(timer.timeit(number) / number * 1e3 for timer, number in zip(timers, numbers)))
    return pairs


def latency_pairs(dense: nn.Module, other: nn.Module, batch: torch.Tensor, rounds: int = 3,
                  block_seconds: float = BLOCK_SECONDS, rounds_seconds: float = ROUNDS_SECONDS
                  ) -> list[tuple[float, float]]:
    """``rounds`` alternating (dense ms, other ms) forward passes of two networks on ``batch`` (eval mode,
    ``inference_mode``): see :func:`paired_rounds`."""

    def forward(model: nn.Module) -> Callable[[], None]:
        model.eval()

        def run() -> None:
            with torch.inference_mode():
                model(batch)
        return run

    return paired_rounds(forward(dense), forward(other), rounds=rounds, block_seconds=block_seconds,
                         rounds_seconds=rounds_seconds)


def latency_summary(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Medians and interquartile ranges of paired latency rounds, and the speedup as the median of the rounds'
    dense/other ratios (each ratio pairs measurements taken moments apart, so machine drift cancels in it)."""

    def quartiles(values: list[float]) -> tuple[float, float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        low, mid, high = torch.quantile(tensor, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        return mid, high - low

    dense_ms, dense_iqr = quartiles([d for d, _ in pairs])
    other_ms, other_iqr = quartiles([o for _, o in pairs])
    speedup, speedup_iqr = quartiles([d / o for d, o in pairs])
    return {"latency_dense_ms": dense_ms, "latency_ms": other_ms, "latency_dense_iqr_ms": dense_iqr,
            "latency_iqr_ms": other_iqr, "speedup": speedup, "speedup_iqr": speedup_iqr,
            "latency_rounds": len(pairs)}


# Inputs per probing call, in elements (4 MB in float32). Probing every impulse at once multiplies the replacement's
# memory per input by cin*kh*kw (4,608 for a 512-channel 3x3 conv) or in_features (25,088 for VGG's first Linear):
# TedNet's TT conv asked for 18.9 GB on ResNet-18's layer4 that way.
PROBE_ELEMENTS = 1 << 20
# An exact probe costs one forward per input feature: for tltorch's block-TT on VGG-11's 25,088-input Linear that is
# more than 13 minutes. Past this projected time the error is estimated from SKETCH_INPUTS random inputs instead.
PROBE_SECONDS = 30.0
SKETCH_INPUTS = 64
# Not 0: weights drawn after torch.manual_seed(0), as runs and tests seed them, would be the very same numbers as the
# random inputs, and an estimate from inputs correlated with the error it measures is biased (by 23 % in one test).
SKETCH_SEED = 8_675_309


@dataclass
class _Probe:
    """How to probe a replacement of ``dense``: one input's shape, the impulse inputs, and the response read off."""

    shape: tuple[int, ...]
    count: int  # impulses: one per entry of a row of the weight
    impulses: Callable[[torch.Tensor], torch.Tensor]  # impulse indices -> a batch of inputs
    read: Callable[[torch.Tensor], torch.Tensor]  # a batch of outputs -> (batch, out) responses
    weight_of: Callable[[torch.Tensor], torch.Tensor]  # (count, out) responses -> a weight shaped like dense's
    zero: torch.Tensor  # one all-zero input, on dense's device and in its dtype


def _probe(dense: nn.Module) -> _Probe:
    param = next(dense.parameters())
    device, dtype = param.device, param.dtype
    if isinstance(dense, nn.Linear):
        n = dense.in_features

        def linear_impulses(index: torch.Tensor) -> torch.Tensor:
            probe = torch.zeros(len(index), n, device=device, dtype=dtype)
            probe[torch.arange(len(index), device=device), index.to(device)] = 1.0
            return probe

        return _Probe((n,), n, linear_impulses, lambda out: out, lambda responses: responses.T,
                      torch.zeros(1, n, device=device, dtype=dtype))
    if isinstance(dense, nn.Conv2d):
        cout, cin, kh, kw = dense.weight.shape
        (sh, sw), (dh, dw) = dense.stride, dense.dilation
        if isinstance(dense.padding, str):
            ph = dh * (kh - 1) // 2 if dense.padding == "same" else 0
            pw = dw * (kw - 1) // 2 if dense.padding == "same" else 0
        else:
            ph, pw = dense.padding
        # The first output pixel whose window lies entirely inside the unpadded input.
        oi, oj = math.ceil(ph / sh), math.ceil(pw / sw)
        top, left = oi * sh - ph, oj * sw - pw
        height, width = top + dh * (kh - 1) + 1 + ph, left + dw * (kw - 1) + 1 + pw
        c, u, v = torch.meshgrid(torch.arange(cin), torch.arange(kh), torch.arange(kw), indexing="ij")
        c, u, v = c.flatten(), top + dh * u.flatten(), left + dw * v.flatten()

        def conv_impulses(index: torch.Tensor) -> torch.Tensor:
            probe = torch.zeros(len(index), cin, height, width, device=device, dtype=dtype)
            probe[torch.arange(len(index)), c[index], u[index], v[index]] = 1.0
            return probe

        return _Probe((cin, height, width), cin * kh * kw, conv_impulses, lambda out: out[:, :, oi, oj],
                      lambda responses: responses.T.reshape(cout, cin, kh, kw),
                      torch.zeros(1, cin, height, width, device=device, dtype=dtype))
    raise TypeError(f"no effective weight for {type(dense).__name__}")


def _responses(module: nn.Module, probe: _Probe, seconds: float | None = None) -> torch.Tensor | None:
    """``module``'s responses to every impulse, less its response to zero (the bias), in chunks of at most
    :data:`PROBE_ELEMENTS` input elements; None as soon as the whole probe is projected to take over ``seconds``."""
    bias = probe.read(module(probe.zero))
    step = max(1, PROBE_ELEMENTS // probe.zero.numel())
    start_time, responses = time.perf_counter(), []
    for start in range(0, probe.count, step):
        index = torch.arange(start, min(probe.count, start + step))
        responses.append(probe.read(module(probe.impulses(index))) - bias)
        done = start + len(index)
        if seconds is not None and done < probe.count:
            if (time.perf_counter() - start_time) * probe.count / done > seconds:
                return None
    return torch.cat(responses)


def effective_weight(module: nn.Module, dense: nn.Module) -> torch.Tensor:
    """The dense weight that ``module`` (a replacement for ``dense``) actually applies.

    For a Linear layer the replacement is probed with the identity; for a Conv2d it is
    probed with one-hot inputs placed so that one output pixel sees the whole kernel
    window inside the (zero-padded) input. The response to a zero input (the bias) is
    subtracted. The one-hot inputs go in chunks of at most :data:`PROBE_ELEMENTS` input
    elements, so the memory a probe needs stays that of a small batch whatever the layer's
    size. Only valid for replacements that are linear maps of the same geometry.
    """
    probe = _probe(dense)
    with torch.inference_mode():
        return probe.weight_of(_responses(module, probe))


def replacement_error(module: nn.Module, dense: nn.Module, seconds: float | None = None,
                      inputs: int | None = None) -> tuple[float, dict[str, Any] | None]:
    """The relative Frobenius error of the weight ``module`` applies against ``dense``'s, and how it was measured.

    Exact (:func:`effective_weight`, and None for how) unless the probe is projected to take more than
    ``seconds``; then it is estimated from ``inputs`` Gaussian inputs in the probe's geometry, as
    ``E ||(W_module - W) x||^2 = ||W_module - W||_F^2``, and the second value says so and gives the estimate's
    standard error (from the spread of the ``inputs`` squared differences).
    """
    seconds = PROBE_SECONDS if seconds is None else seconds
    inputs = SKETCH_INPUTS if inputs is None else inputs
    probe = _probe(dense)
    weight = dense.weight.detach()
    with torch.inference_mode():
        responses = _responses(module, probe, seconds)
        if responses is not None:
            return relative_error(weight, probe.weight_of(responses).to(weight.dtype)), None
        generator = torch.Generator().manual_seed(SKETCH_SEED)
        x = torch.randn((inputs, *probe.shape), generator=generator, dtype=weight.dtype).to(weight.device)
        bias = probe.read(module(probe.zero)) - probe.read(dense(probe.zero))
        step = max(1, PROBE_ELEMENTS // probe.zero.numel())
        diffs = [probe.read(module(chunk)) - probe.read(dense(chunk)) - bias for chunk in x.split(step)]
    squares = torch.cat(diffs).double().pow(2).sum(dim=1)
    norm_sq = float(weight.double().pow(2).sum()) or 1e-30
    estimate = float(squares.mean())
    relative = math.sqrt(estimate / norm_sq)
    stderr_sq = float(squares.std()) / math.sqrt(inputs) if inputs > 1 else float("nan")
    stderr = stderr_sq / (2 * math.sqrt(estimate * norm_sq)) if estimate > 0 else 0.0
    return relative, {"estimated_from_random_inputs": inputs, "stderr": stderr,
                      "why": f"an exact probe ({probe.count} inputs) was projected to take over {seconds:g} s"}


def relative_error(target: torch.Tensor, approx: torch.Tensor) -> float:
    """``||target - approx|| / ||target||`` in float64; an all-zero target gives ``||approx||``."""
    target, approx = target.detach().double(), approx.detach().double().to(target.device)
    norm = torch.linalg.vector_norm(target)
    diff = torch.linalg.vector_norm(target - approx)
    return float(diff / norm) if norm > 0 else float(diff)


def reconstruction_error(module: nn.Module, dense: nn.Module) -> float:
    """Relative Frobenius error between the dense weight and the one ``module`` applies."""
    return relative_error(dense.weight.detach(), effective_weight(module, dense).to(dense.weight.dtype))
