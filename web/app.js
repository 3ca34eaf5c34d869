// The page: drawing, preprocessing, calling the wasm classifier, showing the result.
//
// Contract for tests and tools (keep it stable):
//   canvas[data-testid="draw"]        the drawing surface
//   [data-testid="clear"]             clears it
//   [data-testid="adverse-pen"]       checkbox "challenge: adverse pen": when checked, strokes use
//                                     web/pen.js's adverse pen (width and colour change along the
//                                     stroke); data-seed: that pen's seed (a new one at every
//                                     Clear and switch-on; ?penseed=N in the URL fixes it to N)
//   [data-testid="prediction"]        data-digit (0-9, "" when none: the likeliest digit, also
//                                     when it is "not a digit"), data-seq (completed
//                                     inferences shown), data-probs (JSON, 10 probabilities),
//                                     data-not-a-digit ("true"/"false": the model's "not a digit"
//                                     rule on the shown probabilities, live while drawing too; ""
//                                     when none or the model has no threshold), data-unsure
//                                     ("true"/"false": MC dropout's verdict, either rule, "" when
//                                     none), data-model (the model that answered)
//   [data-testid="not-a-digit"]       the "not a digit" label: visible only while the shown
//                                     prediction is not a digit (the digit then shows "?")
//   [data-testid="model"]             the model picker (<select>); ?model=NAME picks at start
//   [data-testid="label"], [data-testid="save"]  the digit the drawing is (preset to the
//                                     prediction) and the button that saves the drawing with it
//                                     (POST /api/samples; without a server API, in this browser's
//                                     IndexedDB); the status line says "saved as sample #N"
//   [data-testid="teach"]             teaches the model the drawing as that digit (web/teach.js)
//   [data-testid="taught"]            data-count: examples taught; [data-testid="forget"] forgets them
//   [data-testid="reconstruction"]    what a model with a decoder (the capsule network) sees: its
//                                     image of the digit it reads, redrawn with each prediction;
//                                     its figure is hidden for the other models
//   window.mnist                      { async predict(pixels) -> 10 probabilities, backend,
//                                       models, model, async load(name),
//                                       async predictUncertain(pixels, {samples}), lastPixels }
//                                     pixels: 784 numbers, 28x28 row-major, 0..255, ink = 255;
//                                     backend: the one running, with the reason in brackets
//                                     when a preferred one could not, e.g.
//                                     "fast-simd128 (no relaxed SIMD in this browser)";
//                                     handoff: how predictions reach the worker, "shared memory"
//                                     or "messages (why not shared memory)";
//                                     models: names that can be loaded; model: the one running;
//                                     load(name) switches (rejects with the reason, keeping the
//                                     current model); predictUncertain -> {probs, std, entropy,
//                                     mutualInformation, notADigit, unsure} (MC dropout, default
//                                     20 samples; notADigit: the model's rule on one pass with
//                                     dropout off, true/false, null without its threshold; unsure:
//                                     either rule, the mutual information or notADigit, null
//                                     without both thresholds);
//                                     lastPixels: the 784 preprocessed pixels the canvas last sent
//                                     to the model (an Array), null while the canvas is blank;
//                                     async teach(pixels, label) adds one example (rejects a label
//                                     that is not a digit 0-9 or a blank image), async forget(),
//                                     taught: examples per digit (10 counts); predictions use the
//                                     taught model once there are examples, and a reload keeps them;
//                                     async reconstruct(pixels) -> {digit, pixels}: the predicted
//                                     digit and what the model sees (784 numbers 0..255, ink =
//                                     255), rejecting for a model without a decoder
//
// The model runs in a module worker (web/worker.js, driven by web/inference.js; the images
// through shared memory where the page is cross-origin isolated, web/channel.js); this thread
// draws and preprocesses. While a prediction runs, newer drawings replace each other and only
// the newest is classified next.

