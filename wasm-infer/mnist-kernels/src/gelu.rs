//! Exact (erf-based) GELU, vectorised: `gelu(x) = x * Φ(x) = 0.5 * x * (1 + erf(x / √2))`,
//! PyTorch's `nn.GELU()` default (`approximate="none"`), within 1e-6 of it in absolute terms
//! (checked against an f64 reference in this module's tests, and through the whole model
//! against PyTorch in the parity tests).
//!
//! With `z = |x| / √2`, `1 + erf(x / √2)` is `erfc(z)` for `x < 0` and `2 - erfc(z)` for
//! `x >= 0`, so
//!
//! ```text
//! h = 0.5 * erfc(z);   gelu(x) = x * h          (x < 0)
//!                      gelu(x) = x - x * h      (x >= 0)
//! ```
//!
//! which never subtracts nearly equal numbers. `erfc` is the Chebyshev-fitted formula of
//! Numerical Recipes in C, 2nd ed., §6.2 (`erfcc`), fractional error below 1.2e-7 for every
//! `z >= 0`: `erfc(z) ≈ t * exp(-z² + P(t))` with `t = 1 / (1 + z / 2)` and `P` of degree 9
//! (its coefficients are `ERFC_POLY`). `exp` is computed as `2^n * e^r`, `n` the nearest whole
//! number to `y / ln 2` and `|r| <= ln(2) / 2`, `e^r` by its Taylor series to degree 7
//! (truncation error below 6e-9 relative).

use super::simd::Simd;

/// Coefficients of `P(t)`, constant term first (Numerical Recipes' `erfcc`), with the
/// published digits (more than f32 keeps: the same f32 values as their shortest forms).
#[allow(clippy::excessive_precision)]
const ERFC_POLY: [f32; 10] = [
    -1.265_512_23,
    1.000_023_68,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_203_98,
    1.488_515_87,
    -0.822_152_23,
    0.170_872_77,
];

/// `1 / √2`.
const FRAC_1_SQRT_2: f32 = core::f32::consts::FRAC_1_SQRT_2;

/// `e^y` for `y <= 0` (used for `erfc`'s `exp(-z² + P(t))`): below -87 the result, under
/// 1.7e-38, is returned as `e^-87`, which `erfc` then scales to well under f32's resolution of
/// GELU's result.
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

/// GELU of every lane of `x` (exact GELU, see the module documentation).
#[inline(always)]
pub(crate) fn gelu<S: Simd>(x: S::V) -> S::V {
    let z = S::mul(S::abs(x), S::splat(FRAC_1_SQRT_2));
    let t = S::div(S::splat(1.0), S::mul_add(z, S::splat(0.5), S::splat(1.0)));
    let mut p = S::splat(ERFC_POLY[9]);
    for &c in ERFC_POLY[..9].iter().rev() {
        p = S::mul_add(p, t, S::splat(c));
    }
    let exponent = S::sub(p, S::mul(z, z));
    let half_erfc = S::mul(S::mul(t, S::splat(0.5)), exp_nonpositive::<S>(exponent));
    let xh = S::mul(x, half_erfc);
    S::select_nonneg(x, S::sub(x, xh), xh)
}

#[cfg(test)]
mod tests {
    use super::super::simd::Scalar;
    use super::*;

    /// PyTorch's exact GELU in f64: 0.5 x (1 + erf(x / sqrt 2)).
    fn reference(x: f32) -> f64 {
        let x = x as f64;
        0.5 * x * (1.0 + libm::erf(x / core::f64::consts::SQRT_2))
    }

    fn max_error<S: Simd>(lanes: usize) -> (f64, f32) {
        let mut worst = (0.0f64, 0.0f32);
        let mut buffer = [0.0f32; 8];
        // -12..12 in steps of 2^-12, plus the range ends: every region of the formula.
        for i in -(12 * 4096)..=(12 * 4096) {
            let x = i as f32 / 4096.0;
            buffer[..lanes].fill(x);
            unsafe { S::store(buffer.as_mut_ptr(), gelu::<S>(S::load(buffer.as_ptr()))) };
            let error = (buffer[0] as f64 - reference(x)).abs();
            if error > worst.0 {
                worst = (error, x);
            }
        }
        worst
    }

    #[test]
    fn scalar_gelu_is_within_1e6_of_the_exact_gelu() {
        let (error, at) = max_error::<Scalar>(4);
        assert!(error <= 1e-6, "max |error| {error:e} at x = {at}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse2_gelu_is_within_1e6_of_the_exact_gelu() {
        let (error, at) = max_error::<super::super::simd::Sse2>(4);
        assert!(error <= 1e-6, "max |error| {error:e} at x = {at}");
    }

    /// The 8-lane FMA version, where this CPU has AVX2 + FMA (the native default).
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[test]
    fn avx2_gelu_is_within_1e6_of_the_exact_gelu() {
        #[target_feature(enable = "avx2,fma")]
        fn max_error_avx2() -> (f64, f32) {
            max_error::<super::super::simd::Avx2Fma>(8)
        }
        if !super::super::Isa::Avx2Fma.available() {
            return; // nothing to hold to the bound on this CPU
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        let (error, at) = unsafe { max_error_avx2() };
        assert!(error <= 1e-6, "max |error| {error:e} at x = {at}");
    }

    #[test]
    fn gelu_handles_extremes() {
        for (x, expected) in [
            (-1e30f32, 0.0f32),
            (-200.0, 0.0),
            (200.0, 200.0),
            (0.0, 0.0),
        ] {
            let y = gelu::<Scalar>([x; 4])[0];
            assert!(
                y.is_finite() && (y - expected).abs() <= 1e-30,
                "gelu({x}) = {y}"
            );
        }
    }
}
