"""The PyTorch modules of a layer plan (``mnist_common.plan``) and the input normalisation.

``Net(plan)`` builds one module per named spec (``Conv`` -> ``ConvBlock``, ``Residual`` ->
``ResidualBlock``, ``Linear`` -> ``nn.Linear``) and runs the plan in order. Dropout is part of
the plan because MC dropout (``trainer.uncertainty``) runs it at inference too;
``forward(x, masks=...)`` applies given masks instead of random ones, so PyTorch and Rust can
be compared on the same masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mnist_common.constants import IMAGE_SIZE, MNIST_MEAN, MNIST_STD, NUM_CLASSES
from mnist_common.plan import (
    ARCHITECTURE,
    ARCHITECTURES,
    CNN,
    DEFAULT_ARCHITECTURE,
    Conv,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Linear,
    MaxPool,
    Residual,
    architecture,
)

__all__ = [
    "ARCHITECTURE",
    "ARCHITECTURES",
    "DEFAULT_ARCHITECTURE",
    "IMAGE_SIZE",
    "MNIST_MEAN",
    "MNIST_STD",
    "NUM_CLASSES",
    "ConvBlock",
    "Net",
    "ResidualBlock",
    "build",
    "count_parameters",
    "normalize",
]

#: The plan's activation names as functions (``mnist_common.plan.ACTIVATION_NAMES``).
ACTIVATIONS = {"none": lambda x: x, "relu": F.relu, "gelu": F.gelu}  # gelu: exact, erf-based


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Map raw pixels to the model's input scale.

    Args:
        pixels: any shape, values in [0, 255] (uint8 or float), ink = 255.

    Returns:
        float32 tensor of the same shape: ``(pixels / 255 - MNIST_MEAN) / MNIST_STD``,
        roughly in [-0.42, 2.82].
    """
    return (pixels.float() / 255.0 - MNIST_MEAN) / MNIST_STD


# --- PyTorch modules built from a plan --------------------------------------------------------


class ConvBlock(nn.Module):
    """A ``Conv`` spec as modules: ``conv`` (nn.Conv2d), ``norm`` (nn.BatchNorm2d, or absent),
    then the activation and the max-pool (functional, no tensors)."""

    def __init__(self, spec: Conv) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, padding=spec.padding)
        self.norm = nn.BatchNorm2d(spec.out_channels) if spec.norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        x = ACTIVATIONS[self.spec.activation](x)
        return F.max_pool2d(x, self.spec.pool) if self.spec.pool else x


class ResidualBlock(nn.Module):
    """A ``Residual`` spec as modules: ``a``, ``b`` and, when channels change, ``shortcut``."""

    def __init__(self, spec: Residual) -> None:
        super().__init__()
        parts = spec.parts()
        self.a, self.b = ConvBlock(parts["a"]), ConvBlock(parts["b"])
        self.shortcut = ConvBlock(parts["shortcut"]) if "shortcut" in parts else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(self.b(self.a(x)) + skip)


class Net(nn.Module):
    """An MNIST classifier built from a layer plan (default: ``cnn``, 260,810 parameters).

    ``forward`` takes normalised images (N, 1, 28, 28) float32 and returns logits (N, 10).
    """

    def __init__(self, layers: Sequence = CNN.layers, architecture: str = CNN.id) -> None:
        super().__init__()
        self.layers = tuple(layers)
        #: The ``architecture`` metadata id written with the weights (``Architecture.id``).
        self.architecture = architecture
        for spec in self.layers:
            if isinstance(spec, Conv):
                self.add_module(spec.name, ConvBlock(spec))
            elif isinstance(spec, Residual):
                self.add_module(spec.name, ResidualBlock(spec))
            elif isinstance(spec, Linear):
                self.add_module(spec.name, nn.Linear(spec.in_features, spec.out_features))

    def forward(self, x: torch.Tensor, masks: Callable[[int, torch.Size], torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (N, 10) of normalised images (N, 1, 28, 28).

        Args:
            masks: optional: ``masks(i, shape)`` gives the mask of the i-th Dropout layer for
                an input of ``shape`` (a 0/1 float tensor of that shape), applied as
                ``x * mask / (1 - p)`` instead of random dropout, in any mode (MC dropout with
                given masks: ``trainer.uncertainty``).

        Raises:
            ValueError: input not (N, 1, 28, 28).
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected input of shape (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape)}")
        dropped = 0
        for spec in self.layers:
            if isinstance(spec, MaxPool):
                x = F.max_pool2d(x, spec.kernel_size)
            elif isinstance(spec, GlobalAvgPool):
                x = x.mean(dim=(2, 3))
            elif isinstance(spec, Flatten):
                x = torch.flatten(x, 1)
            elif isinstance(spec, Dropout):
                if masks is not None:
                    x = x * masks(dropped, x.shape) / (1.0 - spec.p)
                else:
                    x = F.dropout(x, spec.p, self.training)
                dropped += 1
            elif isinstance(spec, Linear):
                x = ACTIVATIONS[spec.activation](getattr(self, spec.name)(x))
            else:
                x = getattr(self, spec.name)(x)
        return x


def build(name: str) -> Net:
    """A freshly initialised ``Net`` of the architecture called ``name`` (see ``architecture``)."""
    arch = architecture(name)
    return Net(arch.layers, arch.id)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (trainable parameters, BatchNorm running statistics) of ``model``.

    Running statistics are the float buffers ``running_mean`` and ``running_var``;
    the integer ``num_batches_tracked`` counters are not model values and are not counted.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable, running
