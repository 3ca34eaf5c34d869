"""Architectures as data: layer plans and their JSON form in the weights files.

Every architecture is a *layer plan*: a tuple of small layer specs (``Conv``, ``Residual``,
``MaxPool``, ``GlobalAvgPool``, ``Flatten``, ``Linear``, ``Dropout``, and for the capsule
network ``PrimaryCaps``, ``DigitCaps``, ``Decoder``, ``CapsuleLength``). ``trainer.model.Net``
builds the PyTorch modules from a plan, and ``trainer.export`` writes the plan as JSON into the
weights file's metadata (key ``layers``), where the Rust crate reads it and builds the same
network for its kernels (``wasm-infer/mnist-model/src/plan.rs``). A new architecture made of
these layer kinds therefore needs no code outside this file: add a plan to ``ARCHITECTURES``.
(The Rust crate reads every kind; burn's backends and its own kernels run them all.)

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
    """Convolution (``stride``, zero ``padding`` on each side), optional BatchNorm, activation,
    optional ``pool`` x ``pool`` max-pool (stride ``pool``, floor mode; 0: none).

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H', W') with
    H' = (H + 2 * padding - kernel_size) // stride + 1, divided by ``pool`` (floor) when pooling.
    Tensors: ``NAME.conv.weight`` (out, in, k, k), ``NAME.conv.bias`` (out) and with ``norm``
    ``NAME.norm.{weight,bias,running_mean,running_var}`` (out).

    ``stride`` came later than the other fields: plans written before it have none (read as 1),
    and ``layers_to_json`` leaves it out when it is 1, so that a plan of stride-1 convolutions
    reads as before in the Rust crate (whose plan reader refuses unknown fields).
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int = 3
    padding: int = 0
    norm: bool = True
    activation: str = "gelu"
    pool: int = 2
    stride: int = 1
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


# --- Capsules (Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NeurIPS 2017) -----
#
# A capsule is a vector whose length (in [0, 1)) is the probability that the entity it stands
# for is present and whose direction is that entity's pose. The squash non-linearity (the
# paper's eq. 1) maps a vector s to
#
#     squash(s) = |s|^2 / (1 + |s|^2) * s / |s|
#
# computed as s * |s| / (1 + |s|^2): the same vector, defined (0) at s = 0, with no division by
# |s|. Short vectors shrink to almost 0, long ones to a length just below 1; the direction is kept.


