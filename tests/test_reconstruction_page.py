"""What a capsule network sees, on the page (issue 24, point 3), in real headless Chromium on
the real wasm: a small capsule network (trained briefly in tests/test_capsnet_rust.py's fixture)
dropped on the page as a weights file, a digit drawn with the mouse, and the reconstruction
canvas beside "What the model sees" looked at: visible, not blank, drawn from the predicted
digit. `window.mnist.reconstruct` against the native module on every build, and its refusal
for a model without a decoder."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.conftest import ROOT, open_page
from tests.test_browser import STROKES, draw
from tests.test_capsnet_rust import capsnet  # noqa: F401 (the fixture)

mnist_infer = pytest.importorskip("mnist_infer", reason="the native module is built by `invoke setup`")
pytestmark = pytest.mark.browser

#: The page's default build.
BACKEND = "fast-relaxed"
#: Test digits compared with the native module, per build.
DIGITS = 20
SCREENSHOT = ROOT / "reports" / "screenshots" / "reconstruction.png"

#: The name the dropped file gets in the picker (models/capsnet.safetensors is served as "capsnet").
DROPPED = "small-capsnet"
DROP = """async ([b64, name]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], `${name}.safetensors`));
    document.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
}"""
RECONSTRUCT_ALL = """async (images) => {
    const out = [];
    for (const p of images) out.push(await window.mnist.reconstruct(p));
    return out;
}"""


def drop_model(page, path) -> None:
    """Drop the weights file `path` on the page, as a person would, and wait until it runs."""
    page.evaluate(DROP, [base64.b64encode(path.read_bytes()).decode(), DROPPED])
    page.wait_for_function(f"window.mnist.model === '{DROPPED}'", timeout=60_000)


def assert_reconstructs_as_native(page, path, native_backend, images, tolerance):
    """`window.mnist.reconstruct` on `images` against the native module's `reconstruct` on
    `native_backend` (0..255; the digit: the native prediction's, and the native
    reconstruction's)."""
    native = mnist_infer.Classifier(path, backend=native_backend)
    answers = page.evaluate(RECONSTRUCT_ALL, images.tolist())
    seen = np.array([a["pixels"] for a in answers], dtype=np.float32)
    digits, expected = native.reconstruct(images)
    print(
        f"{page.evaluate('window.mnist.backend')} vs native {native_backend}: max |diff| {np.abs(seen - expected).max():.2e} of 255"
    )
    assert seen.shape == (len(images), 784) and seen.min() >= 0 and seen.max() <= 255
    assert [a["digit"] for a in answers] == native.predict(images).argmax(1).tolist() == digits.tolist()
    np.testing.assert_allclose(seen, expected, rtol=0, atol=tolerance * 255)


@pytest.fixture(scope="module")
def images(mnist_test):
    return mnist_test.images[:DIGITS].reshape(DIGITS, -1).numpy().astype(np.float32)


@pytest.fixture(scope="module")
def page(browser, server, capsnet):  # noqa: F811
    page = open_page(browser, server, BACKEND)
    page.set_viewport_size({"width": 1000, "height": 900})
    yield page
    page.close()


def test_a_model_without_a_decoder_shows_no_reconstruction(page, images):
    assert page.locator("[data-testid=reconstruction]").is_hidden()
    message = page.evaluate(
        "(p) => window.mnist.reconstruct(p).then(() => 'resolved', (e) => e.message)", images[0].tolist()
    )
    assert "no reconstruction decoder" in message


def test_the_page_shows_what_the_capsule_network_sees(page, capsnet, images):  # noqa: F811
    path = capsnet[1]
    drop_model(page, path)
    assert_reconstructs_as_native(page, path, "fast", images, 1e-3)

    # What a person sees: draw a 0; the reconstruction appears beside the preview, not blank,
    # drawn from the digit the page shows.
    draw(page, STROKES[0])
    page.wait_for_function(
        "document.querySelector('[data-testid=reconstruction]').dataset.digit !== ''", timeout=10_000
    )
    canvas = page.locator("[data-testid=reconstruction]")
    box, preview = canvas.bounding_box(), page.locator("#preview").bounding_box()
    assert canvas.is_visible() and box["width"] >= 100 and box["height"] >= 100
    assert abs(box["y"] - preview["y"]) < 2 and box["x"] > preview["x"] + preview["width"], (box, preview)
    ink = page.evaluate(
        """() => { const c = document.querySelector('[data-testid=reconstruction]');
                   const d = c.getContext('2d').getImageData(0, 0, 28, 28).data;
                   let ink = 0; for (let i = 0; i < d.length; i += 4) ink += d[i] > 64; return ink; }"""
    )
    assert ink >= 20, f"{ink} inked pixels: a blank reconstruction"
    shown = page.locator("[data-testid=prediction]").get_attribute("data-digit")
    assert canvas.get_attribute("data-digit") == shown
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOT)

    # Back to a model without a decoder: the figure goes.
    page.evaluate("window.mnist.load(window.mnist.models[0])")
    page.wait_for_function("document.querySelector('#reconstruction-figure').hidden", timeout=10_000)


@pytest.mark.parametrize("backend", ["fast-simd128", "flex", "ndarray"])
def test_every_cpu_build_reconstructs_as_the_native_module(browser, server, capsnet, images, backend):  # noqa: F811
    page = open_page(browser, server, backend)
    try:
        drop_model(page, capsnet[1])
        assert_reconstructs_as_native(page, capsnet[1], "fast" if backend.startswith("fast") else backend, images, 1e-3)
    finally:
        page.close()


def test_webgpu_reconstructs_as_the_native_module(webgpu_browser, webgpu_server, capsnet, images):  # noqa: F811
    """On WebGPU (SwiftShader in CI), to the tolerance of the other WebGPU checks."""
    page = open_page(webgpu_browser, webgpu_server, "wgpu")
    try:
        drop_model(page, capsnet[1])
        assert_reconstructs_as_native(page, capsnet[1], "flex", images[:5], 2e-3)
    finally:
        page.close()


#: The README's picture of the committed capsnet's reconstruction.
README_SHOT = ROOT / "web" / "screenshots" / "capsnet.png"


def test_the_committed_capsnet_draws_what_it_sees(browser, server, mnist_test):
    """The committed capsnet from the picker (?model=capsnet) on the default build: its
    reconstructions look like the input (median Pearson correlation >= 0.8 over 200 test
    digits, the issue's bar), and a drawn 7 is shown with its reconstruction (README picture)."""
    from tests.conftest import load

    page = load(browser.new_page(viewport={"width": 1000, "height": 760}), f"{server}?backend={BACKEND}&model=capsnet")
    try:
        page.wait_for_function("window.mnist.model === 'capsnet'", timeout=60_000)
        images = mnist_test.images[:200].reshape(200, -1).numpy().astype(np.float32)
        answers = page.evaluate(RECONSTRUCT_ALL, images.tolist())
        correlation = [np.corrcoef(a["pixels"], image)[0, 1] for a, image in zip(answers, images)]
        print(f"median correlation of the page's reconstructions with the input: {np.median(correlation):.3f}")
        assert np.median(correlation) >= 0.8
        draw(page, STROKES[7])
        page.wait_for_function(
            "document.querySelector('[data-testid=reconstruction]').dataset.digit === '7'", timeout=10_000
        )
        assert page.locator("[data-testid=reconstruction]").is_visible()
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=README_SHOT)
    finally:
        page.close()
