"""``harness bench``: the speed figures the project quotes, reproduced on this machine and printed as tables.

Four studies, each measured for real (none is part of the test suite; ``harness bench --only NAME`` runs one):

- ``cp``: CP-ALS of the native backend against tensorly's ``parafac`` on the same kernels with the same init
  family (SVD), sweeps and tolerance: a random 128x128x3x3 kernel at rank 140, a random 512x512x3x3 kernel at
  its x4 rank, and a planted rank-32 128x128x3x3 kernel with 5 % noise. Each fit runs in a fresh process, so
  its peak memory (resident set size above the process's size before the fit) is its own.
- ``latency``: how much of the FLOP bound the native conv structures realise: Tucker-2 and CP at x4 of
  128->128 and 256->256 3x3 convs at 28x28 and 56x56, batch 1 and 32, 1 and 2 threads, in the structure as
  built and in ``channels_last`` memory format; the factor values do not change the speed, so they are random.
  Then where the time goes: each factor conv timed alone, its FLOP share against its time share and its FLOP
  rate against the dense conv's.
- ``jobs``: the same small grid run with ``--jobs 1`` and ``--jobs 2``: every cell's speedup from both runs
  side by side, and the dense control's speedup over itself.
- ``main``: the wall time of the default ``harness run --backends all`` (slow: minutes to tens of minutes), and
  where it went: the cells phase against the rest, and the cell-seconds of each backend and method.
- ``latency-aware``: data-free torchvision networks at 224x224 (``--models``, VGG-16 and ResNet-50 by default),
  per batch and thread count (``--batches``, ``--thread-counts``), native Tucker-2 and SVD (``--methods``) on the
  conv layers under ``--rank-selection latency:2`` beside the uniform x4 plan, in one run per configuration (slow:
  the latency tables of a 224x224 network take minutes to profile, and are cached for the next run): the speedup
  the tables predicted, the one the plan's whole-network check predicted, the measured one, the whole-model
  compression and the profiling seconds (tables and checks).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STUDIES = ("cp", "latency", "jobs", "main", "latency-aware")


def _rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _kernel(case: str, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    if case == "planted":
        rank = 32
        factors = [torch.randn(n, rank, generator=generator, dtype=torch.float64) for n in (128, 128, 3, 3)]
        kernel = torch.einsum("ir,jr,kr,lr->ijkl", *factors)
        noise = torch.randn(kernel.shape, generator=generator, dtype=torch.float64)
        return kernel + 0.05 * noise * kernel.norm() / noise.norm(), rank
    channels = 512 if case == "512" else 128
    kernel = torch.randn(channels, channels, 3, 3, generator=generator, dtype=torch.float64)
    if case == "512":  # the x4 rank: the largest whose CP chain has at most a quarter of the dense parameters
        return kernel, (channels * channels * 9 // 4) // (2 * channels + 6)
    return kernel, 140


def _fit(backend: str, case: str, threads: int, sweeps: int, tol: float, queue) -> None:
    """One CP fit through the host, as a run asks for it, in this fresh process: seconds, relative error, sweeps
    run and peak memory above the start of the fit."""
    import torch
    from torch import nn

    from harness.contract.backend import DecomposeRequest
    from harness.run.host import load_host

    torch.set_num_threads(threads)
    kernel, rank = _kernel(case)
    layer = nn.Conv2d(kernel.shape[1], kernel.shape[0], 3, padding=1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(kernel)
    host = load_host()
    # The same init family (an SVD start, no random restarts), sweeps and tolerance for both.
    request = DecomposeRequest(backend=backend, method="cp", layer_path="kernel", kind="conv2d", rank=rank,
                               options={"n_iter_max": sweeps, "tol": tol, "n_restarts": 0, "init": "svd"})
    before = _rss_mb()
    start = time.perf_counter()
    module = host.decompose(layer, request)
    seconds = time.perf_counter() - start
    info = module.decomposition_info
    queue.put({"seconds": seconds, "error": info["rel_error"], "sweeps": info["n_iter"],
               "peak_mb": _rss_mb() - before, "rank": rank})


def cp_study(threads: int, sweeps: int = 300, tol: float = 1e-8) -> list[dict[str, Any]]:
    rows = []
    context = mp.get_context("spawn")
    for case, label in (("128", "128x128x3x3 random"), ("512", "512x512x3x3 random"),
                        ("planted", "128x128x3x3 planted rank 32, 5 % noise")):
        for backend in ("native", "tensorly"):
            queue = context.Queue()
            process = context.Process(target=_fit, args=(backend, case, threads, sweeps, tol, queue))
            process.start()
            result = queue.get()
            process.join()
            rows.append({"kernel": label, "backend": backend, **result})
    return rows


def _time(module, x, threads: int) -> float:
    import torch

    from harness.measure.metrics import measure_latency

    torch.set_num_threads(threads)
    return min(measure_latency(module, x, min_run_time=0.2) for _ in range(3))


def _structures_at_x4(dense, generator) -> dict[str, Any]:
    """The native Tucker-2 and CP replacements of ``dense`` at a quarter of its parameters, with random factors
    (their values do not change the speed)."""
    import torch

    from harness.measure.metrics import count_params
    from harness.tensor import structures

    channels = dense.out_channels
    budget = count_params(dense) // 4
    rank_out, rank_in = structures.tucker2_budget_ranks(dense, budget)
    cp_rank = structures.cp_budget_rank(dense, budget)
    return {
        "tucker2": structures.tucker2_conv_module(
            dense, torch.randn(rank_out, rank_in, 3, 3, generator=generator),
            torch.linalg.qr(torch.randn(channels, rank_out, generator=generator))[0],
            torch.linalg.qr(torch.randn(channels, rank_in, generator=generator))[0]).eval(),
        "cp": structures.cp_conv_module(dense, *(torch.randn(n, cp_rank, generator=generator)
                                                 for n in (channels, channels, 3, 3))).eval(),
    }


def latency_study() -> list[dict[str, Any]]:
    """Realised share of the FLOP bound of native Tucker-2 and CP at x4, as built and in channels_last."""
    import torch
    from torch import nn

    from harness.measure.metrics import count_flops

    rows = []
    generator = torch.Generator().manual_seed(0)
    for channels in (128, 256):
        dense = nn.Conv2d(channels, channels, 3, padding=1).eval()
        structures_at_x4 = _structures_at_x4(dense, generator)
        for side in (28, 56):
            for batch in (1, 32):
                x = torch.randn(batch, channels, side, side, generator=generator)
                for method, module in structures_at_x4.items():
                    bound = count_flops(dense, x) / count_flops(module, x)
                    for threads in (1, 2):
                        for layout in ("as built", "channels_last"):
                            if layout == "channels_last":
                                dense_l, module_l = (m.to(memory_format=torch.channels_last) for m in (dense, module))
                                x_l = x.to(memory_format=torch.channels_last)
                            else:
                                dense_l, module_l, x_l = dense, module, x
                            dense_ms = _time(dense_l, x_l, threads)
                            ms = _time(module_l, x_l, threads)
                            rows.append({"conv": f"{channels}->{channels} 3x3", "input": f"{side}x{side}",
                                         "batch": batch, "threads": threads, "method": method, "layout": layout,
                                         "FLOP bound x": bound, "speedup x": dense_ms / ms,
                                         "share of bound": dense_ms / ms / bound})
                        for m in (dense, module):
                            m.to(memory_format=torch.contiguous_format)
    return rows


def _stage_name(conv) -> str:
    kind = f"{conv.kernel_size[0]}x{conv.kernel_size[1]}"
    grouped = f", groups {conv.groups}" if conv.groups > 1 else ""
    return f"{kind} {conv.in_channels}->{conv.out_channels}{grouped}"


def stage_study(threads: int = 1) -> list[dict[str, Any]]:
    """Where the time of the x4 structures goes: each factor conv timed alone on its own input, its share of the
    structure's FLOPs next to its share of the time, and the FLOP rate it runs at against the dense conv's. A
    stage whose rate is far below the dense conv's is what keeps the structure from its FLOP bound."""
    import torch
    from torch import nn

    from harness.measure.metrics import count_flops

    rows = []
    generator = torch.Generator().manual_seed(0)
    for channels in (128, 256):
        dense = nn.Conv2d(channels, channels, 3, padding=1).eval()
        structures_at_x4 = _structures_at_x4(dense, generator)
        for side in (28, 56):
            for batch in (1, 32):
                x = torch.randn(batch, channels, side, side, generator=generator)
                dense_flops = count_flops(dense, x) * batch
                dense_ms = _time(dense, x, threads)
                dense_rate = dense_flops / dense_ms / 1e6
                for method, module in structures_at_x4.items():
                    stage_input, stages = x, []
                    with torch.inference_mode():
                        for conv in module:
                            stages.append((conv, stage_input))
                            stage_input = conv(stage_input)
                    timed = [(conv, count_flops(conv, inp) * batch, _time(conv, inp, threads)) for conv, inp in stages]
                    total_flops = sum(f for _, f, _ in timed)
                    total_ms = sum(ms for _, _, ms in timed)
                    for conv, flops, ms in timed:
                        rows.append({"conv": f"{channels}->{channels} 3x3", "input": f"{side}x{side}",
                                     "batch": batch, "method": method, "stage": _stage_name(conv),
                                     "FLOP share": flops / total_flops, "time share": ms / total_ms,
                                     "GFLOP/s": flops / ms / 1e6, "dense GFLOP/s": dense_rate})
    return rows


