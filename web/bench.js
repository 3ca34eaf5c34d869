// In-page measurements for `invoke bench` (bench/page.py drives this page in headless Chromium).
// Every runner takes the same MNIST digits (arrays of 784 raw pixels, ink = 255) and returns
// per-image predict times in ms plus the predicted digits, so accuracy is checked as well.

import { loadClassifier } from "./classifier.js";

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

async function timeEach(images, predict) {
  const times = [], digits = [];
  for (let i = 0; i < Math.min(20, images.length); i++) await predict(images[i]); // warm-up
  for (const image of images) {
    const t0 = performance.now();
    const probs = await predict(image);
    times.push(performance.now() - t0);
    digits.push(argmax(probs));
  }
  return { times, digits };
}

/**
 * One of our wasm builds (pkg/<backend>/): load + start time (for wgpu: adapter, device,
 * weights upload), then one predict per image, awaited (the GPU read-back included); then,
 * when `profileRepeats` > 0 and the build can (CPU builds), its per-stage profile of the first
 * image.
 * @param {string} backend "fast-relaxed", "fast-simd128", "flex", "ndarray" or "wgpu"
 * @param {number[][]} images digits, 784 raw pixels each
 * @param {number} profileRepeats forward passes the profile averages over (0: no profile)
 * @returns {Promise<{initMs: number, times: number[], digits: number[],
 *   profile: {stage: string, ms: number}[] | null}>} ms per predict; profile: mean ms per run
 */
export async function runBuild(backend, images, profileRepeats = 0) {
  const t0 = performance.now();
  const { classifier } = await loadClassifier(backend);
  const initMs = performance.now() - t0;
  const inputs = images.map((img) => Float32Array.from(img));
  const result = await timeEach(inputs, (px) => classifier.predict(px));
  const canProfile = profileRepeats > 0 && typeof classifier.profile === "function";
  const profile = canProfile ? JSON.parse(classifier.profile(inputs[0], profileRepeats)) : null;
  return { initMs, ...result, profile };
}

/**
 * The page's own API, as its users call it: `window.mnist.predict` on index.html (this module
 * imported into that page), the hand-off to the inference worker and back included.
 * @param {number[][]} images digits, 784 raw pixels each (plain arrays, as a caller passes them)
 * @returns {Promise<{initMs: null, times: number[], digits: number[], handoff: string, backend: string}>}
 */
export async function runPage(images) {
  const result = await timeEach(images, (px) => window.mnist.predict(px));
  return { initMs: null, ...result, handoff: window.mnist.handoff, backend: window.mnist.backend };
}

/** ONNX Runtime Web, wasm backend with SIMD, one thread, on the same weights (model.onnx). */
export async function runOrt(modelUrl, mean, std, images) {
  const t0 = performance.now();
  const ort = await import("./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs");
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.simd = true;
  ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", location.href).href;
  const session = await ort.InferenceSession.create(modelUrl, { executionProviders: ["wasm"] });
  const initMs = performance.now() - t0;
  const inputs = images.map((img) => Float32Array.from(img));
  // The same work as the burn build's predict: normalise, forward, softmax.
  const predict = async (px) => {
    const x = new Float32Array(784);
    for (let i = 0; i < 784; i++) x[i] = (px[i] / 255 - mean) / std;
    const out = await session.run({ pixels: new ort.Tensor("float32", x, [1, 1, 28, 28]) });
    const logits = out.logits.data, m = Math.max(...logits);
    const e = Array.from(logits, (v) => Math.exp(v - m)), s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  };
  const result = await timeEach(inputs, predict);
  return { initMs, ...result };
}

/**
 * What this page's clock can resolve: whether it is cross-origin isolated, and the smallest
 * step of performance.now() seen in a busy loop, in ms (Chromium: 0.005 isolated, 0.1 not).
 * @returns {{crossOriginIsolated: boolean, stepMs: number}}
 */
export function timerResolution() {
  let step = Infinity;
  for (let i = 0, last = performance.now(); i < 20 && step > 0; ) {
    const now = performance.now();
    if (now !== last) { step = Math.min(step, now - last); last = now; i++; }
  }
  return { crossOriginIsolated: self.crossOriginIsolated === true, stepMs: step };
}

/** The WebGPU adapter this browser offers: { vendor, architecture, description }, or null. */
export async function webgpuAdapter() {
  const adapter = "gpu" in navigator ? await navigator.gpu.requestAdapter() : null;
  if (!adapter) return null;
  const { vendor, architecture, description } = adapter.info;
  return { vendor, architecture, description };
}
