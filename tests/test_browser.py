"""The real wasm in headless Chromium, served by `invoke serve`, against PyTorch."""

import json
import math

import pytest
import torch

from tests.conftest import BACKENDS, open_page

pytestmark = pytest.mark.browser

N_IMAGES = 1000

# Pen strokes on the 280x280 canvas, in canvas pixels: digit -> list of polylines.
STROKES = {
    1: [[(150, 40), (145, 140), (140, 240)]],
    7: [[(70, 55), (210, 55), (170, 130), (125, 240)]],
    0: [[(140 + 60 * math.sin(t / 40 * 2 * math.pi), 140 - 95 * math.cos(t / 40 * 2 * math.pi)) for t in range(41)]],
}


def draw(page, polylines):
    box = page.locator("canvas[data-testid=draw]").bounding_box()
    scale = box["width"] / 280
    for line in polylines:
        x, y = line[0]
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in line[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=8)
        page.mouse.up()


def prediction(page):
    el = page.locator("[data-testid=prediction]")
    return el.get_attribute("data-digit"), int(el.get_attribute("data-seq")), json.loads(el.get_attribute("data-probs"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_wasm_matches_pytorch_on_1000_mnist_digits(browser, server, backend, mnist_test, torch_probabilities):
    page = open_page(browser, server, backend)
    assert page.evaluate("window.mnist.backend") == backend
    images = mnist_test.images[:N_IMAGES].reshape(N_IMAGES, -1).tolist()
    probs = page.evaluate(
        "async (images) => { const out = []; for (const img of images) out.push(await window.mnist.predict(img)); return out; }",
        images,
    )
    ours = torch.tensor(probs)
    assert ours.shape == (N_IMAGES, 10)
    same_top1 = (ours.argmax(1) == torch_probabilities.argmax(1)).float().mean().item()
    max_diff = (ours - torch_probabilities).abs().max().item()
    accuracy = (ours.argmax(1) == mnist_test.labels[:N_IMAGES]).float().mean().item()
    print(f"{backend}: top-1 agreement {same_top1:.2%}, max |prob diff| {max_diff:.2e}, accuracy {accuracy:.2%}")
    assert same_top1 >= 0.999
    assert max_diff <= 1e-4
    assert accuracy >= 0.99
    page.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_drawn_digits_are_recognised(browser, server, backend):
    page = open_page(browser, server, backend)
    _, seq, _ = prediction(page)
    assert seq == 0 and prediction(page)[0] == ""
    for digit, strokes in STROKES.items():
        page.click("[data-testid=clear]")
        assert prediction(page)[0] == ""
        before = prediction(page)[1]
        draw(page, strokes)
        page.wait_for_function(
            f"Number(document.querySelector('[data-testid=prediction]').dataset.seq) > {before}"
        )
        shown, seq, probs = prediction(page)
        assert seq > before
        assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-4
        assert shown == str(digit), f"drew {digit}, page says {shown} ({probs})"
    page.click("[data-testid=clear]")
    assert prediction(page)[0] == "" and prediction(page)[2] == []
    page.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_throws_and_the_page_keeps_working(browser, server, backend, mnist_test, torch_probabilities):
    page = open_page(browser, server, backend)
    bad_inputs = {
        "short": "new Array(783).fill(0)",
        "long": "new Array(785).fill(0)",
        "nan": "Object.assign(new Array(784).fill(0), {3: NaN})",
        "infinite": "Object.assign(new Array(784).fill(0), {3: Infinity})",
        "normalised": "new Array(784).fill(-0.42)",
        "null": "null",
    }
    for name, expr in bad_inputs.items():
        message = page.evaluate(
            f"async () => {{ try {{ await window.mnist.predict({expr}); return null; }} catch (e) {{ return String(e.message || e); }} }}"
        )
        assert message, f"{name}: predict did not throw"
        if name in ("short", "long"):
            assert "784" in message
    probs = page.evaluate("(img) => window.mnist.predict(img)", mnist_test.images[0].flatten().tolist())
    assert max(abs(a - b) for a, b in zip(probs, torch_probabilities[0].tolist())) <= 1e-4
    page.close()


def test_unknown_backend_falls_back_with_the_reason_shown(browser, server):
    page = open_page(browser, server, "nosuch")
    # The usual order then: WebGPU (not in this browser), then the CPU build.
    assert page.evaluate("window.mnist.backend") == "flex (no WebGPU adapter)"
    status = page.locator("[data-testid=status]").inner_text()
    assert '"nosuch" is not built (built: ndarray, flex, wgpu)' in status and "using flex" in status
    page.close()


def test_preprocessing_turns_upscaled_digits_back_into_mnist(browser, server, mnist_test):
    """MNIST digits drawn 10x larger at the canvas's 280x280, shifted off-centre, come back
    through web/preprocess.js close enough to MNIST for the model to read them."""
    n = 300
    page = open_page(browser, server, "flex")
    result = page.evaluate(
        """async (images) => {
            const { toMnist } = await import('./preprocess.js');
            const out = [];
            images.forEach((img, i) => {
                const big = new Float32Array(280 * 280), shift = (i % 7) * 6;
                for (let y = 0; y < 250; y++) for (let x = 0; x < 250; x++)
                    big[(y + shift) * 280 + x] = img[Math.floor(y / 250 * 28) * 28 + Math.floor(x / 250 * 28)];
                out.push(toMnist(big, 280, 280));
            });
            const probs = [];
            for (const px of out) probs.push(await window.mnist.predict(px));
            return { probs, blank: toMnist(new Float32Array(280 * 280), 280, 280) };
        }""",
        mnist_test.images[:n].reshape(n, -1).tolist(),
    )
    assert result["blank"] is None
    predicted = torch.tensor(result["probs"]).argmax(1)
    accuracy = (predicted == mnist_test.labels[:n]).float().mean().item()
    print(f"preprocessed upscaled digits: accuracy {accuracy:.2%}")
    assert accuracy >= 0.97
    page.close()