import { inkFromImageData, toMnist, MNIST_SIZE } from "./preprocess.js";
import { ADVERSE_MAX_WIDTH, ADVERSE_MIN_WIDTH, PEN_WIDTH, createPen } from "./pen.js";
import { LatestOnly, spawnWorker, startFirstWorking } from "./inference.js";
import { ModelPicker } from "./models.js";
import { openLocal } from "./local.js";
import { Teacher } from "./teach.js";

// Start-up runs in parallel, not in series: the worker loads its scripts while config.json
// (preloaded by index.html) arrives, and the model is loaded in it as soon as the choice is made;
// the browser's store (IndexedDB: some ms each to open and read on a fresh profile) opens
// meanwhile, and what it kept of the examples taught is read.
const firstWorker = spawnWorker();
const configReady = fetch("config.json").then((response) => {
  if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
  return response.json();
});
const localReady = openLocal();
localReady.catch((err) => console.warn(`nothing is kept in this browser: ${err.message}`));
const keptReady = localReady.then((store) => store.all("taught"));
keptReady.catch(() => {}); // a failure is Teacher.restore's to report

const MC_SAMPLES = 20; // MC-dropout passes at the end of a stroke (trainer/uncertainty.py's default)

const $ = (id) => document.getElementById(id);
const drawCanvas = $("draw");
const ctx = drawCanvas.getContext("2d", { willReadFrequently: true });
const previewCtx = $("preview").getContext("2d");
const reconstructionCtx = $("reconstruction").getContext("2d");
const predictionEl = $("prediction");
let seq = 0;

/** The drawing on the canvas, as a sample for POST /api/samples would keep it. */
const sketch = {
  strokes: [], // each a list of [x, y, t_ms] points in canvas px, t from the first pen-down
  t0: 0,
  penWidth: PEN_WIDTH, // the pen's width in canvas px (the adverse pen: the middle of its range)
  pixels: null, // the 784 preprocessed pixels last sent to the model, or null when blank
};

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

/**
 * The backends to try, in order: ?backend=NAME if it is built, then our relaxed-SIMD kernels
 * (fast-relaxed) if built, then the server's default (always last: the page must never be left
 * without a model). WebGPU is tried only when asked for: for one small image it is slower than
 * the CPU kernels. An unknown ?backend= is reported in `note` and the usual order is kept.
 * @param {{default: string, backends: string[]}} config the server's /config.json
 * @param {string | null} wanted the ?backend= of the URL
 * @returns {{candidates: string[], note: string}}
 */
function chooseBackends(config, wanted) {
  const first = [];
  let note = "";
  if (wanted && config.backends.includes(wanted)) {
    first.push(wanted);
  } else if (wanted) {
    note = `"${wanted}" is not built (built: ${config.backends.join(", ")}). `;
  }
  if (config.backends.includes("fast-relaxed")) first.push("fast-relaxed");
  return { candidates: [...new Set([...first, config.default])], note };
}

function buildBars() {
  const bars = $("bars");
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    // .spread: mean ± one standard deviation of the MC-dropout samples, over the bar.
    li.innerHTML = `<span>${d}</span><span class="track"><span class="fill"></span><span class="spread"></span></span><span class="pct">–</span>`;
    bars.appendChild(li);
  }
}

/**
 * Show a prediction: `probs` (10, the model's eval-mode answer) on the bars; `notADigit` (the
 * model's rule on them: true, false, or null without one) as "?" and the "not a digit" label;
 * and, when given, MC dropout's `uncertainty` ({probabilities, std, mutualInformation, unsure})
 * as a band of mean ± std over each bar and a "not sure" verdict. `probs` null: nothing drawn.
 */
