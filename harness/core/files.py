"""Atomic file writes: a file is either whole or absent, whatever kills the process meanwhile.

Caches (baselines, the parsed data) and the networks waiting for the latency phase are written through
:func:`write_atomically`: to a temporary name in the target's folder, flushed to disk, renamed over the target,
and the folder itself flushed so the rename survives a crash. A reader never sees a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` by calling ``write(handle)`` on a temporary file in its folder, then renaming it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)
