"""The capsule network in Rust (issue 24): a capsule plan trained briefly in PyTorch, written as
safetensors, loaded by the native module on burn's backends (flex, ndarray) and on our kernels
(every ``fast-*`` backend this CPU has: scalar, SSE2, AVX2 + FMA), and compared with PyTorch on
real MNIST test digits: logits, top-1 and the decoder's reconstruction, whose digits (from the same
forward pass) are the logits' argmax. A model without a decoder refuses to reconstruct."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnist_common.constants import NUM_CLASSES
from mnist_common.plan import CapsuleLength, Conv, Decoder, DigitCaps, PrimaryCaps
from tests.conftest import WEIGHTS
from trainer import data
from trainer.export import save_safetensors
from trainer.model import Net, margin_loss, normalize, reconstruction_loss

mnist_infer = pytest.importorskip("mnist_infer", reason="the native module is built by `invoke setup`")
pytestmark = pytest.mark.native

#: A capsule network of the committed capsnet's kinds (strided 9x9 convolution, primary
#: capsules, 3 routing iterations, decoder), smaller so that it trains here in seconds.
SMALL_CAPSNET = (
    Conv("conv1", 1, 16, kernel_size=9, norm=False, activation="relu", pool=0),  # -> 16 x 20 x 20
    PrimaryCaps("primary", 16, capsules=4, dim=8, kernel_size=9, stride=2),  # -> 4 x 6 x 6 = 144 capsules
    DigitCaps("digits", 144, in_dim=8, capsules=NUM_CLASSES, dim=16, routing=3),
    Decoder("decoder", NUM_CLASSES, 16, hidden1=64, hidden2=128),
    CapsuleLength(10.0),
)
#: Test digits compared per backend.
DIGITS = 1000
#: Largest difference allowed between PyTorch and Rust, on logits and on the reconstruction
#: (0..1 units), as for the other models' native parity.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def capsnet(tmp_path_factory):
    """(PyTorch model in eval mode, its safetensors path): SMALL_CAPSNET after 100 steps of 32
    MNIST training digits with the paper's losses (seeded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small operations: 20x faster than 2 threads on a busy machine
    torch.manual_seed(0)
    model = Net(SMALL_CAPSNET, "mnist-capsnet-test")
    train = data.load_split(train=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(0))
    for step in range(100):
        batch = order[step * 32 : (step + 1) * 32]
        pixels, labels = train.images[batch].float(), train.labels[batch]
        capsules = model.capsules(normalize(pixels.unsqueeze(1)))
        lengths = torch.linalg.vector_norm(capsules, dim=-1)
        loss = margin_loss(lengths, labels) + reconstruction_loss(model.decode(capsules, labels), pixels)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    torch.set_num_threads(threads)
    path = save_safetensors(model.eval(), tmp_path_factory.mktemp("capsnet") / "capsnet.safetensors")
    return model, path


@pytest.fixture(scope="module")
def reference(capsnet, mnist_test):
    """PyTorch on the first DIGITS test digits: (pixels (N, 784) float32, logits, reconstruction (N, 784) 0..1)."""
    model, _ = capsnet
    pixels = mnist_test.images[:DIGITS].float()
    with torch.no_grad():
        images = normalize(pixels.unsqueeze(1))
        logits, reconstruction = model(images), model.reconstruct(images)
    return pixels.reshape(DIGITS, -1).numpy(), logits.numpy(), reconstruction.numpy()


#: burn's CPU backends and our kernels on every instruction set the native module has.
CAPSULE_BACKENDS = [b for b in mnist_infer.BACKENDS if b in ("flex", "ndarray") or b.startswith("fast-")]


