"""Teaching the model a hand (issue 15), natively: the Rust re-fit of the last layer
(wasm-infer/mnist-model/src/adapt.rs, through mnist_infer) on synthetic writers from MNIST's test
digits, against an independent numpy implementation of the same objective on PyTorch's
features; its input checks; and `invoke personalize`'s report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import WEIGHTS
from trainer.evaluation import personalize
from trainer.model import normalize
from trainer.synthetic.writers import teach_split, writers_set

pytestmark = pytest.mark.native
mnist_infer = pytest.importorskip("mnist_infer", reason="the native module is built by `invoke setup`")

SHOTS = 3


@pytest.fixture(scope="module")
def writers(mnist_test):
    """8 synthetic writers, 10 digits per class each, glyphs from MNIST's test digits."""
    return writers_set(mnist_test.images.numpy(), mnist_test.labels.numpy(), writers=8, per_class=10, progress=False)


def pixels_of(images) -> np.ndarray:
    return np.asarray(images).reshape(len(images), -1).astype(np.float32)


def penultimate(model, pixels: np.ndarray) -> np.ndarray:
    """PyTorch's input to the model's last linear layer, (N, F) float64."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen = []
    hook = last.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        model(normalize(torch.from_numpy(pixels).reshape(-1, 1, 28, 28)))
    hook.remove()
    return seen[0].double().numpy()


def refit(weight, bias, features, labels, pull, steps):
    """The objective of adapt.rs, J = mean CE + pull/2 |theta - theta0|^2, by the same Nesterov
    iteration, written again in float64 numpy from its doc comment."""
    n, k = len(labels), len(bias)
    x = np.hstack([features, np.ones((n, 1))])  # bias as a last feature
    start = np.hstack([weight, bias[:, None]])  # (k, F + 1)
    lipschitz = 0.5 * (x**2).sum(1).mean() + pull
    ratio = np.sqrt(pull / lipschitz)
    momentum = (1 - ratio) / (1 + ratio)
    theta, previous = start.copy(), start.copy()
    onehot = np.eye(k)[labels]
    for _ in range(steps):
        look = theta + momentum * (theta - previous)
        logits = x @ look.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        gradient = (p - onehot).T @ x / n + pull * (look - start)
        previous, theta = theta, look - gradient / lipschitz
    return theta[:, :-1], theta[:, -1]


def test_teaching_matches_an_independent_implementation_and_helps_the_writer(model, writers):
    pixels = pixels_of(writers.images)
    teach, test = teach_split(writers, 0, SHOTS)
    classifier = mnist_infer.Classifier(WEIGHTS)
    classifier.teach(pixels[teach], writers.labels[teach])
    assert classifier.taught == [SHOTS] * 10
    rust = classifier.logits(pixels[test])

    state = model.state_dict()
    last = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    weight, bias = state[f"{last}.weight"].double().numpy(), state[f"{last}.bias"].double().numpy()
    w, b = refit(
        weight,
        bias,
        penultimate(model, pixels[teach]),
        writers.labels[teach],
        mnist_infer.TEACH_PULL,
        mnist_infer.TEACH_STEPS,
    )
    reference = penultimate(model, pixels[test]) @ w.T + b
    diff = float(np.abs(rust - reference).max())
    print(f"max |logit diff| Rust (f32) vs numpy (f64): {diff:.2e}")
    assert diff < 2e-3 and (rust.argmax(1) == reference.argmax(1)).all()


def test_teaching_each_writer_helps_it_and_costs_little_on_mnist(writers, mnist_test):
    mnist = pixels_of(mnist_test.images[:2000])
    results = personalize.measure(
        mnist_infer.Classifier(WEIGHTS), writers, mnist, mnist_test.labels.numpy()[:2000], shots=SHOTS, progress=False
    )
    summary = personalize.summarize(results)
    for r in results:
        print(f"writer {r.writer}: {r.before:.1f} % -> {r.after:.1f} %, MNIST {r.mnist_after - r.mnist_before:+.2f}")
    print(summary)
    assert summary["after"] > summary["before"] and summary["writers_worse"] <= 1
    assert summary["mnist_loss_max"] <= personalize.MAX_MNIST_LOSS


@pytest.mark.parametrize("backend", [b for b in mnist_infer.BACKENDS if not b.startswith("fast")])
def test_every_backend_learns_the_same_head(backend, writers):
    """burn's backends compute the features themselves: the taught model agrees with the fast
    kernels' (same features up to float rounding, same deterministic re-fit)."""
    pixels = pixels_of(writers.images)
    teach, test = teach_split(writers, 1, SHOTS)
    fast, burn = mnist_infer.Classifier(), mnist_infer.Classifier(backend=backend)
    for c in (fast, burn):
        c.teach(pixels[teach], writers.labels[teach])
    np.testing.assert_allclose(burn.logits(pixels[test]), fast.logits(pixels[test]), atol=1e-3)


