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
chooses on a held-out validation split and writes into the weights metadata
(``unsure_mutual_information``). MC dropout on the last layers does not see inputs far from
every digit (784 random pixels get a mutual information of 0), so a second rule, "not a
digit", looks at the eval-mode softmax: an image is not a digit when its largest probability is
below ``not_a_digit_max_probability``, chosen on the same split and on non-digits of the
validation split of ``trainer.synthetic.nondigits`` (neither trained on). It works because
training shows the model non-digits with a uniform target (outlier exposure, ``trainer.train``),
so the top probability of a non-digit is low; ``trainer.evaluation.compare`` measures it against the
energy score and the mutual information (AUROC on ``trainer.synthetic.nondigits``' test split).
The Rust crate applies both rules (``Classifier::not_a_digit``; ``unsure`` = either rule).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .model import Dropout, Net, logits_of, normalize

#: SplitMix64's constants (Steele, Lea & Flood, "Fast splittable pseudorandom number
#: generators", 2014): the Weyl increment and the two multipliers of the finaliser.
GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)

#: MC-dropout passes per image unless asked otherwise (the page's and the API's default).
DEFAULT_SAMPLES = 20
#: Fraction of validation digits ``calibrate`` lets through as "not sure" (its quantile).
UNSURE_QUANTILE = 0.99
#: The "not a digit" threshold flags this share of the validation non-digits
#: (``trainer.synthetic.nondigits``, split "validation")...
NONDIGITS_FLAGGED = 0.99
#: ... but at least the first and at most the second share of the validation digits: the
#: threshold is clipped to these quantiles of the digits' largest softmax probability. The floor
#: keeps a model that tells the two apart easily as strict as before (1 % of digits); the
#: ceiling bounds the false alarms of one that does not (5 % of these augmented, harder
#: validation digits was 0.7-2.4 % of MNIST's test digits for the committed models, 2026-12-06).
NOT_A_DIGIT_QUANTILES = (0.01, 0.05)
#: Validation non-digits ``calibrate`` draws (the first of the split; cached under data/nondigits).
VALIDATION_NONDIGITS = 2_000
#: The validation split of ``calibrate``: MNIST training images 55,000-59,999 (the last
#: 5,000, the usual MNIST validation split), which ``trainer.train`` holds out (``holdout``),
#: under the training's "draw" augmentation (a drawing is never as clean as a scan).
VALIDATION = slice(55_000, 60_000)
#: Metadata key ``trainer.train`` writes when the model was not trained on ``VALIDATION``:
#: its value is ``"55000-59999"``.
HELD_OUT_KEY = "held_out_validation"


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
    A plan without dropout (the capsnet) gives ``samples`` copies of its one pass: a mutual
    information of 0 for every image, so only the "not a digit" rule can call it unsure.

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
            if not rates:
                # No dropout (the capsnet): every pass is the same pass; run it once.
                probabilities = torch.softmax(model(batch), dim=1)
                out.append(probabilities.unsqueeze(1).expand(-1, samples, -1))
                continue
            n = len(batch)
            logits = model.mc_dropout_logits(batch, samples, masks=lambda i, shape, n=n: mask(i, shape, n))
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
    allow_seen: bool = False,
) -> dict:
    """Choose the "not sure" and "not a digit" thresholds of the model in ``weights`` and write
    them into the file's metadata.

    On the ``VALIDATION`` split under the "draw" augmentation: ``unsure_mutual_information``
    (nats) is the ``quantile`` of the MC-dropout mutual information, so about ``1 - quantile``
    of real digits are "not sure". ``not_a_digit_max_probability`` (in (0, 1]) is the eval-mode
    top softmax probability below which ``NONDIGITS_FLAGGED`` of the validation non-digits fall
    (``VALIDATION_NONDIGITS`` of ``trainer.synthetic.nondigits``' validation split), clipped to
    the ``NOT_A_DIGIT_QUANTILES`` quantiles of it over the validation digits: so 1-5 % of those
    digits are "not a digit", as few as flag 99 % of the non-digits. ``unsure_rule`` and
    ``not_a_digit_rule`` say so in words, with the shares flagged on both.

    A model without dropout (the capsnet) gets no ``unsure_mutual_information`` (one removed if
    present): its MC-dropout passes are one pass, their mutual information is 0 up to rounding,
    and a threshold at a quantile of rounding noise would call random digits "not sure" (measured:
    12 of 200 test digits in Rust's float32). Its "not sure" is then the "not a digit" rule alone,
    which ``unsure_rule`` says.

    Args:
        limit: use the first ``limit`` validation digits and non-digits only (0: all); for
            quick runs and tests.
        allow_seen: calibrate a model whose metadata does not say it was trained without the
            split (``HELD_OUT_KEY``); the rules then say that the split was seen in training.

    Returns:
        ``{"threshold": MI threshold (None without dropout), "not_a_digit_max_probability": float,
        "validation_images": int, "validation_nondigits": int, "digits_flagged": float and
        "nondigits_flagged": float (shares of them below it, 0..1), "quantile": float,
        "held_out": bool}``.

    Raises:
        ValueError: the model was trained on the split and ``allow_seen`` is False;
        trainer.export.WeightsError: an unreadable weights file; trainer.data.DataError: no MNIST.
    """
    from . import data
    from .augment import augmented_images
    from .export import load_model, read_metadata, update_metadata
    from .synthetic.nondigits import nondigit_set

    split_name = f"{VALIDATION.start}-{VALIDATION.stop - 1}"
    held_out = read_metadata(weights).get(HELD_OUT_KEY) == split_name
    if not held_out and not allow_seen:
        raise ValueError(
            f"{weights} was trained on MNIST training images {split_name} (no {HELD_OUT_KEY!r} in its "
            "metadata): train it with the default --holdout, or pass allow_seen=True"
        )
    model = load_model(weights)
    split = data.load_split(train=True, data_dir=data_dir or data.DEFAULT_DATA_DIR)
    images = split.images[VALIDATION]
    if limit:
        images = images[:limit]
    images = augmented_images(images, preset="draw")
    has_dropout = any(isinstance(spec, Dropout) for spec in model.layers)
    if has_dropout:
        mi = summarize(mc_probabilities(model, images, samples))["mutual_information"]
        threshold = float(torch.quantile(mi.double(), quantile))
    else:
        threshold = None
    nondigits = nondigit_set(min(limit, VALIDATION_NONDIGITS) if limit else VALIDATION_NONDIGITS, "validation")
    top = top_probability(model, images)
    top_nondigits = top_probability(model, torch.from_numpy(nondigits.images).float())
    floor, ceiling = (float(torch.quantile(top, q)) for q in NOT_A_DIGIT_QUANTILES)
    not_a_digit = min(max(float(torch.quantile(top_nondigits, NONDIGITS_FLAGGED)), floor), ceiling)
    digits_flagged = float((top < not_a_digit).double().mean())
    nondigits_flagged = float((top_nondigits < not_a_digit).double().mean())
    where = (
        f"MNIST training images {VALIDATION.start:,}-{VALIDATION.stop - 1:,}"
        + (" (held out of training)" if held_out else " (seen in training: this model was trained on them)")
        + ", augmented ('draw')"
    )
    update_metadata(
        weights,
        {
            "unsure_mutual_information": None if threshold is None else f"{threshold:.6g}",
            "unsure_rule": (
                f"{quantile:.0%} quantile of the MC-dropout mutual information ({samples} samples, seed 0) on {where}"
                if has_dropout
                else "no dropout in this model, so MC dropout cannot disagree: not sure when not a digit"
            ),
            "not_a_digit_max_probability": f"{not_a_digit:.6g}",
            "not_a_digit_rule": (
                "not a digit when the top eval-mode softmax probability is below the value under "
                f"which {NONDIGITS_FLAGGED:.0%} of {len(top_nondigits):,} validation non-digits "
                "(trainer.synthetic.nondigits, split 'validation') fall, kept between its "
                f"{NOT_A_DIGIT_QUANTILES[0]:.0%} and {NOT_A_DIGIT_QUANTILES[1]:.0%} quantiles on {where}; "
                f"it flags {digits_flagged:.1%} of those digits and {nondigits_flagged:.1%} of those non-digits"
            ),
        },
    )
    return {
        "threshold": threshold,
        "not_a_digit_max_probability": not_a_digit,
        "validation_images": len(images),
        "validation_nondigits": len(top_nondigits),
        "digits_flagged": digits_flagged,
        "nondigits_flagged": nondigits_flagged,
        "quantile": quantile,
        "held_out": held_out,
    }


