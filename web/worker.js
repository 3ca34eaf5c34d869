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
//               { type: "teach", id, pixels, labels }         every taught example: pixels Float32Array(N * 784),
//                                                             labels Uint32Array(N) (N = 0: forget); the model
//                                                             in use re-fits its last layer to them, and every
//                                                             model switched to later is taught them too
//               { type: "reconstruct", id, pixels }           what a model with a decoder (the capsnet) sees
//                                                             in pixels (Float32Array(784), as predict)
//               { type: "channel", id, buffer }               from now on, predictions come through this
//                                                             SharedArrayBuffer (web/channel.js), messages
//                                                             after a MAIL signal; refused by the WebGPU build
// Messages out: { type: "loaded", backend, model }            the classifier is ready (model: its description)
//               { type: "load-failed", message }              this backend cannot run here (why)
//               { type: "result", id, model }                 switched; model: { name, architecture, unsureThreshold,
//                                                             notADigitThreshold, reconstructs, taught }
//                                                             (reconstructs: it has a decoder; taught: examples per
//                                                             digit it learnt; thresholds: null when the file
//                                                             has none)
//               { type: "result", id, taught }                taught: examples per digit 0-9
//               { type: "result", id, channel: true }         the shared channel is in use
//               { type: "result", id, digit, pixels }         the reconstruction: the predicted digit and
//                                                             Float32Array(784), 0..255, ink = 255
//               { type: "result", id, probs, ms, notADigit, uncertainty }
//                                                             probs: Float32Array(10); ms: predict time;
//                                                             notADigit: the wasm's notADigit(probs), true/false,
//                                                             null without the model's threshold; uncertainty:
//                                                             MC-dropout summary (with its notADigit and the
//                                                             combined unsure) or null
//               { type: "result", id, error }                 refused (bad input, a file that does not load):
//                                                             the worker keeps the model it had
//
// The build is loaded by web/classifier.js; CPU builds answer at once, the WebGPU build with a
// Promise, and both are awaited. The page spawns this worker before it has chosen a build and
// posts "load" when it has: a message sent earlier waits until this module has run. Messages
// are handled one at a time, in order: a WebGPU call awaits, and the next must not start
// meanwhile on the same classifier.

import { loadClassifier } from "./classifier.js";
import {
  DONE,
  IDLE,
  MAIL,
  REQUEST,
  SAMPLES,
  STATE,
  STATUS,
  VERDICT,
  channelViews,
  verdictCode,
  writeText,
} from "./channel.js";

/** The MC-dropout seed: fixed, so the same drawing always gets the same answer. */
const MC_SEED = 0;

let Classifier = null; // the build's class, for Classifier.fromBytes
let classifier = null; // the model in use
let current = null; // its description
const loaded = new Map(); // name -> { classifier, model, version: of the examples it was taught }
// What the page taught (all of it); version counts the changes.
let examples = { pixels: new Float32Array(0), labels: new Uint32Array(0), version: 0 };

function describe(name, instance) {
  return {
    name,
    architecture: instance.architecture,
    unsureThreshold: instance.unsureThreshold ?? null,
    notADigitThreshold: instance.notADigitThreshold ?? null,
    reconstructs: Boolean(instance.reconstructs),
    taught: Array.from(instance.taught),
  };
}

/** Teach the model in use the current examples, unless it has them already. */
async function teachCurrent() {
  const entry = loaded.get(current.name);
  if (entry.version !== examples.version) {
    await entry.classifier.teach(examples.pixels, examples.labels); // throws: unchanged
    entry.version = examples.version;
    entry.model = current = describe(current.name, entry.classifier);
  }
  return current.taught;
}

async function teach({ pixels, labels }) {
  const before = examples;
  examples = { pixels, labels, version: before.version + 1 };
  try {
    return { taught: await teachCurrent() };
  } catch (err) {
    examples = before;
    throw err;
  }
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
    loaded.set(name, { classifier: instance, model: describe(name, instance), version: 0 });
  }
  ({ classifier, model: current } = loaded.get(name));
  await teachCurrent().catch(() => {}); // a model that cannot be taught runs as trained (taught: zeros)
  return current;
}

/** The model's "not a digit" rule on one image's probabilities: true, false, or null without one. */
function notADigit(probs) {
  return classifier.notADigit(probs) ?? null;
}

