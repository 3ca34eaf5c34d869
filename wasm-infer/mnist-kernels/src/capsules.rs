//! Capsules (Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NeurIPS 2017): the
//! squash non-linearity, the primary capsules' layout, routing by agreement, capsule lengths,
//! the decoder's mask and sigmoid.
//!
//! The matrix products are the GEMM's (`gemm.rs`): the primary capsules' convolution, the
//! predictions `û_j|i = W_ij u_i` (one small product per input capsule `i`, the images as
//! rows) and the decoder's linear layers. What is here is per capsule a few dozen values: plain
//! loops (the compiler vectorises those that do not reduce), `exp` (the one of `gelu.rs`) on
//! the portable 4-lane vocabulary, and a square root of our own (`core` has none). None of it
//! is generic over the instruction set: compiled once, not once per instruction set inlined
//! into each entry point, which keeps the wasm small (in a wasm build, whose every function may
//! use simd128, the compiler maps the 4 lanes and the loops to v128 operations); every
//! instruction set then gets the same routing, bit for bit.
//!
//! ```text
//! squash(s) = s |s| / (1 + |s|²)                      (eq. 1, without dividing by |s|: 0 stays 0)
//! routing:  b_ij = 0; `iterations` times:             (Procedure 1)
//!             c_i = softmax_j(b_i)
//!             v_j = squash(Σ_i c_ij û_j|i)
//!             b_ij += û_j|i · v_j                     (not after the last)
//! ```
//!
//! Every sum here runs in order, without fused multiply-adds, so that the scalar, SSE2, AVX2
//! and wasm builds agree on it up to `exp`'s last bits.

use alloc::vec;

use super::exp::exp_nonpositive;
use super::simd::{Scalar, Simd};

/// `√x` for `x >= 0` (NaN below, `x` itself for 0 and infinity): Newton's iteration in f64
/// from an estimate that halves the exponent (within 6 %), 4 steps (each squares the relative
/// error: 6e-2, 2e-3, 2e-6, 1e-12, 1e-24), then rounded to f32: correctly rounded, an f64
/// within an ulp of `√x` being closer to it than to any f32 rounding boundary (checked
/// against `libm::sqrtf` in this module's tests). `core` has no square root without `std`.
pub(crate) fn sqrt(x: f32) -> f32 {
    if x == 0.0 || x == f32::INFINITY {
        return x;
    }
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    let d = x as f64;
    // Exponent e, mantissa m: (e + 1023) << 52 | m shifted right one bit has exponent
    // (e + 1023) / 2; adding 1023 << 51 makes that e / 2 + 1023.
    let mut y = f64::from_bits((d.to_bits() >> 1) + (1023 << 51));
    for _ in 0..4 {
        y = 0.5 * (y + d / y);
    }
    y as f32
}

/// `|v|²`, summed in order.
fn squared_length(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |sum, x| sum + x * x)
}

/// The length `|v|` of a capsule.
pub(crate) fn length(v: &[f32]) -> f32 {
    sqrt(squared_length(v))
}

/// Squash one capsule in place: `s |s| / (1 + |s|²)` (length in `[0, 1)`, direction kept),
/// as `trainer.model.squash`.
pub(crate) fn squash(s: &mut [f32]) {
    let squared = squared_length(s);
    let factor = sqrt(squared) / (1.0 + squared);
    s.iter_mut().for_each(|v| *v *= factor);
}

/// Primary capsules of one image from its convolution's output `image`, NHWC `[h, w, types *
/// dim]`: capsule `(t * h + y) * w + x` is the `dim` channels `t * dim ..` of pixel `(y, x)`
/// (PyTorch's `[types, dim, h, w]` view of the channels, permuted to `[types, h, w, dim]`),
/// squashed; `out` is `[types * h * w, dim]`.
pub(crate) fn primary(image: &[f32], [h, w]: [usize; 2], dim: usize, out: &mut [f32]) {
    let channels = image.len() / (h * w);
    for (capsule, dst) in out.chunks_exact_mut(dim).enumerate() {
        let (t, pixel) = (capsule / (h * w), capsule % (h * w));
        dst.copy_from_slice(&image[pixel * channels + t * dim..][..dim]);
        squash(dst);
    }
}

/// Class scores of one image's capsules `v` `[J, D]`: `out[j] = scale * |v_j|`.
pub(crate) fn lengths(v: &[f32], dim: usize, scale: f32, out: &mut [f32]) {
    for (o, capsule) in out.iter_mut().zip(v.chunks_exact(dim)) {
        *o = scale * length(capsule);
    }
}

/// The decoder's input: every capsule of `v` `[J, D]` zeroed but the longest (the predicted
/// digit's; the first of equally long ones, as PyTorch's `argmax`), in place. Returns the
/// index `j` of the capsule kept.
pub(crate) fn keep_longest(v: &mut [f32], dim: usize) -> usize {
    let mut longest = (0, f32::NEG_INFINITY);
    for (j, capsule) in v.chunks_exact(dim).enumerate() {
        let l = length(capsule);
        if l > longest.1 {
            longest = (j, l);
        }
    }
    for (j, capsule) in v.chunks_exact_mut(dim).enumerate() {
        if j != longest.0 {
            capsule.fill(0.0);
        }
    }
    longest.0
}

