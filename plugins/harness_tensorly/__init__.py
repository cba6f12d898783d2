"""The ``tensorly`` backend: factors computed by tensorly, laid into the native backend's stock modules.

It offers truncated SVD and TT-matrix for ``nn.Linear`` and CP (ALS), Tucker-2 (HOOI),
TT and the SVD of the kernel matrix for ``nn.Conv2d``, all started from the trained weights. The replacement
modules have the same structure as the native backend's, so a native-against-tensorly
comparison measures the decomposition algorithms, not the kernels that run them.
This file is only the plugin: it declares the backend (unavailable, with an install
hint, when tensorly cannot be imported) with one callable per (layer kind, method), which
the host calls; the algorithms live in ``linear.py``, ``conv.py`` and ``tensorly_ops.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from harness import BackendInfo, hookimpl, stock_methods
from harness_tensorly import conv, linear
from harness_tensorly.tensorly_ops import INSTALL_HINT, library_version

NAME = "tensorly"


# Layer kind -> method -> the callable the host dispatches the request to: the stock table of svd, tt (Linear) and
# cp, tucker2, tt, svd (Conv2d), each filling the host's structures with this backend's algorithms.
METHODS = stock_methods(linear, conv)


@hookimpl
def harness_register_backends(register: Callable[[BackendInfo], None]) -> None:
    version = library_version()
    register(
        BackendInfo(
            name=NAME,
            library="tensorly",
            library_version=version,
            methods=METHODS,
            conv_unsupported=frozenset({"groups"}),
            init="decompose",
            # TT-matrix views the features as tensors (linear.decompose_tt); SVD does not.
            tensorized_methods=frozenset({"tt"}),
            modules="harness.tensor.structures",  # the native backend's modules, filled by tensorly's algorithms
            available=version is not None,
            install_hint=INSTALL_HINT,
            description="tensorly's truncated SVD, TT-matrix, parafac (CP-ALS), partial_tucker (HOOI) and "
            "tensor_train on its pytorch backend, in the native backend's module structures.",
        )
    )
