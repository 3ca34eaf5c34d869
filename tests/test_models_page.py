"""The page's model zoo and MC dropout, in real headless Chromium on the real wasm builds:
every committed model through the picker, its answers against PyTorch's, MC dropout on the
same masks as PyTorch, and what a person sees (a screenshot, the bars' rendered widths, the
"not sure" label for a scribble)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, open_page
from tests.test_browser import STROKES, draw, wait_for_the_top_bar_to_show
from trainer.export import load_model
from trainer.model import normalize
from trainer.uncertainty import mc_probabilities, summarize

pytestmark = pytest.mark.browser

MODELS_DIR = ROOT / "models"
#: Digits each model classifies in the browser (the issue's bar: >= 99 %, the MLP >= 98 %).
N_DIGITS = 1000
#: Where the screenshots go (reports/ is not committed; README images are copied by hand to web/screenshots/).
SCREENSHOT = ROOT / "reports" / "screenshots" / "page.png"

PREDICT_ALL = """async (images) => {
    const out = [];
    for (const img of images) out.push(await window.mnist.predict(img));
    return out;
}"""


def model_names(page):
    return page.evaluate("window.mnist.models")


#: The build these tests run.
BACKEND = "fast-relaxed"


def weights_of(name: str, backend: str = BACKEND) -> Path:
    """The weights the page on the build ``backend`` runs as model ``name``: its file in
    models/, or for the embedded model the file that build embeds (``tasks.embedded_weights``:
    int8 in our kernels' builds by default, f32 in burn's)."""
    import tasks

    path = MODELS_DIR / f"{name}.safetensors"
    return path if path.exists() else tasks.embedded_weights(backend)


@pytest.fixture(scope="module")
def page(browser, server):
    page = open_page(browser, server, BACKEND)
    yield page
    page.close()


def test_every_committed_model_loads_and_matches_pytorch(page, mnist_test):
    names = model_names(page)
    stems = {p.stem for p in MODELS_DIR.glob("*.safetensors")}
    assert len(names) == len(stems) and {"cnn", "mlp", "lenet5"} <= set(names), names
    assert page.evaluate("window.mnist.model") == "cnn"
    images = mnist_test.images[:N_DIGITS]
    for name in names:
        assert page.evaluate("(n) => window.mnist.load(n)", name) == name
        assert page.evaluate("window.mnist.model") == name
        shown = page.locator("[data-testid=prediction]").get_attribute("data-model")
        assert shown == name and page.locator("[data-testid=model]").input_value() == name
        probs = np.array(page.evaluate(PREDICT_ALL, images.reshape(N_DIGITS, -1).tolist()))
        with torch.no_grad():
            expected = torch.softmax(load_model(weights_of(name))(normalize(images.unsqueeze(1))), 1).numpy()
        assert np.abs(probs - expected).max() < 1e-4, name
        accuracy = (probs.argmax(1) == mnist_test.labels[:N_DIGITS].numpy()).mean()
        assert accuracy >= (0.98 if name == "mlp" else 0.99), f"{name}: {accuracy:.2%}"


def test_an_unknown_model_is_refused_and_the_current_one_kept(page):
    page.evaluate("window.mnist.load('cnn')")
    error = page.evaluate("window.mnist.load('vgg16').then(() => 'loaded', (e) => e.message)")
    assert 'no model called "vgg16"' in error
    assert page.evaluate("window.mnist.model") == "cnn"
    assert "not loaded" in page.locator("[data-testid=status]").inner_text()


def test_mc_dropout_in_wasm_matches_pytorch_on_the_same_masks(page, mnist_test):
    images = mnist_test.images[:5]
    for name in model_names(page):
        page.evaluate("(n) => window.mnist.load(n)", name)
        reference = summarize(mc_probabilities(load_model(weights_of(name)), images, samples=20, seed=0))
        for i, image in enumerate(images.reshape(5, -1).tolist()):
            got = page.evaluate("(img) => window.mnist.predictUncertain(img, {samples: 20})", image)
            np.testing.assert_allclose(got["probs"], reference["probabilities"][i], atol=5e-5, err_msg=name)
            np.testing.assert_allclose(got["std"], reference["std"][i], atol=5e-5, err_msg=name)
            assert got["mutualInformation"] == pytest.approx(float(reference["mutual_information"][i]), abs=5e-5)
            assert got["unsure"] in (True, False)


def bars(page):
    """Rendered geometry of the bars: per digit, the fill's and the track's width in px."""
    return page.evaluate("""() => [...document.querySelectorAll('#bars li')].map((li) => ({
        fill: li.querySelector('.fill').getBoundingClientRect().width,
        track: li.querySelector('.track').getBoundingClientRect().width,
        spread: li.querySelector('.spread').getBoundingClientRect().width,
    }))""")


def test_what_a_person_sees(browser, server):
    """Draw a 7, look at the page: the top bar's rendered width is its probability, the spread
    band exists, the verdict is sure; a scribble is "not sure"; the picker switches model."""
    page = open_page(browser, server, "fast-relaxed")
    page.set_viewport_size({"width": 820, "height": 620})
    draw(page, STROKES[7])
    page.wait_for_function("document.querySelector('[data-testid=prediction]').dataset.unsure !== ''")
    el = page.locator("[data-testid=prediction]")
    probs = json.loads(el.get_attribute("data-probs"))
    assert el.get_attribute("data-digit") == "7" and el.get_attribute("data-unsure") == "false"
    wait_for_the_top_bar_to_show(page, max(probs))
    rendered = bars(page)
    for d, bar in enumerate(rendered):
        assert abs(bar["fill"] / bar["track"] - probs[d]) < 0.02, (d, bar, probs[d])
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    page.click("[data-testid=clear]")
    # Five scattered dots: no digit. The default model, trained with outlier exposure, gives
    # them a flat softmax: "not a digit", and so "not sure" (`invoke evaluate --all` measures how
    # often, per kind of non-digit).
    dots = [[(x, y), (x + 4, y + 4)] for x, y in [(60, 60), (200, 80), (120, 150), (70, 220), (210, 210)]]
    draw(page, dots)
    page.wait_for_function(
        "document.querySelector('[data-testid=prediction]').dataset.unsure === 'true'", timeout=10_000
    )
    assert page.locator("#confidence").inner_text().startswith("not sure")
    assert page.locator("[data-testid=prediction]").get_attribute("data-not-a-digit") == "true"
    assert page.locator("[data-testid=not-a-digit]").is_visible()
    page.screenshot(path=str(SCREENSHOT.with_name("unsure.png")))

    page.select_option("[data-testid=model]", "lenet5")
    page.wait_for_function("document.querySelector('[data-testid=prediction]').dataset.model === 'lenet5'")
    assert page.evaluate("window.mnist.model") == "lenet5"
    page.close()


def test_a_dropped_weights_file_becomes_a_model(browser, server, tmp_path):
    """A user's own file, dropped onto the page; a broken one is refused with the reason."""
    page = open_page(browser, server, "fast-relaxed")
    good = (MODELS_DIR / "lenet5.safetensors").read_bytes()
    for name, data in [("mine.safetensors", good), ("broken.safetensors", good[:500])]:
        page.evaluate(
            """([name, bytes]) => {
            const file = new File([new Uint8Array(bytes)], name);
            const transfer = new DataTransfer();
            transfer.items.add(file);
            document.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true }));
        }""",
            [name, list(data)],
        )
        page.wait_for_function(
            "(n) => document.querySelector('[data-testid=status]').textContent.includes(n)", arg=name
        )
    assert "mine" in page.evaluate("window.mnist.models")
    assert page.evaluate("window.mnist.model") == "mine"  # the broken file changed nothing
    assert "not a readable safetensors file" in page.locator("[data-testid=status]").inner_text()
    page.close()


@pytest.mark.parametrize("backend", ["flex", "ndarray"])
def test_burns_builds_run_every_model_too(browser, server, backend, mnist_test):
    """The burn builds run the cnn as burn's Module and the other plans on burn's tensor
    operations (wasm-infer/mnist-model/src/layers.rs): the same answers as PyTorch."""
    page = open_page(browser, server, backend)
    images = mnist_test.images[:100]
    for name in model_names(page):
        page.evaluate("(n) => window.mnist.load(n)", name)
        probs = np.array(page.evaluate(PREDICT_ALL, images.reshape(100, -1).tolist()))
        with torch.no_grad():
            expected = torch.softmax(load_model(weights_of(name, backend))(normalize(images.unsqueeze(1))), 1).numpy()
        assert np.abs(probs - expected).max() < 1e-4, name
        got = page.evaluate("(img) => window.mnist.predictUncertain(img, {samples: 5})", images[0].reshape(-1).tolist())
        reference = summarize(mc_probabilities(load_model(weights_of(name, backend)), images[:1], samples=5, seed=0))
        np.testing.assert_allclose(got["probs"], reference["probabilities"][0], atol=5e-5, err_msg=name)
    page.close()
