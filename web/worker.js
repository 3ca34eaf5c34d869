// Inference off the main thread: a module worker that holds one wasm classifier.
//
// Messages in:  { type: "load", backend }                     backend: a folder of pkg/
//               { type: "predict", id, pixels }                pixels: Float32Array(784), 0..255, ink = 255
// Messages out: { type: "loaded", backend }                    the classifier is ready
//               { type: "load-failed", message }               this backend cannot run here (why)
//               { type: "result", id, probs, ms }              probs: Float32Array(10); ms: predict time
//               { type: "result", id, error }                  this input was refused; the worker stays usable
//
// A build's module exports `Classifier`. A CPU build is constructed with `new Classifier()` and
// predicts synchronously; a build whose start is asynchronous (WebGPU: adapter and device
// requests) has `static async create()`, and its `predict` may return a Promise. Both are awaited.

let classifier = null;

/** Why WebGPU cannot run in this worker, or "" when an adapter and a device are there. */
async function webgpuProblem() {
  if (!("gpu" in navigator)) return "no WebGPU in this browser";
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (err) {
    return `WebGPU adapter request failed: ${err.message}`;
  }
  if (!adapter) return "no WebGPU adapter";
  try {
    const device = await adapter.requestDevice();
    device.destroy();
  } catch (err) {
    return `WebGPU device request failed: ${err.message}`;
  }
  return "";
}

async function load(backend) {
  if (backend === "wgpu") {
    const problem = await webgpuProblem();
    if (problem) throw new Error(problem);
  }
  const module = await import(`./pkg/${backend}/mnist_wasm.js`);
  await module.default(); // fetch and instantiate mnist_wasm_bg.wasm
  const Classifier = module.Classifier;
  return typeof Classifier.create === "function" ? await Classifier.create() : new Classifier();
}

self.onmessage = async ({ data: message }) => {
  if (message.type === "load") {
    try {
      classifier = await load(message.backend);
      self.postMessage({ type: "loaded", backend: classifier.backend });
    } catch (err) {
      self.postMessage({ type: "load-failed", message: err?.message || String(err) });
    }
  } else if (message.type === "predict") {
    try {
      const t0 = performance.now();
      const probs = await classifier.predict(message.pixels);
      self.postMessage({ type: "result", id: message.id, probs, ms: performance.now() - t0 });
    } catch (err) {
      self.postMessage({ type: "result", id: message.id, error: err?.message || String(err) });
    }
  }
};
