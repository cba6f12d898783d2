"""The ``tltorch`` and ``tltorch-rec`` backends: tensorly-torch's factorized layers, started from trained weights.

Both wrap ``tltorch.FactorizedConv.from_conv`` (CP, Tucker-2, TT) and
``tltorch.FactorizedLinear.from_linear`` (CP, Tucker, block-TT) and differ only in
the forward tltorch runs: ``tltorch`` contracts the input with the factors
(``implementation="factorized"``), ``tltorch-rec`` rebuilds the dense weight and calls
the stock op (``"reconstructed"``). Their speeds differ, so both are measured. This file
is only the plugin: it declares the two backends, with the conv features tltorch gets
wrong and one callable per (layer kind, method) that the host calls; rank choice and
decomposition live in
``conv.py``, ``linear.py`` and ``ranks.py``, and every contact with tltorch and
tensorly's global state in ``library.py``. tltorch is imported only when the backends
are registered or a layer is built, never when this package is, so the plugin loads
(and lists both backends as unavailable) without it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

from torch import nn

from harness import BackendInfo, DecomposeRequest, hookimpl, methods_table
from harness_tltorch import conv, library, linear

# Backend name -> tltorch forward implementation.
IMPLEMENTATIONS = {"tltorch": "factorized", "tltorch-rec": "reconstructed"}

# (layer kind, method) -> the module whose decompose(layer, request, method, implementation) serves it.
METHODS = {
    ("linear", "cp"): linear,
    ("linear", "tucker"): linear,
    ("linear", "blocktt"): linear,
    ("conv2d", "cp"): conv,
    ("conv2d", "tucker2"): conv,
    ("conv2d", "tt"): conv,
}

# What tltorch 0.5's FactorizedConv gets wrong, as measured (tests/backends/tltorch/test_backend_tltorch.py shows
# each). Dilation (also non-square), padding and non-square kernels it carries correctly.
GAPS = {
    "groups": "grouped convs fail at forward time",
    "non_square_stride": "only stride[0] is used, on both axes",
    "padding_mode": "padding_mode is ignored (zeros are used)",
    "padding_same": "string padding ('same', 'valid') fails an assertion",
}
CONV_UNSUPPORTED = frozenset(GAPS)


def decompose(layer: nn.Module, request: DecomposeRequest, implementation: str) -> nn.Module:
    """tltorch's factorized layer for ``layer`` with the given forward ``implementation``, seeded, in tensorly's
    pytorch backend for this call only."""
    builder = METHODS[(request.kind, request.method)]
    with library.pytorch_backend(), library.seeded(request.seed, layer.weight.device), warnings.catch_warnings():
        # tensorly warns on every CP whose rank exceeds a mode's size, then fills random columns
        # as intended: dozens of lines per cell that say nothing.
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs", category=UserWarning)
        replacement, info = builder.decompose(layer, request, request.method, implementation)
    if not all(bool(param.isfinite().all()) for param in replacement.parameters()):
        # e.g. CP-ALS without tltorch's default l2_reg diverges on an over-complete rank
        raise RuntimeError(f"{request.backend}/{request.method}: the decomposition produced non-finite weights")
    replacement.decomposition_info = info
    return replacement


@hookimpl
def harness_register_backends(register: Callable[[BackendInfo], None]) -> None:
    found = library.probe()
    for name, implementation in IMPLEMENTATIONS.items():
        description = f"tensorly-torch FactorizedConv/FactorizedLinear from trained weights, {implementation} forward."
        if not found.available:
            description += f" Unavailable: {found.problem}."
        methods = methods_table(METHODS, functools.partial(decompose, implementation=implementation))
        register(
            BackendInfo(
                name=name,
                library=library.DISTRIBUTION,
                library_version=found.version,
                methods=methods,
                conv_unsupported=CONV_UNSUPPORTED,
                init="decompose",
                # FactorizedLinear always factorizes a tensorized weight (linear.decompose), CP and Tucker too.
                tensorized_methods=frozenset(method for kind, method in METHODS if kind == "linear"),
                available=found.available,
                install_hint=library.INSTALL_HINT,
                description=description,
            )
        )
