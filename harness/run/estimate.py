"""How long a run will take, said before it starts: a cost model of cells, from what cells took before.

Every finished cell is recorded in the cache (``cost-model.sqlite``) with what drives its time (backend, method,
target, ratio, the targeted layers' parameters, epochs, images, and the *probe*: the seconds per image of a dense
training step of its model at the workers' threads) and what it took (decomposition, fine-tuning, the rest, and its
network's share of the latency phase). A pending cell is predicted from the nearest records: those of its model and
dataset first (this machine's, else the reference records shipped in ``cost_priors.csv``, a default run on a 2-core
machine), then other models'; within them the same backend, method and target (relaxed to the method and target,
then the target, where there are none), then the same ratio. Each record is scaled to the cell:
fine-tuning by images x epochs x probe, evaluation by test images x evaluations x probe, decomposition by
parameters (and by the probe's ratio where model and dataset are the same, which carries the machine's speed).
The run's estimate is the baselines still to train, the cells laid out over the workers in plan order, and the
latency phase. While cells run, the estimate of the rest is scaled by how the finished cells compared with theirs.
"""

from __future__ import annotations

import copy
import csv
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.config.settings import RunConfig
from harness.plan.cells import Cell
from harness.plan.status import Status
from harness.run.data import Data
from harness.run.progress import duration

COST_FILE = "cost-model.sqlite"
PRIORS = Path(__file__).with_name("cost_priors.csv")
# Probe steps are timed until this many seconds have gone by (one at least), after one untimed step, on this many
# training images (two, for a model whose two-image step takes longer than PROBE_LARGE_S).
PROBE_SECONDS = 0.3
PROBE_BATCH = 16
PROBE_LARGE_S = 0.05
# The newest records kept per backend, method, target, model, dataset and ratio: this machine as it is now.
KEEP_RECENT = 5


@dataclass
class CellCost:
    """One finished cell as the cost model keeps it: what drives its time, and what it took (seconds)."""

    backend: str
    method: str
    target: str
    model: str
    dataset: str
    ratio: float
    epochs: int
    train_size: int
    test_size: int
    params: int  # the targeted layers' dense parameters
    probe_s: float  # seconds per image of a dense training step of the model, at the workers' threads
    decompose_s: float = 0.0
    train_s: float = 0.0
    other_s: float = 0.0  # rank selection, evaluations, saving: the cell's time less decomposition and training
    latency_s: float = 0.0  # the network's share of the latency phase, all passes
    latency_key: str = ""  # latency batch, threads, passes and memory format the share was timed with
    run: str = ""
    cell_id: str = ""

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def probe_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threads: int,
                  budget: float = PROBE_SECONDS) -> float:
    """Seconds per image of one SGD training step of ``model`` (a copy; the model is left as it was) on the batch
    ``x``, ``y`` at ``threads`` threads (on its first two images alone for a large model): the median of the steps
    timed over ``budget`` seconds, after an untimed one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = copy.deepcopy(model).train()
        optimiser = torch.optim.SGD(model.parameters(), lr=1e-6)

        def step(images: torch.Tensor, labels: torch.Tensor) -> float:
            start = time.perf_counter()
            loss = F.cross_entropy(model(images), labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if images.is_cuda:
                torch.cuda.synchronize(images.device)
            return time.perf_counter() - start

        if step(x[:2], y[:2]) >= PROBE_LARGE_S:  # two images, since BatchNorm cannot train on one
            x, y = x[:2], y[:2]
        else:  # a small model: per image, a batch says more than two images' overheads
            step(x, y)
        spent: list[float] = []
        while not spent or sum(spent) < budget:
            spent.append(step(x, y))
        return median(spent) / len(x)
    finally:
        torch.set_num_threads(previous)


def _scaled(record: CellCost, cell: CellCost) -> float:
    """``record``'s time, scaled to ``cell``."""
    speed = cell.probe_s / record.probe_s if record.probe_s > 0 else 1.0
    same = (record.model, record.dataset) == (cell.model, cell.dataset)
    train = (record.train_s / (record.epochs * record.train_size) * cell.epochs * cell.train_size * speed
             if record.epochs and record.train_size else 0.0)
    evaluations = (cell.epochs + 2) / (record.epochs + 2)
    other = record.other_s * speed * evaluations * cell.test_size / max(1, record.test_size)
    decompose = record.decompose_s * cell.params / max(1, record.params) * (speed if same else 1.0)
    return train + other + decompose