def test_forget_gives_back_the_trained_model_exactly(writers):
    pixels = pixels_of(writers.images)
    classifier = mnist_infer.Classifier()
    trained = classifier.predict(pixels)
    teach, _ = teach_split(writers, 2, SHOTS)
    classifier.teach(pixels[teach], writers.labels[teach])
    assert not np.array_equal(classifier.predict(pixels), trained)
    classifier.forget()
    assert classifier.taught == [0] * 10
    np.testing.assert_array_equal(classifier.predict(pixels), trained)
    # teaching nothing forgets too; another classifier never learnt anything
    classifier.teach(pixels[teach], writers.labels[teach])
    classifier.teach(np.zeros((0, 784), np.float32), np.zeros(0, np.int64))
    np.testing.assert_array_equal(classifier.predict(pixels), trained)
    np.testing.assert_array_equal(mnist_infer.predict(pixels), trained)


def test_uncertainty_uses_the_taught_head(writers):
    pixels = pixels_of(writers.images)
    teach, test = teach_split(writers, 0, SHOTS)
    classifier = mnist_infer.Classifier()
    classifier.teach(pixels[teach], writers.labels[teach])
    u = classifier.uncertainty(pixels[test[0]], samples=20, seed=0)
    taught = classifier.predict(pixels[test[0]])
    # The MC mean is close to the plain prediction of the same (taught) model.
    assert int(u["probabilities"].argmax()) == int(taught.argmax())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: (p[:3], [1, 2, 10]), "digits 0-9"),
        (lambda p: (p[:3], [1, 2, -1]), "digits 0-9"),
        (lambda p: (p[:3], [1, 2]), "one label per image"),
        (lambda p: (np.vstack([p[:2], np.zeros((1, 784), np.float32)]), [1, 2, 3]), "image 2 is blank"),
        (lambda p: (p[:3] * 2, [1, 2, 3]), "0..=255"),
        (lambda p: (p[:3, :700], [1, 2, 3]), "784"),
    ],
)
def test_bad_examples_are_refused_and_change_nothing(make, message, writers):
    pixels = pixels_of(writers.images)
    classifier = mnist_infer.Classifier()
    teach, _ = teach_split(writers, 0, SHOTS)
    classifier.teach(pixels[teach], writers.labels[teach])
    before = classifier.predict(pixels[:50])
    bad_pixels, labels = make(pixels)
    with pytest.raises(ValueError, match=message):
        classifier.teach(bad_pixels, np.asarray(labels))
    assert classifier.taught == [SHOTS] * 10
    np.testing.assert_array_equal(classifier.predict(pixels[:50]), before)
    with pytest.raises(ValueError, match="pull"):
        classifier.teach(pixels[teach], writers.labels[teach], pull=0.0)


def test_invoke_personalize_writes_its_report(tmp_path, capsys):
    personalize.main(["--writers", "3", "--per-class", "5", "--out-dir", str(tmp_path)])
    report = json.loads((tmp_path / "model.json").read_text())
    assert report["shots"] == SHOTS and len(report["writers"]) == 3
    assert report["summary"]["mnist_before"] > 99
    assert (tmp_path / "model.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "untaught" in out and "largest loss" in out
