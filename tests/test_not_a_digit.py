""" "Not a digit" in the page (issue 23, point 2), in headless Chromium on the real wasm builds:
the wasm's ``notADigit`` and ``notADigitThreshold`` against the rule computed here, and what a
person sees: a dense zigzag scribble is called "not a digit" while it is drawn (the live
predictions) and after (with MC dropout), a drawn 7 is not; on a phone the label fits.

The rule lives in the weights file: ``not_a_digit_max_probability`` (τ); an image is not a
digit when the largest of its 10 eval-mode probabilities is below τ.
"""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest

from mnist_common.weights import read_metadata
from tests.conftest import BACKENDS, WEIGHTS, canvas_to_viewport, load, non_digits, open_page, with_metadata
from tests.test_browser import STROKES, draw
from tests.test_phone import GEOMETRY, PHONE, REPORTS, inside, overlaps, touch_draw

pytestmark = pytest.mark.browser

KEY = "not_a_digit_max_probability"
#: A dense zigzag filling the canvas (12 strokes across, canvas pixels of the 280x280 canvas):
#: no digit. One polyline, drawn without lifting the pen.
ZIGZAG = [[(20 if i % 2 == 0 else 260, 20 + 20 * i) for i in range(13)]]
#: Where the screenshots go (reports/ is not committed).
SCREENSHOTS = REPORTS / "screenshots"

#: In the page: import one build's module, load a weights file through Classifier.fromBytes, and
#: judge each of `rows` (arrays of 10 probabilities) with notADigit; also MC dropout's notADigit
#: for `images`, and the Errors of bad probabilities.
WASM_RULE = """async ([backend, weights, rows, images]) => {
  const glue = await import(`./pkg/${backend}/mnist_wasm.js`);
  await glue.default();
  const classifier = glue.Classifier.fromBytes(Uint8Array.from(atob(weights), (c) => c.charCodeAt(0)));
  const refused = [];
  for (const bad of [new Float32Array(9), Float32Array.of(0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, NaN),
                     Float32Array.of(0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.5)]) {
    try { classifier.notADigit(bad); refused.push(null); } catch (err) { refused.push(err.message); }
  }
  return {
    threshold: classifier.notADigitThreshold ?? null,
    flags: rows.map((row) => classifier.notADigit(Float32Array.from(row)) ?? null),
    predicted: images.map((img) => {
      const probs = classifier.predict(Float32Array.from(img));
      return { probs: Array.from(probs), flag: classifier.notADigit(probs) ?? null,
               mc: JSON.parse(classifier.uncertainty(Float32Array.from(img), 10, 0)) };
    }),
    refused,
  };
}"""


def tau_of(path) -> str | None:
    """The τ of a weights file as written (text), or None when it has none."""
    return read_metadata(path).get(KEY)


def below(probs, tau: str) -> bool:
    """The rule, computed here: the largest probability below τ, both as float32 (as in Rust)."""
    return bool(np.float32(max(probs)) < np.float32(tau))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_wasm_rule_is_the_largest_probability_below_tau(browser, server, backend, tmp_path, mnist_test):
    """Every CPU build: ``notADigitThreshold`` is the file's τ (undefined without it), and
    ``notADigit(probabilities)`` is ``max < τ`` on made-up rows and on real predictions, the
    same as MC dropout's ``notADigit``; rows that are not 10 probabilities throw."""
    rows = np.random.default_rng(0).dirichlet(np.full(10, 0.3), size=40)
    tau = f"{float(np.median(rows.max(axis=1))):.6g}"
    rows = np.concatenate([rows, np.full((1, 10), 0.1), np.eye(10)[:1]]).astype(np.float32)
    images = np.concatenate([mnist_test.images[:4].reshape(4, 784).numpy(), non_digits()[:4]])
    page = open_page(browser, server, backend)
    for name, stamp in (("stamped", tau), ("without", None)):
        path = with_metadata(tmp_path, name, {KEY: stamp})
        weights = base64.b64encode(path.read_bytes()).decode()
        out = page.evaluate(WASM_RULE, [backend, weights, rows.tolist(), images.tolist()])
        if stamp is None:
            assert out["threshold"] is None and set(out["flags"]) == {None}
            assert all(p["flag"] is None and p["mc"]["notADigit"] is None for p in out["predicted"])
            continue
        assert out["threshold"] == np.float32(tau)
        expected = [below(row, tau) for row in rows]
        assert out["flags"] == expected and True in expected and False in expected
        for p in out["predicted"]:
            assert p["flag"] is below(p["probs"], tau) is p["mc"]["notADigit"]
            assert p["mc"]["unsure"] in (True, False) and (p["mc"]["unsure"] or not p["flag"])
        assert "10 probabilities" in out["refused"][0] and "got 9" in out["refused"][0], out["refused"]
        assert "probability 9 is NaN" in out["refused"][1] and "probability 9 is 1.5" in out["refused"][2]
    page.close()


# --- what a person sees ------------------------------------------------------------------------