/// A function of one vector, lane by lane, for [`map_in_place`]. A trait rather than a closure:
/// a closure is a function of its own, compiled without a `#[target_feature]` caller's
/// features unless LLVM chooses to inline it, and vector intrinsics in a function compiled
/// without them are calls (measured, when this was generic over the instruction set: the
/// routing 2.5 times slower on AVX2 than on SSE2).
trait Lanewise {
    fn apply<S: Simd>(v: S::V) -> S::V;
}

/// `e^v` for `v <= 0`.
struct Exp;

impl Lanewise for Exp {
    #[inline(always)]
    fn apply<S: Simd>(v: S::V) -> S::V {
        exp_nonpositive::<S>(v)
    }
}

/// The logistic sigmoid: with `e = e^-|v|`, which cannot overflow, `1 / (1 + e)` for
/// `v >= 0` and `e / (1 + e)` below. Below `-87`, `e^-87` (1.6e-38) stands for the smaller
/// exponentials.
struct Sigmoid;

impl Lanewise for Sigmoid {
    #[inline(always)]
    fn apply<S: Simd>(v: S::V) -> S::V {
        let e = exp_nonpositive::<S>(S::sub(S::splat(0.0), S::abs(v)));
        let denominator = S::add(S::splat(1.0), e);
        S::select_nonneg(
            v,
            S::div(S::splat(1.0), denominator),
            S::div(e, denominator),
        )
    }
}

/// `F` on every value of `x` in place, `S::LANES` at a time (the tail through a copy).
#[inline(always)]
fn map_in_place<S: Simd, F: Lanewise>(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(S::LANES);
    for chunk in &mut chunks {
        // SAFETY: the chunk holds LANES values.
        unsafe { S::store(chunk.as_mut_ptr(), F::apply::<S>(S::load(chunk.as_ptr()))) }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut spill = [0.0f32; 16];
        spill[..tail.len()].copy_from_slice(tail);
        // SAFETY: `spill` holds 16 >= LANES values.
        unsafe { S::store(spill.as_mut_ptr(), F::apply::<S>(S::load(spill.as_ptr()))) }
        tail.copy_from_slice(&spill[..tail.len()]);
    }
}

/// The logistic sigmoid `1 / (1 + e^-x)` of every value, in place (the decoder's last step;
/// see [`Sigmoid`]).
#[inline(never)]
pub(crate) fn sigmoid_in_place(x: &mut [f32]) {
    map_in_place::<Scalar, Sigmoid>(x);
}