function show(probs, elapsedMs, uncertainty = null, notADigit = null) {
  const items = $("bars").children;
  predictionEl.dataset.unsure = "";
  predictionEl.dataset.notADigit = "";
  predictionEl.classList.remove("unsure", "is-not-a-digit");
  $("not-a-digit").hidden = true;
  for (const li of items) li.querySelector(".spread").style.width = "0";
  if (probs === null) {
    predictionEl.dataset.digit = "";
    predictionEl.dataset.probs = "[]";
    $("digit").textContent = "–";
    $("confidence").textContent = "draw something";
    for (const li of items) {
      li.classList.remove("top");
      li.querySelector(".fill").style.width = "0";
      li.querySelector(".pct").textContent = "–";
    }
    return;
  }
  let top = 0;
  for (let d = 1; d < 10; d++) if (probs[d] > probs[top]) top = d;
  for (let d = 0; d < 10; d++) {
    items[d].classList.toggle("top", d === top);
    items[d].querySelector(".fill").style.width = `${(probs[d] * 100).toFixed(1)}%`;
    items[d].querySelector(".pct").textContent = `${(probs[d] * 100).toFixed(1)}%`;
  }
  $("label").value = String(top); // what a "save" will call it, unless the user says otherwise
  const sure = `${(probs[top] * 100).toFixed(1)}%`;
  // Not a digit: "?" and the label, the likeliest digit only in the words under it.
  const lowest = `only ${sure} for a ${top}`;
  $("digit").textContent = notADigit ? "?" : String(top);
  $("confidence").textContent = notADigit ? lowest : `${sure} sure`;
  if (notADigit !== null) predictionEl.dataset.notADigit = String(notADigit);
  if (notADigit) {
    predictionEl.classList.add("is-not-a-digit");
    $("not-a-digit").hidden = false;
  }
  if (uncertainty) {
    for (let d = 0; d < 10; d++) {
      const mean = uncertainty.probabilities[d], std = uncertainty.std[d];
      const low = Math.max(0, mean - std), high = Math.min(1, mean + std);
      const band = items[d].querySelector(".spread");
      band.style.left = `${(low * 100).toFixed(1)}%`;
      band.style.width = `${((high - low) * 100).toFixed(1)}%`;
    }
    const mi = uncertainty.mutualInformation.toFixed(3);
    if (uncertainty.unsure) {
      // Either rule: "not a digit", or the samples' disagreement.
      const why = uncertainty.notADigit
        ? lowest
        : `the ${uncertainty.samples} dropout samples disagree (mutual information ${mi} nats)`;
      $("confidence").textContent = `not sure: ${why}`;
      predictionEl.classList.add("unsure");
    }
    predictionEl.dataset.unsure = uncertainty.unsure === null ? "" : String(uncertainty.unsure);
  }
  // Our kernels take a fraction of a millisecond: show what the (isolated, 5 us) clock resolves.
  $("timing").textContent = `last inference ${elapsedMs.toFixed(elapsedMs < 1 ? 2 : 1)} ms`;
  predictionEl.dataset.digit = String(top);
  predictionEl.dataset.probs = JSON.stringify(Array.from(probs));
  seq += 1;
  predictionEl.dataset.seq = String(seq);
}

/** Draw 784 pixels (0..255, ink = 255; null: blank) on a 28x28 canvas context, white on black. */
function drawPixels(context, pixels) {
  const image = context.createImageData(MNIST_SIZE, MNIST_SIZE);
  for (let i = 0; i < MNIST_SIZE * MNIST_SIZE; i++) {
    const v = pixels ? pixels[i] : 0;
    image.data.set([v, v, v, 255], i * 4);
  }
  context.putImageData(image, 0, 0);
}

const drawPreview = (pixels) => drawPixels(previewCtx, pixels);

/**
 * What the model sees, beside the preview: shown for a model with a decoder. `reconstruction`
 * null clears it; `digit` is the digit it was drawn from.
 */
function showReconstruction(model, reconstruction = null, digit = null) {
  $("reconstruction-figure").hidden = !model.reconstructs;
  $("reconstruction").dataset.digit = digit === null ? "" : String(digit);
  drawPixels(reconstructionCtx, reconstruction);
}