def _phase_model(probe_s: float, latency_key: str) -> float:
    """A network's share of the latency phase as the phase spends it (:func:`harness.measure.metrics.paired_rounds`
    per pass: both networks warmed up and calibrated, then rounds of two blocks, a block at least one forward), with
    a forward taken as a third of a training step of the batch. For a small network the blocks, not its forward,
    set the share: scaling LeNet-5's records by the probe alone had put vgg-small's phase at 14x what it took."""
    from harness.measure.metrics import BLOCK_SECONDS, ROUNDS_SECONDS, WARMUP_SECONDS
    from harness.run.latency import ROUNDS_PER_PASS

    settings = {part[0]: part[1:] for part in latency_key.split("/") if part[:1] in ("b", "p")}
    try:
        batch, passes = int(settings.get("b", 1)), int(settings.get("p", 1))
    except ValueError:
        batch, passes = 1, 1
    forward = probe_s * batch / 3
    block = max(BLOCK_SECONDS, forward)
    warm = min(3 * forward, WARMUP_SECONDS + forward)
    return passes * (2 * (warm + forward) + min(ROUNDS_PER_PASS * 2 * block, ROUNDS_SECONDS + 2 * block))


def _latency(record: CellCost, cell: CellCost) -> float:
    """``record``'s share of the latency phase, scaled to ``cell`` by the phase's model of both."""
    if (record.latency_key, record.model, record.dataset) == (cell.latency_key, cell.model, cell.dataset):
        return record.latency_s
    modelled = _phase_model(record.probe_s, record.latency_key)
    return record.latency_s * _phase_model(cell.probe_s, cell.latency_key) / modelled if modelled > 0 else 0.0


def _nearest(records: list[CellCost], cell: CellCost) -> list[CellCost]:
    """The records nearest ``cell`` among those of its backend, method and target (relaxed when there are none)."""
    for match in (lambda r: (r.backend, r.method, r.target) == (cell.backend, cell.method, cell.target),
                  lambda r: (r.method, r.target) == (cell.method, cell.target),
                  lambda r: r.target == cell.target,
                  lambda r: True):
        found = [r for r in records if match(r)]
        if found:
            break
    else:
        return []
    for narrower in (lambda r: (r.model, r.dataset, r.ratio) == (cell.model, cell.dataset, cell.ratio),
                     lambda r: (r.model, r.dataset) == (cell.model, cell.dataset),
                     lambda r: r.ratio == cell.ratio):
        close = [r for r in found if narrower(r)]
        if close:
            return close
    return found


class CostModel:
    """The recorded cells of this machine (the cache's ``cost-model.sqlite``) and the shipped reference records."""

    def __init__(self, cache_dir: str | Path | None, priors: Path | None = PRIORS) -> None:
        self.path = Path(cache_dir) / COST_FILE if cache_dir else None
        self.local: list[CellCost] = []
        self.reference = read_records(priors) if priors and priors.is_file() else []
        if self.path and self.path.is_file():
            try:
                with self._connection() as conn:
                    rows = conn.execute(f"SELECT {', '.join(CellCost.columns())} FROM cells ORDER BY rowid").fetchall()
            except sqlite3.DatabaseError:  # damaged: never used; set aside, so the next record starts it afresh
                self.path.unlink(missing_ok=True)
                rows = []
            latest: dict[tuple, deque[CellCost]] = {}
            for row in rows:
                record = CellCost(*row)
                key = (record.backend, record.method, record.target, record.model, record.dataset, record.ratio)
                latest.setdefault(key, deque(maxlen=KEEP_RECENT)).append(record)
            self.local = [record for records in latest.values() for record in records]

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute(f"CREATE TABLE IF NOT EXISTS cells ({', '.join(CellCost.columns())}, "
                         "PRIMARY KEY (run, cell_id))")
            yield conn
            conn.commit()
        finally:
            conn.close()

    def record(self, cost: CellCost) -> None:
        """Keep a finished cell (replacing the run's earlier record of it); a cache that cannot be written is skipped."""
        if self.path is None:
            return
        try:
            with self._connection() as conn:
                columns = CellCost.columns()
                conn.execute(f"INSERT OR REPLACE INTO cells ({', '.join(columns)}) VALUES "
                             f"({', '.join('?' * len(columns))})", [getattr(cost, c) for c in columns])
        except (sqlite3.DatabaseError, OSError):
            return
        self.local.append(cost)

    def record_latency(self, run: str, seconds: dict[str, float], key: str) -> None:
        """The latency phase's seconds per network of ``run``, on the cells recorded for it."""
        if self.path is None or not seconds:
            return
        try:
            with self._connection() as conn:
                conn.executemany("UPDATE cells SET latency_s = ?, latency_key = ? WHERE run = ? AND cell_id = ?",
                                 [(s, key, run, cell_id) for cell_id, s in seconds.items()])
        except (sqlite3.DatabaseError, OSError):
            return

    def predict(self, cell: CellCost) -> tuple[float, float, str]:
        """Seconds of the cell in its worker, its network's seconds in the latency phase, and where they come from
        (``this machine``, ``reference`` or ``none``): records of the cell's model and dataset first, this machine's
        before the reference's, then records of other models."""
        def usable(records: list[CellCost], same_model: bool) -> list[CellCost]:
            if same_model:
                records = [r for r in records if (r.model, r.dataset) == (cell.model, cell.dataset)]
            # A record that trained nothing cannot say how long training takes.
            return [r for r in records if r.epochs or not cell.epochs]

        for records, source, same_model in ((self.local, "this machine", True), (self.reference, "reference", True),
                                            (self.local, "this machine", False),
                                            (self.reference, "reference", False)):
            near = _nearest(usable(records, same_model), cell)
            if near:
                # The phase's share depends on its batch, threads and passes: records timed as this run times first.
                timed = ([r for r in near if r.latency_key == cell.latency_key]
                         or [r for r in records if r.latency_key == cell.latency_key and r.model == cell.model]
                         or [r for r in near if r.latency_key] or near)
                return (median(_scaled(r, cell) for r in near), median(_latency(r, cell) for r in timed), source)
        return 0.0, 0.0, "none"


