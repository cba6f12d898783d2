"""The driver of ``harness run``: plan, train baselines, dispatch cells, store, report.

Data flows one way: the validated config is expanded into cells, missing dense
baselines are trained (once, into the cache), cells declared unsupported are stored
directly and the rest go to an executor; every finished cell is written to the store
at once; when all are done, the networks the cells saved are timed one by one in this
process alone (the quiet latency phase, :mod:`harness.run.latency`) — with ``--save-models``
they are kept, and timed in ONNX Runtime too — and the report hooks rebuild the outputs
from the store alone.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import harness
from harness.config.settings import ConfigError, RunConfig
from harness.core.allocator import keep_freed_memory
from harness.core.errors import one_line
from harness.core.resources import threads_per_worker
from harness.measure.metrics import FLOP_CONVENTION
from harness.plan.cells import Cell, not_planned_summary
from harness.plan.planner import plan_cells
from harness.plan.result import CellResult, PendingNetwork, ResultStore, StoredCell
from harness.plan.status import Status
from harness.run.baseline import WeightsError, baseline_path, ensure_baseline, load_baseline, run_baseline_path
from harness.run.data import Data, DataUnavailable, resolve_dataset
from harness.run.estimate import RunCosts
from harness.run.executors import InProcessExecutor, ProcessExecutor
from harness.run.export import MODELS
from harness.run.host import BUILTIN, DISTRIBUTION, Host
from harness.run.latency import Int8Data, NetworkLoader, measure_ort, measure_pending
from harness.run.latency_tables import device_name
from harness.run.models import resolve_model
from harness.run.networks import load_cell_network
from harness.run.profiling import needs_tables, profile_cells
from harness.run.quantize import calibration_sample
from harness.run.progress import Heartbeat, ProgressLines, duration
from harness.run.runner import resolve_device


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(harness.__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_metadata(config: RunConfig, host: Host, argv: list[str], device: torch.device) -> dict[str, Any]:
    threads = {"process": threads_per_worker(config.jobs), "ray": config.cpus_per_cell}.get(
        config.executor, torch.get_num_threads())
    return {
        "config": config.to_dict(),
        "command": " ".join(["harness", *argv]),
        # Where relative model names (./mynet.py:build, mynet:build) pointed: a kept network is rebuilt from them.
        "cwd": os.getcwd(),
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "harness_version": harness.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "libraries": {name: {"library": info.library, "version": info.library_version, "modules": info.modules}
                      for name, info in host.backends.items() if name in config.backends},
        "plugins": {p.name: {"distribution": p.distribution, "version": p.version, "error": p.error}
                    for p in host.plugins},
        "device": str(device),
        "device_name": device_name(device),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "seeds": config.seeds,
        "flop_convention": FLOP_CONVENTION,
    }


def load_data(config: RunConfig, host: Host, device: torch.device) -> dict[str, Data]:
    data = {}
    for name in config.datasets:
        try:
            spec = resolve_dataset(name, host.datasets, config.data_options())
            splits = spec.load(Path(config.data_dir) if config.data_dir else None, config.download)
        except DataUnavailable as exc:
            raise ConfigError(str(exc)) from None
        data[name] = splits
    return data


def build_planning_models(config: RunConfig, host: Host, data: dict[str, Data]) -> dict[str, Any]:
    """Each (model, dataset) built once, untrained, so the planner sees its layers; a model that cannot be built
    for a dataset's input is a one-line configuration error."""
    built = {}
    for model in config.models:
        spec = resolve_model(model, host.models)
        for dataset in config.datasets:
            shape, classes = data[dataset].input_shape, data[dataset].num_classes
            try:
                network = spec.build(shape, classes)
                with torch.inference_mode():
                    output = network.eval()(torch.zeros(1, *shape))
            except (Exception, SystemExit) as exc:  # a user's builder, or an architecture too deep for a small input
                raise ConfigError(f"model {model!r} cannot run on {dataset} inputs of shape "
                                  f"{'x'.join(map(str, shape))}: {one_line(exc)[:350]}") from None
            _check_scores(model, dataset, output, classes)
            built[f"{model}@{dataset}"] = network
    return built