/**
 * The adverse pen's seed: ?penseed=N in the URL (an integer 0..2^32-1, for reproducible
 * drawings), else a random one.
 * @returns {number}
 */
function penSeed() {
  const fixed = new URLSearchParams(location.search).get("penseed");
  if (fixed !== null && /^\d+$/.test(fixed) && Number(fixed) <= 0xffffffff) return Number(fixed);
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/**
 * Drawing on the canvas with web/pen.js's pens: the normal one, or the adverse one while the
 * "challenge: adverse pen" checkbox is checked. Clear (and switching the adverse pen on) starts
 * a new pen: distance 0, a new seed.
 * @param {() => void} classify  called while drawing (at most once per animation frame: the
 *   newest drawing goes next when the model is free, see LatestOnly) and at the end of each stroke
 * @param {() => void} onClear  called when the canvas is cleared
 */
function setupDrawing(classify, onClear) {
  const adverseToggle = $("adverse-pen");
  let drawing = false, last = null, liveFrame = 0, pen = null;
  const newPen = () => {
    pen = createPen({ adverse: adverseToggle.checked, seed: penSeed() });
    adverseToggle.dataset.seed = String(pen.seed);
    drawCanvas.classList.toggle("adverse", pen.adverse);
    sketch.penWidth = pen.adverse ? (ADVERSE_MIN_WIDTH + ADVERSE_MAX_WIDTH) / 2 : PEN_WIDTH;
  };
  // A point of a stroke: canvas pixels to 0.1, ms since the drawing's first point (`now`: the
  // time already taken, so that the first point is at 0 ms exactly).
  const at = ([x, y], now = performance.now()) => [
    Math.round(x * 10) / 10,
    Math.round(y * 10) / 10,
    Math.round(now - sketch.t0),
  ];
  newPen();
  adverseToggle.addEventListener("change", newPen);

  // The pointer in canvas pixels: from the canvas's content box (inside its border), scaled
  // from its rendered size (smaller on a phone) to its 280x280 pixels.
  const point = (e) => {
    const r = drawCanvas.getBoundingClientRect();
    const x = e.clientX - r.left - drawCanvas.clientLeft, y = e.clientY - r.top - drawCanvas.clientTop;
    return [x * (drawCanvas.width / drawCanvas.clientWidth), y * (drawCanvas.height / drawCanvas.clientHeight)];
  };
  drawCanvas.addEventListener("pointerdown", (e) => {
    drawing = true;
    last = point(e);
    const now = performance.now();
    if (sketch.strokes.length === 0) sketch.t0 = now;
    sketch.strokes.push([at(last, now)]);
    drawCanvas.setPointerCapture(e.pointerId);
    pen.down(ctx, last);
    e.preventDefault();
  });
  drawCanvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const p = point(e);
    pen.move(ctx, last, p);
    last = p;
    sketch.strokes[sketch.strokes.length - 1].push(at(p));
    if (!liveFrame) {
      liveFrame = requestAnimationFrame(() => {
        liveFrame = 0;
        if (drawing) classify(false); // live: the plain prediction, quick
      });
    }
    e.preventDefault();
  });
  const end = (e) => {
    if (!drawing) return;
    drawing = false;
    classify(true); // the stroke is done: with MC dropout
    e.preventDefault();
  };
  drawCanvas.addEventListener("pointerup", end);
  drawCanvas.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => {
    onClear();
    sketch.strokes = [];
    sketch.pixels = null;
    ctx.clearRect(0, 0, drawCanvas.width, drawCanvas.height);
    newPen();
    drawPreview(null);
    show(null);
  });
}

/**
 * Save the drawing with the digit chosen in the label picker: POST /api/samples (the server's
 * SQLite store, mnist_common/samples.py), or, where no server API answers (a static host, the server
 * gone), this browser's IndexedDB. The status line says "saved as sample #N", or why not.
 * @param {string} model the model that made the shown prediction
 * @param {Promise<import("./local.js").LocalStore>} local the browser's store
 */
