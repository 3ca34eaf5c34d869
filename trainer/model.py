"""The model and its input convention: the one fact the Python, Rust and JS sides share.

The architecture is the one in burn's MNIST web demo::

    input  (N, 1, 28, 28) float32, normalised with MNIST_MEAN / MNIST_STD
    conv1  ConvBlock(1 -> 64)   -> (N, 64, 13, 13)
    conv2  ConvBlock(64 -> 64)  -> (N, 64, 5, 5)
    flatten                     -> (N, 1600)
    fc1    Linear(1600, 128), ReLU, Dropout(0.25)
    fc2    Linear(128, 128),  ReLU, Dropout(0.25)
    fc3    Linear(128, 10)      -> logits (N, 10)

where ConvBlock = Conv2d(kernel_size=3, no padding) -> BatchNorm2d -> GELU -> MaxPool2d(2).

The Rust mirror lives in ``wasm-infer/model/src/model.rs``; its field names are these
state_dict names, and loading fails on any missing, unused or mis-shaped tensor, so the two
definitions cannot drift apart silently.
"""

from __future__ import annotations

import torch
from torch import nn

#: Mean and standard deviation of the MNIST training pixels scaled to [0, 1], as used by
#: PyTorch's examples/mnist (``transforms.Normalize((0.1307,), (0.3081,))``). Written into the
#: safetensors metadata by ``trainer.export``; the Rust crate reads them from there.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

#: Input layout: one 28x28 grey image, row-major, ink = 255, background = 0 (MNIST's own).
IMAGE_SIZE = 28
NUM_CLASSES = 10

#: Name written into (and checked in) the weights file's metadata.
ARCHITECTURE = "mnist-conv-bn-gelu-v1"


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Map raw pixels to the model's input scale.

    Args:
        pixels: any shape, values in [0, 255] (uint8 or float), ink = 255.

    Returns:
        float32 tensor of the same shape: ``(pixels / 255 - MNIST_MEAN) / MNIST_STD``,
        roughly in [-0.42, 2.82].
    """
    return (pixels.float() / 255.0 - MNIST_MEAN) / MNIST_STD


class ConvBlock(nn.Module):
    """3x3 valid convolution, BatchNorm, GELU, 2x2 max-pool.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, (H - 2) // 2, (W - 2) // 2).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=0)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.GELU()
        self.pool = nn.MaxPool2d(kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.norm(self.conv(x))))


class Net(nn.Module):
    """The MNIST classifier: 260,554 trainable parameters + 256 BatchNorm running statistics.

    ``forward`` takes normalised images (N, 1, 28, 28) float32 and returns logits (N, 10).
    """

    def __init__(self, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv1 = ConvBlock(1, 64)
        self.conv2 = ConvBlock(64, 64)
        self.fc1 = nn.Linear(64 * 5 * 5, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, NUM_CLASSES)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"expected input of shape (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape)}"
            )
        x = self.conv2(self.conv1(x))
        x = torch.flatten(x, 1)
        x = self.dropout(self.activation(self.fc1(x)))
        x = self.dropout(self.activation(self.fc2(x)))
        return self.fc3(x)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (trainable parameters, BatchNorm running statistics) of ``model``.

    Running statistics are the float buffers ``running_mean`` and ``running_var``;
    the integer ``num_batches_tracked`` counters are not model values and are not counted.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(
        b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))
    )
    return trainable, running
