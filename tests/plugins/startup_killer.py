"""A plugin whose first import in a worker process SIGKILLs that worker, as the OOM killer would while it starts.

The driver imports it too and lives; in a worker (a spawned child) the first import creates the marker file named by
``HARNESS_TEST_KILL_MARKER`` and kills the process, so the worker started in its place loads normally.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

_marker = os.environ.get("HARNESS_TEST_KILL_MARKER")
if _marker and multiprocessing.parent_process() is not None:
    try:
        os.close(os.open(_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # only the first worker ever gets here
    except FileExistsError:
        pass
    else:
        os.kill(os.getpid(), signal.SIGKILL)
