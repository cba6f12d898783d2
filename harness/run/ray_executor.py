"""The Ray executor: each cell a Ray task, on this machine or on a cluster, results back to the one driver.

``--executor ray`` joins the cluster at ``--ray-address`` (``ray start --head`` on one machine, ``ray start
--address HEAD:6379`` on the others) or starts a local one. Each task asks for ``--cpus-per-cell`` CPUs (and
``--gpus-per-cell`` GPUs with ``--device cuda``), so the cluster runs as many cells at once as it has room for,
one per GPU on a GPU cluster, and a task's torch uses the CPUs it asked for. At most as many tasks as fit are in
flight, so a cell's time limit counts from when it could start: past it the task is cancelled (its worker
killed) and the cell is ``timeout``. A task whose worker or node dies is not retried: its cell is ``error`` with
Ray's reason, and the run goes on. Ctrl-C cancels every outstanding task and leaves the store as it is, to
``--resume`` with any executor. Only the driver writes the store, one transaction per finished cell, exactly as
with the process executor; finished epochs come back through a Ray queue, so the progress bars move as they
do with the process executor. Dense baselines are trained by the driver before any task runs, into the cache
directory, and the cells save their networks into the run directory: on several machines both must be a path
every node sees (a shared filesystem). Workers load the plugins once per process and keep them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from typing import Any

from harness.config.settings import ConfigError, RunConfig
from harness.plan.cells import Cell
from harness.plan.result import CellResult
from harness.plan.status import Status
from harness.run.executors import ProgressCallback, ResultCallback, timeout_result

# Plugins and the cell context, loaded once per Ray worker process (Ray reuses its workers across tasks).
_WORKER_STATE: dict[str, Any] = {}


def _run_cell_task(config_data: dict, plugin_args: dict, cell_data: dict, threads: int, epochs: Any = None) -> CellResult:
    """One cell, in a Ray worker: the same ``run_cell`` as every executor; each finished epoch goes to ``epochs``."""
    import torch

    from harness.run.host import load_host
    from harness.run.runner import CellContext, run_cell

    torch.set_num_threads(threads)
    key = repr((config_data, plugin_args))
    if _WORKER_STATE.get("key") != key:
        host = load_host(**plugin_args)
        _WORKER_STATE.update(key=key, context=CellContext(RunConfig.from_dict(config_data), host))
    progress = epochs.put_nowait if epochs is not None else None
    return run_cell(Cell.from_dict(cell_data), _WORKER_STATE["context"], progress)


def _check_reachable(address: str | None) -> None:
    """A HOST:PORT nobody listens on is refused at once: Ray itself would keep retrying for many minutes."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise ConfigError(f"--ray-address {address}: cannot join the Ray cluster ({reason}); is 'ray start --head' "
                          "running there?") from None


class RayExecutor:
    """Runs cells as Ray tasks with a per-cell time limit (see the module docstring)."""

    def __init__(self, config: RunConfig, plugin_args: dict[str, Any]) -> None:
        import ray

        self.ray = ray
        self.config = config
        self.plugin_args = plugin_args
        if not ray.is_initialized():
            # A local cluster (no address) gets the machine's CPUs; joining one takes what it has.
            _check_reachable(config.ray_address)
            try:
                ray.init(address=config.ray_address or None, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, TimeoutError) as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise ConfigError(f"--ray-address {config.ray_address}: cannot join the Ray cluster ({reason}); is "
                                  "'ray start --head' running there, and, where the cluster uses token "
                                  "authentication, is RAY_AUTH_MODE=token set here too?") from None
        self.cpus, self.gpus = config.cpus_per_cell, config.gpus_per_cell

    def slots(self) -> int:
        """How many cells the cluster can run at once with the resources each asks for."""
        resources = self.ray.cluster_resources()
        by_cpu = int(resources.get("CPU", 1) // self.cpus)
        by_gpu = int(resources.get("GPU", 0) // self.gpus) if self.gpus else by_cpu
        return max(1, min(by_cpu, by_gpu))

    def run(self, cells: Iterable[Cell], on_result: ResultCallback, on_progress: ProgressCallback | None = None) -> None:
        ray = self.ray
        task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(_run_cell_task)
        pending = list(cells)
        config_data = self.config.to_dict()
        slots = self.slots()
        epochs = self._epoch_queue() if on_progress else None
        running: dict[Any, tuple[Cell, float]] = {}
        try:
            while pending or running:
                while pending and len(running) < slots:
                    cell = pending.pop(0)
                    ref = task.remote(config_data, self.plugin_args, cell.to_dict(), max(1, int(self.cpus)), epochs)
                    running[ref] = (cell, time.monotonic() + self.config.cell_timeout)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                self._report_epochs(epochs, on_progress)
                for ref in ready:
                    cell, _ = running.pop(ref)
                    on_result(cell, self._result(ref, cell))
                now = time.monotonic()
                for ref, (cell, deadline) in list(running.items()):
                    if now > deadline:
                        ray.cancel(ref, force=True)
                        running.pop(ref)
                        on_result(cell, timeout_result(cell, self.config.cell_timeout))
            self._report_epochs(epochs, on_progress)
        finally:
            for ref in running:  # Ctrl-C or an error in the driver: nothing keeps running for a store nobody writes
                ray.cancel(ref, force=True)
            if epochs is not None:
                epochs.shutdown()

    @staticmethod
    def _epoch_queue() -> Any:
        """The channel the tasks report finished epochs on (an actor that takes no CPU a cell could use)."""
        from ray.util.queue import Queue

        return Queue(actor_options={"num_cpus": 0})

    @staticmethod
    def _report_epochs(epochs: Any, on_progress: ProgressCallback | None) -> None:
        """Hands the epochs the tasks finished since the last look to the progress bar."""
        if epochs is not None and on_progress is not None:
            for finished in epochs.get_nowait_batch(epochs.qsize()):
                on_progress(finished)

    def _result(self, ref: Any, cell: Cell) -> CellResult:
        """The cell's result, or its error when the task's worker or node died (Ray's reason, first line)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return CellResult.failed(cell, Status.ERROR, f"Ray task failed ({type(exc).__name__}): {reason[:300]}")
