"""The real wasm in headless Chromium, served by `invoke serve`, against PyTorch."""

import json
import math
import shutil
import subprocess
import urllib.request

import pytest
import torch

from tests.conftest import BACKENDS, ROOT, canvas_to_viewport, open_as_a_user, open_page

pytestmark = pytest.mark.browser

N_IMAGES = 1000

# Pen strokes on the 280x280 canvas, in canvas pixels: digit -> list of polylines.
STROKES = {
    1: [[(150, 40), (145, 140), (140, 240)]],
    7: [[(70, 55), (210, 55), (170, 130), (125, 240)]],
    0: [[(140 + 60 * math.sin(t / 40 * 2 * math.pi), 140 - 95 * math.cos(t / 40 * 2 * math.pi)) for t in range(41)]],
}


def draw(page, polylines):
    """Draw `polylines` (canvas pixels, 280x280) with the mouse, 8 moves a segment."""
    at = canvas_to_viewport(page)
    for line in polylines:
        page.mouse.move(*at(*line[0]))
        page.mouse.down()
        for x, y in line[1:]:
            page.mouse.move(*at(x, y), steps=8)
        page.mouse.up()


def prediction(page):
    el = page.locator("[data-testid=prediction]")
    return el.get_attribute("data-digit"), int(el.get_attribute("data-seq")), json.loads(el.get_attribute("data-probs"))


