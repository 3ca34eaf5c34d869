// The page: drawing, preprocessing, calling the wasm classifier, showing the result.
//
// Contract for tests and tools (keep it stable):
//   canvas[data-testid="draw"]        the drawing surface
//   [data-testid="clear"]             clears it
//   [data-testid="prediction"]        data-digit (0-9, "" when none), data-seq (completed
//                                     inferences shown), data-probs (JSON, 10 probabilities)
//   window.mnist                      { async predict(pixels) -> 10 probabilities, backend }
//                                     pixels: 784 numbers, 28x28 row-major, 0..255, ink = 255;
//                                     backend: the one running, with the reason in brackets
//                                     when a preferred one could not, e.g.
//                                     "fast-simd128 (no relaxed SIMD in this browser)"
//
// The model runs in a module worker (web/worker.js, driven by web/inference.js); this thread
// draws and preprocesses. While a prediction runs, newer drawings replace each other and only
// the newest is classified next.

import { inkFromImageData, toMnist, MNIST_SIZE } from "./preprocess.js";
import { LatestOnly, spawnWorker, startFirstWorking } from "./inference.js";

// Start-up runs in parallel, not in series: the worker loads its scripts while config.json
// (preloaded by index.html) arrives, and the model is loaded in it as soon as the choice is made.
const firstWorker = spawnWorker();
const configReady = fetch("config.json").then((response) => {
  if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
  return response.json();
});

const PEN_WIDTH = 20;          // px on the 280x280 canvas: ~2 px strokes after scaling to 20x20
const LIVE_INTERVAL_MS = 100;  // at most one live prediction per interval while drawing

const $ = (id) => document.getElementById(id);
const drawCanvas = $("draw");
const ctx = drawCanvas.getContext("2d", { willReadFrequently: true });
const previewCtx = $("preview").getContext("2d");
const predictionEl = $("prediction");
let seq = 0;

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
    li.innerHTML = `<span>${d}</span><span class="track"><span class="fill"></span></span><span class="pct">–</span>`;
    bars.appendChild(li);
  }
}

function show(probs, elapsedMs) {
  const items = $("bars").children;
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
  $("digit").textContent = String(top);
  $("confidence").textContent = `${(probs[top] * 100).toFixed(1)}% sure`;
  // Our kernels take a fraction of a millisecond: show what the (isolated, 5 us) clock resolves.
  $("timing").textContent = `last inference ${elapsedMs.toFixed(elapsedMs < 1 ? 2 : 1)} ms`;
  predictionEl.dataset.digit = String(top);
  predictionEl.dataset.probs = JSON.stringify(Array.from(probs));
  seq += 1;
  predictionEl.dataset.seq = String(seq);
}

function drawPreview(pixels) {
  const image = previewCtx.createImageData(MNIST_SIZE, MNIST_SIZE);
  for (let i = 0; i < MNIST_SIZE * MNIST_SIZE; i++) {
    const v = pixels ? pixels[i] : 0;
    image.data.set([v, v, v, 255], i * 4);
  }
  previewCtx.putImageData(image, 0, 0);
}

function setupDrawing(classify, onClear) {
  let drawing = false, last = null, lastLive = 0;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = PEN_WIDTH;
  ctx.strokeStyle = "#111";
  ctx.fillStyle = "#111";

  const point = (e) => {
    const r = drawCanvas.getBoundingClientRect();
    return [(e.clientX - r.left) * (drawCanvas.width / r.width), (e.clientY - r.top) * (drawCanvas.height / r.height)];
  };
  drawCanvas.addEventListener("pointerdown", (e) => {
    drawing = true;
    last = point(e);
    drawCanvas.setPointerCapture(e.pointerId);
    ctx.beginPath();
    ctx.arc(last[0], last[1], PEN_WIDTH / 2, 0, Math.PI * 2);
    ctx.fill();
    e.preventDefault();
  });
  drawCanvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const p = point(e);
    ctx.beginPath();
    ctx.moveTo(last[0], last[1]);
    ctx.lineTo(p[0], p[1]);
    ctx.stroke();
    last = p;
    const now = performance.now();
    if (now - lastLive >= LIVE_INTERVAL_MS) {
      lastLive = now;
      classify();
    }
    e.preventDefault();
  });
  const end = (e) => {
    if (!drawing) return;
    drawing = false;
    classify();
    e.preventDefault();
  };
  drawCanvas.addEventListener("pointerup", end);
  drawCanvas.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => {
    onClear();
    ctx.clearRect(0, 0, drawCanvas.width, drawCanvas.height);
    drawPreview(null);
    show(null);
  });
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
    const { classifier, label, failures } = await startFirstWorking(candidates, firstWorker);
    window.mnist = {
      backend: label,
      async predict(pixels) {
        return Array.from((await classifier.predict(checkPixels(pixels))).probs);
      },
    };
    $("backend").textContent = label;
    const links = (config.backends || []).filter((b) => b !== classifier.backend)
      .map((b) => `<a href="?backend=${b}">use ${b}</a>`).join("");
    $("backend-links").innerHTML = links;
    const fellBack = failures.length ? `${failures.join("; ")}: using ${classifier.backend}. ` : "";
    setStatus(`${note}${fellBack}ready: draw a digit`);

    const live = new LatestOnly(
      classifier,
      ({ probs, ms }) => show(probs, ms),
      (err) => setStatus(`prediction failed: ${err.message}`, true),
    );
    setupDrawing(() => {
      const ink = inkFromImageData(ctx.getImageData(0, 0, drawCanvas.width, drawCanvas.height));
      const pixels = toMnist(ink, drawCanvas.width, drawCanvas.height);
      drawPreview(pixels);
      if (pixels === null) {
        live.drop();
        show(null);
        return;
      }
      live.submit(pixels); // toMnist returns a fresh Float32Array; postMessage copies it
    }, () => live.drop());
  } catch (err) {
    setStatus(`could not load the model: ${err.message}. Run \`invoke build-wasm\` and reload.`, true);
    console.error(err);
  }
}

main();