def top_probability(model: Net, pixels: torch.Tensor) -> torch.Tensor:
    """The largest eval-mode softmax probability of each image: ``pixels`` (N, 28, 28) float in
    0..255 (ink = 255) -> (N,) float64 in [0.1, 1]."""
    return torch.softmax(logits_of(model, pixels), dim=1).max(dim=1).values.double()


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.uncertainty --weights F``: calibrate F's "not sure" and "not a digit"
    thresholds."""
    import argparse

    from .data import DataError
    from .export import WeightsError

    parser = argparse.ArgumentParser(
        description=calibrate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, required=True, help="a .safetensors file written by trainer.export")
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST folder (default data/)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument(
        "--allow-seen", action="store_true", help="calibrate a model that was trained on the validation split"
    )
    args = parser.parse_args(argv)
    try:
        result = calibrate(args.weights, args.data_dir, args.samples, allow_seen=args.allow_seen)
    except (WeightsError, DataError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    unsure = (
        "no mutual-information threshold (no dropout)"
        if result["threshold"] is None
        else f"not sure above a mutual information of {result['threshold']:.4g} nats ({result['quantile']:.0%} quantile)"
    )
    print(
        f"{args.weights}: {unsure}, not a digit below a top probability of "
        f"{result['not_a_digit_max_probability']:.4g}: it flags {result['nondigits_flagged']:.1%} of "
        f"{result['validation_nondigits']:,} validation non-digits and {result['digits_flagged']:.1%} of "
        f"{result['validation_images']:,} validation digits"
        + ("" if result["held_out"] else " (which the model was trained on)")
    )


if __name__ == "__main__":
    main()
