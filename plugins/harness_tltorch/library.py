"""Access to tensorly-torch without letting it change the rest of the process.

Importing ``tltorch`` calls ``tensorly.set_backend("pytorch")`` for the whole process,
which would silently change what every other tensorly user (the ``tensorly`` backend
plugin, user code) computes with. :func:`import_tltorch` imports it and puts the
previous backend back; :func:`pytorch_backend` switches tensorly to PyTorch only for
the duration of our own calls (decomposition and every forward of our layers, which
fail under the NumPy backend). :func:`probe` says whether the backend can run at all
(tltorch importable, ``opt_einsum`` present) and :func:`seeded` runs a decomposition
with fixed seeds while leaving the global torch and NumPy RNGs as they were.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

DISTRIBUTION = "tensorly-torch"
INSTALL_HINT = 'pip install -e ".[tltorch]"'


def import_tltorch() -> ModuleType:
    """``import tltorch``, with tensorly's backend left as it was before the import."""
    import tensorly as tl

    previous = tl.get_backend()
    try:
        return importlib.import_module("tltorch")
    finally:
        if tl.get_backend() != previous:
            tl.set_backend(previous)


@contextlib.contextmanager
def pytorch_backend() -> Iterator[None]:
    """Run the block with tensorly's PyTorch backend, restoring the caller's backend after.

    The tensor algebra runs on tensorly's ``einsum`` backend (opt_einsum is a dependency of this
    backend): the CP behind ``FactorizedConv.from_conv`` then contracts instead of forming
    Khatri-Rao products, as in the ``tensorly`` backend.
    """
    import tensorly as tl

    algebra = (tl.tenalg.backend_context("einsum", local_threadsafe=True)
               if torch.backends.opt_einsum.is_available() else contextlib.nullcontext())
    if tl.get_backend() == "pytorch":  # the common case costs one lookup, not a switch
        with algebra:
            yield
        return
    # Thread-local: a forward running here must not flip the backend under another thread.
    with tl.backend_context("pytorch", local_threadsafe=True), algebra:
        yield


@dataclass(frozen=True)
class Probe:
    """Whether the backend can run: ``problem`` is empty when it can, else says what is missing."""

    version: str | None
    problem: str = ""

    @property
    def available(self) -> bool:
        return not self.problem


def probe() -> Probe:
    """Import tltorch and opt_einsum (not cached, so a test can hide either) and report."""
    try:
        tltorch = import_tltorch()
    except Exception as exc:  # any import failure (missing, or broken against this torch) means unavailable
        return Probe(version=None, problem=f"tensorly-torch cannot be imported ({type(exc).__name__}: {exc})")
    version = getattr(tltorch, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    try:
        importlib.import_module("opt_einsum")
    except ImportError:
        # Without it torch.einsum contracts left to right: a factorized Linear forward
        # then took 10-25 s and ~8 GB instead of ~1 ms, which would poison every timing.
        return Probe(version=version, problem="opt_einsum is missing (tltorch's factorized forward needs it)")
    return Probe(version=version)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch and NumPy for the block, then give both global RNGs back untouched.

    tltorch draws from the global torch RNG (``FactorizedLinear`` initialises its weight
    before decomposing over it) and tensorly from NumPy's whenever it is given no
    ``random_state``; forking both keeps a cell reproducible and its neighbours unaffected.
    """
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            # Seed only the generators that were forked (torch.manual_seed would touch every GPU).
            torch.default_generator.manual_seed(seed)
            for index in devices:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(numpy_state)
