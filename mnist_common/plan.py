"""Architectures as data: layer plans and their JSON form in the weights files.

Every architecture is a *layer plan*: a tuple of small layer specs (``Conv``, ``Residual``,
``MaxPool``, ``GlobalAvgPool``, ``Flatten``, ``Linear``, ``Dropout``). ``trainer.model.Net``
builds the PyTorch modules from a plan, and ``trainer.export`` writes the plan as JSON into the
weights file's metadata (key ``layers``), where the Rust crate reads it and builds the same
network for its kernels (``wasm-infer/mnist-model/src/plan.rs``). A new architecture made of
these layer kinds therefore needs no code outside this file: add a plan to ``ARCHITECTURES``.

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

No PyTorch here: the server lists models from their plans without importing it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from .constants import IMAGE_SIZE, NUM_CLASSES

#: Activations a layer can end with: the names used in the plan JSON (gelu: exact, erf-based).
ACTIVATION_NAMES = ("none", "relu", "gelu")


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
    "cnn",
    "mnist-conv-bn-gelu-v1",
    "burn's MNIST web demo: 2 conv blocks (BatchNorm, GELU), 3 linear",
    (
        Conv("conv1", 1, 64),
        Conv("conv2", 64, 64),
        Flatten(),
        Linear("fc1", 64 * 5 * 5, 128),
        Dropout(0.25),
        Linear("fc2", 128, 128),
        Dropout(0.25),
        Linear("fc3", 128, NUM_CLASSES, activation="none"),
    ),
)
MLP = Architecture(
    "mlp",
    "mnist-mlp-v1",
    "multilayer perceptron 784-512-256-10, ReLU, dropout",
    (
        Flatten(),
        Linear("fc1", IMAGE_SIZE * IMAGE_SIZE, 512),
        Dropout(0.2),
        Linear("fc2", 512, 256),
        Dropout(0.2),
        Linear("fc3", 256, NUM_CLASSES, activation="none"),
    ),
)
LENET5 = Architecture(
    "lenet5",
    "mnist-lenet5-v1",
    "LeNet-5 (LeCun et al., 1998) with ReLU, max-pool and dropout",
    (
        Conv("conv1", 1, 6, kernel_size=5, padding=2, norm=False, activation="relu"),
        Conv("conv2", 6, 16, kernel_size=5, norm=False, activation="relu"),
        Flatten(),
        Linear("fc1", 16 * 5 * 5, 120),
        Dropout(0.25),
        Linear("fc2", 120, 84),
        Dropout(0.25),
        Linear("fc3", 84, NUM_CLASSES, activation="none"),
    ),
)
RESNET = Architecture(
    "resnet",
    "mnist-resnet-v1",
    "small residual CNN: stem, 2 residual blocks (BatchNorm), global average pool",
    (
        Conv("stem", 1, 16, padding=1, activation="relu"),  # 28x28 -> 14x14
        Residual("block1", 16, 32),
        MaxPool(2),  # -> 7x7
        Residual("block2", 32, 64),
        GlobalAvgPool(),
        Dropout(0.25),
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
