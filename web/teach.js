// "Teach it your hand": the examples the user has taught, kept in this browser (web/local.js)
// and given to the model in the worker, which adapts to them: virtual examples of each, then a
// local correction of the trained model's logits near them (wasm-infer/mnist-model/src/adapt.rs).
// The examples, not the fitted correction, are what is kept:
// every model the picker loads is taught the same examples, and a reload re-teaches them.

import { MNIST_SIZE } from "./preprocess.js";

const INPUT_LEN = MNIST_SIZE * MNIST_SIZE;
const NUM_CLASSES = 10;

/**
 * Check one example as `window.mnist.teach` takes it.
 * @param {ArrayLike<number>} pixels 784 numbers, 28x28 row-major, 0..255, ink = 255
 * @param {number} label the digit it is, an integer 0-9
 * @returns {Float32Array} the pixels
 * @throws {RangeError} for a label that is not a digit, pixels of another length or range
 * @throws {Error} for a blank image
 */
export function checkExample(pixels, label) {
  if (!Number.isInteger(label) || label < 0 || label >= NUM_CLASSES) {
    throw new RangeError(`teach: the label must be a digit 0-9, got ${JSON.stringify(label)}`);
  }
  if (pixels === null || pixels === undefined || pixels.length !== INPUT_LEN) {
    throw new RangeError(`teach: expected ${INPUT_LEN} pixels (28x28, row-major, 0..255, ink = 255)`);
  }
  const image = Float32Array.from(pixels);
  if (image.some((v) => !(v >= 0 && v <= 255))) {
    throw new RangeError("teach: pixels must be numbers in 0..255 (ink = 255)");
  }
  if (image.every((v) => v === 0)) throw new Error("teach: the image is blank: draw the digit first");
  return image;
}

/** The taught examples: in the worker's model, and in IndexedDB when the browser has it. */
export class Teacher {
  /**
   * @param {import("./inference.js").InferenceWorker} classifier
   * @param {import("./local.js").LocalStore | null} store null: keep the examples in memory only
   */
  constructor(classifier, store) {
    this.classifier = classifier;
    this.store = store;
    this.examples = []; // { pixels: Float32Array(784), label }
  }

  /** @returns {number[]} examples per digit 0-9 */
  get taught() {
    const counts = new Array(NUM_CLASSES).fill(0);
    for (const { label } of this.examples) counts[label] += 1;
    return counts;
  }

  /**
   * Teach the model what this browser was taught before (after a reload).
   * @param {Promise<Array<{pixels: Float32Array, label: number}>>} [kept] the store's "taught"
   *   records when the caller started reading them earlier (web/app.js: while the model loads)
   */
  async restore(kept = this.store?.all("taught")) {
    if (!this.store) return;
    const examples = await kept;
    if (examples.length === 0) return;
    await this.send(examples);
    this.examples = examples;
  }

  /**
   * Add one example and re-fit. Rejects with the model's reason (nothing changes then).
   * @param {ArrayLike<number>} pixels
   * @param {number} label
   */
  async add(pixels, label) {
    const example = { pixels: checkExample(pixels, label), label };
    const examples = [...this.examples, example];
    await this.send(examples);
    this.examples = examples;
    await this.store?.add("taught", example);
  }

  /** Back to the trained model; the kept examples are deleted. */
  async forget() {
    await this.send([]);
    this.examples = [];
    await this.store?.clear("taught");
  }

  /** The worker's model re-fitted to `examples` (all of them, replacing what it had). */
  async send(examples) {
    const pixels = new Float32Array(examples.length * INPUT_LEN);
    examples.forEach((e, i) => pixels.set(e.pixels, i * INPUT_LEN));
    await this.classifier.teach(pixels, Uint32Array.from(examples, (e) => e.label));
  }
}
