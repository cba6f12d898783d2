"""A test model plugin whose conv layers use dilation, to check declared backend gaps."""

from torch import nn

import harness
from harness.run.models import ModelSpec


def dilated(input_shape, num_classes):
    channels = input_shape[0]
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


@harness.hookimpl
def harness_register_models(register):
    register(ModelSpec("dilated", dilated, "test model with a dilated conv"))
