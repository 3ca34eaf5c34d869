// The page's pens, and how a colour on the canvas turns into ink for the model.
//
// Two pens draw on the 280x280 canvas (units: canvas pixels; colours: "#rrggbb" strings):
//   * the normal pen: PEN_WIDTH (20 px) wide, round caps and joints, black (full ink);
//   * the adverse pen (the page's "challenge" toggle, as in the capsule-net challenge app): its
//     width and colour change along the stroke. The width wanders smoothly between
//     ADVERSE_MIN_WIDTH and ADVERSE_MAX_WIDTH (a new random target every WIDTH_KNOT_PX of
//     stroke, smoothstep in between); the colour jumps to another entry of ADVERSE_PALETTE every
//     COLOUR_RUN_PX of stroke. Dark colours give strong ink, light and cold ones (light blue,
//     pale cyan) faint ink, as they would on a grey-scale scan.
//
// The adverse pen is a pure function of (seed, distance drawn so far), so a seed reproduces a
// drawing exactly, whatever the pointer's event rate: adverseAt(seed, distance). Its random
// numbers come from an integer hash (uniform), not Math.random, so that trainer/synthetic/redraw.py can
// compute the same pen in Python (its twin; tests/test_redraw.py checks the constants and the
// values against this file with Node).
//
// Colour -> ink (inkOf, used by web/preprocess.js's inkFromImageData): the canvas pixel
// composited over the page's white paper, then ink = 255 - luma, luma with ITU-R BT.601
// weights (LUMA_WEIGHTS) on the sRGB values. MNIST came from scans of dark ink on white paper;
// a grey-scale scan of coloured ink records its lightness, which luma approximates. BT.601
// (not BT.709's 0.2126/0.7152/0.0722) because it is what Python's side already uses for colour
// images (mnist_common/preprocess.py, Pillow's convert("L"), torchvision's rgb_to_grayscale), so a
// screenshot of the canvas given to `invoke predict` gets the ink the page gives the model.
// Composited over white: ink = alpha * (255 - luma(r, g, b)) / 255, so black gives ink = alpha
// exactly (what the page read before colours counted), and an opaque light blue (#4fc3f7)
// gives 89 of 255.
//
// Pure module: no DOM access except through the 2-D context handed to a pen's methods.

/** Pen width of the normal pen, in canvas pixels: ~2 px strokes once scaled to MNIST's 20x20 box. */
export const PEN_WIDTH = 20;
/** Colour of the normal pen: black, full ink. */
export const PEN_COLOUR = "#000000";
/** ITU-R BT.601 luma weights of R, G, B (sum 1): grey = 0.299 R + 0.587 G + 0.114 B. */
export const LUMA_WEIGHTS = [0.299, 0.587, 0.114];
/** Narrowest and widest adverse pen, in canvas pixels (the normal pen is 20). */
export const ADVERSE_MIN_WIDTH = 8;
export const ADVERSE_MAX_WIDTH = 32;
/** Stroke length between two random widths of the adverse pen, in canvas pixels. */
export const WIDTH_KNOT_PX = 24;
/** Stroke length drawn in one colour by the adverse pen, in canvas pixels. */
export const COLOUR_RUN_PX = 40;
/** The adverse pen draws a pointer move in pieces of at most this many canvas pixels, each with
 *  its own width and colour, so the pen changes along a fast move too. */
export const PIECE_PX = 4;
/** The adverse pen's colours, dark to light; ink (255 - BT.601 luma) in the comments. */
export const ADVERSE_PALETTE = [
  "#000000", // black        255
  "#1a237e", // navy         212
  "#b71c1c", // dark red     181
  "#2e7d32", // green        162
  "#e91e63", // pink         156
  "#00bcd4", // cyan         121
  "#ff9800", // orange        90
  "#4fc3f7", // light blue    89
  "#80deea", // pale cyan     60
  "#b3e5fc", // ice blue      38
];
/** Hash streams of the adverse pen's random numbers (one per quantity it draws). */
export const WIDTH_STREAM = 1;
export const COLOUR_STREAM = 2;