def _run_grid(jobs: int, out: Path, cache: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.cli.main", "run", "--backends", "native", "--methods", "svd,tucker2,tt",
                    "--ratios", "2,4,8", "--epochs", "1", "--jobs", str(jobs), "--out", str(out), "--cache-dir",
                    str(cache)], check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def jobs_study() -> list[dict[str, Any]]:
    from harness.results.store import load_results

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        walls = {jobs: _run_grid(jobs, folder / f"jobs{jobs}", folder / "cache") for jobs in (1, 2)}
        speedups = {jobs: load_results(folder / f"jobs{jobs}").cells.set_index("cell_id")["speedup"] for jobs in (1, 2)}
    for cell_id in speedups[1].index:
        one, two = speedups[1][cell_id], speedups[2][cell_id]
        rows.append({"cell": cell_id, "speedup jobs 1": one, "speedup jobs 2": two, "ratio": two / one})
    rows.append({"cell": f"(wall seconds: jobs 1 {walls[1]:.0f}, jobs 2 {walls[2]:.0f})"})
    return rows


def main_study() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "harness.cli.main", "run", "--backends", "all", "--out",
                                 str(Path(folder) / "run"), "--cache-dir", str(Path(folder) / "cache")],
                                capture_output=True, text=True)
        wall = time.perf_counter() - start
        breakdown = time_breakdown(Path(folder) / "run", wall) if result.returncode == 0 else []
    summary = [line for line in result.stdout.splitlines() if line.startswith("cells:")]
    return [{"command": "harness run --backends all", "exit": result.returncode, "wall s": wall,
             "cells": summary[0] if summary else "?"}], breakdown