def wait_for_the_top_bar_to_show(page, probability):
    """The bar of the top digit, as rendered, fills `probability` of its track (within 2 %)."""
    page.wait_for_function(
        """(p) => {
        const li = document.querySelector('#bars li.top');
        const fill = li.querySelector('.fill').getBoundingClientRect().width;
        const track = li.querySelector('.track').getBoundingClientRect().width;
        return track > 0 && Math.abs(fill / track - p) < 0.02;
    }""",
        arg=probability,
        timeout=5_000,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_wasm_matches_pytorch_on_1000_mnist_digits(browser, server, backend, mnist_test, torch_probabilities):
    """Every CPU build, asked for with ?backend= (so also: the page runs what it is asked for)."""
    page = open_page(browser, server, backend)
    assert page.evaluate("window.mnist.backend") == backend
    images = mnist_test.images[:N_IMAGES].reshape(N_IMAGES, -1).tolist()
    probs = page.evaluate(
        "async (images) => { const out = []; for (const img of images) out.push(await window.mnist.predict(img)); return out; }",
        images,
    )
    ours, reference = torch.tensor(probs), torch_probabilities(backend)
    assert ours.shape == (N_IMAGES, 10)
    same_top1 = (ours.argmax(1) == reference.argmax(1)).float().mean().item()
    max_diff = (ours - reference).abs().max().item()
    accuracy = (ours.argmax(1) == mnist_test.labels[:N_IMAGES]).float().mean().item()
    print(f"{backend}: top-1 agreement {same_top1:.2%}, max |prob diff| {max_diff:.2e}, accuracy {accuracy:.2%}")
    assert same_top1 == 1.0
    assert max_diff <= 1e-5
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
        # The pen-up prediction is the one with MC dropout's verdict (data-unsure set); the live
        # ones while the pen moves have none, and may still be arriving.
        page.wait_for_function(
            f"(() => {{ const el = document.querySelector('[data-testid=prediction]');"
            f" return Number(el.dataset.seq) > {before} && el.dataset.unsure !== ''; }})()"
        )
        shown, seq, probs = prediction(page)
        assert seq > before
        assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-4
        assert shown == str(digit), f"drew {digit}, page says {shown} ({probs})"
        wait_for_the_top_bar_to_show(page, max(probs))
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
    assert max(abs(a - b) for a, b in zip(probs, torch_probabilities(backend)[0].tolist())) <= 1e-4
    page.close()


def served_backends(url):
    with urllib.request.urlopen(url + "config.json", timeout=5) as response:
        return json.load(response)["backends"]


#: In the page: import one build's module, then score `images` with the embedded weights and
#: with each base64-encoded file through Classifier.fromBytes (its probabilities, or the Error's
#: message when the file is refused).
FROM_BYTES = """async ([backend, files, images]) => {
  const glue = await import(`./pkg/${backend}/mnist_wasm.js`);
  await glue.default();
  const run = (classifier) => images.map((img) => Array.from(classifier.predict(Float32Array.from(img))));
  const out = { embedded: run(new glue.Classifier()) };
  for (const [name, base64] of Object.entries(files)) {
    try {
      out[name] = run(glue.Classifier.fromBytes(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))));
    } catch (err) {
      out[name] = err.message;
    }
  }
  return out;
}"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_loaded_at_run_time_answer_like_the_embedded_ones(browser, server, backend, mnist_test, tmp_path):
    """Classifier.fromBytes: a model.safetensors given at run time (the wasm-side half of issue
    14's model picker). The file the build embeds gives exactly the embedded model's
    probabilities; our kernels' builds read the weights in every dtype (f32, f16, int8) to the
    same digits; a bad file is refused with its reason."""
    import base64

    from safetensors.torch import load_file, save_file

    import tasks
    from mnist_common.plan import MLP, layers_to_json
    from tests.conftest import WEIGHTS
    from trainer.export import WEIGHTS_DTYPES, convert_weights, read_metadata

    # The cnn's tensors under the mlp's layer plan: no build may run it.
    foreign = tmp_path / "foreign.safetensors"
    metadata = {**read_metadata(WEIGHTS), "architecture": MLP.id, "layers": layers_to_json(MLP.layers)}
    save_file(load_file(str(WEIGHTS)), str(foreign), metadata=metadata)
    embedded = tasks.embedded_weights(backend).read_bytes()
    files = {"same": embedded, "truncated": embedded[:1000], "foreign": foreign.read_bytes()}
    dtypes = WEIGHTS_DTYPES if backend.startswith("fast") else ()
    for dtype in dtypes:
        files[dtype] = convert_weights(WEIGHTS, tmp_path / f"{dtype}.safetensors", dtype).read_bytes()
    page = open_page(browser, server, backend)
    images = mnist_test.images[:20].reshape(20, -1).tolist()
    encoded = {name: base64.b64encode(data).decode() for name, data in files.items()}
    out = page.evaluate(FROM_BYTES, [backend, encoded, images])
    assert out["same"] == out["embedded"]
    assert "not a readable safetensors file" in out["truncated"], out["truncated"]
    assert "fc1.weight has shape [128, 1600], the plan says [512, 784]" in out["foreign"], out["foreign"]
    embedded = torch.tensor(out["embedded"])
    for dtype in dtypes:
        other = torch.tensor(out[dtype])
        assert (embedded.argmax(1) == other.argmax(1)).all(), dtype
        assert (embedded - other).abs().max() < 1e-2, dtype
    page.close()


def test_unknown_backend_falls_back_with_the_reason_shown(browser, server):
    page = open_page(browser, server, "nosuch")
    # The usual order then: our relaxed-SIMD kernels, which this Chromium runs.
    assert page.evaluate("window.mnist.backend") == "fast-relaxed"
    status = page.locator("[data-testid=status]").inner_text()
    built = ", ".join(served_backends(server))
    assert status == f'"nosuch" is not built (built: {built}). ready: draw a digit'
    page.close()


def test_the_page_runs_our_relaxed_simd_kernels_by_itself(browser, server, mnist_test, torch_probabilities):
    page, (label, backend_line, status) = open_as_a_user(browser, server)
    assert label == backend_line == "fast-relaxed"
    assert status == "ready: draw a digit"
    assert len(page.workers) == 1  # the worker spawned at start-up is the one in use
    probs = page.evaluate("(img) => window.mnist.predict(img)", mnist_test.images[5].flatten().tolist())
    assert max(abs(a - b) for a, b in zip(probs, torch_probabilities("fast-relaxed")[5].tolist())) <= 1e-5
    page.close()


#: Prepended to the page's and the worker's bundles (each holds web/classifier.js):
#: WebAssembly.validate refuses every module, so the relaxed-SIMD probe fails as in a browser
#: without relaxed SIMD.
NO_RELAXED_SIMD = "WebAssembly.validate = () => false;\n"


def test_without_relaxed_simd_the_page_runs_fast_simd128_and_says_why(browser, server, mnist_test, torch_probabilities):
    def refuse_relaxed_simd(route):
        response = route.fetch()
        route.fulfill(response=response, body=NO_RELAXED_SIMD + response.text())

    page, (label, backend_line, status) = open_as_a_user(
        browser, server, before_load=lambda page: page.route("**/*.bundle.js", refuse_relaxed_simd)
    )
    assert label == backend_line == "fast-simd128 (no relaxed SIMD in this browser)"
    assert status == "fast-relaxed: no relaxed SIMD in this browser: using fast-simd128. ready: draw a digit"
    # Skipped before any worker loaded it: the one worker is fast-simd128's.
    assert len(page.workers) == 1
    probs = page.evaluate("(img) => window.mnist.predict(img)", mnist_test.images[9].flatten().tolist())
    assert max(abs(a - b) for a, b in zip(probs, torch_probabilities("fast-simd128")[9].tolist())) <= 1e-5
    page.close()


#: Node runs web/classifier.js's probe and validates the two builds of our kernels with the
#: same engine (V8). argv: classifier.js, fast-relaxed's wasm, fast-simd128's wasm.
NODE_PROBE = """
import { readFileSync } from "node:fs";
const [source, relaxed, plain] = process.argv.slice(-3);
const url = "data:text/javascript," + encodeURIComponent(readFileSync(source, "utf8"));
const { relaxedSimdProblem } = await import(url);
console.log(JSON.stringify({
    problem: relaxedSimdProblem(),
    relaxedBuildValid: WebAssembly.validate(readFileSync(relaxed)),
    plainBuildValid: WebAssembly.validate(readFileSync(plain)),
}));
"""


def test_the_relaxed_simd_probe_says_whether_the_relaxed_build_compiles(server):
    """Node's V8 with relaxed SIMD off (Node 20's default) and on (its flag): the probe fails
    exactly when the real fast-relaxed module does not validate, and fast-simd128 validates
    either way. (Chromium cannot turn relaxed SIMD off; the page's fallback is tested above.)"""
    node = shutil.which("node")
    assert node, "node is needed (npm installs the build tools)"
    pkg = ROOT / "web" / "pkg"
    args = [
        ROOT / "web" / "classifier.js",
        pkg / "fast-relaxed" / "mnist_wasm_bg.wasm",
        pkg / "fast-simd128" / "mnist_wasm_bg.wasm",
    ]
    seen = []
    for flags in ([], ["--experimental-wasm-relaxed-simd"]):
        run = subprocess.run(
            [node, *flags, "--input-type=module", "-e", NODE_PROBE, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if flags and run.returncode != 0:
            continue  # a Node whose V8 no longer has the flag: relaxed SIMD is on regardless
        assert run.returncode == 0, run.stderr
        outcome = json.loads(run.stdout)
        print(f"node {' '.join(flags) or '(no flags)'}: {outcome}")
        assert outcome["problem"] in ("", "no relaxed SIMD in this browser")
        assert (outcome["problem"] == "") == outcome["relaxedBuildValid"]
        assert outcome["plainBuildValid"] is True
        seen.append(outcome["problem"])
    assert "" in seen  # with its flag (or by default) V8 has relaxed SIMD: the probe must pass


def test_pages_are_cross_origin_isolated_for_a_fine_clock(browser, server):
    """COOP + COEP from the server: crossOriginIsolated in the page and its worker, and
    performance.now() steps of a few microseconds (100 us without isolation)."""
    page = open_page(browser, server, "fast-relaxed")
    # The benchmark's own measure of the clock (web/bench.js), taken on the page.
    page_side = page.evaluate("async () => (await import('./bench.js')).timerResolution()")
    # The worker is isolated when the page could hand it a SharedArrayBuffer (only isolated
    # contexts can). It cannot be asked itself: it sits in Atomics.wait, and
    # `page.workers[0].evaluate` would wait for ever.
    handoff = page.evaluate("window.mnist.handoff")
    print(f"page: {page_side}; hand-off to the worker: {handoff}")
    assert page_side["crossOriginIsolated"] is True and handoff == "shared memory"
    assert page_side["stepMs"] < 0.02
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