def _check_scores(model: str, dataset: str, output: Any, classes: int) -> None:
    """A model must return one tensor of class scores per image, as many as the dataset has classes: training
    would otherwise fail in every cell (a tuple has no loss; a target beyond the scores is out of bounds)."""
    if not isinstance(output, torch.Tensor):
        raise ConfigError(f"model {model!r} returns a {type(output).__name__}, not a tensor of class scores "
                          "(wrap it to return the logits alone)")
    if output.dim() != 2:
        raise ConfigError(f"model {model!r} returns scores of shape {tuple(output.shape)} for one image, not "
                          f"(1, {classes}): one score per class of {dataset}")
    if output.shape[1] != classes:
        raise ConfigError(f"model {model!r} gives {output.shape[1]} outputs per image, but {dataset} has {classes} "
                          "classes (build its classifier with num_classes outputs)")


def _outside_plugins(host: Host, backends: set[str]) -> list[str]:
    """The plugins of ``backends`` that do not ship with harness (installed by others, or given with ``-p``)."""
    names = []
    for backend in sorted(backends):
        owner = host.backend_plugin.get(backend)
        record = next((r for r in host.plugins if r.name == owner), None)
        if record is not None and record.origin != BUILTIN and record.distribution != DISTRIBUTION:
            names.append(f"plugin {record.name!r}")
    return list(dict.fromkeys(names))


def default_run_dir() -> str:
    return os.path.join("runs", dt.datetime.now().strftime("%Y%m%d-%H%M%S"))


def execute(config: RunConfig, host: Host, run_dir: Path, argv: list[str], plugin_args: dict[str, Any],
            write: Callable[[str], None], open_store: Callable[[dict[str, Any] | None], ResultStore],
            retry: tuple[str, ...] = ()) -> None:
    """Run (or resume) the cells of ``config`` into ``run_dir``. ``open_store(meta)`` gives the run's store
    (:class:`harness.results.store.Store`, which this layer only calls): a new one made with ``meta``, or, when
    resuming, the existing one (``meta`` None). Cells stored with a status in ``retry`` run again and replace
    their stored rows. The reports are the caller's to rebuild from the store afterwards."""
    device = resolve_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device")
    keep_freed_memory()  # the latency phase runs in this process, under the workers' allocation policy
    data = load_data(config, host, device)
    planning_models = build_planning_models(config, host, data)
    plan = plan_cells(config, host.backends, planning_models, host.rank_selectors)
    cells = plan.cells
    for note in plan.notes:
        write(f"note: {note}")
    for warning in plan.warnings:
        write(f"warning: {warning}")
    if plan.not_planned:
        write(f"note: {not_planned_summary(plan.not_planned)}")
    if not cells:
        raise ConfigError("nothing to run: no method applies to the chosen targets and models")
    outside = _outside_plugins(host, {c.backend for c in cells})
    if config.executor == "inprocess" and outside:
        write(f"note: the in-process executor cannot contain {', '.join(outside)}: a plugin that calls os._exit or "
              "catches the cell timeout as BaseException ends or stalls the run; --executor process (the default) "
              "isolates each cell")

    store = open_store({**run_metadata(config, host, argv, device),
                        "not_planned": [record.to_dict() for record in plan.not_planned]})
    try:
        again = store.ids_with_status(retry) if retry else set()
        done = store.finished_ids() - again
        pending = [c for c in cells if c.cell_id not in done]
        retried = f", {len(again)} of them again ({', '.join(retry)})" if again else ""
        write(f"run directory: {run_dir}  ({len(cells)} cells, {len(cells) - len(pending)} already done, "
              f"{len(pending)} to run{retried})")
        for cell in [c for c in pending if c.unsupported]:
            store.add_result(CellResult.failed(cell, Status.UNSUPPORTED, cell.unsupported))
        runnable = [c for c in pending if not c.unsupported]
        costs = None
        if runnable:
            costs = RunCosts.plan(config, data, planning_models, runnable, str(run_dir.resolve()), device)
            write(costs.estimate.line())
            _train_baselines(config, host, data, runnable, device, write)
            profiled = needs_tables(runnable, host, config.layer_latency)
            if profiled:  # before any worker starts: the tables are timed with nothing else running
                profile_cells(config, host, data, planning_models, profiled, device, write)
            _dispatch(config, host, plugin_args, runnable, store, costs)
        _latency_phase(config, host, data, run_dir, store, device, write, costs)
    finally:
        store.close()


