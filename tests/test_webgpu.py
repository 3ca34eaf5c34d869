"""The WebGPU build (wgpu) in headless Chromium on SwiftShader, against the ndarray build; the
page using it only when asked (?backend=wgpu), and falling back to our CPU kernels when WebGPU
is missing or fails to start. The server is `invoke serve --webgpu`, which offers wgpu."""

import pytest
import torch

from tests.conftest import open_as_a_user, open_page

pytestmark = pytest.mark.browser

N_IMAGES = 500

PREDICT_ALL = """async (images) => {
    const out = [];
    for (const img of images) out.push(await window.mnist.predict(img));
    return out;
}"""

#: Prepended to the worker's script (web/worker.bundle.js): every WebGPU device request in the
#: worker is refused, as when the GPU process is gone or the adapter cannot give a device.
REFUSE_DEVICE = (
    "GPUAdapter.prototype.requestDevice = () => "
    "Promise.reject(new DOMException('forced by the test', 'OperationError'));\n"
)


def test_wgpu_matches_the_ndarray_build_on_500_mnist_digits(
    webgpu_browser, webgpu_server, mnist_test, torch_probabilities
):
    images = mnist_test.images[:N_IMAGES].reshape(N_IMAGES, -1).tolist()
    probs = {}
    for backend in ("wgpu", "ndarray"):
        page = open_page(webgpu_browser, webgpu_server, backend)
        assert page.evaluate("window.mnist.backend") == backend
        probs[backend] = torch.tensor(page.evaluate(PREDICT_ALL, images))
        page.close()
    gpu, cpu = probs["wgpu"], probs["ndarray"]
    assert gpu.shape == cpu.shape == (N_IMAGES, 10)
    same_top1 = (gpu.argmax(1) == cpu.argmax(1)).float().mean().item()
    max_diff = (gpu - cpu).abs().max().item()
    vs_torch = (gpu - torch_probabilities("wgpu")[:N_IMAGES]).abs().max().item()
    accuracy = (gpu.argmax(1) == mnist_test.labels[:N_IMAGES]).float().mean().item()
    print(
        f"wgpu vs ndarray: top-1 agreement {same_top1:.2%}, max |prob diff| {max_diff:.2e} "
        f"(vs PyTorch {vs_torch:.2e}), accuracy {accuracy:.2%}"
    )
    assert same_top1 >= 0.998
    assert max_diff <= 1e-3
    assert torch.allclose(gpu.sum(1), torch.ones(N_IMAGES), atol=1e-5)


def test_with_webgpu_the_page_uses_wgpu_only_when_asked(webgpu_browser, webgpu_server):
    """For one small image our CPU kernels beat WebGPU, so a browser with WebGPU and a server
    offering the wgpu build still get fast-relaxed, unless the URL asks for wgpu."""
    page, (label, backend_line, status) = open_as_a_user(webgpu_browser, webgpu_server)
    assert label == backend_line == "fast-relaxed"
    assert status == "ready: draw a digit"
    assert page.evaluate("navigator.gpu.requestAdapter().then((a) => a !== null)")  # WebGPU was there
    page.close()
    page, (label, backend_line, status) = open_as_a_user(webgpu_browser, webgpu_server, "?backend=wgpu")
    assert label == backend_line == "wgpu"
    assert status == "ready: draw a digit"
    page.close()


def test_a_webgpu_device_failure_falls_back_to_the_cpu_kernels_with_the_reason(
    webgpu_browser, webgpu_server, mnist_test, torch_probabilities
):
    def refuse_devices(route):
        response = route.fetch()
        route.fulfill(response=response, body=REFUSE_DEVICE + response.text())

    page, (label, backend_line, status) = open_as_a_user(
        webgpu_browser,
        webgpu_server,
        "?backend=wgpu",
        before_load=lambda page: page.route("**/worker.bundle.js", refuse_devices),
    )
    reason = "the wgpu device did not start: Unable to request a wgpu device: OperationError: forced by the test"
    assert label == backend_line == f"fast-relaxed ({reason})"
    assert status == f"wgpu: {reason}: using fast-relaxed. ready: draw a digit"
    probs = page.evaluate("(img) => window.mnist.predict(img)", mnist_test.images[7].flatten().tolist())
    assert max(abs(a - b) for a, b in zip(probs, torch_probabilities("fast-relaxed")[7].tolist())) <= 1e-5
    page.close()


