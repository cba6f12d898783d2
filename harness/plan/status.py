"""The status a finished cell is stored with: one enum, so no module spells a status by hand.

``Status`` values are the strings the store holds (a ``str`` enum compares and serialises as its value), so runs
stored before it read back the same. Only :attr:`Status.OK` cells are compared, ranked or summarised;
:data:`FAILED` are the statuses that make ``harness run`` and ``harness report`` exit 1.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    OK = "ok"
    UNSUPPORTED = "unsupported"  # the backend cannot do what the cell asks (declared, or refused per layer)
    ERROR = "error"  # the backend raised, or its worker died
    TIMEOUT = "timeout"  # the cell ran past --cell-timeout
    DIVERGED = "diverged"  # the training loss became NaN or infinite
    OVER_BUDGET = "over_budget"  # a replacement held more than its parameter budget
    DAMAGED = "damaged"  # the stored row cannot be read back

    def __str__(self) -> str:
        return self.value


# A cell that failed, diverged, broke the budget its backend promised, or cannot be read back: exit code 1.
FAILED = (Status.ERROR, Status.TIMEOUT, Status.DIVERGED, Status.OVER_BUDGET, Status.DAMAGED)
# What `harness run --resume --retry` may run again.
RETRYABLE = (Status.TIMEOUT, Status.ERROR)
