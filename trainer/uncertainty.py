"""MC dropout: how sure the model is, from many forward passes with dropout on.

Gal & Ghahramani, "Dropout as a Bayesian Approximation" (2016): keeping dropout on at
inference and averaging ``T`` passes approximates the predictive distribution of a Bayesian
network. From the ``T`` softmax vectors ``p_t`` of one image:

- ``probabilities``: their mean ``p̄`` (what the page shows on the bars);
- ``std``: their standard deviation per class (the spread drawn on the bars);
- ``entropy``: ``H[p̄] = -Σ p̄ log p̄`` in nats, total uncertainty, 0 .. ln 10;
- ``mutual_information``: ``H[p̄] - mean_t H[p_t]`` in nats, the part that comes from the
  passes disagreeing (model uncertainty): high for inputs unlike the training digits.

The masks are not PyTorch's random ones: they come from a counter-based generator
(``uniform``: SplitMix64 of the seed and the value's index), the same function as the Rust
crate's ``uncertainty::uniform``, so that PyTorch and the wasm/native kernels can be compared
on exactly the same masks. Value ``i`` counts row-major over the ``(T, features)`` input of
each Dropout layer, on across the layers in order; a value is kept when ``uniform >= p``.

A prediction is "not sure" when its mutual information is above the threshold ``calibrate``
chooses on a validation split and writes into the weights metadata
(``unsure_mutual_information``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .model import Dropout, Net, normalize

#: SplitMix64's constants (Steele, Lea & Flood, "Fast splittable pseudorandom number
#: generators", 2014): the Weyl increment and the two multipliers of the finaliser.
GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)

#: MC-dropout passes per image unless asked otherwise (the page's and the API's default).
DEFAULT_SAMPLES = 20
#: Fraction of validation digits ``calibrate`` lets through as "not sure" (its quantile).
UNSURE_QUANTILE = 0.99
#: The validation split of ``calibrate``: MNIST training images 55,000-59,999 (the last
#: 5,000, the usual MNIST validation split), drawn with the evaluation's "draw" augmentation
#: so that they are not the exact images the models were trained on.
VALIDATION = slice(55_000, 60_000)


def uniform(seed: int, indices: np.ndarray) -> np.ndarray:
    """Values ``indices`` (uint64-able, any shape) of the uniform stream ``seed``, float32 in
    [0, 1) with 24 bits: SplitMix64 of ``seed + (i + 1) * GAMMA`` (mod 2**64), top 24 bits / 2**24.
    The same numbers as the Rust ``mnist_model::uncertainty::uniform``."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.asarray(indices, dtype=np.uint64) + np.uint64(1)) * GAMMA
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / 2.0**24).astype(np.float32)


def mc_probabilities(
    model: Net, pixels: torch.Tensor, samples: int = DEFAULT_SAMPLES, seed: int = 0, batch_size: int = 250
) -> torch.Tensor:
    """Softmax probabilities of ``samples`` MC-dropout passes per image.

    Every image gets the same masks: those the Rust kernels draw for one image from ``seed``.

    Args:
        model: a ``Net`` (its mode does not matter: the masks replace dropout).
        pixels: (N, 28, 28) or (N, 784) raw pixels 0..255, ink = 255.
        samples: T >= 1. seed: the mask stream.

    Returns:
        float32 (N, T, 10).

    Raises:
        ValueError: ``samples`` < 1 or pixels of another shape.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    images = normalize(torch.as_tensor(pixels)).reshape(-1, 1, 28, 28)
    rates = [spec.p for spec in model.layers if isinstance(spec, Dropout)]
    masks: list[torch.Tensor] = []  # per Dropout layer, (T, *features): drawn on first use

    def mask(i: int, shape: torch.Size, images_in_batch: int) -> torch.Tensor:
        if i == len(masks):
            start = sum(m.numel() for m in masks)
            count = samples * math.prod(shape[1:])
            keep = uniform(seed, np.arange(start, start + count)) >= rates[i]
            masks.append(torch.from_numpy(keep.astype(np.float32)).reshape(samples, *shape[1:]))
        return masks[i].repeat(images_in_batch, *([1] * (len(shape) - 1)))

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            repeated = batch.repeat_interleave(samples, dim=0)
            n = len(batch)
            logits = model(repeated, masks=lambda i, shape, n=n: mask(i, shape, n))
            out.append(torch.softmax(logits, dim=1).reshape(len(batch), samples, -1))
    return torch.cat(out)


def summarize(probabilities: torch.Tensor) -> dict[str, torch.Tensor]:
    """The MC-dropout summary of (N, T, C) probabilities, computed in float64.

    Returns:
        ``probabilities`` (N, C) mean, ``std`` (N, C) population standard deviation,
        ``entropy`` (N,) and ``mutual_information`` (N,) in nats (see the module docs).
    """
    p = probabilities.double()
    mean = p.mean(dim=1)

    def entropy(q: torch.Tensor) -> torch.Tensor:
        return -(torch.where(q > 0, q * torch.log(q), torch.zeros_like(q))).sum(dim=-1)

    total = entropy(mean)
    return {
        "probabilities": mean.float(),
        "std": p.std(dim=1, unbiased=False).float(),
        "entropy": total.float(),
        "mutual_information": (total - entropy(p).mean(dim=1)).clamp(min=0).float(),
    }


def calibrate(
    weights: Path,
    data_dir: Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    quantile: float = UNSURE_QUANTILE,
    limit: int = 0,
) -> dict:
    """Choose the "not sure" threshold of the model in ``weights`` and write it into the file's
    metadata (``unsure_mutual_information``, nats, and ``unsure_rule`` in words).

    The threshold is the ``quantile`` of the mutual information over the ``VALIDATION`` split
    (augmented), so about ``1 - quantile`` of real digits are called "not sure".

    Returns:
        ``{"threshold": float, "validation_images": int, "quantile": float}``.

    Raises:
        trainer.export.WeightsError: an unreadable weights file; trainer.data.DataError: no MNIST.
    """
    from . import data
    from .augment import augmented_images
    from .export import load_model, update_metadata

    model = load_model(weights)
    split = data.load_split(train=True, data_dir=data_dir or data.DEFAULT_DATA_DIR)
    images = split.images[VALIDATION]
    if limit:
        images = images[:limit]
    mi = summarize(mc_probabilities(model, augmented_images(images), samples))["mutual_information"]
    threshold = float(torch.quantile(mi.double(), quantile))
    rule = (
        f"{quantile:.0%} quantile of the MC-dropout mutual information ({samples} samples, seed 0) "
        f"on MNIST training images {VALIDATION.start:,}-{VALIDATION.stop - 1:,}, augmented ('draw')"
    )
    update_metadata(weights, {"unsure_mutual_information": f"{threshold:.6g}", "unsure_rule": rule})
    return {"threshold": threshold, "validation_images": len(images), "quantile": quantile}


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.uncertainty --weights F``: calibrate F's "not sure" threshold."""
    import argparse

    from .data import DataError
    from .export import WeightsError

    parser = argparse.ArgumentParser(
        description=calibrate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, required=True, help="a .safetensors file written by trainer.export")
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST folder (default data/)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    args = parser.parse_args(argv)
    try:
        result = calibrate(args.weights, args.data_dir, args.samples)
    except (WeightsError, DataError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    print(
        f"{args.weights}: not sure above a mutual information of {result['threshold']:.4g} nats "
        f"({result['quantile']:.0%} quantile over {result['validation_images']:,} validation digits)"
    )


if __name__ == "__main__":
    main()
