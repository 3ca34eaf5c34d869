// Load one wasm build of the classifier (web/pkg/<backend>/), whichever its kind.
//
// A build's module exports `Classifier`. A CPU build (fast-relaxed, fast-simd128, flex, ndarray)
// is constructed with `new Classifier()` and predicts synchronously; the WebGPU build (wgpu)
// starts asynchronously (adapter and device requests) with `static async create()`, and its
// `predict` returns a Promise. Callers `await classifier.predict(pixels)` either way.

/**
 * The smallest module that uses relaxed SIMD: one function
 * `(v128, v128, v128) -> v128 { f32x4.relaxed_madd(a, b, c) }`. A browser without relaxed
 * SIMD fails to validate it, exactly as it would fail to compile the fast-relaxed build, but
 * in microseconds and before anything is downloaded.
 */
const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, //                 magic: "\0asm"
  0x01, 0x00, 0x00, 0x00, //                 binary format version 1
  // Type section (id 1), 8 bytes: 1 type, a function (0x60) of 3 params, all v128 (0x7b),
  // and 1 result, v128.
  0x01, 0x08, 0x01, 0x60, 0x03, 0x7b, 0x7b, 0x7b, 0x01, 0x7b,
  // Function section (id 3), 2 bytes: 1 function, of type 0.
  0x03, 0x02, 0x01, 0x00,
  // Code section (id 10), 13 bytes: 1 body of 11 bytes: no locals; local.get 0, 1, 2
  // (0x20 i); f32x4.relaxed_madd (SIMD prefix 0xfd, opcode 0x105 as LEB128: 0x85 0x02); end.
  0x0a, 0x0d, 0x01, 0x0b, 0x00,
  0x20, 0x00, 0x20, 0x01, 0x20, 0x02,
  0xfd, 0x85, 0x02,
  0x0b,
]);

/** Why the relaxed-SIMD build cannot run here, or "" when it can. Synchronous, microseconds. */
export function relaxedSimdProblem() {
  return WebAssembly.validate(RELAXED_SIMD_PROBE) ? "" : "no relaxed SIMD in this browser";
}

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
 * Why `backend` cannot run in this browser, found without downloading it, or "" when nothing
 * is known against it (its start can still fail).
 * @param {string} backend a folder of pkg/, e.g. "fast-relaxed"
 * @returns {Promise<string>}
 */
export async function backendProblem(backend) {
  if (backend === "wgpu") return webgpuProblem();
  if (backend === "fast-relaxed") return relaxedSimdProblem();
  return "";
}

/**
 * Fetch, compile, instantiate and start the build in pkg/<backend>/.
 *
 * The .wasm download and its streaming compilation start at once, while the build's JS glue
 * is still being fetched, rather than after it (the glue's init() would only start them then).
 * @param {string} backend "fast-relaxed", "fast-simd128", "flex", "ndarray" or "wgpu"
 * @returns {Promise<{classifier: object, Classifier: Function}>} the embedded model's
 *   classifier (`.backend`, `.architecture`, `.unsureThreshold`, `.notADigitThreshold`,
 *   `predict(Float32Array(784))` → 10 probabilities, `uncertainty(pixels, samples, seed)` → JSON,
 *   either possibly as a Promise; `notADigit(probabilities)` → true | false | undefined, always at once;
 *   CPU builds also `profile(pixels, repeats)` → JSON) and the build's class, whose
 *   `Classifier.fromBytes(Uint8Array)` loads another weights file (a Promise on WebGPU).
 *   Rejects with the reason when the build cannot run here.
 */
export async function loadClassifier(backend) {
  const problem = await backendProblem(backend);
  if (problem) throw new Error(problem);
  const base = new URL(`./pkg/${backend}/`, import.meta.url);
  const compiled = WebAssembly.compileStreaming(fetch(new URL("mnist_wasm_bg.wasm", base)));
  compiled.catch(() => {}); // awaited below, after the glue; this only keeps it from being "unhandled"
  const glue = await import(new URL("mnist_wasm.js", base).href);
  await glue.default({ module_or_path: compiled }); // instantiate the compiled module
  const { Classifier } = glue;
  const classifier = typeof Classifier.create === "function" ? await Classifier.create() : new Classifier();
  return { classifier, Classifier };
}
