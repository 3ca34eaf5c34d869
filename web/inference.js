// The main thread's side of web/worker.js: start a classifier in a module worker, falling back
// from one backend to the next, and classify without blocking drawing. Predictions go through
// shared memory where the page is cross-origin isolated (web/channel.js), messages elsewhere.

import { backendProblem } from "./classifier.js";
import {
  MAIL,
  NUM_PIXELS,
  REQUEST,
  SAMPLES,
  STATE,
  STATUS,
  VERDICT,
  channelViews,
  newChannelBuffer,
  readText,
  sharedMemoryProblem,
  verdictFlag,
} from "./channel.js";

/**
 * A module worker running web/worker.js (bundled with its imports: worker.bundle.js, see
 * index.html): the one index.html started before the page's script was fetched
 * (`self.earlyWorker`, the first call only, unless it failed to start), else a new one. A
 * worker's start (a new JS engine instance, then its script) takes tens of ms, so the page
 * takes one first thing and decides meanwhile what to load in it.
 * @returns {Worker}
 */
export function spawnWorker() {
  const early = self.earlyWorker; // started by index.html, taken once
  self.earlyWorker = undefined;
  if (early && !early.failed) return early;
  early?.terminate();
  return new Worker(new URL("./worker.bundle.js", import.meta.url), { type: "module" });
}

/**
 * The worker itself did not run (its script failed to load or threw), as opposed to a build
 * it loaded that refused to start: not a reason to give up on the backend.
 */
export class WorkerStartError extends Error {}

/** A classifier running in its own module worker (web/worker.js). Use `InferenceWorker.start`. */
export class InferenceWorker {
  constructor(worker, backend, model) {
    this.worker = worker;
    this.backend = backend; // what the build reports: "fast-relaxed", "fast-simd128", "flex", ...
    this.model = model; // the model in use: { name, architecture, unsureThreshold, notADigitThreshold, reconstructs, taught }
    this.nextId = 0;
    this.pending = new Map(); // id -> { resolve, reject }
    this.shared = null; // the channel's views once the worker uses it (openChannel)
    this.handoff = "messages"; // how predictions reach the worker, and why when not shared memory
    this.tail = Promise.resolve(); // with the channel: the request before the next, one at a time
    // Rejects when the worker stops: a prediction awaiting the channel must not wait forever.
    this.stopped = new Promise((_, reject) => {
      this.stop = reject;
    });
    this.stopped.catch(() => {});
    worker.onmessage = ({ data }) => {
      const waiting = this.pending.get(data.id);
      if (data.type !== "result" || !waiting) return;
      this.pending.delete(data.id);
      const { type, id, error, ...answer } = data;
      if (error) waiting.reject(new Error(error));
      else waiting.resolve(answer);
    };
    // A crash inside the worker (e.g. a wasm panic in a GPU callback) must not leave callers
    // waiting forever: reject everything pending, and later calls at once.
    worker.onerror = (event) => {
      this.failure = new Error(`the inference worker stopped: ${event.message || "unknown error"}`);
      for (const { reject } of this.pending.values()) reject(this.failure);
      this.pending.clear();
      this.stop(this.failure);
    };
  }

  /**
   * Hand predictions to the worker through shared memory from now on, where this page can
   * (cross-origin isolated, Atomics.waitAsync) and the build can (not WebGPU); otherwise keep
   * to messages. `handoff` says which, and why not.
   * @returns {Promise<void>} never rejects
   */
  async openChannel() {
    const problem = sharedMemoryProblem();
    if (problem) {
      this.handoff = `messages (${problem})`;
      return;
    }
    const buffer = newChannelBuffer();
    try {
      await this.post({ type: "channel", buffer });
      this.shared = channelViews(buffer);
      this.handoff = "shared memory";
    } catch (err) {
      this.handoff = `messages (${err.message})`;
    }
  }

