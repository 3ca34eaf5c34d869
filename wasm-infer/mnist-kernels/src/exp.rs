//! `e^y` for `y <= 0`, vectorised: the capsule layers' routing softmax and the decoder's
//! sigmoid (`capsules.rs`).
//!
//! `e^y = 2^n * e^r`, `n` the nearest whole number to `y / ln 2` and `|r| <= ln(2) / 2`, `e^r`
//! by its Taylor series to degree 7 (truncation error below 6e-9 relative).

use super::simd::Simd;

/// `e^y` for `y <= 0`: below -87 the result, under 1.7e-38, is returned as `e^-87`.
#[inline(always)]
pub(crate) fn exp_nonpositive<S: Simd>(y: S::V) -> S::V {
    // Rounding to the nearest whole number by adding and subtracting 1.5 * 2^23 (valid for
    // |v| < 2^22), which needs no rounding instruction (SSE2 has none).
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split in two so that n * LN2_HI is exact for |n| <= 2^9 (Cody and Waite). LN2_HI
    // is 355 / 512, exactly: written in full.
    #[allow(clippy::excessive_precision)]
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let y = S::max(y, S::splat(-87.0));
    let n = S::sub(
        S::mul_add(y, S::splat(core::f32::consts::LOG2_E), S::splat(ROUND)),
        S::splat(ROUND),
    );
    let r = S::sub(
        S::sub(y, S::mul(n, S::splat(LN2_HI))),
        S::mul(n, S::splat(LN2_LO)),
    );
    // e^r = 1 + r + r^2/2! + ... + r^7/7!, by Horner.
    let mut p = S::splat(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = S::mul_add(p, r, S::splat(c));
    }
    S::mul(p, S::pow2(n))
}