def _latency_phase(config: RunConfig, host: Host, data: dict[str, Data], run_dir: Path, store: ResultStore,
                   device: torch.device, write: Callable[[str], None], costs: RunCosts | None = None) -> None:
    """Time every network the cells saved, serially, in this process alone (see :mod:`harness.run.latency`)."""
    pending = store.pending_latency()
    if not pending and not (config.save_models and store.awaiting_ort(config.quantize == "int8")):
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(config.latency_threads)
    try:
        _time_networks(config, host, data, run_dir, store, device, write, pending, costs)
    finally:  # the in-process executor trains in this process: give it its threads back
        torch.set_num_threads(threads)


def _threads() -> str:
    count = torch.get_num_threads()
    return f"{count} thread{'s' if count != 1 else ''}"


def _time_networks(config: RunConfig, host: Host, data: dict[str, Data], run_dir: Path, store: ResultStore,
                   device: torch.device, write: Callable[[str], None], pending: list[PendingNetwork],
                   costs: RunCosts | None) -> None:
    dense_models: dict[tuple[str, str, int], torch.nn.Module] = {}
    batches: dict[str, torch.Tensor] = {}

    def dense_for(cell: PendingNetwork) -> tuple[torch.nn.Module, torch.Tensor]:
        key = (cell.model, cell.dataset, int(cell.seed))
        splits = data[cell.dataset].to(device)
        if cell.dataset not in batches:
            batches[cell.dataset] = splits.head("test", config.latency_batch)[0]
        if key not in dense_models:
            dense_models.clear()  # one dense network at a time: real ones are large
            spec = resolve_model(cell.model, host.models)
            dense_models[key] = load_baseline(run_baseline_path(config, *key),
                                              lambda: spec.build(splits.input_shape, splits.num_classes), device)
        return dense_models[key], batches[cell.dataset]

    def load(cell: PendingNetwork, path: Path) -> torch.nn.Module:
        return load_cell_network(store.cell_record(cell.cell_id), path, host, dense_for(cell)[0])

    if pending:
        write(f"measuring latency of {len(pending)} networks, one at a time, nothing else running "
              f"({config.latency_passes} passes, {_threads()}, batch {config.latency_batch}"
              f"{', channels_last' if config.memory_format == 'channels_last' else ''})")
        spent = _time_eager(config, run_dir, store, pending, dense_for, load, write)
        if costs:
            costs.timed(spent)
    if config.save_models:
        _deployment_phase(config, run_dir, store, device, dense_for, load, write, _int8_data(config, data))


def _int8_data(config: RunConfig, data: dict[str, Data]) -> Int8Data | None:
    """``--quantize int8``: each dataset's calibration sample (drawn once) and test batches."""
    if config.quantize != "int8":
        return None
    samples: dict[str, torch.Tensor] = {}

    def calibration(cell: PendingNetwork) -> torch.Tensor:
        if cell.dataset not in samples:
            samples[cell.dataset] = calibration_sample(data[cell.dataset])
        return samples[cell.dataset]

    return Int8Data(calibration, lambda cell: data[cell.dataset].test_batches())


