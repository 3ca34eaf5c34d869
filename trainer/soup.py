"""A uniform model soup: one model whose weights are the mean of several fine-tunes' weights.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time" (ICML 2022): models fine-tuned from the same weights stay in
one basin of the loss, so the element-wise mean of their parameters is a model of the same
architecture, size and predict time that is often better than each of them. The BatchNorm
running statistics are averaged like the parameters.

``python -m trainer.soup OUT IN IN...`` writes OUT (safetensors: the first input's metadata with
the soup's test accuracy and its inputs) and its metrics file (``metrics.json`` beside a
``model.safetensors``, else ``<name>.metrics.json``: each input's accuracy and the soup's on the
MNIST test set and on the held-out validation split, and their validation negative
log-likelihood; with ``--redrawn`` also their accuracy on the validation split redrawn with the
page's kind of pen), then chooses its "not sure" and "not a digit" thresholds
(``trainer.uncertainty.calibrate``). The soup of a model and of its own fine-tune is the halfway
interpolation of WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022).
The committed ``cnn`` is such a soup of soups: docs/training.md says which fine-tunes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mnist_common.weights import read_model_metadata

from . import data
from .export import WeightsError, load_model, metrics_path, save_safetensors, write_metrics
from .model import Net, count_parameters
from .train import evaluate
from .uncertainty import HELD_OUT_KEY, VALIDATION, calibrate


def average(models: list[Net]) -> Net:
    """The uniform soup of ``models``: a new model whose every floating-point state_dict tensor
    (parameters and BatchNorm running statistics) is the mean of theirs, in eval mode; the
    inputs are left as they are.

    Raises:
        ValueError: fewer than two models.
        WeightsError: the models are not all of one architecture and layer plan.
    """
    if len(models) < 2:
        raise ValueError(f"a soup needs at least two models, got {len(models)}")
    plans = {(model.architecture, repr(model.layers)) for model in models}
    if len(plans) > 1:
        names = ", ".join(sorted({architecture for architecture, _ in plans}))
        raise WeightsError(f"the models are not of one architecture and plan: {names}")
    states = [model.state_dict() for model in models]
    soup = Net(models[0].layers, models[0].architecture)
    soup.load_state_dict(
        {
            name: torch.stack([state[name] for state in states]).mean(0) if tensor.is_floating_point() else tensor
            for name, tensor in states[0].items()
        }
    )
    return soup.eval()


def scores(
    model: Net, test: data.Split, validation: data.Split, redrawn: dict[float, data.Split] | None = None
) -> dict:
    """``model``'s top-1 accuracy (0..1) on ``test`` and ``validation``, and its negative
    log-likelihood on ``validation`` (mean cross-entropy in nats per image, >= 0). The NLL is the
    finer of the two validation figures: with about 15 errors left in 5,000 images, accuracy
    moves in steps of 0.02 points that the seeds' spread swamps.

    ``redrawn`` ({pen width in canvas px: the validation images redrawn with it}) adds
    ``validation_redrawn``: {pen width: accuracy 0..1}, the page's kind of pen on held-out digits.
    """
    with torch.no_grad():
        validation_loss, validation_accuracy = evaluate(model, validation)
        result = {
            "test_accuracy": evaluate(model, test)[1],
            "validation_accuracy": validation_accuracy,
            "validation_nll": validation_loss,
        }
        if redrawn is not None:
            result["validation_redrawn"] = {width: evaluate(model, split)[1] for width, split in redrawn.items()}
        return result


def redrawn_validation(validation: data.Split, cache_dir: Path) -> dict[float, data.Split]:
    """The validation split redrawn with each of ``trainer.synthetic.redraw.PEN_WIDTHS`` (the
    redrawn test sets' pens), built once and cached in ``cache_dir``: {pen width: split}."""
    from .synthetic.redraw import PEN_WIDTHS, redrawn_sets

    sets = redrawn_sets(validation.images.numpy(), PEN_WIDTHS, cache_dir=cache_dir)
    return {width: data.Split(torch.from_numpy(images), validation.labels) for width, images in sets.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the soup's .safetensors file")
    parser.add_argument("inputs", type=Path, nargs="+", help="two or more fine-tunes of one model")
    parser.add_argument("--data-dir", type=Path, default=data.DEFAULT_DATA_DIR, help="MNIST folder (default data/)")
    parser.add_argument(
        "--redrawn",
        action="store_true",
        help="also score every model on the validation split redrawn with pens 8/14/20/28 (built once, ~2 min)",
    )
    args = parser.parse_args(argv)
    try:
        models = [load_model(path) for path in args.inputs]
        soup = average(models)
        metadata = read_model_metadata(args.inputs[0])
    except (ValueError, WeightsError) as e:
        parser.exit(2, f"error: {e}\n")
    test = data.load_split(train=False, data_dir=args.data_dir)
    train = data.load_split(train=True, data_dir=args.data_dir)
    validation = data.Split(train.images[VALIDATION], train.labels[VALIDATION])
    redrawn = redrawn_validation(validation, args.data_dir / "redrawn") if args.redrawn else None
    held_out = all(HELD_OUT_KEY in read_model_metadata(path) for path in args.inputs)

    inputs = [
        {"weights": path.name, **scores(model, test, validation, redrawn)} for path, model in zip(args.inputs, models)
    ]
    result = scores(soup, test, validation, redrawn)
    keep = {key: value for key, value in metadata.items() if key not in ("architecture", "layers")}
    keep.update(
        {"test_accuracy": f"{result['test_accuracy']:.4f}", "soup_of": json.dumps([p.name for p in args.inputs])}
    )
    if not held_out:
        keep.pop(HELD_OUT_KEY, None)
    save_safetensors(soup, args.out, keep)
    calibration = calibrate(args.out, args.data_dir, allow_seen=not held_out)
    trainable, running = count_parameters(soup)
    write_metrics(
        metrics_path(args.out),
        {
            **result,
            "architecture": metadata["architecture"],
            "test_images": len(test.labels),
            "validation_images": len(validation.labels),
            "parameters": {"trainable": trainable, "running_stats": running, "total": trainable + running},
            "soup": {"method": "uniform (Wortsman et al., ICML 2022)", "inputs": inputs},
            "unsure_mutual_information": calibration["threshold"],
            "not_a_digit_max_probability": calibration["not_a_digit_max_probability"],
        },
    )

    def line(entry: dict) -> str:
        pens = entry.get("validation_redrawn", {})
        return (
            f"test {entry['test_accuracy']:.2%}, validation {entry['validation_accuracy']:.2%},"
            f" validation NLL {entry['validation_nll']:.5f}"
            + ("".join(f", pen {width:g} {accuracy:.2%}" for width, accuracy in pens.items()))
        )

    for entry in inputs:
        print(f"{entry['weights']}: {line(entry)}")
    print(f"wrote {args.out}: {line(result)}")


if __name__ == "__main__":
    main()
