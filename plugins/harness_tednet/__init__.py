"""The ``tednet`` backend: TedNet's CP, Tucker-2, TT, TR and block-term Tucker layers as drop-in replacements.

TedNet (``tednet.tnn``) has ``*Linear`` and ``*Conv2D`` layers in five formats but no way
to start them from trained weights. Every format but CP Linear stores the factors of a
decomposition of the weight, so this backend computes that decomposition itself and
copies it in (``init="decompose"``); CP Linear starts from TedNet's seeded random init
(``init="scratch"``). This file is only the plugin: it declares the backend with one
callable per (layer kind, method), which the host calls; the formats live in ``conv.py`` and ``linear.py``, rank choice in
``formats.py``, the shared build steps in ``replace.py``, the algebra in
``tensor_ops.py`` and everything that touches TedNet in ``library.py``, so the plugin
imports (and reports TedNet unavailable) without TedNet installed.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from harness import BackendInfo, DecomposeRequest, hookimpl, methods_table
from harness_tednet import conv, linear
from harness_tednet.library import tednet_version
from harness_tednet.replace import replace

NAME = "tednet"
INSTALL_HINT = 'pip install -e ".[tednet]"'

# (layer kind, method) -> (format factory, init). Methods are named like the other backends'.
METHODS: dict[tuple[str, str], tuple[Callable, str]] = {
    ("linear", "cp"): (linear.cp, "scratch"),
    ("linear", "tucker2"): (linear.tucker2, "decompose"),
    ("linear", "tt"): (linear.tt, "decompose"),
    ("linear", "tr"): (linear.tr, "decompose"),
    ("linear", "btt"): (linear.btt, "decompose"),
    ("conv2d", "cp"): (conv.cp, "decompose"),
    ("conv2d", "tucker2"): (conv.tucker2, "decompose"),
    ("conv2d", "tt"): (conv.tt, "decompose"),
    ("conv2d", "tr"): (conv.tr, "decompose"),
    ("conv2d", "btt"): (conv.btt, "decompose"),
}

# TedNet's convs take only kernel_size, stride and padding (F.conv2d / nn.Conv2d get them as given,
# so tuples, non-square strides and "same"/"valid" work); there is no dilation, groups or padding_mode.
CONV_UNSUPPORTED = frozenset({"groups", "dilation", "padding_mode"})


def decompose(layer: nn.Module, request: DecomposeRequest) -> nn.Module:
    """TedNet's layer of the request's format for ``layer``, filled from the decomposition (or its own init)."""
    factory, init = METHODS[(request.kind, request.method)]
    return replace(layer, request, factory(layer, dict(request.options)), init)


@hookimpl
def harness_register_backends(register: Callable[[BackendInfo], None]) -> None:
    version = tednet_version()
    methods = methods_table(METHODS, decompose)
    register(
        BackendInfo(
            name=NAME,
            library="tednet",
            library_version=version,
            methods=methods,
            conv_unsupported=CONV_UNSUPPORTED,
            init="decompose",
            # Every TedNet *Linear format takes tensorized features (linear._shapes), TK2Linear only its input side.
            tensorized_methods=frozenset(method for kind, method in METHODS if kind == "linear"),
            init_per_method={f"{kind}/{method}": init for (kind, method), (_, init) in METHODS.items()},
            available=version is not None,
            install_hint=INSTALL_HINT,
            description="TedNet's CP, Tucker-2, TT, TR and block-term Tucker layers; "
            "filled from CP-ALS, HOOI, TT-SVD and TR-SVD of the weight (CP Linear: TedNet's random init).",
        )
    )