def _time_eager(config: RunConfig, run_dir: Path, store: ResultStore, pending: list[PendingNetwork],
                dense_for: Callable[[PendingNetwork], tuple[torch.nn.Module, torch.Tensor]], load: NetworkLoader,
                write: Callable[[str], None]) -> dict[str, float]:
    """Time the pending networks; returns the seconds the phase spent on each."""
    spent: dict[str, float] = {}
    with tqdm(total=len(pending) * config.latency_passes, desc="latency", unit="network", dynamic_ncols=True,
              disable=None) as bar:
        start, timed = time.monotonic(), 0

        def progress(count: int) -> None:
            nonlocal timed
            bar.update(count)
            timed += count
            if bar.disable and timed % len(pending) == 0:  # no terminal: one line per pass instead of a bar
                print(f"latency pass {timed // len(pending)}/{config.latency_passes} done "
                      f"({duration(time.monotonic() - start)} so far)", file=sys.stderr, flush=True)

        measure_pending(run_dir, pending, store, dense_for, load, write, progress, passes=config.latency_passes,
                        keep=config.save_models, memory_format=config.memory_format, spent=spent)
    return spent


def _deployment_phase(config: RunConfig, run_dir: Path, store: ResultStore, device: torch.device,
                      dense_for: Callable[[PendingNetwork], tuple[torch.nn.Module, torch.Tensor]],
                      load: NetworkLoader, write: Callable[[str], None], int8: Int8Data | None = None) -> None:
    """``--save-models``: say what the kept networks cost in disk space, and time them in ONNX Runtime (CPU)
    beside their dense baselines when onnxruntime is installed and the run is on the CPU (and in INT8 too with
    ``--quantize int8``)."""
    kept = store.awaiting_ort(int8 is not None)
    if device.type == "cpu" and kept and importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        write(f"timing {len(kept)} kept networks and their dense baselines in ONNX Runtime"
              f"{', FP32 and INT8' if int8 else ''} ({config.latency_passes} passes, {_threads()})")
        with tqdm(total=len(kept) * config.latency_passes, desc="onnxruntime", unit="network", dynamic_ncols=True,
                  disable=None) as bar:
            measure_ort(run_dir, kept, store, dense_for, load, write, bar.update, passes=config.latency_passes,
                        int8=int8)
    elif kept and device.type == "cpu":
        write("note: onnxruntime is not installed: kept networks are not timed in ONNX Runtime "
              "(pip install 'tensor-harness[onnx]')")
    folder = run_dir / MODELS
    if folder.is_dir():
        files = [path for path in folder.iterdir() if path.is_file()]
        size = sum(path.stat().st_size for path in files)
        write(f"kept networks: {len(files)} files, {size / 1e6:.1f} MB in {folder} (harness export RUN_DIR CELL_ID "
              f"--format pt|torchscript|onnx --out FILE)")


def _train_baselines(config: RunConfig, host: Host, data: dict[str, Data], cells: list[Cell],
                     device: torch.device, write: Callable[[str], None]) -> None:
    """Make every dense baseline the cells need (trained, or loaded from --weights), once, into the cache."""
    needed = sorted({(c.model, c.dataset, c.seed) for c in cells})
    training = config.training_spec()
    for model, dataset, seed in needed:
        weights = config.weights_for(model)
        path = run_baseline_path(config, model, dataset, seed)
        splits = data[dataset]
        spec = resolve_model(model, host.models)
        with tqdm(total=config.baseline_epochs, desc=f"baseline {model}/{dataset}/s{seed}", unit="epoch",
                  leave=False, dynamic_ncols=True, disable=None) as bar:
            try:
                meta, fresh = ensure_baseline(path, lambda: spec.build(splits.input_shape, splits.num_classes),
                                              None if config.no_train else splits.to(device), seed, training,
                                              progress=bar.update, weights=weights, device=device,
                                              on_invalid=lambda line: bar.write(f"warning: {line}"))
            except (WeightsError, DataUnavailable) as exc:  # the user's checkpoint or image folder
                raise ConfigError(str(exc)) from None
        if not fresh:
            continue
        start = f"from {weights}" if weights else "from a random init"
        accuracy = f"accuracy {meta['acc']:.2f}%" if meta["acc"] is not None else "no accuracy (no training data)"
        verb = "trained" if meta["epochs"] else "took"
        write(f"{verb} dense baseline {model}/{dataset}/s{seed} {start}: {accuracy} "
              f"in {meta['train_s']:.1f} s (cached at {path})")