def shown(page) -> dict:
    """What the page shows of its prediction: the attributes, the "?" and the label."""
    return page.evaluate("""() => {
        const el = document.querySelector('[data-testid=prediction]');
        const label = document.querySelector('[data-testid=not-a-digit]');
        const box = label.getBoundingClientRect();
        return { seq: Number(el.dataset.seq), probs: JSON.parse(el.dataset.probs), digit: el.dataset.digit,
                 notADigit: el.dataset.notADigit, unsure: el.dataset.unsure,
                 text: document.getElementById('digit').textContent,
                 confidence: document.getElementById('confidence').textContent,
                 label: !label.hidden && box.width > 0 && box.height > 0 ? label.textContent : null };
    }""")


def live_answer_for_the_whole_drawing(page) -> dict:
    """With the pen still down: the live prediction (no MC dropout) of everything drawn so far,
    once the page shows it (its probabilities those of ``window.mnist.lastPixels``)."""
    deadline = time.monotonic() + 10
    while True:
        now = shown(page)
        latest = page.evaluate("async () => window.mnist.predict(window.mnist.lastPixels)")
        if now["probs"] and np.abs(np.array(now["probs"]) - np.array(latest)).max() < 1e-6:
            assert now["unsure"] == "", "the pen is down: a live answer has no MC dropout yet"
            return now
        if time.monotonic() > deadline:
            pytest.fail(f"the live prediction of the drawing never showed: {now}")
        page.wait_for_timeout(50)


def draw_and_judge(page, polylines, pointer=None) -> tuple[dict, dict]:
    """Clear, draw ``polylines`` (the last one kept with the pen down), and return what the page
    shows live (pen still down) and final (pen up: with MC dropout's verdict)."""
    page.click("[data-testid=clear]")
    if len(polylines) > 1:
        draw(page, polylines[:-1])
    at = canvas_to_viewport(page)
    line = polylines[-1]
    page.mouse.move(*at(*line[0]))
    page.mouse.down()
    for x, y in line[1:]:
        page.mouse.move(*at(x, y), steps=8)
    live = live_answer_for_the_whole_drawing(page)
    page.mouse.up()
    page.wait_for_function(
        f"(() => {{ const el = document.querySelector('[data-testid=prediction]');"
        f" return Number(el.dataset.seq) > {live['seq']} && el.dataset.unsure !== ''; }})()"
    )
    return live, shown(page)


def check(answer: dict, tau: str, not_a_digit: bool, what: str) -> None:
    """The page shows ``not_a_digit`` for ``answer``, and it is the rule on its probabilities."""
    assert below(answer["probs"], tau) is not_a_digit, f"{what}: max {max(answer['probs'])}, τ {tau}"
    assert answer["notADigit"] == str(not_a_digit).lower(), (what, answer)
    top = str(int(np.argmax(answer["probs"])))
    assert answer["digit"] == top, (what, answer)  # data-digit stays the likeliest digit
    if not_a_digit:
        assert answer["label"] == "not a digit" and answer["text"] == "?", (what, answer)
        assert f"for a {top}" in answer["confidence"], (what, answer)
    else:
        assert answer["label"] is None and answer["text"] == top, (what, answer)


def judge_scribble_and_seven(page, tau: str) -> None:
    """The zigzag is "not a digit" live and final (and so "not sure"), the 7 is neither."""
    live, final = draw_and_judge(page, ZIGZAG)
    check(live, tau, True, "the zigzag, live")
    check(final, tau, True, "the zigzag, final")
    assert final["unsure"] == "true" and final["confidence"].startswith("not sure"), final
    live, final = draw_and_judge(page, STROKES[7])
    check(live, tau, False, "the 7, live")
    check(final, tau, False, "the 7, final")
    assert final["digit"] == "7"


def test_the_served_default_model_calls_a_scribble_not_a_digit_and_a_seven_a_digit(browser, server):
    """The page as served, on its embedded default model, with the τ of models/model.safetensors
    (trained with outlier exposure, trainer/train.py); the README's screenshot of a zigzag."""
    tau = tau_of(WEIGHTS)
    assert tau is not None, f"{WEIGHTS.name} has no {KEY}: `python -m trainer.uncertainty --weights ...`"
    page = open_page(browser, server, "fast-relaxed")
    assert page.evaluate("window.mnist.model") == "cnn"
    judge_scribble_and_seven(page, tau)
    draw_and_judge(page, ZIGZAG)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "not-a-digit-default.png"))
    page.close()


