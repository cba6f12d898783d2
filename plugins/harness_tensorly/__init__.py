"""The ``tensorly`` backend: factors computed by tensorly, laid into the native backend's stock modules.

It offers truncated SVD and TT-matrix for ``nn.Linear`` and CP (ALS), Tucker-2 (HOOI)
and TT for ``nn.Conv2d``, all started from the trained weights. The replacement
modules have the same structure as the native backend's, so a native-against-tensorly
comparison measures the decomposition algorithms, not the kernels that run them.
This file is only the plugin: it declares the backend (unavailable, with an install
hint, when tensorly cannot be imported) and routes each request to the method that
serves it; the algorithms live in ``linear.py``, ``conv.py`` and ``tensorly_ops.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from harness import BackendInfo, DecomposeRequest, Unsupported, hookimpl
from harness.backends import FULL_RANK, count_params
from harness_tensorly import conv, linear
from harness_tensorly.tensorly_ops import INSTALL_HINT, library_version

NAME = "tensorly"

# (layer kind, method) -> function(layer, request) returning (replacement, decomposition_info).
METHODS: dict[tuple[str, str], Callable[[Any, DecomposeRequest], tuple[nn.Module, dict]]] = {
    ("linear", "svd"): linear.decompose_svd,
    ("linear", "tt"): linear.decompose_tt,
    ("conv2d", "cp"): conv.decompose_cp,
    ("conv2d", "tucker2"): conv.decompose_tucker2,
    ("conv2d", "tt"): conv.decompose_tt,
}


@hookimpl
def harness_register_backends(register: Callable[[BackendInfo], None]) -> None:
    methods: dict[str, tuple[str, ...]] = {}
    for kind, method in METHODS:
        methods[kind] = (*methods.get(kind, ()), method)
    version = library_version()
    register(
        BackendInfo(
            name=NAME,
            library="tensorly",
            library_version=version,
            methods=methods,
            conv_unsupported=frozenset({"groups"}),
            init="decompose",
            # TT-matrix views the features as tensors (linear.decompose_tt); SVD does not.
            tensorized_methods=frozenset({"tt"}),
            available=version is not None,
            install_hint=INSTALL_HINT,
            description="tensorly's truncated SVD, TT-matrix, parafac (CP-ALS), partial_tucker (HOOI) and "
            "tensor_train on its pytorch backend, in the native backend's module structures.",
        )
    )


@hookimpl
def harness_decompose_layer(layer: nn.Module, request: DecomposeRequest) -> nn.Module | None:
    if request.backend != NAME:
        return None  # another backend's request: let its plugin answer
    if library_version() is None:
        raise Unsupported(f"tensorly cannot be imported: {INSTALL_HINT}")
    if getattr(layer, "groups", 1) != 1:
        raise Unsupported(f"{NAME} does not decompose grouped convolutions (groups={layer.groups})")
    decompose = METHODS.get((request.kind, request.method))
    if decompose is None:
        raise Unsupported(f"{NAME} has no method {request.method!r} for {request.kind} layers")
    if isinstance(request.rank, str) and request.rank == FULL_RANK:
        if request.method == "cp":
            raise Unsupported("CP has no finite full rank")
        # Every format here lowers a rank above its maximum to the maximum.
        request = dataclasses.replace(request, rank=10**9)
    replacement, info = decompose(layer, request)
    if request.rank is None and count_params(replacement) > request.max_params:
        raise RuntimeError(f"{NAME}/{request.method} built {count_params(replacement)} params, over the budget")
    replacement.decomposition_info = info
    return replacement