async function predict({ pixels, samples }) {
  const t0 = performance.now();
  const probs = await classifier.predict(pixels);
  const ms = performance.now() - t0;
  const uncertainty = samples > 0 ? JSON.parse(await classifier.uncertainty(pixels, samples, MC_SEED)) : null;
  return { probs, ms, notADigit: notADigit(probs), uncertainty };
}

/**
 * What the model sees: the digit it predicts and its decoder's image of it, from one forward
 * pass (web/app.js draws it).
 */
async function reconstruct({ pixels }) {
  if (!current.reconstructs) throw new Error(`the model "${current.name}" has no reconstruction decoder`);
  const seen = await classifier.reconstruct(pixels);
  try {
    return { digit: seen.digit, pixels: seen.pixels };
  } finally {
    seen.free(); // the wasm-side copy, now rather than at garbage collection
  }
}

let shared = null; // the views of the shared channel, once the page opened one

function openChannel({ buffer }) {
  // A blocking wait cannot await a Promise: the WebGPU build's predictions stay messages.
  if (typeof Classifier.create === "function") throw new Error("the WebGPU build answers through messages");
  shared = channelViews(buffer);
  return { channel: true };
}

/** The shared channel's request: predict (and MC dropout) on its pixels, the answer in its place. */
function answerShared() {
  const { control } = shared;
  try {
    const pixels = shared.pixels.slice(); // a private copy: the page may write the next one
    const samples = control[SAMPLES];
    const t0 = performance.now();
    const probs = classifier.predict(pixels);
    shared.ms[0] = performance.now() - t0;
    shared.probs.set(probs);
    control[VERDICT] = verdictCode(notADigit(probs));
    writeText(shared, samples > 0 ? classifier.uncertainty(pixels, samples, MC_SEED) : "");
    control[STATUS] = 0;
  } catch (err) {
    writeText(shared, err?.message || String(err));
    control[STATUS] = 1;
  }
}

/**
 * How long (ms) the worker keeps watching the channel after an answer before it blocks in
 * Atomics.wait. A page that predicts in a loop writes its next request some tens of µs after the
 * answer; polling catches it at once, where a wake-up from Atomics.wait takes its own tens of µs.
 * A page that predicts now and then (the live prediction, once a frame) costs the worker this
 * much CPU per prediction and no waiting. Measured: docs/benchmarks.md, "In the browser".
 */
const POLL_MS = 0.1;

/** Spin while the channel's state is `state`, for POLL_MS at most. */
function pollWhile(control, state) {
  const until = performance.now() + POLL_MS;
  while (Atomics.load(control, STATE) === state && performance.now() < until) {
    Atomics.pause?.(); // a hint to the core that this is a spin loop (where the browser has it)
  }
}

/**
 * Answer the shared channel's requests, blocked in Atomics.wait between them (after POLL_MS of
 * watching), until the page signals MAIL: then return, so the message that follows is read from
 * the event loop.
 */
function serveShared() {
  const { control } = shared;
  for (;;) {
    const state = Atomics.load(control, STATE);
    if (state === REQUEST) {
      answerShared();
      Atomics.store(control, STATE, DONE);
      Atomics.notify(control, STATE);
      pollWhile(control, DONE);
    } else if (state === MAIL) {
      return;
    } else {
      Atomics.wait(control, STATE, state); // IDLE or DONE: until the page changes it
    }
  }
}

/** Post an answer; with a shared channel, mark it IDLE first (the page may write as soon as it reads this). */
function answer(reply) {
  if (shared) Atomics.store(shared.control, STATE, IDLE);
  self.postMessage(reply);
}

const ANSWERS = {
  model: (m) => switchModel(m.name, m.source).then((model) => ({ model })),
  predict,
  teach,
  reconstruct,
  channel: openChannel,
};

let queue = Promise.resolve(); // the message being handled
self.onmessage = ({ data: message }) => {
  const handle = () => handleMessage(message).then(() => shared && serveShared());
  queue = queue.then(handle, handle);
};

async function handleMessage(message) {
  if (message.type === "load") {
    try {
      ({ classifier, Classifier } = await loadClassifier(message.backend));
      current = describe(message.name ?? "embedded", classifier);
      loaded.set(current.name, { classifier, model: current, version: 0 });
      self.postMessage({ type: "loaded", backend: classifier.backend, model: current });
    } catch (err) {
      self.postMessage({ type: "load-failed", message: err?.message || String(err) });
    }
    return;
  }
  try {
    const result = await ANSWERS[message.type](message);
    answer({ type: "result", id: message.id, ...result });
  } catch (err) {
    answer({ type: "result", id: message.id, error: err?.message || String(err) });
  }
}
