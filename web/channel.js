// The shared-memory hand-off between the page (web/inference.js) and its inference worker
// (web/worker.js): one SharedArrayBuffer both sides read and write, and Atomics to say whose
// turn it is. A message through postMessage costs two event-loop hops and a copy each way
// (about 0.45 ms a round trip measured in Chromium, as long as the network itself); here the
// worker waits blocked in Atomics.wait and answers in microseconds, and the page awaits
// Atomics.waitAsync. It needs a cross-origin isolated page (`invoke serve` sends COOP/COEP);
// elsewhere the page keeps to messages.
//
// The buffer, in this order:
//   control  Int32Array(5)       [state, samples, status (0: ok, 1: error), text length in bytes,
//                                verdict: "not a digit" 1, a digit 0, no rule -1]; 4 bytes unused
//   ms       Float64Array(1)     the predict time in the worker (at byte 24: 8-byte aligned)
//   pixels   Float32Array(784)   the image, 28x28 row-major, 0..255, ink = 255
//   probs    Float32Array(10)    the answer
//   text     Uint8Array(16384)   UTF-8: the MC-dropout summary (JSON) when samples > 0, or the error
//
// States (control[STATE]):
//   IDLE     nothing asked yet                 the worker waits
//   REQUEST  the page wrote pixels + samples   the worker predicts, writes the answer, sets DONE
//   DONE     the answer is there               the page reads it; the worker polls (POLL_MS), then waits
//   MAIL     a postMessage follows             the worker returns to its event loop to read it,
//                                              sets IDLE just before it answers, then waits again
// Only the page sets REQUEST and MAIL, one request at a time, and only the worker sets DONE and IDLE.

import { MNIST_SIZE } from "./preprocess.js";

export const STATE = 0;
export const SAMPLES = 1;
export const STATUS = 2;
export const LENGTH = 3;
export const VERDICT = 4;

export const IDLE = 0;
export const REQUEST = 1;
export const DONE = 2;
export const MAIL = 3;

/** Pixels per image: MNIST's 28x28. */
export const NUM_PIXELS = MNIST_SIZE * MNIST_SIZE;
/** Digits 0-9 (tests/test_layout.py checks it against mnist_common/constants.py). */
export const NUM_CLASSES = 10;
const TEXT_BYTES = 16384;
const MS_AT = 24; // after control (20 bytes), aligned for the Float64Array
const PIXELS_AT = MS_AT + 8;
const PROBS_AT = PIXELS_AT + 4 * NUM_PIXELS;
const TEXT_AT = PROBS_AT + 4 * NUM_CLASSES;

/**
 * Why this page cannot hand images to its worker through shared memory, or "" when it can.
 * @returns {string}
 */
export function sharedMemoryProblem() {
  // Isolation first: browsers hide SharedArrayBuffer from pages that are not isolated, and the
  // fix is the server's (COOP and COEP headers, as `invoke serve` sends).
  if (!self.crossOriginIsolated) return "the page is not cross-origin isolated";
  if (typeof SharedArrayBuffer !== "function") return "no SharedArrayBuffer";
  if (typeof Atomics.waitAsync !== "function") return "no Atomics.waitAsync in this browser";
  return "";
}

/** A new, zeroed channel buffer (state IDLE). */
export function newChannelBuffer() {
  return new SharedArrayBuffer(TEXT_AT + TEXT_BYTES);
}

/**
 * The typed views of a channel buffer.
 * @param {SharedArrayBuffer} buffer from newChannelBuffer()
 * @returns {{control: Int32Array, ms: Float64Array, pixels: Float32Array, probs: Float32Array, text: Uint8Array}}
 */
export function channelViews(buffer) {
  return {
    control: new Int32Array(buffer, 0, 5),
    ms: new Float64Array(buffer, MS_AT, 1),
    pixels: new Float32Array(buffer, PIXELS_AT, NUM_PIXELS),
    probs: new Float32Array(buffer, PROBS_AT, NUM_CLASSES),
    text: new Uint8Array(buffer, TEXT_AT, TEXT_BYTES),
  };
}

/** Write `text` (UTF-8, cut to the buffer's size at a character boundary) and its length. */
export function writeText(views, text) {
  let bytes = new TextEncoder().encode(text);
  if (bytes.length > views.text.length) bytes = new TextEncoder().encode(text.slice(0, views.text.length / 4));
  views.text.set(bytes);
  views.control[LENGTH] = bytes.length;
}

/**
 * "Not a digit" (true), a digit (false) or no rule (null) as the channel's verdict (control[VERDICT]).
 * @param {boolean | null | undefined} flag
 */
export function verdictCode(flag) {
  return flag === true ? 1 : flag === false ? 0 : -1;
}

/** The flag back from control[VERDICT]: true, false, or null (no rule). */
export function verdictFlag(code) {
  return code === 1 ? true : code === 0 ? false : null;
}

/** The text last written by writeText. */
export function readText(views) {
  // TextDecoder refuses views of shared memory: decode a copy.
  return new TextDecoder().decode(views.text.slice(0, views.control[LENGTH]));
}