@dataclass(frozen=True)
class PrimaryCaps:
    """Primary capsules (the paper's section 4, "PrimaryCaps"): a ``kernel_size`` x
    ``kernel_size`` convolution with ``stride`` and no padding, no activation, from
    ``in_channels`` to ``capsules * dim`` channels, cut into ``capsules`` types of ``dim``-D
    capsules at every position of its H' x W' grid, each squashed.

    Shapes: (N, in_channels, H, W) -> (N, capsules * H' * W', dim) with
    H' = (H - kernel_size) // stride + 1 (W' likewise). Capsule ``i = (c * H' + y) * W' + x`` is
    type ``c`` at grid position (y, x); its value ``d`` is channel ``c * dim + d`` there.
    Tensors: ``NAME.conv.weight`` (capsules * dim, in_channels, k, k), ``NAME.conv.bias``
    (capsules * dim).
    """

    name: str
    in_channels: int
    capsules: int
    dim: int = 8
    kernel_size: int = 9
    stride: int = 2
    kind = "primary_caps"

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The capsule grid (H', W') of an (H, W) input."""
        return (height - self.kernel_size) // self.stride + 1, (width - self.kernel_size) // self.stride + 1


@dataclass(frozen=True)
class DigitCaps:
    """Digit capsules with routing by agreement (the paper's Procedure 1): every input capsule
    ``u_i`` predicts every output capsule ``j`` through its own transformation matrix,
    ``u_hat_j|i = W_ij u_i``; the routing logits start at ``b_ij = 0`` and ``routing`` times

        c_ij = softmax over j of b_ij            (the coupling coefficients: each input
                                                  capsule divides itself among the outputs)
        s_j  = sum over i of c_ij u_hat_j|i
        v_j  = squash(s_j)
        b_ij = b_ij + u_hat_j|i . v_j            (agreement; not after the last iteration)

    and ``v_j`` of the last iteration is the output. No bias (as the paper). Training
    backpropagates through every iteration.

    Shapes: (N, in_capsules, in_dim) -> (N, capsules, dim).
    Tensors: ``NAME.weight`` (in_capsules, capsules, dim, in_dim): ``W_ij`` is
    ``weight[i, j]``, a (dim, in_dim) matrix, so ``u_hat[n, i, j] = weight[i, j] @ u[n, i]``.
    """

    name: str
    in_capsules: int
    in_dim: int = 8
    capsules: int = 10
    dim: int = 16
    routing: int = 3
    kind = "digit_caps"


@dataclass(frozen=True)
class Decoder:
    """The reconstruction decoder (the paper's section 4.1, Fig. 2): a side branch. The main
    path goes through unchanged, (N, capsules, dim) -> (N, capsules, dim); the decoder reads
    the capsules there, zeroes all but one (the true class in training, the longest capsule
    at inference: the predicted digit), flattens them in (capsule, value) order and runs three
    fully connected layers: ``capsules * dim`` -> ``hidden1`` ReLU -> ``hidden2`` ReLU ->
    ``out_features`` sigmoid.

    Reconstruction: (N, out_features) in (0, 1), the 28x28 image row-major with ink = 1 (the
    input pixels / 255); trained with 0.0005 x the sum of squared errors over its pixels. Only
    the masked capsule reaches it, so the other capsules cannot change it.
    Tensors: ``NAME.fc1.weight`` (hidden1, capsules * dim), ``NAME.fc1.bias`` (hidden1),
    ``NAME.fc2.weight`` (hidden2, hidden1), ``NAME.fc2.bias``, ``NAME.fc3.weight``
    (out_features, hidden2), ``NAME.fc3.bias``.
    """

    name: str
    capsules: int = NUM_CLASSES
    dim: int = 16
    hidden1: int = 512
    hidden2: int = 1024
    out_features: int = IMAGE_SIZE * IMAGE_SIZE
    kind = "decoder"


@dataclass(frozen=True)
class CapsuleLength:
    """The class scores of capsules: their lengths ``|v_j|`` in [0, 1) (what the margin loss
    trains), given out as logits ``scale * |v_j|``: (N, capsules, dim) -> (N, capsules).

    Why a scale and not ``log |v_j|``: softmax(log |v|) = |v| / sum |v| keeps only the ratios of
    the lengths, so an input with every capsule short (no digit: the margin loss wants them all
    below 0.1) but one a little longer than the rest would look sure. softmax(scale * |v|)
    depends on the differences of the lengths: with ``scale`` 10, ten capsules all in [0, 0.1]
    give at most 23 % to one class, the margin loss's targets (0.9 for the digit, 0.1 for the
    others) give it 99.7 %, and the order of the classes is that of the lengths. No tensors.
    """

    scale: float = 10.0
    kind = "capsule_length"


LAYER_KINDS = {
    cls.kind: cls
    for cls in (
        Conv,
        Residual,
        MaxPool,
        GlobalAvgPool,
        Flatten,
        Linear,
        Dropout,
        PrimaryCaps,
        DigitCaps,
        Decoder,
        CapsuleLength,
    )
}

#: Fields written into the JSON only when they differ from their default: added to a kind after
#: plans of it were written and read by the Rust crate, which refuses fields it does not know.
_OMITTED_AT_DEFAULT = {"conv": {"stride": 1}}


def layers_to_json(layers: Sequence) -> str:
    """The plan as the JSON written into the weights metadata (key ``layers``): a list of
    objects, each ``{"kind": ..., <the spec's fields>}`` (a convolution's ``stride`` only when it
    is not 1, see ``Conv``)."""
    items = []
    for spec in layers:
        item = {"kind": spec.kind, **asdict(spec)}
        for field, default in _OMITTED_AT_DEFAULT.get(spec.kind, {}).items():
            if item[field] == default:
                del item[field]
        items.append(item)
    return json.dumps(items, separators=(",", ":"))


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

CAPSNET = Architecture(
    "capsnet",
    "mnist-capsnet-v1",
    "capsule network (Sabour et al., 2017): 9x9 conv, primary capsules, 3 routing iterations, decoder",
    (
        Conv("conv1", 1, 128, kernel_size=9, norm=False, activation="relu", pool=0),  # -> (N, 128, 20, 20)
        PrimaryCaps("primary", 128, capsules=8, dim=8, kernel_size=9, stride=2),  # -> (N, 8 * 6 * 6, 8)
        DigitCaps("digits", 8 * 6 * 6, in_dim=8, capsules=NUM_CLASSES, dim=16, routing=3),  # -> (N, 10, 16)
        Decoder("decoder", NUM_CLASSES, 16),  # side branch: the reconstruction, (N, 784)
        CapsuleLength(10.0),  # -> logits (N, 10)
    ),
)
"""``capsnet``: the CapsNet of Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules"
(NeurIPS 2017), smaller so that it trains on 2 CPU cores in about an hour::

    input    (N, 1, 28, 28) normalised
    conv1    Conv(1 -> 128, 9x9, valid), ReLU                        -> (N, 128, 20, 20)
    primary  PrimaryCaps: Conv(128 -> 8 x 8, 9x9, stride 2), squash  -> (N, 288, 8)
             (8 capsule types on a 6x6 grid, 8-D each)
    digits   DigitCaps: 10 x 16-D, W per (primary, digit) capsule pair,
             3 routing iterations                                   -> (N, 10, 16)
    decoder  Decoder (side branch): masked capsules 160 -> 512 -> 1024 -> 784 sigmoid
    scores   CapsuleLength: logits 10 |v_j|                         -> (N, 10)

2,454,096 parameters: conv1 10,496, primary 663,616, digits 368,640, decoder 1,411,344
(no BatchNorm, no dropout). The paper's network has 256 conv1 channels and 32 primary capsule
types (32 x 6 x 6 = 1,152 primary capsules, 8-D): 8,215,568 parameters (its "8.2M"; 6.8M without
the decoder), 99.75 % on the MNIST test set with shift augmentation only, and here about 6 times
the compute per image of this one (3.4 s against 0.53 s per training step of 192 images on one core).
"""

#: Every architecture ``invoke train --arch`` knows, by name; ``cnn`` is the default.
ARCHITECTURES = {a.name: a for a in (CNN, MLP, LENET5, RESNET, CAPSNET)}
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
