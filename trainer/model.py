"""The PyTorch modules of a layer plan (``mnist_common.plan``) and the input normalisation.

``Net(plan)`` builds one module per named spec (``Conv`` -> ``ConvBlock``, ``Residual`` ->
``ResidualBlock``, ``Linear`` -> ``nn.Linear``, ``PrimaryCaps`` -> ``PrimaryCapsules``,
``DigitCaps`` -> ``DigitCapsules``, ``Decoder`` -> ``CapsuleDecoder``) and runs the plan in
order. Dropout is part of the plan because MC dropout (``trainer.uncertainty``) runs it at
inference too; ``forward(x, masks=...)`` applies given masks instead of random ones, so PyTorch
and Rust can be compared on the same masks.

A capsule network (``capsnet``) is a ``Net`` too: ``forward`` gives its logits, ``scale`` times
the digit capsules' lengths (``mnist_common.plan.CapsuleLength`` says why), so evaluation,
calibration and export treat it as the others. Beside them: ``capsules`` (the digit capsules),
``capsule_lengths`` (the class scores the margin loss trains), ``decode`` and ``reconstruct``
(what the network sees: the decoder's image of the predicted or a given digit), and
``margin_loss`` / ``reconstruction_loss``, the paper's training losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnist_common.constants import IMAGE_SIZE, MNIST_MEAN, MNIST_STD, NUM_CLASSES
from mnist_common.plan import (
    ARCHITECTURE,
    ARCHITECTURES,
    CNN,
    DEFAULT_ARCHITECTURE,
    CapsuleLength,
    Conv,
    Decoder,
    DigitCaps,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Linear,
    MaxPool,
    PrimaryCaps,
    Residual,
    architecture,
)

__all__ = [
    "ARCHITECTURE",
    "ARCHITECTURES",
    "DEFAULT_ARCHITECTURE",
    "IMAGE_SIZE",
    "MARGIN_LAMBDA",
    "MARGIN_NEGATIVE",
    "MARGIN_POSITIVE",
    "MNIST_MEAN",
    "MNIST_STD",
    "NUM_CLASSES",
    "RECONSTRUCTION_WEIGHT",
    "CapsuleDecoder",
    "ConvBlock",
    "DigitCapsules",
    "Net",
    "PrimaryCapsules",
    "ResidualBlock",
    "build",
    "count_parameters",
    "logits_of",
    "margin_loss",
    "normalize",
    "reconstruction_loss",
    "route",
    "squash",
]

#: The plan's activation names as functions (``mnist_common.plan.ACTIVATION_NAMES``).
ACTIVATIONS = {"none": lambda x: x, "relu": F.relu, "gelu": F.gelu}  # gelu: exact, erf-based


#: Images per forward pass of ``logits_of``.
BATCH_SIZE = 500


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Map raw pixels to the model's input scale.

    Args:
        pixels: any shape, values in [0, 255] (uint8 or float), ink = 255.

    Returns:
        float32 tensor of the same shape: ``(pixels / 255 - MNIST_MEAN) / MNIST_STD``,
        roughly in [-0.42, 2.82].
    """
    return (pixels.float() / 255.0 - MNIST_MEAN) / MNIST_STD


@torch.inference_mode()
def logits_of(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = BATCH_SIZE, desc: str | None = None
) -> torch.Tensor:
    """The model's eval-mode logits for (N, 28, 28) images, 0..255, ink = 255: (N, 10) float32,
    ``batch_size`` images a forward pass; with ``desc``, a progress bar so named."""
    model.eval()
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None, leave=False):
        chunks.append(model(normalize(images[start : start + batch_size].unsqueeze(1))))
    return torch.cat(chunks) if chunks else torch.zeros(0, NUM_CLASSES)


# --- PyTorch modules built from a plan --------------------------------------------------------


