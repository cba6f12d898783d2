"""The ``native`` backend: tensor decompositions written directly in PyTorch, no extra library.

It offers truncated SVD and TT-matrix for ``nn.Linear`` and CP, Tucker-2 and TT for
``nn.Conv2d``, all started from the trained weights. This file is only the plugin:
it declares the backend and routes each request to the method that serves it;
the algorithms live in ``linear.py``, ``conv.py`` and ``tensor_ops.py``. Copy it as
the template for a new backend plugin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from harness import BackendInfo, DecomposeRequest, Unsupported, hookimpl
from harness.backends import FULL_RANK, count_params, torch_generator
from harness_native import conv, linear

NAME = "native"

# (layer kind, method) -> function(layer, request, generator) returning (replacement, decomposition_info).
METHODS: dict[tuple[str, str], Callable] = {
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
    register(
        BackendInfo(
            name=NAME,
            library="torch",
            library_version=torch.__version__,
            methods=methods,
            conv_unsupported=frozenset({"groups"}),
            init="decompose",
            # TT-matrix views the features as tensors (linear.decompose_tt); SVD does not.
            tensorized_methods=frozenset({"tt"}),
            description="Truncated SVD, TT-matrix, CP-ALS, Tucker-2 (HOOI) and TT-SVD in plain PyTorch.",
        )
    )


@hookimpl
def harness_decompose_layer(layer: nn.Module, request: DecomposeRequest) -> nn.Module | None:
    if request.backend != NAME:
        return None  # another backend's request: let its plugin answer
    if getattr(layer, "groups", 1) != 1:
        raise Unsupported(f"{NAME} does not decompose grouped convolutions (groups={layer.groups})")
    decompose = METHODS.get((request.kind, request.method))
    if decompose is None:
        raise Unsupported(f"{NAME} has no method {request.method!r} for {request.kind} layers")
    # A private CPU generator: the same seed gives the same factors on any device,
    # whatever else has drawn from the global RNG.
    if request.rank == FULL_RANK:
        if request.method == "cp":
            raise Unsupported("CP has no finite full rank")
        # Every format here lowers a rank above its maximum to the maximum.
        request = dataclasses.replace(request, rank=10**9)
    generator = torch_generator(request.seed)
    replacement, info = decompose(layer, request, generator)
    if request.rank is None and count_params(replacement) > request.max_params:
        raise RuntimeError(f"{NAME}/{request.method} built {count_params(replacement)} params, over the budget")
    replacement.decomposition_info = info
    return replacement
