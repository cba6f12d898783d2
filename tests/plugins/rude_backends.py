"""Backends that try to end the whole run from inside a cell, for the in-process executor's checks.

``quitter`` calls ``sys.exit(5)`` in its SVD method: that must fail its cell, not end the run.
``interrupter`` raises ``KeyboardInterrupt``, as a Ctrl-C during its cell would: the run must stop
cleanly, keeping every finished cell. Loaded in tests with ``-p rude_backends``.
"""

from __future__ import annotations

import sys

import torch

import harness


def quit_run(layer, request):
    sys.exit(5)


def interrupt_run(layer, request):
    raise KeyboardInterrupt


@harness.hookimpl
def harness_register_backends(register):
    register(harness.BackendInfo(name="quitter", library="torch", library_version=torch.__version__,
                                 methods={"linear": {"svd": quit_run}}))
    register(harness.BackendInfo(name="interrupter", library="torch", library_version=torch.__version__,
                                 methods={"linear": {"svd": interrupt_run}}))