async function saveSample(model, local) {
  if (sketch.pixels === null) {
    setStatus("nothing to save: draw a digit first", true);
    return;
  }
  const predicted = predictionEl.dataset.digit === "" ? null : Number(predictionEl.dataset.digit);
  const sample = {
    label: Number($("label").value),
    pixels: Array.from(sketch.pixels),
    strokes: sketch.strokes,
    pen_width: sketch.penWidth,
    canvas: [drawCanvas.width, drawCanvas.height],
    predicted,
    model,
    created_at: new Date().toISOString(),
  };
  let response;
  try {
    response = await fetch("api/samples", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(sample),
    });
  } catch {
    response = null; // no server at all
  }
  try {
    // No API here (a static file server answers 404 or 501, or nothing): keep it in the browser.
    if (response === null || [404, 405, 501].includes(response.status)) {
      const key = await (await local).add("samples", sample);
      setStatus(`saved in this browser as sample #${key} (a ${sample.label}): no server API here`);
      return;
    }
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    setStatus(`saved as sample #${answer.id} (a ${sample.label})`);
  } catch (err) {
    setStatus(`not saved: ${err.message}`, true);
  }
}

/** Show how many examples the model was taught. */
function showTaught(counts) {
  const total = counts.reduce((a, b) => a + b, 0);
  $("taught").dataset.count = String(total);
  $("taught").textContent = total ? `taught ${total} of your digits` : "not taught your hand yet";
  $("forget").hidden = total === 0;
  predictionEl.dataset.taught = String(total);
}

function checkPixels(pixels) {
  if (pixels === null || pixels === undefined || typeof pixels.length !== "number") {
    throw new TypeError("predict(pixels): expected 784 numbers (28x28, row-major, 0..255, ink = 255)");
  }
  return Float32Array.from(pixels);
}

