// Inference off the main thread: a module worker that holds one wasm classifier.
//
// Messages in:  { type: "load", backend }                     backend: a folder of pkg/
//               { type: "predict", id, pixels }                pixels: Float32Array(784), 0..255, ink = 255
// Messages out: { type: "loaded", backend }                    the classifier is ready
//               { type: "load-failed", message }               this backend cannot run here (why)
//               { type: "result", id, probs, ms }              probs: Float32Array(10); ms: predict time
//               { type: "result", id, error }                  this input was refused; the worker stays usable
//
// The build is loaded by web/classifier.js; CPU builds answer at once, the WebGPU build with a
// Promise, and both are awaited. The page spawns this worker before it has chosen a build and
// posts "load" when it has: a message sent earlier waits until this module has run.

import { loadClassifier } from "./classifier.js";

let classifier = null;

self.onmessage = async ({ data: message }) => {
  if (message.type === "load") {
    try {
      classifier = await loadClassifier(message.backend);
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
