"""Model registry, the built-in models (an MLP, LeNet-5, a small VGG-style net) and models named on the spot.

Every model is built by ``build(input_shape, num_classes)`` so the same architecture
runs on MNIST-sized and CIFAR-sized inputs. Plugins add models through
``harness_register_models``; this module is itself registered as a plugin by the host.
Three kinds of names need no plugin (:func:`resolve_model`): ``torchvision:NAME``
builds any torchvision classification architecture with random weights for the
dataset's input channels, size and classes; ``pkg.module:callable`` and
``path/to/file.py:callable`` call the user's own builder, as ``build(input_shape,
num_classes)`` when it takes two arguments or ``build()`` when it takes none.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from torch import nn

import harness
from harness.core.errors import one_line

InputShape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelSpec:
    """A named model: ``build(input_shape, num_classes)`` returns an untrained ``nn.Module``."""

    name: str
    build: Callable[[InputShape, int], nn.Module]
    description: str = ""


def mlp(input_shape: InputShape, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


def lenet5(input_shape: InputShape, num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    # Padding 2 on 28x28 inputs recovers the 32x32 geometry of the original LeNet-5.
    pad = 2 if height == 28 else 0
    features = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    side_h = ((height + 2 * pad - 4) // 2 - 4) // 2
    side_w = ((width + 2 * pad - 4) // 2 - 4) // 2
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Linear(16 * side_h * side_w, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def vgg_small(input_shape: InputShape, num_classes: int) -> nn.Module:
    channels, height, width = input_shape

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    layers = [
        *block(channels, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), *block(128, 128), nn.MaxPool2d(2),
    ]
    side = (height // 8) * (width // 8)
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(128 * side, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


TORCHVISION = "torchvision:"


class ModelUnavailable(Exception):
    """A model name that names nothing buildable; the message is one line that says why."""


def _torchvision_names() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((path, m) for path, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def torchvision_builder(name: str) -> Callable[[InputShape, int], nn.Module]:
    """``build(input_shape, num_classes)`` for torchvision's classification architecture ``name``, random weights.

    The first conv is rebuilt for the input's channels when they are not 3 (MNIST), models that take an image
    size (ViT, Swin) get the input's, and Inception-style auxiliary heads are off (one output, as elsewhere).
    """
    import torchvision.models

    def build(input_shape: InputShape, num_classes: int) -> nn.Module:
        channels, height, _ = input_shape
        builder = torchvision.models.get_model_builder(name)
        accepted = inspect.signature(builder).parameters
        options: dict = {"weights": None, "num_classes": num_classes}
        if "image_size" in accepted or name.startswith("vit_"):
            options["image_size"] = height
        if name in ("googlenet", "inception_v3"):
            options.update(aux_logits=False, init_weights=True)
        model = builder(**options)
        first = _first_conv(model)
        if first is not None and channels != first[1].in_channels:
            path, conv = first
            replacement = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                                    padding=conv.padding, dilation=conv.dilation, groups=1,
                                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
            parent, _, attribute = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attribute, replacement)
        return model

    return build


# Set by user_code_outside while a stored run's model is rebuilt: the folder the run was started from (where its
# relative model names pointed) and the run directory, from which no code is ever imported.
_RUN_CWD: str | None = None
_NO_CODE_FROM: str | None = None


@contextlib.contextmanager
def user_code_outside(run_dir: str | os.PathLike, run_cwd: str | None):
    """While a stored run's network is rebuilt: relative model names that do not resolve here resolve against
    ``run_cwd``, the folder the run was started from, and nothing inside ``run_dir`` is imported (a run directory
    is data: a model file planted in it is refused, never run)."""
    global _RUN_CWD, _NO_CODE_FROM
    saved = _RUN_CWD, _NO_CODE_FROM
    _RUN_CWD, _NO_CODE_FROM = run_cwd, os.path.realpath(run_dir)
    try:
        yield
    finally:
        _RUN_CWD, _NO_CODE_FROM = saved


def _refuse_inside_run_dir(path: str | None, name: str) -> None:
    if _NO_CODE_FROM and path:
        real = os.path.realpath(path)
        if real == _NO_CODE_FROM or real.startswith(_NO_CODE_FROM + os.sep):
            raise ModelUnavailable(f"{name} is inside the run directory ({real}): harness never runs code from a "
                                   "run directory")


def _load_file(path: str):
    """Import a ``.py`` file as a module (kept in ``sys.modules`` under a name derived from its path)."""
    absolute = os.path.abspath(path)
    if not os.path.isfile(absolute) and _RUN_CWD and not os.path.isabs(path):
        absolute = os.path.abspath(os.path.join(_RUN_CWD, path))
    if not os.path.isfile(absolute):
        raise ModelUnavailable(f"no such file: {path}")
    _refuse_inside_run_dir(absolute, path)
    name = "harness_user_model_" + "".join(c if c.isalnum() else "_" for c in absolute)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, absolute)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def user_builder(location: str, attribute: str) -> Callable[[InputShape, int], nn.Module]:
    """``build(input_shape, num_classes)`` around the user's callable ``attribute`` of a module or ``.py`` file.

    The callable is called with ``(input_shape, num_classes)`` when it takes two or more positional arguments,
    and with no arguments when it takes none (it then fixes its own input size and classes).
    """
    try:
        if location.endswith(".py") or os.sep in location:
            module = _load_file(location)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            if _RUN_CWD and importlib.util.find_spec(location.split(".")[0]) is None and _RUN_CWD not in sys.path:
                sys.path.append(_RUN_CWD)
            top = importlib.util.find_spec(location.split(".")[0])
            _refuse_inside_run_dir(top.origin if top else None, location)
            module = importlib.import_module(location)
    except ModelUnavailable:
        raise
    except (Exception, SystemExit) as exc:  # a sys.exit at import would otherwise end harness with its code
        raise ModelUnavailable(f"cannot import {location!r}: {one_line(exc)}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ModelUnavailable(f"{location!r} has no callable {attribute!r}")
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        parameters = []
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    takes_shape = len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)
    required = [p for p in positional if p.default is p.empty and p.kind != p.VAR_POSITIONAL]
    if (not takes_shape and required) or len(required) > 2:
        raise ModelUnavailable(f"{location}:{attribute} must take (input_shape, num_classes) or no arguments")

    def build(input_shape: InputShape, num_classes: int) -> nn.Module:
        model = function(tuple(input_shape), num_classes) if takes_shape else function()
        if not isinstance(model, nn.Module):
            raise ModelUnavailable(f"{location}:{attribute} returned a {type(model).__name__}, not an nn.Module")
        return model

    return build


def resolve_model(name: str, registered: MutableMapping[str, ModelSpec]) -> ModelSpec:
    """The model called ``name``: a registered one, or one named on the spot (``torchvision:NAME``,
    ``pkg.module:callable``, ``path/to/file.py:callable``), which is then added to ``registered`` so later
    lookups find it. Raises :class:`ModelUnavailable` with a one-line reason."""
    if name in registered:
        return registered[name]
    if name.startswith(TORCHVISION):
        architecture = name[len(TORCHVISION):]
        known = _torchvision_names()
        if architecture not in known:
            close = [k for k in known if k.startswith(architecture[:4])][:6]
            raise ModelUnavailable(f"torchvision has no classification model {architecture!r}"
                                   + (f" (did you mean {', '.join(close)}?)" if close else ""))
        spec = ModelSpec(name, torchvision_builder(architecture), f"torchvision {architecture}, random weights")
    elif ":" in name:
        location, _, attribute = name.rpartition(":")
        spec = ModelSpec(name, user_builder(location, attribute), f"the user's builder {attribute} in {location}")
    else:
        raise ModelUnavailable(f"unknown model {name!r} (known: {', '.join(sorted(registered))}; or "
                               "torchvision:NAME, pkg.module:callable, path/to/file.py:callable)")
    registered[name] = spec
    return spec


@harness.hookimpl
def harness_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(ModelSpec("mlp", mlp, "MLP 784-512-256-10: linear layers only"))
    register(ModelSpec("lenet5", lenet5, "LeNet-5: two 5x5 convs and three linear layers"))
    register(ModelSpec("vgg-small", vgg_small, "VGG-style: six 3x3 convs (32-64-128) with BatchNorm, two linear layers"))