class ConvBlock(nn.Module):
    """A ``Conv`` spec as modules: ``conv`` (nn.Conv2d), ``norm`` (nn.BatchNorm2d, or absent),
    then the activation and the max-pool (functional, no tensors)."""

    def __init__(self, spec: Conv) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(
            spec.in_channels, spec.out_channels, spec.kernel_size, stride=spec.stride, padding=spec.padding
        )
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


# --- Capsules (Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NeurIPS 2017) -------

#: The margin loss's constants (the paper's eq. 4): a present digit's capsule should be longer
#: than m+ = 0.9, an absent one's shorter than m- = 0.1, the absent ones' terms weighted 0.5.
MARGIN_POSITIVE, MARGIN_NEGATIVE, MARGIN_LAMBDA = 0.9, 0.1, 0.5
#: Weight of the reconstruction loss, the sum of squared errors over the 784 pixels (section 4.1):
#: small, so that it does not dominate the margin loss.
RECONSTRUCTION_WEIGHT = 0.0005


def squash(s: torch.Tensor) -> torch.Tensor:
    """The squash non-linearity over the last dimension: ``|s|^2 / (1 + |s|^2) * s / |s|``,
    computed as ``s * |s| / (1 + |s|^2)`` (0 at s = 0; ``mnist_common.plan``): length in [0, 1),
    direction kept."""
    norm = torch.linalg.vector_norm(s, dim=-1, keepdim=True)
    return s * (norm / (1.0 + norm * norm))


def route(u_hat: torch.Tensor, iterations: int) -> torch.Tensor:
    """Routing by agreement (the paper's Procedure 1) of predictions ``u_hat`` (N, I, J, D),
    ``u_hat[n, i, j]`` = input capsule i's prediction of output capsule j: ``iterations`` times
    c = softmax_j(b), s_j = sum_i c_ij u_hat_j|i, v = squash(s), b += u_hat . v (not after the
    last), from b = 0. Returns v (N, J, D)."""
    logits = u_hat.new_zeros(u_hat.shape[:3])  # b_ij: (N, I, J)
    for iteration in range(iterations):
        coupling = torch.softmax(logits, dim=2)  # c_ij, over the output capsules j
        v = squash(torch.einsum("nij,nijd->njd", coupling, u_hat))
        if iteration + 1 < iterations:
            logits = logits + torch.einsum("nijd,njd->nij", u_hat, v)
    return v


