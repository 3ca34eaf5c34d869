"""MC dropout: the same masks in PyTorch and in the Rust kernels, the summary's maths, the
"not sure" threshold, on every model committed in models/."""

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.export import load_model, read_metadata
from trainer.model import Dropout
from trainer.uncertainty import mc_probabilities, summarize, uniform

pytestmark = pytest.mark.native
mnist_infer = pytest.importorskip("mnist_infer", reason="the native module is built by `invoke test`")

MODELS = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.safetensors"))


def test_the_mask_stream_is_uniform_and_seeded():
    draws = uniform(7, np.arange(100_000))
    assert draws.dtype == np.float32 and 0 <= draws.min() and draws.max() < 1
    assert abs(draws.mean() - 0.5) < 0.005
    assert not np.array_equal(uniform(8, np.arange(64)), draws[:64])
    assert np.array_equal(uniform(7, np.arange(10, 20)), draws[10:20])  # counter-based


def test_summary_maths_on_known_samples():
    agree = summarize(torch.tensor([[[0.9, 0.1], [0.9, 0.1]]]))
    assert float(agree["mutual_information"][0]) == pytest.approx(0, abs=1e-7)
    split = summarize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    assert float(split["mutual_information"][0]) == pytest.approx(np.log(2))
    assert float(split["entropy"][0]) == pytest.approx(np.log(2))
    assert split["std"][0].tolist() == [0.5, 0.5]


@pytest.mark.parametrize("weights", MODELS, ids=[p.stem for p in MODELS])
def test_rust_mc_dropout_matches_pytorch_given_the_same_masks(weights, mnist_test):
    """The native kernels and PyTorch, each drawing its masks from seed 3, agree sample-mean
    for sample-mean on real digits: the masks are the same, not only alike."""
    classifier = mnist_infer.Classifier(str(weights))
    model = load_model(weights)
    images = mnist_test.images[:8]
    reference = summarize(mc_probabilities(model, images, samples=20, seed=3))
    for i, image in enumerate(images.reshape(-1, 784).numpy().astype(np.float32)):
        rust = classifier.uncertainty(image, samples=20, seed=3)
        np.testing.assert_allclose(rust["probabilities"], reference["probabilities"][i], atol=2e-5)
        np.testing.assert_allclose(rust["std"], reference["std"][i], atol=2e-5)
        assert rust["mutual_information"] == pytest.approx(float(reference["mutual_information"][i]), abs=2e-5)
        assert rust["entropy"] == pytest.approx(float(reference["entropy"][i]), abs=2e-5)
    # Another seed, other masks: the samples differ; without dropout (the capsnet) they are one pass.
    image = images[0].reshape(784).numpy().astype(np.float32)
    stds = classifier.uncertainty(image, 20, 3)["std"], classifier.uncertainty(image, 20, 4)["std"]
    if any(isinstance(spec, Dropout) for spec in model.layers):
        assert not np.array_equal(*stds)
    else:
        assert np.array_equal(*stds) and not np.any(stds[0])


@pytest.mark.parametrize("weights", MODELS, ids=[p.stem for p in MODELS])
def test_every_committed_model_is_calibrated_and_noise_is_not_sure(weights, mnist_test):
    """The Rust classifier reads both thresholds; on real test digits it rarely says "not
    sure", on sprinkled ink (no digit) nearly always, by either rule."""
    metadata = read_metadata(weights)
    classifier = mnist_infer.Classifier(str(weights))
    if "unsure_mutual_information" in metadata:
        assert classifier.unsure_threshold == pytest.approx(float(metadata["unsure_mutual_information"]))
    else:  # no dropout (the capsnet): "not sure" is the "not a digit" rule alone
        assert classifier.unsure_threshold is None and "no dropout" in metadata["unsure_rule"]
    digits = mnist_test.images[:200].reshape(-1, 784).numpy().astype(np.float32)
    flagged = np.mean([classifier.uncertainty(x)["unsure"] for x in digits])
    rng = np.random.default_rng(0)
    noise = (rng.random((50, 784)) < 0.15).astype(np.float32) * 255  # sprinkled ink, no digit
    flagged_noise = np.mean([classifier.uncertainty(x)["unsure"] for x in noise])
    assert flagged <= 0.05, f"{flagged:.1%} of real test digits called 'not sure'"
    assert flagged_noise >= 0.9, f"only {flagged_noise:.1%} of noise images called 'not sure'"


def test_bad_requests_are_refused_with_the_reason(mnist_test):
    image = mnist_test.images[0].reshape(784).numpy().astype(np.float32)
    with pytest.raises(ValueError, match="between 1 and 1000"):
        mnist_infer.uncertainty(image, samples=0)
    with pytest.raises(ValueError, match="one image"):
        mnist_infer.uncertainty(np.concatenate([image, image]))
    assert mnist_infer.uncertainty(image, samples=1)["mutual_information"] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("weights", [p for p in MODELS if p.stem != "capsnet"], ids=lambda p: p.stem)
def test_the_layers_before_dropout_run_once_and_give_what_every_full_pass_gives(weights, mnist_test):
    """`Net.mc_dropout_logits` runs the layers before the first Dropout once per image: the
    same logits as `forward` on every image repeated, with the same masks."""
    from trainer.model import normalize

    model = load_model(weights).eval()
    samples, images = 5, normalize(mnist_test.images[:8].float().unsqueeze(1))
    drawn = {}

    def masks(i, shape):  # a fixed 0/1 mask per Dropout layer and row
        generator = torch.Generator().manual_seed(i)
        return drawn.setdefault(i, (torch.rand(shape, generator=generator) >= 0.25).float())

    with torch.no_grad():
        once = model.mc_dropout_logits(images, samples, masks)
        full = model(images.repeat_interleave(samples, dim=0), masks=masks)
    assert once.shape == (8 * samples, 10) and len(drawn) >= 1
    torch.testing.assert_close(once, full, rtol=0, atol=1e-4)
    assert not torch.allclose(once[0], once[1])  # the passes differ: the masks were applied
    with pytest.raises(ValueError, match="no Dropout"):
        load_model(weights.parent / "capsnet.safetensors").mc_dropout_logits(images, samples, masks)
