"""Every committed model (models/*.safetensors: the cnn, mlp, lenet5, resnet) on every native
backend of the Rust crate: our kernels and burn's flex and ndarray, against PyTorch on real
MNIST digits, plain and under MC dropout with the same masks."""

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.export import load_model, read_metadata
from trainer.model import ARCHITECTURES, normalize
from trainer.uncertainty import mc_probabilities, summarize

pytestmark = pytest.mark.native
mnist_infer = pytest.importorskip("mnist_infer", reason="the native module is built by `invoke test`")

MODELS = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.safetensors"))
N_DIGITS = 500


def test_every_architecture_has_a_committed_model():
    ids = {read_metadata(path)["architecture"] for path in MODELS}
    assert ids == {a.id for a in ARCHITECTURES.values()}


@pytest.mark.parametrize("backend", mnist_infer.BACKENDS)
@pytest.mark.parametrize("weights", MODELS, ids=[p.stem for p in MODELS])
def test_every_model_on_every_backend_matches_pytorch(weights, backend, mnist_test):
    classifier = mnist_infer.Classifier(str(weights), backend=backend)
    images = mnist_test.images[:N_DIGITS]
    model = load_model(weights)
    with torch.no_grad():
        expected = torch.softmax(model(normalize(images.unsqueeze(1))), 1).numpy()
    got = classifier.predict(images.reshape(N_DIGITS, -1).numpy())
    assert np.abs(got - expected).max() < 1e-4
    accuracy = (got.argmax(1) == mnist_test.labels[:N_DIGITS].numpy()).mean()
    assert accuracy >= 0.98
    reference = summarize(mc_probabilities(model, images[:3], samples=10, seed=11))
    for i in range(3):
        u = classifier.uncertainty(images[i].reshape(-1).numpy().astype(np.float32), samples=10, seed=11)
        np.testing.assert_allclose(u["probabilities"], reference["probabilities"][i], atol=5e-5)
        assert u["mutual_information"] == pytest.approx(float(reference["mutual_information"][i]), abs=5e-5)