/**
 * A 32-bit integer hash (Chris Wellons' "lowbias32"): well mixed, and the same in Python
 * (trainer/synthetic/redraw.py's hash32) because it uses only 32-bit multiplications, shifts and xors.
 * @param {number} x  an integer; taken modulo 2^32
 * @returns {number}  an integer in 0 .. 2^32 - 1
 */
export function hash32(x) {
  x = x >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/**
 * The k-th random number of a stream of a seed, in [0, 1): random access, no generator state.
 * @param {number} seed  integer 0 .. 2^32 - 1
 * @param {number} stream  integer >= 0 (WIDTH_STREAM, COLOUR_STREAM)
 * @param {number} k  integer >= 0
 * @returns {number}  a multiple of 2^-32 in [0, 1)
 */
export function uniform(seed, stream, k) {
  return hash32(hash32(hash32(seed) + stream) + k) / 4294967296;
}

/**
 * Check a pen seed.
 * @param {number} seed
 * @returns {number} the seed
 * @throws {RangeError} unless it is an integer in 0 .. 2^32 - 1
 */
function checkSeed(seed) {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new RangeError(`pen seed must be an integer in 0..2^32-1, got ${seed}`);
  }
  return seed;
}

/**
 * Width of the adverse pen after `distance` canvas pixels of stroke: knot k (at k *
 * WIDTH_KNOT_PX) has a uniform random width in [ADVERSE_MIN_WIDTH, ADVERSE_MAX_WIDTH), and
 * between two knots the width follows a smoothstep from one to the next.
 * @param {number} seed  integer 0 .. 2^32 - 1
 * @param {number} distance  canvas pixels drawn so far, >= 0
 * @returns {number}  pen diameter in canvas pixels, in [ADVERSE_MIN_WIDTH, ADVERSE_MAX_WIDTH]
 */
export function adverseWidth(seed, distance) {
  const position = distance / WIDTH_KNOT_PX;
  const k = Math.floor(position);
  const t = position - k;
  const s = t * t * (3 - 2 * t);
  const span = ADVERSE_MAX_WIDTH - ADVERSE_MIN_WIDTH;
  const a = ADVERSE_MIN_WIDTH + span * uniform(seed, WIDTH_STREAM, k);
  const b = ADVERSE_MIN_WIDTH + span * uniform(seed, WIDTH_STREAM, k + 1);
  return a + (b - a) * s;
}

/**
 * Palette index of the adverse pen's colour run `run` (the stroke from run * COLOUR_RUN_PX to
 * (run + 1) * COLOUR_RUN_PX): run 0 picks any colour, each later run another colour than the
 * run before (a jump of 1 .. n-1 places, wrapping round).
 * @param {number} seed  integer 0 .. 2^32 - 1
 * @param {number} run  integer >= 0
 * @returns {number}  index into ADVERSE_PALETTE
 */
export function adverseColourIndex(seed, run) {
  const n = ADVERSE_PALETTE.length;
  let index = Math.floor(uniform(seed, COLOUR_STREAM, 0) * n);
  for (let r = 1; r <= run; r++) {
    index = (index + 1 + Math.floor(uniform(seed, COLOUR_STREAM, r) * (n - 1))) % n;
  }
  return index;
}

/**
 * The adverse pen after `distance` canvas pixels of stroke.
 * @param {number} seed  integer 0 .. 2^32 - 1
 * @param {number} distance  canvas pixels drawn so far (finite, >= 0)
 * @returns {{width: number, colour: string}}  diameter in canvas pixels, "#rrggbb"
 * @throws {RangeError} a bad seed or distance
 */
export function adverseAt(seed, distance) {
  checkSeed(seed);
  if (!(Number.isFinite(distance) && distance >= 0)) {
    throw new RangeError(`pen distance must be a finite number >= 0, got ${distance}`);
  }
  return {
    width: adverseWidth(seed, distance),
    colour: ADVERSE_PALETTE[adverseColourIndex(seed, Math.floor(distance / COLOUR_RUN_PX))],
  };
}