  /**
   * Load `backend` in `worker` (a new one by default). The load message may be posted before
   * the worker's scripts have run: it waits in the worker's queue.
   * @param {string} backend a folder of pkg/
   * @param {Worker} [worker] from spawnWorker(), not used for anything else yet
   * @param {string} [name] what to call the build's embedded model (default "embedded")
   * @returns {Promise<InferenceWorker>} rejects with the reason when the build cannot run here
   *   (the worker is then terminated).
   */
  static start(backend, worker = spawnWorker(), name = "embedded") {
    return new Promise((resolve, reject) => {
      if (worker.failed) {
        // It failed before anyone listened (index.html's early worker keeps that).
        worker.terminate();
        reject(new WorkerStartError("the inference worker failed to start"));
        return;
      }
      worker.onerror = (event) => {
        worker.terminate();
        reject(new WorkerStartError(event.message || "the inference worker failed to start"));
      };
      worker.onmessage = ({ data }) => {
        if (data.type === "loaded") {
          const classifier = new InferenceWorker(worker, data.backend, data.model); // replaces these handlers
          classifier.openChannel().then(() => resolve(classifier));
        } else if (data.type === "load-failed") {
          worker.terminate();
          reject(new Error(data.message));
        }
      };
      worker.postMessage({ type: "load", backend, name });
    });
  }

  /** Post `message` with a fresh id; resolves with the worker's answer (see web/worker.js). */
  post(message) {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id });
    });
  }

  /**
   * `post`, once the requests before it are answered when the channel is in use: the worker
   * then waits blocked on the channel, so it is signalled (MAIL) to read its messages first.
   */
  request(message) {
    if (!this.shared) return this.post(message);
    return this.inTurn(() => {
      Atomics.store(this.shared.control, STATE, MAIL);
      Atomics.notify(this.shared.control, STATE);
      return this.post(message);
    });
  }

  /** Run `task()` after every request made before it has been answered; its result. */
  inTurn(task) {
    const result = this.tail.then(() => {
      if (this.failure) throw this.failure;
      return task();
    });
    this.tail = result.catch(() => {});
    return result;
  }

  /** One prediction through the channel (see web/channel.js); the same answer as a message's. */
  async predictShared(pixels, samples) {
    const { control } = this.shared;
    this.shared.pixels.set(pixels);
    control[SAMPLES] = samples;
    Atomics.store(control, STATE, REQUEST);
    Atomics.notify(control, STATE);
    // Until the worker has changed the state: a wake-up alone does not say it has (a notify
    // wakes every waiter on the address, whatever the value).
    while (Atomics.load(control, STATE) === REQUEST) {
      const wait = Atomics.waitAsync(control, STATE, REQUEST);
      if (wait.async) await Promise.race([wait.value, this.stopped]);
    }
    const text = readText(this.shared);
    if (control[STATUS] !== 0) throw new Error(text);
    return {
      probs: this.shared.probs.slice(),
      ms: this.shared.ms[0],
      notADigit: verdictFlag(control[VERDICT]),
      uncertainty: samples > 0 ? JSON.parse(text) : null,
    };
  }

  /**
   * Classify one image in the worker.
   * @param {Float32Array} pixels 784 values, 28x28 row-major, 0..255, ink = 255
   * @param {number} [samples] > 0: also MC dropout with that many passes (1..1000)
   * @returns {Promise<{probs: Float32Array, ms: number, notADigit: boolean | null,
   *   uncertainty: object | null}>} 10 probabilities, the predict time, whether the image is
   *   "not a digit" (the model's rule on these probabilities; null when its weights have no
   *   threshold), and the MC-dropout summary (`probabilities`, `std`, `entropy`,
   *   `mutualInformation`, `samples`, `notADigit`, `unsure`: either rule) when asked; rejects
   *   with the model's message for a refused input.
   */
  predict(pixels, samples = 0) {
    // An image of the wrong size goes as a message: the model refuses it with its reason.
    if (!this.shared || pixels.length !== NUM_PIXELS) return this.request({ type: "predict", pixels, samples });
    return this.inTurn(() => this.predictShared(pixels, samples));
  }

  /**
   * Teach the model in the worker (and every model switched to later) these examples,
   * replacing what it was taught: its last layer is re-fitted to them.
   * @param {Float32Array} pixels N * 784 values, as `predict`
   * @param {Uint32Array} labels N digits 0-9 (N = 0: back to the trained model)
   * @returns {Promise<number[]>} examples per digit 0-9; rejects with the model's reason (a blank
   *   image, a bad label), and the worker keeps what it was taught before.
   */
  async teach(pixels, labels) {
    const { taught } = await this.request({ type: "teach", pixels, labels });
    this.model = { ...this.model, taught };
    return taught;
  }

  /**
   * What the model sees: a capsule network's reconstruction of the digit it reads in `pixels`.
   * @param {Float32Array} pixels 784 values, as `predict`
   * @returns {Promise<{digit: number, pixels: Float32Array}>} the predicted digit and the
   *   decoder's image of it (784 values, 0..255, ink = 255, row-major); rejects for a model
   *   without a decoder (`model.reconstructs` false) or a refused input, with the reason.
   */
  reconstruct(pixels) {
    return this.request({ type: "reconstruct", pixels });
  }

  /**
   * Switch to model `name`, loading it from `source` (a URL or the bytes of a .safetensors
   * file; null: the embedded one) the first time.
   * @returns {Promise<{name: string, architecture: string, unsureThreshold: number | null,
   *   notADigitThreshold: number | null, taught: number[]}>}
   *   rejects with the reason (not found, not a model, a model this build cannot run), and the
   *   worker keeps the model it had.
   */
  async loadModel(name, source) {
    const { model } = await this.request({ type: "model", name, source });
    this.model = model;
    return model;
  }
}

