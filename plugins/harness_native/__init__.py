"""The ``native`` backend: tensor decompositions written directly in PyTorch, no extra library.

It offers truncated SVD and TT-matrix for ``nn.Linear`` and CP, Tucker-2, TT and the SVD
of the kernel matrix for ``nn.Conv2d``, all started from the trained weights. This file is only the plugin: it
declares the backend with one callable per (layer kind, method), which the host calls
(after refusing grouped convs, which the backend declares it cannot handle, and before
checking the budget); the methods live in ``linear.py`` and ``conv.py``, on the host's kernels
and structures (all from the public API, ``from harness import ...``). Copy it as the template
for a new backend plugin.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness import BackendInfo, hookimpl, stock_methods
from harness_native import conv, linear

NAME = "native"


# Layer kind -> method -> the callable the host dispatches the request to: the stock table of svd, tt (Linear) and
# cp, tucker2, tt, svd (Conv2d), each filling the host's structures with this backend's algorithms.
METHODS = stock_methods(linear, conv)


@hookimpl
def harness_register_backends(register: Callable[[BackendInfo], None]) -> None:
    register(
        BackendInfo(
            name=NAME,
            library="torch",
            library_version=torch.__version__,
            methods=METHODS,
            conv_unsupported=frozenset({"groups"}),
            init="decompose",
            # TT-matrix views the features as tensors (linear.decompose_tt); SVD does not.
            tensorized_methods=frozenset({"tt"}),
            modules="harness.tensor.structures",
            description="Truncated SVD, TT-matrix, CP-ALS, Tucker-2 (HOOI) and TT-SVD in plain PyTorch.",
        )
    )
