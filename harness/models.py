"""Model registry and the built-in models: an MLP, LeNet-5 and a small VGG-style net.

Every model is built by ``build(input_shape, num_classes)`` so the same architecture
runs on MNIST-sized and CIFAR-sized inputs. Plugins add models through
``harness_register_models``; this module is itself registered as a plugin by the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

import harness

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


@harness.hookimpl
def harness_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(ModelSpec("mlp", mlp, "MLP 784-512-256-10: linear layers only"))
    register(ModelSpec("lenet5", lenet5, "LeNet-5: two 5x5 convs and three linear layers"))
    register(ModelSpec("vgg-small", vgg_small, "VGG-style: six 3x3 convs (32-64-128) with BatchNorm, two linear layers"))
