"""What a person watching a run sees between finished cells: a line per finished cell when there is no terminal
(:class:`ProgressLines`), and, whatever the output, a line naming what each running cell is doing whenever nothing
has been printed for :data:`HEARTBEAT_S` seconds (:class:`Heartbeat`), so a long fit is never a silence.

Cells report their stage (the layer being decomposed, fine-tuning, saving) through the executors' progress
callback as ``(cell id, stage)`` pairs; the heartbeat keeps the latest per running cell and prints from a daemon
thread, so it speaks even while the in-process executor holds the main thread in a long fit.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

# Seconds without output after which the running cells are named (the first within this, plus a second).
HEARTBEAT_S = 20.0


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def to_stderr(line: str) -> None:
    from tqdm import tqdm  # writes above any progress bar on a terminal, plainly otherwise

    tqdm.write(line, file=sys.stderr)


class Heartbeat:
    """Names each running cell's stage after ``every`` seconds without output; a context manager around the cells
    phase. :meth:`printed` tells it something else was just written."""

    def __init__(self, write: Callable[[str], None] = to_stderr, every: float | None = None) -> None:
        self.write, self.every = write, every or HEARTBEAT_S
        self.running: dict[str, tuple[str, float, float]] = {}  # cell id -> (stage, stage since, cell since)
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="harness-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)

    def stage(self, cell_id: str, text: str) -> None:
        now = time.monotonic()
        with self.lock:
            started = self.running.get(cell_id, ("", now, now))[2]
            self.running[cell_id] = (text, now, started)

    def done(self, cell_id: str) -> None:
        with self.lock:
            self.running.pop(cell_id, None)
            self.last = time.monotonic()

    def printed(self) -> None:
        with self.lock:
            self.last = time.monotonic()

    def lines(self, now: float) -> list[str]:
        """The lines due at ``now`` (none while output is recent), and the silence restarts."""
        with self.lock:
            if now - self.last < self.every or not self.running:
                return []
            self.last = now
            return [f"... {cell_id}: {text} for {duration(now - since)} (cell running {duration(now - started)})"
                    for cell_id, (text, since, started) in self.running.items()]

    def _loop(self) -> None:
        while not self.stopped.wait(1.0):
            for line in self.lines(time.monotonic()):
                self.write(line)


class ProgressLines:
    """Progress for a log file: without a terminal the bars are off, so each finished cell gets one line on stderr
    (how many are done, the cell, its status, the time so far and, from ``left``, an estimate of the rest)."""

    def __init__(self, total: int, left: Callable[[], float | None] | None = None) -> None:
        self.total, self.done, self.start, self.left = total, 0, time.monotonic(), left

    def finished(self, cell_id: str, status: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        left = self.left() if self.left else None
        if left is None:  # no cost model to go by: the cells left at the pace of those done
            left = elapsed / self.done * (self.total - self.done)
        rest = f", about {duration(left)} left" if self.done < self.total else ""
        print(f"[{self.done}/{self.total}] {status} {cell_id} ({duration(elapsed)} so far{rest})", file=sys.stderr,
              flush=True)
