// Inference off the main thread: a module worker that holds the wasm classifiers.
//
// Messages in:  { type: "load", backend, name }               backend: a folder of pkg/; loads its embedded
//                                                             model, called `name` (default "embedded")
//               { type: "model", id, name, source }           switch to model `name`: source is a URL of a
//                                                             .safetensors file or its bytes (Uint8Array), or
//                                                             null for the embedded model; a model loaded once
//                                                             is kept, so switching back is instant
//               { type: "predict", id, pixels, samples }      pixels: Float32Array(784), 0..255, ink = 255;
//                                                             samples > 0 adds MC dropout with that many passes
// Messages out: { type: "loaded", backend, model }            the classifier is ready (model: its description)
//               { type: "load-failed", message }              this backend cannot run here (why)
//               { type: "result", id, model }                 switched; model: { name, architecture, unsureThreshold }
//               { type: "result", id, probs, ms, uncertainty } probs: Float32Array(10); ms: predict time;
//                                                             uncertainty: MC-dropout summary or null
//               { type: "result", id, error }                 refused (bad input, a file that does not load):
//                                                             the worker keeps the model it had
//
// The build is loaded by web/classifier.js; CPU builds answer at once, the WebGPU build with a
// Promise, and both are awaited. The page spawns this worker before it has chosen a build and
// posts "load" when it has: a message sent earlier waits until this module has run.

import { loadClassifier } from "./classifier.js";

/** The MC-dropout seed: fixed, so the same drawing always gets the same answer. */
const MC_SEED = 0;

let Classifier = null; // the build's class, for Classifier.fromBytes
let classifier = null; // the model in use
let current = null; // its description
const loaded = new Map(); // name -> { classifier, model }

function describe(name, instance) {
  return { name, architecture: instance.architecture, unsureThreshold: instance.unsureThreshold ?? null };
}

async function switchModel(name, source) {
  if (!loaded.has(name)) {
    if (source === null || source === undefined) throw new Error(`no model called "${name}" is loaded here`);
    let bytes = source;
    if (typeof source === "string") {
      const response = await fetch(source);
      if (!response.ok) throw new Error(`${source}: HTTP ${response.status}`);
      bytes = new Uint8Array(await response.arrayBuffer());
    }
    const instance = await Classifier.fromBytes(bytes); // throws with the reason; nothing changes
    loaded.set(name, { classifier: instance, model: describe(name, instance) });
  }
  ({ classifier, model: current } = loaded.get(name));
  return current;
}

async function predict({ pixels, samples }) {
  const t0 = performance.now();
  const probs = await classifier.predict(pixels);
  const ms = performance.now() - t0;
  const uncertainty = samples > 0 ? JSON.parse(await classifier.uncertainty(pixels, samples, MC_SEED)) : null;
  return { probs, ms, uncertainty };
}

self.onmessage = async ({ data: message }) => {
  if (message.type === "load") {
    try {
      ({ classifier, Classifier } = await loadClassifier(message.backend));
      current = describe(message.name ?? "embedded", classifier);
      loaded.set(current.name, { classifier, model: current });
      self.postMessage({ type: "loaded", backend: classifier.backend, model: current });
    } catch (err) {
      self.postMessage({ type: "load-failed", message: err?.message || String(err) });
    }
    return;
  }
  try {
    const answer = message.type === "model"
      ? { model: await switchModel(message.name, message.source) }
      : await predict(message);
    self.postMessage({ type: "result", id: message.id, ...answer });
  } catch (err) {
    self.postMessage({ type: "result", id: message.id, error: err?.message || String(err) });
  }
};