/// Routing by agreement (the paper's Procedure 1) for one image, into its output capsules
/// `out` `[J, D]` (`[j, d] = out_capsules`).
///
/// `u_hat` holds the predictions: input capsule `i`'s, `û_j|i = W_ij u_i` for every `j`, are
/// the `J * D` values at `u_hat[i * stride ..]` (row-major `[J, D]`), for `i < inputs`. From
/// `b = 0`, `iterations` (at least 1) times: `c_i = softmax_j(b_i)` (`exp(b - max) / Σ`),
/// `s_j = Σ_i c_ij û_j|i`, `v_j = squash(s_j)`, and but after the last `b_ij += û_j|i · v_j`.
#[inline(never)]
pub(crate) fn route(
    u_hat: &[f32],
    inputs: usize,
    stride: usize,
    [classes, dim]: [usize; 2],
    iterations: usize,
    out: &mut [f32],
) {
    let per_input = classes * dim;
    assert!(
        out.len() == per_input && (inputs == 0 || (inputs - 1) * stride + per_input <= u_hat.len())
    );
    let prediction = |i: usize| &u_hat[i * stride..][..per_input];
    let mut logits = vec![0.0f32; inputs * classes];
    let mut coupling = vec![0.0f32; inputs * classes];
    for iteration in 0..iterations {
        // c_i = softmax_j(b_i): exp(b_ij - max_j b_ij) / Σ_j.
        for (b, c) in logits
            .chunks_exact(classes)
            .zip(coupling.chunks_exact_mut(classes))
        {
            let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            c.iter_mut().zip(b).for_each(|(c, b)| *c = b - max);
        }
        map_in_place::<Scalar, Exp>(&mut coupling);
        for c in coupling.chunks_exact_mut(classes) {
            let sum = c.iter().fold(0.0, |sum, v| sum + v);
            c.iter_mut().for_each(|v| *v /= sum);
        }
        // s_j = Σ_i c_ij û_j|i, then v_j = squash(s_j).
        out.fill(0.0);
        for (i, c) in coupling.chunks_exact(classes).enumerate() {
            let predictions = prediction(i).chunks_exact(dim);
            for ((s, u), &c) in out.chunks_exact_mut(dim).zip(predictions).zip(c) {
                s.iter_mut().zip(u).for_each(|(s, u)| *s += c * u);
            }
        }
        out.chunks_exact_mut(dim).for_each(squash);
        // b_ij += û_j|i · v_j.
        if iteration + 1 < iterations {
            for (i, b) in logits.chunks_exact_mut(classes).enumerate() {
                let predictions = prediction(i).chunks_exact(dim);
                for ((b, u), v) in b.iter_mut().zip(predictions).zip(out.chunks_exact(dim)) {
                    *b += u.iter().zip(v).fold(0.0, |sum, (u, v)| sum + u * v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_square_root_is_correctly_rounded() {
        // Every third f32 of [1, 4) (two binades: both parities of the exponent; every one of
        // them passed too, but takes seconds in the dev profile), then a spread of the whole
        // range.
        let (start, end) = (1.0f32.to_bits(), 4.0f32.to_bits());
        for bits in (start..end)
            .step_by(3)
            .chain((1u32..0x7f80_0000).step_by(997))
        {
            let x = f32::from_bits(bits);
            assert_eq!(sqrt(x), libm::sqrtf(x), "sqrt({x:e})");
        }
        assert_eq!(sqrt(0.0), 0.0);
        assert_eq!(sqrt(f32::INFINITY), f32::INFINITY);
        assert!(sqrt(-1.0).is_nan() && sqrt(f32::NAN).is_nan());
    }

    /// The largest error of `exp_nonpositive` on [-87, 0] (steps of 2^-14) with `lanes` lanes
    /// of `S`, in units of the result's roundoff (2^-24 relative), and where.
    fn exp_error<S: Simd>(lanes: usize) -> (f64, f32) {
        let mut worst = (0.0f64, 0.0f32);
        let mut buffer = [0.0f32; 8];
        for i in 0..=(87 * 16384) {
            let y = -(i as f32) / 16384.0;
            buffer[..lanes].fill(y);
            // SAFETY: `buffer` holds 8 >= LANES values.
            unsafe {
                S::store(
                    buffer.as_mut_ptr(),
                    exp_nonpositive::<S>(S::load(buffer.as_ptr())),
                )
            };
            let want = libm::exp(y as f64);
            let error = (buffer[0] as f64 - want).abs() / want * 16_777_216.0;
            if error > worst.0 {
                worst = (error, y);
            }
        }
        worst
    }

    /// The routing's softmax and the sigmoid rely on `exp` within a few roundoffs (the
    /// property tests' `EXP_ERROR` allows 8).
    #[test]
    fn exp_is_within_a_few_roundoffs() {
        let (error, at) = exp_error::<Scalar>(4);
        assert!(error <= 3.0, "{error} roundoffs at {at}");
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if super::super::Isa::Avx2Fma.available() {
            #[target_feature(enable = "avx2,fma")]
            fn avx2() -> (f64, f32) {
                exp_error::<super::super::simd::Avx2Fma>(8)
            }
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            let (error, at) = unsafe { avx2() };
            assert!(error <= 3.0, "AVX2 + FMA: {error} roundoffs at {at}");
        }
    }

    #[test]
    fn the_sigmoid_is_within_a_few_roundoffs() {
        for i in -(90 * 256)..=(90 * 256) {
            let x = i as f32 / 256.0;
            let mut v = [x; 5];
            sigmoid_in_place(&mut v);
            let want = 1.0 / (1.0 + libm::exp(-(x as f64)));
            let error = (v[4] as f64 - want).abs();
            assert!(
                error <= 1e-6 * want + 1e-37,
                "sigmoid({x}) = {}, {want}",
                v[4]
            );
            assert_eq!(v[0], v[4], "the tail as the vector");
        }
    }

    #[test]
    fn squash_keeps_the_direction_and_bounds_the_length() {
        let mut s = [3.0f32, 4.0];
        squash(&mut s);
        // |s| = 5: length 25 / 26, direction (0.6, 0.8).
        assert!((s[0] - 0.6 * 25.0 / 26.0).abs() < 1e-7 && (s[1] - 0.8 * 25.0 / 26.0).abs() < 1e-7);
        let mut zero = [0.0f32; 3];
        squash(&mut zero);
        assert_eq!(zero, [0.0; 3]);
    }

    #[test]
    fn the_first_of_equally_long_capsules_is_kept() {
        let mut v = [0.0, 1.0, 1.0, 0.0, 0.5, 0.5];
        assert_eq!(keep_longest(&mut v, 2), 0);
        assert_eq!(v, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let mut v = [0.0, 1.0, 0.5, 0.5, 0.0, -2.0];
        assert_eq!(keep_longest(&mut v, 2), 2);
        assert_eq!(v, [0.0, 0.0, 0.0, 0.0, 0.0, -2.0]);
    }
}