/**
 * "#rrggbb" -> [r, g, b].
 * @param {string} hex
 * @returns {number[]} three integers 0..255
 * @throws {Error} anything but "#" and six hex digits
 */
export function parseColour(hex) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex);
  if (!m) throw new Error(`expected a colour "#rrggbb", got ${JSON.stringify(hex)}`);
  return [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
}

/**
 * BT.601 luma of an sRGB colour: 0.299 r + 0.587 g + 0.114 b, in that order of additions
 * (mnist_common/preprocess.py computes it the same way, so both give the same bits).
 * @param {number} r @param {number} g @param {number} b  0..255
 * @returns {number} 0..255 (not rounded)
 */
export function luma(r, g, b) {
  return LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b;
}

/**
 * Ink of a canvas pixel: the pixel composited over white paper, then 255 - luma. Since
 * compositing is linear, this is alpha * (255 - luma(r, g, b)) / 255.
 * @param {number} r @param {number} g @param {number} b  0..255 (not premultiplied, as in ImageData)
 * @param {number} [a=255]  alpha 0..255 (0: transparent, no ink)
 * @returns {number} ink 0..255 (255 = black, 0 = paper), not rounded; exactly `a` for black
 */
export function inkOf(r, g, b, a = 255) {
  return (a * (255 - luma(r, g, b))) / 255;
}

/**
 * Ink of an opaque "#rrggbb" colour on white paper.
 * @param {string} hex
 * @returns {number} 0..255, not rounded
 */
export function inkOfColour(hex) {
  const [r, g, b] = parseColour(hex);
  return inkOf(r, g, b);
}

/**
 * A pen that draws on a 2-D canvas context, keeping count of the distance it has drawn.
 *
 * pointerdown -> pen.down(ctx, point): a dot of the pen's diameter;
 * pointermove -> pen.move(ctx, from, to): the segment, with round caps (the normal pen in one
 *   piece; the adverse pen in pieces of at most PIECE_PX, each with the width and colour at
 *   the distance drawn when it starts);
 * Clear -> pen.reset(): the distance starts again at 0 (the same seed redraws the same pen).
 * Points are [x, y] in canvas pixels.
 *
 * @param {{adverse?: boolean, seed?: number}} [options]  adverse: the challenge pen (default
 *   false); seed: its seed, integer 0 .. 2^32 - 1 (default 0; ignored by the normal pen)
 * @returns {{adverse: boolean, seed: number, readonly distance: number, state(): {width: number,
 *   colour: string}, down(ctx, point): void, move(ctx, from, to): void, reset(): void}}
 * @throws {RangeError} a bad seed
 */
export function createPen({ adverse = false, seed = 0 } = {}) {
  checkSeed(seed);
  let distance = 0;
  const state = () => (adverse ? adverseAt(seed, distance) : { width: PEN_WIDTH, colour: PEN_COLOUR });
  return {
    adverse,
    seed,
    get distance() { return distance; },
    state,
    down(ctx, [x, y]) {
      const { width, colour } = state();
      ctx.fillStyle = colour;
      ctx.beginPath();
      ctx.arc(x, y, width / 2, 0, Math.PI * 2);
      ctx.fill();
    },
    move(ctx, [x0, y0], [x1, y1]) {
      const length = Math.hypot(x1 - x0, y1 - y0);
      const pieces = adverse ? Math.max(1, Math.ceil(length / PIECE_PX)) : 1;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      for (let i = 0; i < pieces; i++) {
        const { width, colour } = state();
        ctx.lineWidth = width;
        ctx.strokeStyle = colour;
        ctx.beginPath();
        ctx.moveTo(x0 + ((x1 - x0) * i) / pieces, y0 + ((y1 - y0) * i) / pieces);
        ctx.lineTo(x0 + ((x1 - x0) * (i + 1)) / pieces, y0 + ((y1 - y0) * (i + 1)) / pieces);
        ctx.stroke();
        distance += length / pieces;
      }
    },
    reset() { distance = 0; },
  };
}