@pytest.fixture(scope="module")
def stamped(browser, server, tmp_path_factory):
    """(URL, τ) of a server offering a copy of the default model with a τ between the page's
    largest probability for the zigzag and for a drawn 7 (measured on the embedded model),
    under the name "stamped"; the page picks it with ?model=stamped (Classifier.fromBytes)."""
    import tasks
    from server.app import make_server

    page = open_page(browser, server, "fast-relaxed")
    maxima = {
        name: max(draw_and_judge(page, strokes)[1]["probs"])
        for name, strokes in (("zigzag", ZIGZAG), ("seven", STROKES[7]))
    }
    page.close()
    assert maxima["zigzag"] < maxima["seven"] - 1e-3, maxima
    tau = f"{(maxima['zigzag'] + maxima['seven']) / 2:.6g}"
    folder = tmp_path_factory.mktemp("models")
    copy = with_metadata(folder, "stamped", {KEY: tau, "not_a_digit_rule": "a test's τ: between a zigzag and a 7"})
    offered = [b for b in tasks.built_backends() if b not in tasks.GPU_BACKENDS]
    served = make_server("127.0.0.1", 0, tasks.DEFAULT_BACKEND, offered, models_dir=folder, log_requests=False)
    threading.Thread(target=served.serve_forever, daemon=True).start()
    assert tau_of(copy) == tau
    yield f"http://127.0.0.1:{served.server_port}/", tau
    served.shutdown()
    served.server_close()


def open_stamped(page, url: str):
    """``page`` at ``url`` running the stamped model, once the page draws with it (a ?model=
    is loaded after window.mnist appears, and the canvas listens only then)."""
    load(page, f"{url}?backend=fast-relaxed&model=stamped")
    page.wait_for_function("window.mnist.model === 'stamped'")
    return page


def test_a_model_with_a_threshold_calls_a_scribble_not_a_digit_and_a_seven_a_digit(browser, stamped):
    url, tau = stamped
    page = open_stamped(browser.new_page(viewport={"width": 1000, "height": 700}), url)
    assert page.evaluate("window.mnist.model") == "stamped"
    judge_scribble_and_seven(page, tau)
    # MC dropout through window.mnist: notADigit from the eval-mode pass, unsure either rule.
    pixels = page.evaluate("window.mnist.lastPixels")  # the 7
    u = page.evaluate("(px) => window.mnist.predictUncertain(px)", pixels)
    assert u["notADigit"] is False and set(u) == {"probs", "std", "entropy", "mutualInformation", "notADigit", "unsure"}
    draw_and_judge(page, ZIGZAG)
    u = page.evaluate(
        "(px) => window.mnist.predictUncertain(px, {samples: 5})", page.evaluate("window.mnist.lastPixels")
    )
    assert u["notADigit"] is True and u["unsure"] is True
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "not-a-digit.png"))
    # Without a threshold (the embedded model today): no verdict, no label.
    page.select_option("[data-testid=model]", "cnn")
    page.wait_for_function("document.querySelector('[data-testid=prediction]').dataset.model === 'cnn'")
    if tau_of(WEIGHTS) is None:
        page.wait_for_function("document.querySelector('[data-testid=prediction]').dataset.unsure !== ''")
        now = shown(page)
        assert now["notADigit"] == "" and now["label"] is None and now["text"] == now["digit"], now
    page.close()


def test_on_a_phone_not_a_digit_fits_beside_the_answer(browser, stamped):
    """Drawn with a finger on 390x844: "not a digit" shows, and the canvas, the answer (its label
    included) and the ten bars are all in sight, nothing over the canvas or a bar."""
    url, _ = stamped
    context = browser.new_context(viewport=PHONE, device_scale_factor=3, is_mobile=True, has_touch=True)
    try:
        page = open_stamped(context.new_page(), url)
        touch_draw(page, ZIGZAG)
        page.wait_for_function(
            "document.querySelector('[data-testid=prediction]').dataset.unsure !== ''", timeout=10_000
        )
        page.wait_for_timeout(300)  # the bars' 80 ms transition
        assert shown(page)["label"] == "not a digit"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "not-a-digit-phone.png"))
        g = page.evaluate(GEOMETRY)
        label = page.locator("[data-testid=not-a-digit]").bounding_box()
        label = {**label, "right": label["x"] + label["width"], "bottom": label["y"] + label["height"]}
        assert g["scrollY"] == 0 and g["docWidth"] <= PHONE["width"]
        for name in ("canvas", "prediction", "digit"):
            assert inside(g[name], PHONE), f"{name} is not all in sight: {g[name]}"
        assert inside(label, PHONE) and inside(label, {"width": g["prediction"]["right"], "height": PHONE["height"]})
        assert all(inside(bar, PHONE) and bar["width"] > 100 for bar in g["bars"])
        assert not overlaps(label, g["canvas"]) and not any(overlaps(label, bar) for bar in g["bars"])
        assert g["covered"] == [] and [o for o in g["others"] if overlaps(o, g["canvas"])] == []
    finally:
        context.close()


def test_the_label_is_hidden_until_a_prediction_is_not_a_digit(browser, stamped):
    url, _ = stamped
    page = open_stamped(browser.new_page(), url)
    assert shown(page)["label"] is None and shown(page)["notADigit"] == ""
    draw_and_judge(page, ZIGZAG)
    assert shown(page)["label"] == "not a digit"
    page.click("[data-testid=clear]")
    now = shown(page)
    assert now["label"] is None and now["notADigit"] == "" and now["text"] == "–"
    page.close()
