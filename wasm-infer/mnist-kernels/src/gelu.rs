//! Exact (erf-based) GELU, vectorised: `gelu(x) = x * Φ(x) = 0.5 * x * (1 + erf(x / √2))`,
//! PyTorch's `nn.GELU()` default (`approximate="none"`), within 1.5e-6 of it in absolute terms
//! (checked against an f64 reference in this module's tests, and through the whole model
//! against PyTorch in the parity tests).
//!
//! ```text
//! gelu(x) = x / 2 + x * e(x),   e(x) = erf(x / √2) / 2 ≈ x * P(x²) / Q(x²)   (|x| <= 5.75)
//! ```
//!
//! and `e = ±1/2` beyond 5.75, where `gelu(x)` is `x` or `0` to within 2.6e-8. `P` and `Q` have
//! 6 coefficients each (`ERF_P`, `ERF_Q`), fitted by `fit_gelu.py` beside this crate's
//! Cargo.toml (a least-squares fit reweighted towards the minimax by Lawson's rule; its own
//! error, the coefficients rounded to f32, is below 1e-7 in the GELU). The rest is f32
//! rounding: `e` is near ±1/2 where `|x|` is large, and its rounding, times `x`, is most of the
//! error. On every f32 of `±[1/4, 12)` the largest is 1.03e-6 with fused multiply-adds (AVX2,
//! relaxed SIMD) and 1.18e-6 without (SSE2, simd128, the scalar fallback), as
//! `fit_gelu.py --every` measures; PyTorch's own float32 GELU (2.15, on the CPU) is off by up to
//! 1.30e-6 on the same numbers. Ten multiply-adds, a division and no `exp`: 2.5 times fewer
//! operations than the `erfc`-and-`exp` form this replaced, which took 65 % of
//! `conv1`'s time in the page's build (docs/benchmarks.md).

use super::simd::Simd;

/// Where the rational form ends (see the module documentation).
const CLAMP: f32 = 5.75;

/// `P`'s coefficients of `x²`, constant first (`fit_gelu.py`; `tests/test_gelu_fit.py`
/// holds these to its fit).
#[allow(clippy::excessive_precision)]
const ERF_P: [f32; 6] = [
    0.398_941_963_911_056_5,
    0.036_949_310_451_745_99,
    0.004_876_327_700_912_952,
    0.000_201_742_848_730_646_07,
    6.698_280_685_668_578e-6,
    2.102_609_997_223_226e-8,
];

/// `Q`'s coefficients of `x²`, constant first.
#[allow(clippy::excessive_precision)]
const ERF_Q: [f32; 6] = [
    1.0,
    0.259_280_622_005_462_65,
    0.030_443_118_885_159_492,
    0.002_068_954_287_096_858,
    8.486_968_727_083_877e-5,
    1.173_101_395_579_578_8e-6,
];

/// GELU of every lane of `x` (exact GELU, see the module documentation).
#[inline(always)]
pub(crate) fn gelu<S: Simd>(x: S::V) -> S::V {
    let clamped = S::min(S::max(x, S::splat(-CLAMP)), S::splat(CLAMP));
    let x2 = S::mul(clamped, clamped);
    let (mut p, mut q) = (S::splat(ERF_P[5]), S::splat(ERF_Q[5]));
    for i in (0..5).rev() {
        p = S::mul_add(p, x2, S::splat(ERF_P[i]));
        q = S::mul_add(q, x2, S::splat(ERF_Q[i]));
    }
    let half_erf = S::div(S::mul(clamped, p), q);
    let half_erf = S::min(S::max(half_erf, S::splat(-0.5)), S::splat(0.5));
    S::mul_add(x, half_erf, S::mul(x, S::splat(0.5)))
}

#[cfg(test)]
mod tests {
    use super::super::simd::Scalar;
    use super::*;

    /// The documented bound on |gelu(x) - exact|.
    const BOUND: f64 = 1.5e-6;

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
    fn scalar_gelu_is_within_1_5e6_of_the_exact_gelu() {
        let (error, at) = max_error::<Scalar>(4);
        assert!(error <= BOUND, "max |error| {error:e} at x = {at}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse2_gelu_is_within_1_5e6_of_the_exact_gelu() {
        let (error, at) = max_error::<super::super::simd::Sse2>(4);
        assert!(error <= BOUND, "max |error| {error:e} at x = {at}");
    }

    /// The 8-lane FMA version, where this CPU has AVX2 + FMA (the native default).
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[test]
    fn avx2_gelu_is_within_1_5e6_of_the_exact_gelu() {
        #[target_feature(enable = "avx2,fma")]
        fn max_error_avx2() -> (f64, f32) {
            max_error::<super::super::simd::Avx2Fma>(8)
        }
        if !super::super::Isa::Avx2Fma.available() {
            return; // nothing to hold to the bound on this CPU
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        let (error, at) = unsafe { max_error_avx2() };
        assert!(error <= BOUND, "max |error| {error:e} at x = {at}");
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