def margin_loss(lengths: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The margin loss (the paper's eq. 4) per image, summed over the classes:
    ``T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2``.

    Args:
        lengths: (N, K) capsule lengths.
        target: (N,) class indices (T_k = 1 for that class), or None for images of no class
            (non-digits in outlier exposure: every T_k = 0, so every capsule is pushed below m-).

    Returns:
        (N,) float.
    """
    absent = MARGIN_LAMBDA * F.relu(lengths - MARGIN_NEGATIVE).square()
    if target is None:
        return absent.sum(dim=1)
    present = F.one_hot(target, lengths.shape[1]).to(lengths.dtype)
    return (present * F.relu(MARGIN_POSITIVE - lengths).square() + (1.0 - present) * absent).sum(dim=1)


def reconstruction_loss(reconstruction: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """``RECONSTRUCTION_WEIGHT`` x the sum of squared errors over the pixels, per image.

    Args:
        reconstruction: (N, 784) in [0, 1], the decoder's output.
        pixels: the input images, any shape with N first, values in [0, 255] (ink = 255): the
            target is pixels / 255.

    Returns:
        (N,) float.
    """
    target = pixels.reshape(len(pixels), -1).to(reconstruction.dtype) / 255.0
    return RECONSTRUCTION_WEIGHT * (reconstruction - target).square().sum(dim=1)


class PrimaryCapsules(nn.Module):
    """A ``PrimaryCaps`` spec: ``conv`` (nn.Conv2d, stride, no padding), then the channels cut
    into capsules (type-major, ``mnist_common.plan.PrimaryCaps``) and squashed."""

    def __init__(self, spec: PrimaryCaps) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(spec.in_channels, spec.capsules * spec.dim, spec.kernel_size, stride=spec.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (N, capsules * dim, H', W')
        n, _, h, w = x.shape
        x = x.reshape(n, self.spec.capsules, self.spec.dim, h, w).permute(0, 1, 3, 4, 2)
        return squash(x.reshape(n, self.spec.capsules * h * w, self.spec.dim))


class DigitCapsules(nn.Module):
    """A ``DigitCaps`` spec: ``weight`` (in_capsules, capsules, dim, in_dim), the matrices
    W_ij, then ``route``.

    Initialised N(0, ``INIT_STD``^2): for the committed capsnet the untrained digit capsules'
    lengths are then about 0.09 on MNIST digits, near m- = 0.1, where both terms of the margin
    loss have a gradient. With 0.01 (as some implementations) they start at about 0.001, where
    squash is quadratic and learning starts slower (measured: 94.1 % against 95.6 % test accuracy
    after 2 epochs of 6,000 digits).
    """

    INIT_STD = 0.1

    def __init__(self, spec: DigitCaps) -> None:
        super().__init__()
        self.spec = spec
        shape = (spec.in_capsules, spec.capsules, spec.dim, spec.in_dim)
        self.weight = nn.Parameter(self.INIT_STD * torch.randn(shape))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u_hat = torch.einsum("ijde,nie->nijd", self.weight, u)  # u_hat_j|i = W_ij u_i: (N, I, J, D)
        return route(u_hat, self.spec.routing)


class CapsuleDecoder(nn.Module):
    """A ``Decoder`` spec: ``fc1``, ``fc2``, ``fc3`` (nn.Linear); ``forward(capsules, digit)``
    zeroes every capsule but ``digit``'s and gives the reconstruction (N, out_features) in (0, 1)."""

    def __init__(self, spec: Decoder) -> None:
        super().__init__()
        self.spec = spec
        self.fc1 = nn.Linear(spec.capsules * spec.dim, spec.hidden1)
        self.fc2 = nn.Linear(spec.hidden1, spec.hidden2)
        self.fc3 = nn.Linear(spec.hidden2, spec.out_features)

    def forward(self, capsules: torch.Tensor, digit: torch.Tensor) -> torch.Tensor:
        mask = F.one_hot(digit, self.spec.capsules).to(capsules.dtype).unsqueeze(2)
        x = (capsules * mask).flatten(1)
        return torch.sigmoid(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x))))))


