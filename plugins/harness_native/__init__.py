"""The ``native`` backend: tensor decompositions written directly in PyTorch, no extra library.

It offers truncated SVD and TT-matrix for ``nn.Linear`` and CP, Tucker-2, TT and the SVD
of the kernel matrix for ``nn.Conv2d``, all started from the trained weights. This file is only the plugin: it
declares the backend with one callable per (layer kind, method), which the host calls
(after refusing grouped convs, which the backend declares it cannot handle, and before
checking the budget); the algorithms live in ``linear.py``, ``conv.py`` and
``tensor_ops.py``. Copy it as the template for a new backend plugin.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness import BackendInfo, hookimpl, stock_method
from harness_native import conv, linear

NAME = "native"


# Layer kind -> method -> the callable the host dispatches the request to.
METHODS: dict[str, dict[str, Callable]] = {
    "linear": {"svd": stock_method(linear.decompose_svd), "tt": stock_method(linear.decompose_tt)},
    "conv2d": {"cp": stock_method(conv.decompose_cp), "tucker2": stock_method(conv.decompose_tucker2),
               "tt": stock_method(conv.decompose_tt),
               # The kernel as a (Cout, Cin kh kw) matrix: a kh x kw conv to the rank, then a 1x1 conv; two 1x1
               # convs for a 1x1 conv, which is a matrix (ResNet bottlenecks, MobileNet pointwise convs).
               "svd": stock_method(linear.decompose_svd)},
}


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
