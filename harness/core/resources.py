"""The machine's resources as a run sees them: the cores it may use, workers and threads per worker."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS keeps one (taskset, a container's
    cpuset), else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_jobs(device: str) -> int:
    """Worker processes when ``--jobs`` is not given: one per available core, each with one thread (latency is
    timed afterwards in the quiet phase, so parallel training no longer distorts it); one on a GPU, which the
    workers would otherwise share."""
    import torch  # only where the device is "auto": --help and planning stay torch-free

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return 1 if on_gpu else available_cores()


def threads_per_worker(jobs: int) -> int:
    return max(1, available_cores() // max(1, jobs))