def _dispatch(config: RunConfig, host: Host, plugin_args: dict[str, Any], cells: list[Cell], store: ResultStore,
              costs: RunCosts) -> None:
    if config.executor == "inprocess":
        executor = InProcessExecutor(config, host)
    elif config.executor == "ray":
        from harness.run.ray_executor import RayExecutor  # Ray is an optional extra

        executor = RayExecutor(config, plugin_args)
    else:
        executor = ProcessExecutor(config, plugin_args, jobs=config.jobs)
    cell_bar = tqdm(total=len(cells), desc="cells", unit="cell", dynamic_ncols=True, disable=None)
    # disable=None: bars only on a terminal, so logs stay readable.
    epoch_bar = tqdm(total=len(cells) * config.epochs, desc="fine-tune epochs", unit="epoch", leave=False,
                     dynamic_ncols=True, disable=None)

    lines = ProgressLines(len(cells), costs.rest.left) if cell_bar.disable else None
    heartbeat = Heartbeat()

    def on_result(cell: Cell, result: CellResult) -> None:
        store.add_result(result)
        costs.finished(cell.cell_id, result.status, result.metrics)
        heartbeat.done(cell.cell_id)
        cell_bar.update(1)
        if result.status != Status.OK:
            cell_bar.write(f"{result.status}: {cell.cell_id}: {result.error}")
        if lines:
            lines.finished(cell.cell_id, result.status)

    def on_progress(item: int | tuple[str, str]) -> None:
        if isinstance(item, tuple):
            heartbeat.stage(*item)
        else:
            epoch_bar.update(item)

    try:
        with heartbeat:
            executor.run(cells, on_result, on_progress)
    finally:
        epoch_bar.close()
        cell_bar.close()


def dense_network(config: RunConfig, host: Host, cell: PendingNetwork, data: Data, device: torch.device
                  ) -> tuple[torch.nn.Module, bool]:
    """The dense network a stored cell started from, and whether it is that very baseline: the verified cache
    entry when it is there, else the model built afresh from the cell's seed (and ``--weights``), which
    rebuilds every architecture whose structure does not depend on the trained weights."""
    from harness.run.baseline import CacheInvalid, build_seeded, load_weights

    spec = resolve_model(cell.model, host.models)
    build = lambda: spec.build(data.input_shape, data.num_classes)  # noqa: E731 - a thunk for the cache's API
    weights = config.weights_for(cell.model)
    path = baseline_path(config.cache_dir, cell.model, cell.dataset, int(cell.seed),
                         config.training_spec(), weights if weights and os.path.isfile(weights) else None)
    try:
        return load_baseline(path, build, device), True
    except (CacheInvalid, OSError):
        model = build_seeded(build, int(cell.seed))
        if weights and os.path.isfile(weights):
            try:
                load_weights(model, weights)
            except WeightsError:
                pass  # the structure is what the rebuild needs; the probe check decides
        return model.to(device).eval(), False


def kept_network(run_dir: Path, meta: dict[str, Any], record: StoredCell | None, host: Host,
                 path: Path) -> tuple[torch.nn.Module, Data]:
    """A stored cell's saved network at ``path`` rebuilt on the CPU (:mod:`harness.run.networks`), and the cell's
    data; :class:`harness.run.networks.NetworkInvalid` or :class:`harness.run.models.ModelUnavailable` in one line when
    it cannot be. ``record`` is the cell as stored (:func:`harness.results.store.read_cell`). The run's model code
    is imported as the run named it, never from inside ``run_dir``."""
    from harness.run.models import user_code_outside
    from harness.run.networks import NetworkInvalid

    if record is None:
        raise NetworkInvalid(f"the store has no cell for the saved network {path}")
    config = RunConfig.from_dict(meta["config"])
    config.datasets = [record.dataset]
    data = load_data(config, host, torch.device("cpu"))[record.dataset]
    with user_code_outside(run_dir, meta.get("cwd")):
        base, is_baseline = dense_network(config, host, record, data, torch.device("cpu"))
        model = load_cell_network(record, path, host, base, is_baseline)
    return model, data