def read_records(path: Path) -> list[CellCost]:
    """Cell records from a CSV written by :func:`write_records`."""
    types = {f.name: f.type for f in fields(CellCost)}
    convert = {"int": int, "float": float, "str": str}
    with path.open(newline="") as handle:
        return [CellCost(**{k: convert[types[k]](v) for k, v in row.items() if k in types})
                for row in csv.DictReader(handle)]


def write_records(records: Iterable[CellCost], path: Path) -> int:
    rows = [asdict(r) for r in records]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CellCost.columns())
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def makespan(seconds: list[float], workers: int) -> float:
    """The wall time of ``seconds`` of cells taken in order by ``workers`` workers, each the next free one."""
    free = [0.0] * max(1, workers)
    for cost in seconds:
        index = free.index(min(free))
        free[index] += cost
    return max(free)


@dataclass
class Estimate:
    """A run's predicted wall time and its parts (seconds), and where the cells' figures come from."""

    baselines_s: float
    cells_s: dict[str, float]  # cell id -> seconds in its worker
    cells_wall_s: float
    latency_s: float
    sources: dict[str, int]
    workers: int
    # What the estimate leaves out (a phase without records to predict it from), said after the figures.
    left_out: str = ""

    @property
    def total_s(self) -> float:
        return self.baselines_s + self.cells_wall_s + self.latency_s

    def line(self) -> str:
        known = ", ".join(f"{count} from {source}" if source != "none" else f"{count} without any (counted as 0 s)"
                          for source, count in sorted(self.sources.items()))
        parts = [f"{len(self.cells_s)} cells {duration(self.cells_wall_s)} on {self.workers} "
                 f"worker{'s' if self.workers != 1 else ''}"]
        if self.baselines_s:
            parts.insert(0, f"baselines {duration(self.baselines_s)}")
        if self.latency_s:
            parts.append(f"latency phase {duration(self.latency_s)}")
        left_out = f"; {self.left_out} not included" if self.left_out else ""
        return f"estimate: about {duration(self.total_s)} ({', '.join(parts)}; cells' records: {known}{left_out})"


class RestEstimate:
    """The time left while cells run: the predicted seconds of the unfinished cells over the workers, scaled by
    how long the finished cells took against their prediction."""

    def __init__(self, estimate: Estimate) -> None:
        self.estimate = estimate
        self.predicted_done, self.actual_done = 0.0, 0.0
        self.finished: set[str] = set()

    def finished_cell(self, cell_id: str, seconds: float | None) -> None:
        predicted = self.estimate.cells_s.get(cell_id)
        self.finished.add(cell_id)
        if predicted and seconds:
            self.predicted_done += predicted
            self.actual_done += seconds

    def left(self) -> float | None:
        """Seconds left, or None while no finished cell had a prediction to compare with."""
        if not self.predicted_done:
            return None
        rest = [s for cell_id, s in self.estimate.cells_s.items() if cell_id not in self.finished]
        factor = self.actual_done / self.predicted_done
        return (makespan(rest, self.estimate.workers) + self.estimate.latency_s) * factor


def estimate_run(costs: list[tuple[str, CellCost]], model: CostModel, workers: int,
                 baselines_s: float) -> Estimate:
    """The estimate of a run of ``costs`` (cell id, its features) on ``workers`` workers, with ``baselines_s`` of
    dense baselines to train first."""
    cells, latency, sources = {}, 0.0, {}
    for cell_id, cost in costs:
        seconds, share, source = model.predict(cost)
        cells[cell_id], latency = seconds, latency + share
        sources[source] = sources.get(source, 0) + 1
    return Estimate(baselines_s, cells, makespan(list(cells.values()), workers), latency, sources, workers)