async function main() {
  buildBars();
  drawPreview(null);
  try {
    const config = await configReady;
    const { candidates, note } = chooseBackends(config, new URLSearchParams(location.search).get("backend"));
    const embedded = config.embedded || "embedded";
    const { classifier, label, failures } = await startFirstWorking(candidates, firstWorker, embedded);
    let reclassify = () => {};
    const picker = new ModelPicker(classifier, config, $("model"), (name) => {
      predictionEl.dataset.model = name;
      reclassify(); // the drawing on the canvas, by the new model
    });
    predictionEl.dataset.model = picker.current;
    const teacher = new Teacher(classifier, await localReady.catch(() => null));
    await teacher.restore(keptReady).catch((err) => setStatus(`could not re-teach the kept examples: ${err.message}`, true));
    showTaught(teacher.taught);
    const teach = async (pixels, label) => {
      await teacher.add(pixels, label);
      showTaught(teacher.taught);
      reclassify();
    };
    const forget = async () => {
      await teacher.forget();
      showTaught(teacher.taught);
      reclassify();
    };
    window.mnist = {
      backend: label,
      handoff: classifier.handoff,
      async predict(pixels) {
        return Array.from((await classifier.predict(checkPixels(pixels))).probs);
      },
      get models() {
        return picker.names;
      },
      get model() {
        return picker.current;
      },
      load: (name) => switchTo(name),
      get lastPixels() {
        return sketch.pixels ? Array.from(sketch.pixels) : null;
      },
      async predictUncertain(pixels, { samples = MC_SAMPLES } = {}) {
        const { uncertainty: u } = await classifier.predict(checkPixels(pixels), samples);
        return {
          probs: u.probabilities,
          std: u.std,
          entropy: u.entropy,
          mutualInformation: u.mutualInformation,
          notADigit: u.notADigit,
          unsure: u.unsure,
        };
      },
      teach,
      forget,
      get taught() {
        return teacher.taught;
      },
      async reconstruct(pixels) {
        const { digit, pixels: seen } = await classifier.reconstruct(checkPixels(pixels));
        return { digit, pixels: Array.from(seen) };
      },
    };
    const switchTo = (name) => picker.load(name).then(
      () => {
        setStatus(`model ${name} (${classifier.model.architecture}): draw a digit`);
        return name;
      },
      (err) => {
        setStatus(`model ${name} not loaded: ${err.message}; still using ${picker.current}`, true);
        throw err;
      },
    );
    $("model").addEventListener("change", () => switchTo($("model").value).catch(() => {}));
    // A weights file dropped anywhere on the page becomes a model of the picker.
    document.addEventListener("dragover", (e) => e.preventDefault());
    document.addEventListener("drop", (e) => {
      e.preventDefault();
      const file = e.dataTransfer?.files?.[0];
      if (!file) return;
      picker.addFile(file).then(
        (name) => setStatus(`model ${name} loaded from ${file.name}`),
        (err) => setStatus(`${file.name} not loaded: ${err.message}; still using ${picker.current}`, true),
      );
    });
    $("backend").textContent = label;
    const links = (config.backends || []).filter((b) => b !== classifier.backend)
      .map((b) => `<a href="?backend=${b}">use ${b}</a>`).join("");
    $("backend-links").innerHTML = links;
    const fellBack = failures.length ? `${failures.join("; ")}: using ${classifier.backend}. ` : "";
    setStatus(`${note}${fellBack}ready: draw a digit`);

    const live = new LatestOnly(
      classifier,
      ({ probs, ms, uncertainty, notADigit }) => show(probs, ms, uncertainty, notADigit),
      (err) => setStatus(`prediction failed: ${err.message}`, true),
    );
    // The reconstruction follows the newest drawing as the predictions do, one at a time.
    const seen = new LatestOnly(
      { predict: (pixels) => classifier.reconstruct(pixels) },
      ({ digit, pixels }) => showReconstruction(classifier.model, pixels, digit),
      (err) => setStatus(`reconstruction failed: ${err.message}`, true),
    );
    const wanted = new URLSearchParams(location.search).get("model");
    if (wanted && wanted !== picker.current) await switchTo(wanted).catch(() => {});
    // final: the drawing is done (pen up, a model switch): also MC dropout's verdict. While the
    // pen moves, only the plain prediction: on burn's builds 20 samples cost 20 predictions.
    reclassify = (final = true) => {
      const ink = inkFromImageData(ctx.getImageData(0, 0, drawCanvas.width, drawCanvas.height));
      const pixels = toMnist(ink, drawCanvas.width, drawCanvas.height);
      sketch.pixels = pixels;
      drawPreview(pixels);
      if (pixels === null || !classifier.model.reconstructs) {
        seen.drop();
        showReconstruction(classifier.model);
      }
      if (pixels === null) {
        live.drop();
        show(null);
        return;
      }
      live.submit(pixels, final ? MC_SAMPLES : 0); // a fresh Float32Array; postMessage copies it
      if (classifier.model.reconstructs) seen.submit(pixels);
    };
    setupDrawing(reclassify, () => {
      live.drop();
      seen.drop();
    });
    $("save").addEventListener("click", () => saveSample(picker.current, localReady));
    $("teach").addEventListener("click", () => {
      if (sketch.pixels === null) {
        setStatus("nothing to teach: draw a digit first", true);
        return;
      }
      const label = Number($("label").value);
      teach(sketch.pixels, label).then(
        () => setStatus(`taught: that is a ${label} (${teacher.taught[label]} of ${label}); Clear and draw the next`),
        (err) => setStatus(`not taught: ${err.message}`, true),
      );
    });
    $("forget").addEventListener("click", () => forget().then(
      () => setStatus("forgot your hand: back to the trained model"),
      (err) => setStatus(`could not forget: ${err.message}`, true),
    ));
  } catch (err) {
    setStatus(`could not load the model: ${err.message}. Run \`invoke build-wasm\` and reload.`, true);
    console.error(err);
  }
}

main();