def latency_aware_study(models: list[str], batches: list[int], threads: list[int], target: str = "2",
                        cache: Path | None = None, methods: str = "tucker2,svd") -> list[dict[str, Any]]:
    """``latency:TARGET`` against uniform x4 (native ``methods``, conv layers) per model, batch and thread count:
    one data-free run each, its figures read from the run's store."""
    from harness.results.store import load_results

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cache = cache or Path(folder) / "cache"
        for model in models:
            for batch in batches:
                for count in threads:
                    out = Path(folder) / f"{model}-b{batch}-t{count}"
                    result = subprocess.run(
                        [sys.executable, "-m", "harness.cli.main", "run", "--models", f"torchvision:{model}",
                         "--no-train", "--datasets", "random:3x224x224", "--backends", "native", "--methods",
                         methods, "--targets", "conv", "--rank-selection", f"ratio,latency:{target}", "--ratios",
                         "4", "--latency-batch", str(batch), "--latency-threads", str(count), "--jobs", "1",
                         "--out", str(out), "--cache-dir", str(cache)], capture_output=True, text=True)
                    profiled = [line for line in result.stdout.splitlines() if line.startswith("latency tables of")]
                    checked = [line for line in result.stdout.splitlines() if line.startswith("plan checks of")]
                    if result.returncode != 0 or not (out / "results.sqlite").is_file():
                        rows.append({"model": model, "batch": batch, "threads": count,
                                     "selection": f"failed: {(result.stderr or result.stdout).strip()[-200:]}"})
                        continue
                    cells = load_results(out).comparable
                    for _, cell in cells.sort_values(["rank_selection", "method"]).iterrows():
                        predicted, tables = cell.get("predicted_speedup"), cell.get("predicted_speedup_tables")
                        rows.append({"model": model, "batch": batch, "threads": count,
                                     "selection": cell["rank_selection"], "method": cell["method"],
                                     "tables x": tables, "checked plan x": predicted, "measured x": cell["speedup"],
                                     "measured / tables": cell["speedup"] / tables if tables == tables and tables
                                     else None,
                                     "measured / checked": cell["speedup"] / predicted if predicted == predicted
                                     and predicted else None,
                                     "whole-model compression x": cell["model_params_dense"] / cell["model_params"],
                                     "profiling": profiled[0].split("(")[-1].rstrip(")") if profiled else "",
                                     "checks": checked[0].split("(")[-1].rstrip(")") if checked else ""})
    return rows


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' if number != 1 else ''}"


