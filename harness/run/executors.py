"""Executors: run cells and hand each result back to the driver as soon as it finishes.

``InProcessExecutor`` runs cells one after another in the driver's process (simple to
debug; the time limit uses a POSIX interval timer). ``ProcessExecutor`` keeps ``jobs``
spawned worker processes, each loading the plugins once and running one cell at a
time; a cell that overruns the time limit gets its worker killed and replaced, so a
hung backend costs one cell, never the run, and every worker ends with its driver however
the driver ends. :class:`harness.run.ray_executor.RayExecutor` implements the same
``run(cells, on_result, on_progress)`` interface on a Ray cluster.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from harness.config.settings import RunConfig
from harness.core.deadline import deadline
from harness.core.resources import threads_per_worker
from harness.plan.cells import Cell
from harness.plan.result import CellResult
from harness.plan.status import Status

ResultCallback = Callable[[Cell, CellResult], None]
# What a running cell reports: an int is fine-tuning epochs finished, a (cell id, stage) pair where it is now.
ProgressCallback = Callable[[int | tuple[str, str]], None]


def timeout_result(cell: Cell, limit: float) -> CellResult:
    """The result of a cell stopped at the time limit, the same whichever executor stopped it."""
    return CellResult.failed(cell, Status.TIMEOUT, f"cell exceeded the time limit of {limit:g} s")


class _CellTimeout(BaseException):
    """Raised by the interval timer; a BaseException so the runner's error handling does not swallow it."""


class InProcessExecutor:
    """Runs cells sequentially in this process."""

    def __init__(self, config: RunConfig, host) -> None:
        from harness.run.runner import CellContext

        self.config = config
        self.context = CellContext(config, host)

    def run(self, cells: Iterable[Cell], on_result: ResultCallback, on_progress: ProgressCallback | None = None) -> None:
        from harness.run.runner import run_cell

        for cell in cells:
            try:
                with deadline(self.config.cell_timeout, _CellTimeout):
                    result = run_cell(cell, self.context, on_progress)
            except SystemExit as exc:  # a plugin calling sys.exit() fails its cell, not the run
                result = CellResult.failed(cell, Status.ERROR, f"the cell called sys.exit({exc.code!r})")
            except _CellTimeout:
                result = timeout_result(cell, self.config.cell_timeout)
            on_result(cell, result)


def die_with_parent(parent: int) -> None:
    """End this process when the driver ``parent`` dies, however it dies (SIGKILL from the OOM killer included):
    the kernel's parent-death signal on Linux, and everywhere a watchdog thread polling the parent pid."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    if os.getppid() != parent:  # the driver died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_main(config_data: dict, plugin_args: dict, threads: int, tasks: mp.Queue, results: mp.Queue, wid: int,
                 parent: int) -> None:
    """Entry point of a worker process: load plugins once, then run cells until told to stop."""
    die_with_parent(parent)
    torch.set_num_threads(threads)
    from harness.run.host import load_host
    from harness.run.runner import CellContext, run_cell

    host = load_host(**plugin_args)
    context = CellContext(RunConfig.from_dict(config_data), host)
    results.put(("ready", wid, None))
    while True:
        item = tasks.get()
        if item is None:
            return
        cell = Cell.from_dict(item)
        result = run_cell(cell, context, lambda n: results.put(("progress", wid, n)))
        results.put(("result", wid, result))


class ProcessExecutor:
    """Runs cells in ``jobs`` spawned worker processes with a per-cell time limit."""

    def __init__(self, config: RunConfig, plugin_args: dict[str, Any], jobs: int = 1) -> None:
        self.config = config
        self.plugin_args = plugin_args
        self.jobs = jobs
        self.threads = threads_per_worker(jobs)
        # spawn, not fork: forking a process whose OpenMP/CUDA runtimes are initialised can hang.
        self.mp = mp.get_context("spawn")
        self.results: mp.Queue = self.mp.Queue()
        self.workers: dict[int, dict[str, Any]] = {}
        self._next_id = 0

    def _start_worker(self) -> None:
        wid = self._next_id
        self._next_id += 1
        tasks = self.mp.Queue()
        process = self.mp.Process(target=_worker_main, daemon=True,
                                  args=(self.config.to_dict(), self.plugin_args, self.threads, tasks, self.results, wid,
                                        os.getpid()))
        process.start()
        self.workers[wid] = {"process": process, "tasks": tasks, "cell": None, "deadline": None, "ready": False}

    def _stop_worker(self, wid: int, kill: bool = False) -> None:
        worker = self.workers.pop(wid)
        if kill:
            worker["process"].kill()
        else:
            worker["tasks"].put(None)
        worker["process"].join(timeout=10)
        if worker["process"].is_alive():
            worker["process"].kill()

    def run(self, cells: Iterable[Cell], on_result: ResultCallback, on_progress: ProgressCallback | None = None) -> None:
        pending = list(cells)
        if not pending:
            return
        for _ in range(min(self.jobs, len(pending))):
            self._start_worker()
        try:
            while pending or any(w["cell"] is not None for w in self.workers.values()):
                for wid, worker in list(self.workers.items()):
                    if worker["ready"] and worker["cell"] is None and pending:
                        cell = pending.pop(0)
                        worker["cell"], worker["deadline"] = cell, time.monotonic() + self.config.cell_timeout
                        worker["tasks"].put(cell.to_dict())
                try:
                    kind, wid, payload = self.results.get(timeout=0.2)
                except queue.Empty:
                    kind = None
                if kind == "ready" and wid in self.workers:
                    self.workers[wid]["ready"] = True
                elif kind == "progress" and on_progress:
                    on_progress(payload)
                elif kind == "result" and wid in self.workers:
                    cell = self.workers[wid]["cell"]
                    self.workers[wid]["cell"] = None
                    on_result(cell, payload)
                self._reap(on_result, pending)
        finally:
            for wid in list(self.workers):
                self._stop_worker(wid, kill=self.workers[wid]["cell"] is not None)

    def _reap(self, on_result: ResultCallback, pending: list[Cell]) -> None:
        """Kill workers whose cell overran its limit, replace dead workers."""
        now = time.monotonic()
        for wid, worker in list(self.workers.items()):
            cell = worker["cell"]
            alive = worker["process"].is_alive()
            if cell is not None and now > worker["deadline"]:
                self._stop_worker(wid, kill=True)
                on_result(cell, timeout_result(cell, self.config.cell_timeout))
            elif not alive:
                code = worker["process"].exitcode
                self._stop_worker(wid, kill=True)
                why = " (killed: out of memory?)" if code == -signal.SIGKILL else ""
                if cell is not None:
                    on_result(cell, CellResult.failed(cell, Status.ERROR, f"worker process died (exit code {code}){why}"))
                elif not worker["ready"] and pending:
                    # It died loading the plugins (the OOM killer, a plugin's crash): the cell it was about to take
                    # pays for it, so a worker that can never start fails each cell once, never the whole run.
                    cell = pending.pop(0)
                    on_result(cell, CellResult.failed(cell, Status.ERROR,
                                                  f"worker process died while starting (exit code {code}){why}"))
            else:
                continue
            if pending:
                self._start_worker()