class RunCosts:
    """A run's side of the cost model: its cells' features, the estimate said before the cells start, the rest
    while they run, and each finished cell recorded for the runs after it."""

    def __init__(self, model: CostModel, features: dict[str, CellCost], estimate: Estimate) -> None:
        self.model, self.features, self.estimate = model, features, estimate
        self.rest = RestEstimate(estimate)

    @classmethod
    def plan(cls, config: RunConfig, data: dict[str, Data], networks: dict[str, nn.Module], cells: list[Cell],
             run: str, device: torch.device) -> RunCosts:
        """Probe each model of ``cells`` (``networks``: the planning networks by ``model@dataset``) and estimate."""
        from harness.core.resources import threads_per_worker
        from harness.run.baseline import run_baseline_path

        workers = config.jobs if config.executor == "process" and config.jobs else 1
        threads = threads_per_worker(workers) if config.executor == "process" else torch.get_num_threads()
        probes = {}
        for key in sorted({f"{c.model}@{c.dataset}" for c in cells}):
            splits = data[key.split("@", 1)[1]].to(device)
            x, y = splits.head("train", PROBE_BATCH)
            probes[key] = probe_seconds(networks[key].to(device), x, y, threads)
        latency_key = (f"b{config.latency_batch}/t{config.latency_threads}/p{config.latency_passes}/"
                       f"{config.memory_format}")
        features = {}
        for cell in cells:
            key = f"{cell.model}@{cell.dataset}"
            splits, network = data[cell.dataset], networks[key]
            params = sum(p.numel() for plan in cell.planned() for p in network.get_submodule(plan.path).parameters())
            features[cell.cell_id] = CellCost(
                cell.backend, cell.method, cell.target, cell.model, cell.dataset, float(cell.ratio), config.epochs,
                splits.train_size, splits.test_size, params, probes[key], latency_key=latency_key, run=run,
                cell_id=cell.cell_id)
        baselines = 0.0
        for model, dataset, seed in {(c.model, c.dataset, c.seed) for c in cells}:
            if not run_baseline_path(config, model, dataset, seed).is_file():
                splits = data[dataset]
                baselines += probes[f"{model}@{dataset}"] * (config.baseline_epochs * splits.train_size
                                                             + (config.baseline_epochs + 1) * splits.test_size / 3)
        model = CostModel(config.cache_dir)
        estimate = estimate_run(list(features.items()), model, workers, baselines)
        if config.save_models and device.type == "cpu":
            estimate.left_out = "the ONNX Runtime phase" + (" (FP32 and INT8)" if config.quantize == "int8" else "")
        return cls(model, features, estimate)

    def finished(self, cell_id: str, status: str, metrics: dict[str, Any]) -> None:
        """A cell's result: it refines the rest's estimate and, when ok, is recorded for the runs after this one."""
        seconds = metrics.get("cell_s")
        self.rest.finished_cell(cell_id, seconds)
        cost = self.features.get(cell_id)
        if cost is None or status != Status.OK or not seconds:
            return
        decompose, epoch = float(metrics.get("decompose_s") or 0.0), float(metrics.get("epoch_s") or 0.0)
        train = epoch * cost.epochs
        self.model.record(replace(cost, decompose_s=decompose, train_s=train,
                                  other_s=max(0.0, float(seconds) - decompose - train)))

    def timed(self, seconds: dict[str, float]) -> None:
        """The latency phase's seconds per network."""
        if self.features:
            any_cell = next(iter(self.features.values()))
            self.model.record_latency(any_cell.run, seconds, any_cell.latency_key)


def export_priors(cache_dir: str | Path, run_dir: str | Path, path: Path = PRIORS) -> int:
    """Write the records of the run at ``run_dir`` (as this machine's cost model keeps them) as the shipped
    reference records; returns how many. A maintainer's step after a default run on a quiet machine:
    ``python -m harness.run.estimate RUN_DIR [CACHE_DIR]``."""
    run = str(Path(run_dir).resolve())
    records = [replace(r, run="reference") for r in CostModel(cache_dir, priors=None).local if r.run == run]
    return write_records(records, path) if records else 0


if __name__ == "__main__":
    import sys

    from harness.config.settings import default_cache_dir

    count = export_priors(sys.argv[2] if len(sys.argv) > 2 else default_cache_dir(), sys.argv[1])
    print(f"{count} reference records written to {PRIORS}" if count else f"no records of {sys.argv[1]} in the cache")
    raise SystemExit(0 if count else 1)