def time_breakdown(run_dir: Path, wall: float) -> list[dict[str, Any]]:
    """Where a finished run's ``wall`` seconds went, from its store: the cells phase (first cell's start to last
    cell's end, each start being its end less its ``cell_s``), the rest (baselines, latency phase, report), and
    the cell-seconds of each backend and method, largest first, with how many worker-seconds the phase left idle
    (``jobs`` workers times the phase, less the cell-seconds: the cost of a long cell finishing alone)."""
    from harness.results.store import load_results

    results = load_results(run_dir)
    timed = results.cells[results.cells["cell_s"].notna()]
    ends = timed["finished_at"].astype(float)
    phase = float(ends.max() - (ends - timed["cell_s"]).min()) if len(timed) else 0.0
    total = float(timed["cell_s"].sum())
    workers = int(results.meta.get("config", {}).get("jobs") or 1)
    rows = [{"part": "wall", "seconds": wall},
            {"part": f"cells phase ({_count(len(timed), 'cell')}, {_count(workers, 'worker')})",
             "seconds": phase},
            {"part": "  worker-seconds left idle in it", "seconds": workers * phase - total},
            {"part": "the rest: baselines, latency phase, report", "seconds": wall - phase},
            {"part": "cell-seconds, all cells", "seconds": total, "share": 1.0}]
    groups = timed.groupby(["backend", "method"])["cell_s"].agg(["size", "sum"]).sort_values("sum", ascending=False)
    for (backend, method), (count, seconds) in groups.iterrows():
        rows.append({"part": f"  {backend} {method} ({_count(int(count), 'cell')})", "seconds": float(seconds),
                     "share": float(seconds) / total if total else 0.0})
    return rows


def _print(title: str, rows: list[dict[str, Any]], write: Callable[[str], None]) -> None:
    from tabulate import tabulate

    write("")
    write(title)
    write(tabulate(rows, headers="keys", floatfmt=".3g", tablefmt="simple"))


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def run(argv: list[str] | None = None, write: Callable[[str], None] = print) -> int:
    from harness.cli.common import Parser  # one-line errors, exit 2

    parser = Parser(prog="harness bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="cp,latency,jobs",
                        help=f"comma list of studies: {', '.join(STUDIES)} [cp,latency,jobs; main is slow]")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the CP fits [all]")
    parser.add_argument("--sweeps", type=int, default=300, help="CP-ALS sweeps, the same for both libraries [300]")
    parser.add_argument("--models", default="vgg16,resnet50", help="latency-aware: torchvision models [vgg16,resnet50]")
    parser.add_argument("--batches", default="1,32", help="latency-aware: latency batch sizes [1,32]")
    parser.add_argument("--thread-counts", default="1,2", help="latency-aware: latency threads [1,2]")
    parser.add_argument("--cache-dir", default=None, help="latency-aware: a cache to keep the latency tables in "
                        "between runs [a temporary one]")
    parser.add_argument("--methods", default="tucker2,svd", help="latency-aware: native conv methods [tucker2,svd]")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STUDIES]
    if unknown:
        parser.error(f"unknown study {unknown[0]!r} (choose from {', '.join(STUDIES)})")
    write(f"harness bench on {os.cpu_count()} cores; every figure measured now")
    if "cp" in chosen:
        _print(f"CP-ALS, native vs tensorly parafac (SVD init, {args.sweeps} sweeps at most, tol 1e-8, "
               f"{args.threads} threads; peak = resident memory above the start of the fit)",
               cp_study(args.threads, args.sweeps), write)
    if "latency" in chosen:
        _print("Realised speedup of native conv structures at x4 against their FLOP bound",
               latency_study(), write)
        _print("Where their time goes: each factor conv timed alone (1 thread), its share of the structure's FLOPs "
               "and time, and its FLOP rate against the dense conv's", stage_study(), write)
    if "jobs" in chosen:
        _print("The same grid with --jobs 1 and --jobs 2 (speedups from the quiet latency phase)",
               jobs_study(), write)
    if "latency-aware" in chosen:
        _print("--rank-selection latency:2 against uniform x4 (native, conv layers, data-free, 224x224): predicted "
               "and measured whole-network speedup", latency_aware_study(
                   _names(args.models), [int(b) for b in _names(args.batches)],
                   [int(t) for t in _names(args.thread_counts)],
                   cache=Path(args.cache_dir) if args.cache_dir else None, methods=args.methods), write)
    if "main" in chosen:
        summary, breakdown = main_study()
        _print("The default main job", summary, write)
        if breakdown:
            _print("Where its wall time went (from the run's store)", breakdown, write)
    return 0
