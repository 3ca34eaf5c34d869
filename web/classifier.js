// Load one wasm build of the classifier (web/pkg/<backend>/), whichever its kind.
//
// A build's module exports `Classifier`. A CPU build (ndarray, flex) is constructed with
// `new Classifier()` and predicts synchronously; the WebGPU build (wgpu) starts asynchronously
// (adapter and device requests) with `static async create()`, and its `predict` returns a
// Promise. Callers `await classifier.predict(pixels)` either way.

/**
 * Why WebGPU cannot run here, or "" when the browser offers an adapter. Checked first for a
 * short, clear reason; the device itself is requested once, by the build's create(), whose
 * errors (device refused, device lost, shader compilation) reach the caller too.
 */
async function webgpuProblem() {
  if (!("gpu" in navigator)) return "no WebGPU in this browser";
  try {
    return (await navigator.gpu.requestAdapter()) ? "" : "no WebGPU adapter";
  } catch (err) {
    return `WebGPU adapter request failed: ${err.message}`;
  }
}

/**
 * Fetch, instantiate and start the build in pkg/<backend>/.
 * @param {string} backend "ndarray", "flex" or "wgpu"
 * @returns {Promise<object>} its Classifier: `.backend`, `predict(Float32Array(784))` → 10
 *   probabilities (or a Promise of them). Rejects with the reason when the build cannot run here.
 */
export async function loadClassifier(backend) {
  if (backend === "wgpu") {
    const problem = await webgpuProblem();
    if (problem) throw new Error(problem);
  }
  const module = await import(`./pkg/${backend}/mnist_wasm.js`);
  await module.default(); // fetch and instantiate mnist_wasm_bg.wasm
  const { Classifier } = module;
  return typeof Classifier.create === "function" ? await Classifier.create() : new Classifier();
}