@pytest.mark.parametrize("backend", CAPSULE_BACKENDS)
def test_rust_reads_the_capsule_network_as_pytorch_does(capsnet, reference, mnist_test, backend):
    pixels, logits, reconstruction = reference
    classifier = mnist_infer.Classifier(capsnet[1], backend=backend)
    rust_logits, (digits, rust_reconstruction) = classifier.logits(pixels), classifier.reconstruct(pixels)
    rust_reconstruction = rust_reconstruction / 255
    labels = mnist_test.labels[:DIGITS].numpy()
    accuracy = (logits.argmax(1) == labels).mean()
    print(
        f"{backend}: PyTorch {accuracy:.1%} on {DIGITS} test digits; max |logit diff| "
        f"{np.abs(rust_logits - logits).max():.1e}, max |reconstruction diff| "
        f"{np.abs(rust_reconstruction - reconstruction).max():.1e}"
    )
    assert accuracy > 0.5, "trained: the comparison is of a network that reads digits"
    assert (rust_logits.argmax(1) == logits.argmax(1)).all()
    # The digits the decoder drew from are the predictions, from the same forward pass.
    assert digits.shape == (DIGITS,) and digits.dtype == np.int64
    np.testing.assert_array_equal(digits, rust_logits.argmax(1))
    np.testing.assert_allclose(rust_logits, logits, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(rust_reconstruction, reconstruction, rtol=0, atol=TOLERANCE)
    # The reconstruction is an image of the input's digit: it correlates with the input.
    correlation = [np.corrcoef(a, b)[0, 1] for a, b in zip(rust_reconstruction[:100], pixels[:100])]
    assert np.median(correlation) > 0.3, np.median(correlation)
    digit, one = classifier.reconstruct(pixels[0])
    assert isinstance(digit, int) and digit == digits[0]
    assert one.shape == (784,) and np.allclose(one, rust_reconstruction[0] * 255, atol=1e-3)


def test_every_native_cpu_backend_runs_the_capsule_network():
    """Our kernels on each instruction set are compared above, not only burn's backends."""
    assert {"flex", "fast-scalar", "fast-sse2"} <= set(CAPSULE_BACKENDS), CAPSULE_BACKENDS


@pytest.mark.parametrize("backend", ["fast", "flex"])
def test_a_model_without_a_decoder_does_not_reconstruct(backend):
    classifier = mnist_infer.Classifier(WEIGHTS, backend=backend)
    with pytest.raises(ValueError, match="no reconstruction decoder"):
        classifier.reconstruct(np.zeros(784, np.float32))


def test_a_capsule_network_cannot_be_taught_and_says_why(capsnet, reference):
    classifier = mnist_infer.Classifier(capsnet[1], backend="flex")
    pixels = reference[0][:10]
    with pytest.raises(ValueError, match="linear layer"):
        classifier.teach(pixels, list(range(10)))


@pytest.fixture(scope="module")
def committed(mnist_test):
    """The committed capsule network (models/capsnet.safetensors) in PyTorch on all 10,000 MNIST
    test digits: (path, pixels (N, 784) float32 0..255, logits (N, 10), reconstruction (N, 784) 0..1)."""
    from trainer.export import load_model

    path = WEIGHTS.parent / "capsnet.safetensors"
    model = load_model(path)
    pixels = mnist_test.images.float()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        logits, reconstruction = [], []
        for start in range(0, len(pixels), 500):
            images = normalize(pixels[start : start + 500].unsqueeze(1))
            capsules = model.capsules(images)
            logits.append(model.logits_of_capsules(capsules))
            reconstruction.append(model.decode(capsules))
    torch.set_num_threads(threads)
    flat = pixels.reshape(len(pixels), -1).numpy()
    return path, flat, torch.cat(logits).numpy(), torch.cat(reconstruction).numpy()


#: How many of the test digits each backend reads in the committed model's comparison: all
#: 10,000 on our kernels (what the API and the page run); burn's flex, the reference backend,
#: on the first 2,000 (it takes 90 s for all of them on a CI core).
COMMITTED_DIGITS = {"fast": 10_000, "flex": 2_000}


@pytest.mark.parametrize("backend", COMMITTED_DIGITS)
def test_the_committed_capsnet_matches_pytorch_on_the_mnist_test_digits(committed, mnist_test, backend):
    """The issue's standard for the committed model: every MNIST test digit (our kernels), the
    same top-1, logits and reconstruction within TOLERANCE of PyTorch's; and its
    reconstructions look like the input (median Pearson correlation >= 0.8 over the first 200)."""
    path, flat, logits, reconstruction = committed
    n = COMMITTED_DIGITS[backend]
    flat, logits, reconstruction = flat[:n], logits[:n], reconstruction[:n]
    classifier = mnist_infer.Classifier(path, backend=backend)
    rust_logits, (digits, rust_reconstruction) = classifier.logits(flat), classifier.reconstruct(flat)
    rust_reconstruction = rust_reconstruction / 255
    print(
        f"{backend}: {(rust_logits.argmax(1) == mnist_test.labels[:n].numpy()).mean():.2%} on {n:,}; max |logit diff| "
        f"{np.abs(rust_logits - logits).max():.1e}, reconstruction {np.abs(rust_reconstruction - reconstruction).max():.1e}"
    )
    assert len(rust_logits) == n
    assert (rust_logits.argmax(1) == logits.argmax(1)).all()
    np.testing.assert_array_equal(digits, rust_logits.argmax(1))
    np.testing.assert_allclose(rust_logits, logits, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(rust_reconstruction, reconstruction, rtol=0, atol=TOLERANCE)
    correlation = [np.corrcoef(a, b)[0, 1] for a, b in zip(rust_reconstruction[:200], flat[:200])]
    assert np.median(correlation) >= 0.8, np.median(correlation)
