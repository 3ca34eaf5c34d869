// Turn a drawing into what the model was trained on: an MNIST-style 28x28 image.
//
// MNIST digits were made this way (LeCun et al.): the writer's digit was size-normalised to
// fit a 20x20 box keeping its aspect ratio, then centred in a 28x28 image by its centre of
// mass. We do the same with the drawing:
//   1. crop to the bounding box of the ink,
//   2. scale so that the longer side is 20 px, by area averaging (each output pixel is the
//      mean ink of the source area it covers),
//   3. paste into 28x28 so that the ink's centre of mass lands on the centre (14, 14).
//
// Pure functions on arrays (no DOM), so they can be tested and ported as they are.
// Values: ink in 0..255 (255 = full ink, 0 = background), row-major.

import { inkOf } from "./pen.js";

/** Side of the model's input image, in pixels. */
export const MNIST_SIZE = 28;
/** Side of the box the digit is scaled into before centring (MNIST's 20x20). */
export const DIGIT_BOX = 20;

/**
 * Bounding box of the pixels with ink > 0.
 * @param {ArrayLike<number>} ink  width*height values, row-major
 * @returns {{x0:number,y0:number,x1:number,y1:number}|null}  inclusive-exclusive box, null if blank
 */
export function inkBounds(ink, width, height) {
  let x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (ink[y * width + x] > 0) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return x1 < 0 ? null : { x0, y0, x1: x1 + 1, y1: y1 + 1 };
}

/**
 * Weights of 1-D area resampling from `nIn` source pixels to `nOut` output pixels where each
 * output pixel spans `step` source pixels: output i covers source [i*step, (i+1)*step).
 * @returns {Array<Array<[number, number]>>}  per output pixel, [source index, weight] pairs
 */
function areaWeights(nIn, nOut, step) {
  const weights = [];
  for (let i = 0; i < nOut; i++) {
    const start = i * step, end = (i + 1) * step, row = [];
    for (let j = Math.floor(start); j < Math.min(Math.ceil(end), nIn); j++) {
      const overlap = Math.min(end, j + 1) - Math.max(start, j);
      if (overlap > 0) row.push([j, overlap / step]);
    }
    weights.push(row);
  }
  return weights;
}

/**
 * Crop `ink` to `box` and resample it by area averaging to outW x outH.
 * @returns {Float64Array} outW*outH values in 0..255
 */
function cropAndScale(ink, width, box, outW, outH, step) {
  const cropW = box.x1 - box.x0, cropH = box.y1 - box.y0;
  const wx = areaWeights(cropW, outW, step), wy = areaWeights(cropH, outH, step);
  // Rows first: (cropH x outW), then columns: (outH x outW).
  const rows = new Float64Array(cropH * outW);
  for (let y = 0; y < cropH; y++) {
    const base = (box.y0 + y) * width + box.x0;
    for (let x = 0; x < outW; x++) {
      let sum = 0;
      for (const [j, w] of wx[x]) sum += ink[base + j] * w;
      rows[y * outW + x] = sum;
    }
  }
  const out = new Float64Array(outW * outH);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      let sum = 0;
      for (const [j, w] of wy[y]) sum += rows[j * outW + x] * w;
      out[y * outW + x] = sum;
    }
  }
  return out;
}

/**
 * MNIST-style preprocessing of a grey ink image.
 * @param {ArrayLike<number>} ink  width*height values in 0..255, ink = 255, row-major
 * @returns {Float32Array|null}  784 values in 0..255 (28x28, row-major, ink = 255), or null
 *   when there is no ink at all (a blank drawing is not a digit)
 */
export function toMnist(ink, width, height) {
  if (ink.length !== width * height) {
    throw new Error(`toMnist: expected ${width}x${height}=${width * height} values, got ${ink.length}`);
  }
  const box = inkBounds(ink, width, height);
  if (box === null) return null;
  const cropW = box.x1 - box.x0, cropH = box.y1 - box.y0;
  const step = Math.max(cropW, cropH) / DIGIT_BOX; // source pixels per output pixel
  const outW = Math.max(1, Math.round(cropW / step));
  const outH = Math.max(1, Math.round(cropH / step));
  const digit = cropAndScale(ink, width, box, outW, outH, step);

  // Centre of mass, with pixel centres at (x + 0.5, y + 0.5).
  let mass = 0, mx = 0, my = 0;
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const v = digit[y * outW + x];
      mass += v; mx += v * (x + 0.5); my += v * (y + 0.5);
    }
  }
  const dx = Math.round(MNIST_SIZE / 2 - mx / mass);
  const dy = Math.round(MNIST_SIZE / 2 - my / mass);

  const out = new Float32Array(MNIST_SIZE * MNIST_SIZE);
  for (let y = 0; y < outH; y++) {
    const ty = y + dy;
    if (ty < 0 || ty >= MNIST_SIZE) continue;
    for (let x = 0; x < outW; x++) {
      const tx = x + dx;
      if (tx < 0 || tx >= MNIST_SIZE) continue;
      out[ty * MNIST_SIZE + tx] = Math.min(255, Math.max(0, digit[y * outW + x]));
    }
  }
  return out;
}

/**
 * Ink of a canvas drawn on a transparent background, as the page shows it on white paper:
 * each pixel composited over white, then 255 - its BT.601 luma (web/pen.js's inkOf:
 * alpha * (255 - luma(r, g, b)) / 255), rounded. Black strokes give their alpha exactly (full
 * ink inside, the coverage at anti-aliased edges); lighter colours give fainter ink (opaque
 * light blue #4fc3f7: 89), as a grey-scale scan of coloured ink on paper would.
 * mnist_common/preprocess.py's ink_from_rgba is its twin (tests/test_preprocess.py compares them).
 * @param {ImageData} image  RGBA, not premultiplied, 0..255 per channel
 * @returns {Uint8ClampedArray} width*height values in 0..255, ink = 255, row-major (rounded to
 *   the nearest integer, ties to even)
 */
export function inkFromImageData(image) {
  const { data, width, height } = image;
  const ink = new Uint8ClampedArray(width * height);
  for (let i = 0; i < width * height; i++) {
    const a = data[i * 4 + 3];
    if (a !== 0) ink[i] = inkOf(data[i * 4], data[i * 4 + 1], data[i * 4 + 2], a);
  }
  return ink;
}
