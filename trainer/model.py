"""The models and their input convention: the facts the Python, Rust and JS sides share.

Every architecture is a *layer plan*: a tuple of small layer specs (``Conv``, ``Residual``,
``MaxPool``, ``GlobalAvgPool``, ``Flatten``, ``Linear``, ``Dropout``). ``Net`` builds the
PyTorch modules from a plan, and ``trainer.export`` writes the plan as JSON into the weights
file's metadata (key ``layers``), where the Rust crate reads it and builds the same network for
its kernels (``wasm-infer/model/src/plan.rs``). A new architecture made of these layer kinds
therefore needs no code outside this file: add a plan to ``ARCHITECTURES``.

The default, ``cnn``, is the model of burn's MNIST web demo::

    input  (N, 1, 28, 28) float32, normalised with MNIST_MEAN / MNIST_STD
    conv1  Conv(1 -> 64, 3x3, valid) BatchNorm GELU MaxPool(2)  -> (N, 64, 13, 13)
    conv2  Conv(64 -> 64, 3x3, valid) BatchNorm GELU MaxPool(2) -> (N, 64, 5, 5)
    flatten                                                     -> (N, 1600)
    fc1    Linear(1600, 128), ReLU, Dropout(0.25)
    fc2    Linear(128, 128),  ReLU, Dropout(0.25)
    fc3    Linear(128, 10)                                      -> logits (N, 10)

State_dict names are the layer names: ``conv1.conv.weight``, ``conv1.norm.running_var``,
``fc1.weight``, ``block1.a.conv.weight`` (a residual block's first convolution), ... The Rust
loaders refuse any missing, unused or mis-shaped tensor, so the two sides cannot drift apart
silently.

Dropout is part of the plan because MC dropout (``trainer.uncertainty``) runs it at inference
too; ``forward(x, masks=...)`` applies given masks instead of random ones, so PyTorch and Rust
can be compared on the same masks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Mean and standard deviation of the MNIST training pixels scaled to [0, 1], as used by
#: PyTorch's examples/mnist (``transforms.Normalize((0.1307,), (0.3081,))``). Written into the
#: safetensors metadata by ``trainer.export``; the Rust crate reads them from there.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

#: Input layout: one 28x28 grey image, row-major, ink = 255, background = 0 (MNIST's own).
IMAGE_SIZE = 28
NUM_CLASSES = 10

#: Activations a layer can end with: the names used in the plan JSON.
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


# --- Layer specs: the plan's vocabulary ------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """Convolution (stride 1, zero ``padding`` on each side), optional BatchNorm, activation,
    optional ``pool`` x ``pool`` max-pool (stride ``pool``, floor mode; 0: none).

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H', W') with
    H' = H + 2 * padding - kernel_size + 1, divided by ``pool`` (floor) when pooling.
    Tensors: ``NAME.conv.weight`` (out, in, k, k), ``NAME.conv.bias`` (out) and with ``norm``
    ``NAME.norm.{weight,bias,running_mean,running_var}`` (out).
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int = 3
    padding: int = 0
    norm: bool = True
    activation: str = "gelu"
    pool: int = 2
    kind = "conv"

    def build(self) -> nn.Module:
        return ConvBlock(self)


@dataclass(frozen=True)
class Residual:
    """A residual block (He et al., 2016): ``relu(b(a(x)) + shortcut(x))``, where ``a`` is a
    ``kernel_size`` "same" convolution + BatchNorm + ReLU, ``b`` the same without ReLU, and the
    shortcut the identity, or a 1x1 convolution + BatchNorm when the channel count changes.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H, W).
    Tensors: ``NAME.a.*``, ``NAME.b.*`` and ``NAME.shortcut.*``, each as ``Conv``'s.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int = 3
    kind = "residual"

    def parts(self) -> dict[str, Conv]:
        """The block's convolutions as ``Conv`` specs, by their sub-names."""
        pad = self.kernel_size // 2
        c_in, c_out, k = self.in_channels, self.out_channels, self.kernel_size
        parts = {
            "a": Conv("a", c_in, c_out, k, pad, norm=True, activation="relu", pool=0),
            "b": Conv("b", c_out, c_out, k, pad, norm=True, activation="none", pool=0),
        }
        if c_in != c_out:
            parts["shortcut"] = Conv("shortcut", c_in, c_out, 1, 0, norm=True, activation="none", pool=0)
        return parts

    def build(self) -> nn.Module:
        return ResidualBlock(self)


@dataclass(frozen=True)
class MaxPool:
    """``kernel_size`` x ``kernel_size`` max-pool, stride ``kernel_size``, floor mode.
    (N, C, H, W) -> (N, C, H // k, W // k)."""

    kernel_size: int = 2
    kind = "max_pool"


@dataclass(frozen=True)
class GlobalAvgPool:
    """Mean over the pixels of each channel: (N, C, H, W) -> (N, C)."""

    kind = "global_avg_pool"


@dataclass(frozen=True)
class Flatten:
    """(N, C, H, W) -> (N, C * H * W) in PyTorch's (c, h, w) order."""

    kind = "flatten"