class Net(nn.Module):
    """An MNIST classifier built from a layer plan (default: ``cnn``, 260,810 parameters).

    ``forward`` takes normalised images (N, 1, 28, 28) float32 and returns logits (N, 10). A
    plan with capsules also has ``capsules``, ``capsule_lengths``, ``decode`` and ``reconstruct``.
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
            elif isinstance(spec, PrimaryCaps):
                self.add_module(spec.name, PrimaryCapsules(spec))
            elif isinstance(spec, DigitCaps):
                self.add_module(spec.name, DigitCapsules(spec))
            elif isinstance(spec, Decoder):
                self.add_module(spec.name, CapsuleDecoder(spec))

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
        self._check_input(x)
        return self._run(x, self.layers, masks)

    def mc_dropout_logits(
        self, x: torch.Tensor, samples: int, masks: Callable[[int, torch.Size], torch.Tensor]
    ) -> torch.Tensor:
        """Logits (N * samples, 10) of ``samples`` MC-dropout passes over each of the normalised
        images ``x`` (N, 1, 28, 28), image-major (image 0's passes first), with the given
        ``masks`` (as ``forward``'s, for inputs of N * samples rows). The layers before the first
        Dropout are the same in every pass: they run once per image, and only the rest runs on
        ``samples`` copies (for the default CNN that skips 19 of 20 passes' convolutions).

        Raises:
            ValueError: input not (N, 1, 28, 28); a plan without Dropout.
        """
        self._check_input(x)
        first = next((i for i, spec in enumerate(self.layers) if isinstance(spec, Dropout)), None)
        if first is None:
            raise ValueError(f"the {self.architecture} plan has no Dropout layer: its passes are all the same")
        features = self._run(x, self.layers[:first])
        return self._run(features.repeat_interleave(samples, dim=0), self.layers[first:], masks)

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected input of shape (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape)}")

    def _run(
        self, x: torch.Tensor, layers: Sequence, masks: Callable[[int, torch.Size], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Run the specs ``layers`` (a run of ``self.layers``) on ``x``."""
        dropped = 0
        for spec in layers:
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
            elif isinstance(spec, CapsuleLength):
                x = spec.scale * torch.linalg.vector_norm(x, dim=-1)
            elif isinstance(spec, Decoder):
                pass  # a side branch: `decode` runs it; the capsules go on unchanged
            else:
                x = getattr(self, spec.name)(x)
        return x

    # --- capsule networks ---------------------------------------------------------------------

    def _capsule_split(self) -> int:
        """The index in the plan just after its ``DigitCaps``.

        Raises:
            ValueError: the plan has no digit capsules.
        """
        for i, spec in enumerate(self.layers):
            if isinstance(spec, DigitCaps):
                return i + 1
        raise ValueError(f"{self.architecture} has no digit capsules (no digit_caps layer in its plan)")

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """The digit capsules (N, 10, 16) of normalised images (N, 1, 28, 28): the plan up to its
        ``DigitCaps``.

        Raises:
            ValueError: no digit capsules in the plan, or input not (N, 1, 28, 28).
        """
        split = self._capsule_split()
        self._check_input(x)
        return self._run(x, self.layers[:split])

    def logits_of_capsules(self, capsules: torch.Tensor) -> torch.Tensor:
        """The logits (N, 10) of digit capsules from ``capsules``: the rest of the plan
        (``forward(x)`` is ``logits_of_capsules(capsules(x))``)."""
        return self._run(capsules, self.layers[self._capsule_split() :])

    def capsule_lengths(self, x: torch.Tensor) -> torch.Tensor:
        """The digit capsules' lengths (N, 10), each in [0, 1), of normalised images: the class
        scores the margin loss trains (``forward`` gives them times ``CapsuleLength.scale``)."""
        return torch.linalg.vector_norm(self.capsules(x), dim=-1)

    def decode(self, capsules: torch.Tensor, digit: torch.Tensor | int | None = None) -> torch.Tensor:
        """The decoder's reconstruction (N, 784) in (0, 1) (ink = 1, row-major 28 x 28) from digit
        capsules (N, 10, 16), masked by ``digit``: (N,) class indices, one class for all, or None
        for the longest capsule of each image (the predicted digit).

        Raises:
            ValueError: the plan has no decoder.
        """
        decoder = next((spec for spec in self.layers if isinstance(spec, Decoder)), None)
        if decoder is None:
            raise ValueError(f"{self.architecture} has no decoder (no decoder layer in its plan)")
        if digit is None:
            digit = torch.linalg.vector_norm(capsules, dim=-1).argmax(dim=1)
        elif not isinstance(digit, torch.Tensor):
            digit = torch.full((len(capsules),), int(digit), dtype=torch.long, device=capsules.device)
        return getattr(self, decoder.name)(capsules, digit.to(capsules.device))

    def reconstruct(self, x: torch.Tensor, digit: torch.Tensor | int | None = None) -> torch.Tensor:
        """What the network sees: the reconstruction (N, 784) in (0, 1) of normalised images
        (N, 1, 28, 28) from the capsule of ``digit`` (see ``decode``; None: the predicted digit,
        as the paper at inference)."""
        return self.decode(self.capsules(x), digit)


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