def test_without_webgpu_flags_the_page_says_why_it_uses_the_cpu_kernels(browser, webgpu_server):
    """The default test browser has no WebGPU adapter, like most machines without a GPU."""
    page, (label, backend_line, status) = open_as_a_user(browser, webgpu_server, "?backend=wgpu")
    assert label == backend_line == "fast-relaxed (no WebGPU adapter)"
    assert status == "wgpu: no WebGPU adapter: using fast-relaxed. ready: draw a digit"
    page.close()


def test_a_crashed_worker_rejects_waiting_and_later_predictions(browser, webgpu_server):
    page = open_page(browser, webgpu_server, "flex")
    messages = page.evaluate("""async () => {
        const { InferenceWorker } = await import('./inference.js');
        const classifier = await InferenceWorker.start('flex');
        const waiting = classifier.predict(new Float32Array(784));
        classifier.worker.dispatchEvent(new ErrorEvent('error', { message: 'simulated crash' }));
        const outcome = (p) => p.then(() => 'resolved', (e) => e.message);
        return [await outcome(waiting), await outcome(classifier.predict(new Float32Array(784)))];
    }""")
    assert messages == ["the inference worker stopped: simulated crash"] * 2
    page.close()


def test_every_model_runs_on_webgpu_with_mc_dropout(webgpu_browser, webgpu_server, mnist_test):
    """The model picker on the wgpu build: each committed model loaded at run time
    (Classifier.fromBytes on the GPU device) answers like PyTorch; MC dropout too."""
    from mnist_common.weights import read_metadata
    from tests.test_models_page import weights_of
    from trainer.export import load_model
    from trainer.model import normalize
    from trainer.uncertainty import mc_probabilities, summarize

    page = open_page(webgpu_browser, webgpu_server, "wgpu")
    images = mnist_test.images[:50]
    for name in page.evaluate("window.mnist.models"):
        assert page.evaluate("(n) => window.mnist.load(n)", name) == name
        probs = torch.tensor(page.evaluate(PREDICT_ALL, images.reshape(50, -1).tolist()))
        # The weights this build runs as `name`: for the embedded cnn, the f32 file burn's builds
        # embed (weights_of's default build, fast-relaxed, embeds int8: its rounding moves some
        # log-probabilities by 0.17, which a test comparing with it once put down to SwiftShader).
        model = load_model(weights_of(name, "wgpu"))
        with torch.no_grad():
            expected = torch.softmax(model(normalize(images.unsqueeze(1))), 1)
        # Every model agrees to about 1e-6 (measured: at most 6e-7 in probability, 9e-6 in the
        # log-probability of a class above 1e-4); top-1 exactly.
        assert (probs - expected).abs().max() < 1e-5, name
        shown = expected > 1e-4
        assert (probs[shown].log() - expected[shown].log()).abs().max() < 1e-4, name
        assert torch.equal(probs.argmax(1), expected.argmax(1)), name
        got = page.evaluate(
            "(img) => window.mnist.predictUncertain(img, {samples: 20})", images[0].reshape(-1).tolist()
        )
        reference = summarize(mc_probabilities(model, images[:1], samples=20, seed=0))
        assert (torch.tensor(got["probs"]) - reference["probabilities"][0]).abs().max() < 2e-3, name
        # The "not a digit" verdict comes through the GPU build too: a bool with a τ, else null.
        has_tau = "not_a_digit_max_probability" in read_metadata(weights_of(name, "wgpu"))
        assert got["notADigit"] in ((True, False) if has_tau else (None,)), (name, got["notADigit"])
    page.close()


def test_teaching_runs_on_webgpu_like_the_native_kernels(webgpu_browser, webgpu_server, mnist_test):
    """window.mnist.teach on the wgpu build (Classifier.teach_async: the features read back
    from the GPU, the last layer re-fitted on the CPU) answers like the native module taught
    the same examples."""
    import mnist_infer
    import numpy as np

    pixels = mnist_test.images[:80].reshape(80, -1).numpy().astype(np.float32)
    labels = mnist_test.labels[:80].numpy()
    teach = [int(np.flatnonzero(labels == d)[0]) for d in range(10)]
    wrong = (labels[teach] + 1) % 10  # one example per digit, each labelled as the next digit
    page = open_page(webgpu_browser, webgpu_server, "wgpu")
    for i, label in zip(teach, wrong):
        page.evaluate("([p, l]) => window.mnist.teach(p, l)", [pixels[i].tolist(), int(label)])
    assert page.evaluate("window.mnist.taught") == [1] * 10
    shown = np.array(page.evaluate(PREDICT_ALL, pixels.tolist()))
    native = mnist_infer.Classifier()
    native.teach(pixels[teach], wrong)
    np.testing.assert_allclose(shown, native.predict(pixels), atol=1e-3)
    page.close()