@dataclass(frozen=True)
class Linear:
    """Fully connected layer and activation: (N, in_features) -> (N, out_features).
    Tensors: ``NAME.weight`` (out, in) and ``NAME.bias`` (out)."""

    name: str
    in_features: int
    out_features: int
    activation: str = "relu"
    kind = "linear"

    def build(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features)


@dataclass(frozen=True)
class Dropout:
    """Inverted dropout: each value is zeroed with probability ``p`` and the others scaled by
    ``1 / (1 - p)``; a no-op in eval mode except under MC dropout. Any shape."""

    p: float = 0.25
    kind = "dropout"


LAYER_KINDS = {cls.kind: cls for cls in (Conv, Residual, MaxPool, GlobalAvgPool, Flatten, Linear, Dropout)}


def layers_to_json(layers: Sequence) -> str:
    """The plan as the JSON written into the weights metadata (key ``layers``): a list of
    objects, each ``{"kind": ..., <the spec's fields>}``."""
    return json.dumps([{"kind": spec.kind, **asdict(spec)} for spec in layers], separators=(",", ":"))


def layers_from_json(text: str) -> tuple:
    """The plan back from ``layers_to_json``'s text.

    Raises:
        ValueError: not JSON, an unknown kind, or unknown / missing fields (named).
    """
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"layers: not valid JSON ({e})") from None
    if not isinstance(items, list) or not items:
        raise ValueError("layers: expected a non-empty JSON list of layers")
    plan = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("kind") not in LAYER_KINDS:
            raise ValueError(f"layers[{i}]: unknown layer {item!r} (kinds: {', '.join(LAYER_KINDS)})")
        cls = LAYER_KINDS[item["kind"]]
        known = {f.name for f in fields(cls)}
        unknown = set(item) - known - {"kind"}
        if unknown:
            raise ValueError(f"layers[{i}] ({item['kind']}): unknown fields {sorted(unknown)}")
        try:
            plan.append(cls(**{k: v for k, v in item.items() if k != "kind"}))
        except TypeError as e:
            raise ValueError(f"layers[{i}] ({item['kind']}): {e}") from None
    return tuple(plan)


# --- The architectures -----------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """A named plan. ``id`` is the ``architecture`` metadata value of its weights files."""

    name: str
    id: str
    summary: str
    layers: tuple


CNN = Architecture(
    "cnn", "mnist-conv-bn-gelu-v1", "burn's MNIST web demo: 2 conv blocks (BatchNorm, GELU), 3 linear",
    (
        Conv("conv1", 1, 64), Conv("conv2", 64, 64), Flatten(),
        Linear("fc1", 64 * 5 * 5, 128), Dropout(0.25),
        Linear("fc2", 128, 128), Dropout(0.25),
        Linear("fc3", 128, NUM_CLASSES, activation="none"),
    ),
)
MLP = Architecture(
    "mlp", "mnist-mlp-v1", "multilayer perceptron 784-512-256-10, ReLU, dropout",
    (
        Flatten(),
        Linear("fc1", IMAGE_SIZE * IMAGE_SIZE, 512), Dropout(0.2),
        Linear("fc2", 512, 256), Dropout(0.2),
        Linear("fc3", 256, NUM_CLASSES, activation="none"),
    ),
)
LENET5 = Architecture(
    "lenet5", "mnist-lenet5-v1", "LeNet-5 (LeCun et al., 1998) with ReLU, max-pool and dropout",
    (
        Conv("conv1", 1, 6, kernel_size=5, padding=2, norm=False, activation="relu"),
        Conv("conv2", 6, 16, kernel_size=5, norm=False, activation="relu"),
        Flatten(),
        Linear("fc1", 16 * 5 * 5, 120), Dropout(0.25),
        Linear("fc2", 120, 84), Dropout(0.25),
        Linear("fc3", 84, NUM_CLASSES, activation="none"),
    ),
)
RESNET = Architecture(
    "resnet", "mnist-resnet-v1", "small residual CNN: stem, 2 residual blocks (BatchNorm), global average pool",
    (
        Conv("stem", 1, 16, padding=1, activation="relu"),           # 28x28 -> 14x14
        Residual("block1", 16, 32), MaxPool(2),                       # -> 7x7
        Residual("block2", 32, 64),
        GlobalAvgPool(), Dropout(0.25),
        Linear("fc", 64, NUM_CLASSES, activation="none"),
    ),
)

#: Every architecture ``invoke train --arch`` knows, by name; ``cnn`` is the default.
ARCHITECTURES = {a.name: a for a in (CNN, MLP, LENET5, RESNET)}
DEFAULT_ARCHITECTURE = "cnn"

#: The default architecture's metadata id (kept for readers of one model).
ARCHITECTURE = CNN.id


def architecture(name: str) -> Architecture:
    """The architecture called ``name``.

    Raises:
        ValueError: an unknown name (the known ones are listed).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}: choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


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
            if hasattr(spec, "build"):
                self.add_module(spec.name, spec.build())

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
            raise ValueError(
                f"expected input of shape (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape)}"
            )
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
    running = sum(
        b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))
    )
    return trainable, running