/**
 * Start the first backend of `candidates` that runs here. A backend the browser cannot run
 * (no relaxed SIMD, no WebGPU adapter) is skipped with its reason before any worker loads it.
 * @param {string[]} candidates backends in order of preference, e.g. ["fast-relaxed", "fast-simd128"]
 * @param {Worker} [worker] a fresh worker from spawnWorker() for the first backend started
 *   (terminated if none starts in it; if it fails to run at all, that backend is tried once
 *   more in a new worker); later ones get a new worker each, so a failed start leaves nothing
 *   behind
 * @param {string} [name] what to call the builds' embedded model (default "embedded")
 * @returns {Promise<{classifier: InferenceWorker, label: string, failures: string[]}>} label is
 *   the backend, with the reason in brackets when an earlier choice failed, e.g.
 *   "fast-simd128 (no relaxed SIMD in this browser)"; failures lists "backend: reason" for each
 *   one skipped. Rejects when none of them runs.
 */
export async function startFirstWorking(candidates, worker = undefined, name = "embedded") {
  const failures = [];
  let spare = worker; // used by the first start, whatever its outcome
  for (const backend of candidates) {
    try {
      const problem = await backendProblem(backend);
      if (problem) throw new Error(problem);
      const thisWorker = spare ?? spawnWorker();
      const given = spare !== undefined;
      spare = undefined;
      const classifier = await InferenceWorker.start(backend, thisWorker, name).catch((err) => {
        // A given worker (index.html's early one) may fail to start after it was handed over,
        // where failed was not yet set: this backend then gets one new worker before it is
        // given up.
        if (given && err instanceof WorkerStartError) return InferenceWorker.start(backend, spawnWorker(), name);
        throw err;
      });
      const reasons = failures.map((f) => f.slice(f.indexOf(": ") + 2));
      const label = reasons.length ? `${classifier.backend} (${reasons.join("; ")})` : classifier.backend;
      return { classifier, label, failures };
    } catch (err) {
      failures.push(`${backend}: ${err.message}`);
    }
  }
  spare?.terminate();
  throw new Error(failures.join("; "));
}

/**
 * Classify the newest drawing only. While a prediction runs, later submissions replace each
 * other; when it finishes, the newest one waiting (if any) goes next. `onResult(result)` gets
 * every completed prediction in order (the result of `classifier.predict(pixels, samples)`),
 * or `onError(err)`.
 */
export class LatestOnly {
  constructor(classifier, onResult, onError) {
    Object.assign(this, { classifier, onResult, onError });
    this.busy = false;
    this.waiting = null;
    this.generation = 0; // bumped by drop(): results of older drawings are not shown
  }

  /** Classify `pixels` when the classifier is free; `samples` > 0 adds MC dropout. */
  submit(pixels, samples = 0) {
    this.waiting = { pixels, samples };
    if (!this.busy) this.next();
  }

  /** Forget the drawings submitted so far (e.g. after Clear): none of them will be shown. */
  drop() {
    this.waiting = null;
    this.generation += 1;
  }

  async next() {
    if (this.waiting === null) return;
    const { pixels, samples } = this.waiting;
    const generation = this.generation;
    this.waiting = null;
    this.busy = true;
    try {
      const result = await this.classifier.predict(pixels, samples);
      if (generation === this.generation) this.onResult(result);
    } catch (err) {
      if (generation === this.generation) this.onError(err);
    } finally {
      this.busy = false;
      this.next();
    }
  }
}
