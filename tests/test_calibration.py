"""trainer.uncertainty.calibrate: the "not sure" and "not a digit" thresholds are chosen on
MNIST training images the model never saw, under the augmentation the metadata names."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT, WEIGHTS
from trainer import data
from trainer.augment import augmented_images
from trainer.export import load_model, read_metadata, save_safetensors
from trainer.model import Dropout, build
from trainer.synthetic.nondigits import nondigit_set
from trainer.train import Config, training_split
from trainer.uncertainty import (
    HELD_OUT_KEY,
    NONDIGITS_FLAGGED,
    NOT_A_DIGIT_QUANTILES,
    VALIDATION,
    calibrate,
    mc_probabilities,
    summarize,
    top_probability,
)

MODELS = sorted((ROOT / "models").glob("*.safetensors"))
#: Validation images and MC passes of the calibrations run here (quick, and enough to tell
#: the "draw" augmentation from the "affine" one).
LIMIT, SAMPLES = 300, 4


def test_training_never_sees_the_calibration_split():
    full = data.load_split(train=True)
    split = training_split(full, Config())
    assert len(split.labels) == VALIDATION.start == 55_000
    assert torch.equal(split.images, full.images[: VALIDATION.start])
    assert len(training_split(full, Config(limit=100)).labels) == 100
    assert len(training_split(full, Config(holdout=0)).labels) == 60_000
    with pytest.raises(ValueError, match="holdout must be 0 or 5,000"):
        Config(holdout=3).validate()


def test_a_model_trained_on_the_split_is_refused_or_said_so(tmp_path):
    """A file without the held-out mark (trained on all 60,000) is not silently calibrated on
    images it learnt; with allow_seen its rules say so."""
    weights = save_safetensors(build("mlp").eval(), tmp_path / "seen.safetensors")
    with pytest.raises(ValueError, match="was trained on MNIST training images 55000-59999"):
        calibrate(weights, limit=LIMIT, samples=SAMPLES)
    result = calibrate(weights, limit=LIMIT, samples=SAMPLES, allow_seen=True)
    assert result["held_out"] is False
    assert "seen in training" in read_metadata(weights)["unsure_rule"]
    assert "seen in training" in read_metadata(weights)["not_a_digit_rule"]


def test_thresholds_come_from_the_draw_augmented_held_out_split(tmp_path):
    """Both thresholds are the stated quantiles over the held-out images under the "draw"
    augmentation (the old code used the "affine" preset while its rule said "draw"); the "not a
    digit" one flags 99 % of the validation non-digits, clipped to the 1-5 % quantiles of the
    digits."""
    copy = tmp_path / WEIGHTS.name  # the committed default model
    copy.write_bytes(WEIGHTS.read_bytes())
    assert read_metadata(copy).get(HELD_OUT_KEY) == "55000-59999", "the committed model must hold the split out"
    result = calibrate(copy, limit=LIMIT, samples=SAMPLES)
    metadata = read_metadata(copy)
    assert result["held_out"] and "held out of training" in metadata["unsure_rule"]
    assert "'draw'" in metadata["unsure_rule"] and "'draw'" in metadata["not_a_digit_rule"]

    model = load_model(copy)
    images = data.load_split(train=True).images[VALIDATION][:LIMIT]
    nondigits = torch.from_numpy(nondigit_set(LIMIT, "validation", progress=False).images).float()
    on_nondigits = float(torch.quantile(top_probability(model, nondigits), NONDIGITS_FLAGGED))
    tops = {}
    for preset, should_match in (("draw", True), ("affine", False)):
        seen = augmented_images(images, preset=preset)
        mi = summarize(mc_probabilities(model, seen, SAMPLES))["mutual_information"]
        top = tops[preset] = top_probability(model, seen)
        floor, ceiling = (float(torch.quantile(top, q)) for q in NOT_A_DIGIT_QUANTILES)
        expected = (float(torch.quantile(mi.double(), 0.99)), min(max(on_nondigits, floor), ceiling))
        got = (float(metadata["unsure_mutual_information"]), float(metadata["not_a_digit_max_probability"]))
        matches = all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in zip(got, expected))
        assert matches == should_match, (preset, got, expected)
    tau = float(metadata["not_a_digit_max_probability"])
    assert result["digits_flagged"] == pytest.approx(float((tops["draw"] < tau).double().mean()))
    assert result["nondigits_flagged"] == pytest.approx(
        float((top_probability(model, nondigits) < tau).double().mean())
    )
    assert f"{result['nondigits_flagged']:.1%} of those non-digits" in metadata["not_a_digit_rule"]


def test_the_not_a_digit_threshold_flags_the_validation_non_digits(tmp_path):
    """A model that tells non-digits from digits (the committed default) gets a threshold that
    flags about 99 % of the validation non-digits at no more than 5 % of the validation digits;
    an untrained network, whose top probabilities are alike on both, is held to the 5 % bound
    and flags far fewer non-digits."""
    trained = tmp_path / WEIGHTS.name
    trained.write_bytes(WEIGHTS.read_bytes())
    untrained = save_safetensors(build("mlp").eval(), tmp_path / "untrained.safetensors")
    good = calibrate(trained, limit=1_000, samples=SAMPLES)
    poor = calibrate(untrained, limit=1_000, samples=SAMPLES, allow_seen=True)
    low, high = NOT_A_DIGIT_QUANTILES
    assert good["nondigits_flagged"] >= 0.98 and low - 0.005 <= good["digits_flagged"] <= high + 0.005, good
    assert poor["digits_flagged"] == pytest.approx(high, abs=0.005) and poor["nondigits_flagged"] < 0.5, poor


@pytest.mark.parametrize("weights", MODELS, ids=[p.stem for p in MODELS])
def test_every_committed_model_carries_both_rules(weights):
    """Both thresholds and their rules, from the held-out split; a model without dropout (the
    capsnet) has no mutual-information threshold and its "not sure" rule says why."""
    metadata = read_metadata(weights)
    tau = float(metadata["not_a_digit_max_probability"])
    assert 0.1 < tau < 1
    assert "MNIST training images 55,000-59,999" in metadata["not_a_digit_rule"]
    if not any(isinstance(spec, Dropout) for spec in load_model(weights).layers):
        assert "unsure_mutual_information" not in metadata and "no dropout" in metadata["unsure_rule"]
        return
    assert float(metadata["unsure_mutual_information"]) > 0
    for key in ("unsure_rule", "not_a_digit_rule"):
        assert "MNIST training images 55,000-59,999" in metadata[key] and "'draw'" in metadata[key]


def test_a_model_without_dropout_has_no_mutual_information_threshold(tmp_path):
    """The capsnet has no dropout: its MC passes are one pass, and a threshold at a quantile of
    their rounding noise called random digits "not sure" (12 of 200 in Rust's float32). Its
    file carries no MI threshold (one already there is removed), its rule says why, and the
    native module's "not sure" is then the "not a digit" rule alone."""
    from mnist_common.plan import Conv, Flatten, Linear
    from trainer.export import update_metadata
    from trainer.model import Net

    plan = (
        Conv("conv1", 1, 4, kernel_size=5, norm=False, activation="relu"),
        Flatten(),
        Linear("fc", 4 * 12 * 12, 10, "none"),
    )
    weights = save_safetensors(Net(plan, "no-dropout").eval(), tmp_path / "no-dropout.safetensors")
    update_metadata(weights, {"unsure_mutual_information": "1e-17"})  # as a calibration of before wrote
    result = calibrate(weights, limit=LIMIT, samples=SAMPLES, allow_seen=True)
    metadata = read_metadata(weights)
    assert result["threshold"] is None and "unsure_mutual_information" not in metadata
    assert "no dropout" in metadata["unsure_rule"]
    mnist_infer = pytest.importorskip("mnist_infer", reason="the native module is built by `invoke setup`")
    classifier = mnist_infer.Classifier(weights, backend="fast")
    assert classifier.unsure_threshold is None
    images = data.load_split(train=False).images[:50].reshape(50, -1).numpy().astype("float32")
    for image in images:
        u = classifier.uncertainty(image, samples=8, seed=0)
        assert u["unsure"] == u["not_a_digit"], u
