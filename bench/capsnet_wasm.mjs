// Median single-image predict and reconstruct of a capsule network in one wasm build of the
// page's classifier, in Node (V8, as Chromium; no page, no worker): what bench/capsnet.py runs
// with --wasm on web/pkg/fast-relaxed and web/pkg/fast-simd128.
//
//   node [--experimental-wasm-relaxed-simd] capsnet_wasm.mjs PKG_DIR MODEL.safetensors DIGITS.f32
//
// DIGITS.f32: raw float32 images of 784 pixels (0..255). Prints one JSON line: the build, the
// median ms of predict and of reconstruct (after 10 calls of warm-up), the digits timed, and the
// build's own per-stage profile of the first digit (50 runs).
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [pkg, model, digits] = process.argv.slice(2);
const module = await import(pathToFileURL(resolve(pkg, "mnist_wasm.js")).href);
await module.default({ module_or_path: readFileSync(resolve(pkg, "mnist_wasm_bg.wasm")) });
const classifier = module.Classifier.fromBytes(new Uint8Array(readFileSync(model)));
const raw = readFileSync(digits);
const images = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const count = images.length / 784;
const image = (i) => images.subarray(i * 784, (i + 1) * 784);

function medianMs(call) {
  for (let i = 0; i < 10; i++) call(image(i % count));
  const times = [];
  for (let i = 0; i < count; i++) {
    const x = image(i);
    const start = performance.now();
    call(x);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

console.log(
  JSON.stringify({
    backend: classifier.backend,
    predict_ms: medianMs((x) => classifier.predict(x)),
    reconstruct_ms: medianMs((x) => classifier.reconstruct(x).free()),
    digits: count,
    profile: JSON.parse(classifier.profile(image(0), 50)),
  }),
);
