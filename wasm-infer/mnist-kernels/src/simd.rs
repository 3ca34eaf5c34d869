//! One small SIMD vocabulary, implemented once per instruction set.
//!
//! The kernels in [`super::gemm`] and [`super::gelu`] are written once, generic over [`Simd`];
//! each implementation below maps its operations onto one instruction set:
//!
//! | type        | target                         | lanes | `mul_add`                     |
//! |-------------|--------------------------------|------:|-------------------------------|
//! | [`Scalar`]  | any (the bare-metal fallback)  | 4     | `a * b + c`, two roundings    |
//! | `Sse2`      | x86-64 baseline                | 4     | `mulps` + `addps`             |
//! | `Avx2Fma`   | x86-64 with AVX2 + FMA         | 8     | `vfmadd` (fused)              |
//! | `Simd128`   | wasm32 `simd128`               | 4     | `f32x4.mul` + `f32x4.add`     |
//! | `Relaxed`   | wasm32 `simd128 + relaxed-simd`| 4     | `f32x4.relaxed_madd` (fused where the CPU has FMA) |
//!
//! Every function is `#[inline(always)]`: the kernels are instantiated inside one entry point
//! per instruction set (see `Network::run`), and the AVX2 and relaxed-SIMD entry points
//! carry `#[target_feature]`, so the whole kernel is compiled for that instruction set.
//!
//! # Safety
//! `load` and `store` take raw pointers to `LANES` valid, unaligned `f32`s. The x86 AVX2 and
//! wasm relaxed implementations must only run inside their `#[target_feature]` entry points.

/// A SIMD instruction set: a vector of `LANES` f32 values and the operations the kernels need.
pub(crate) trait Simd: Copy {
    /// One vector of `LANES` f32 values.
    type V: Copy;
    /// f32 values per vector.
    const LANES: usize;

    /// `LANES` values from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self::V;
    /// Write `LANES` values to `p` (unaligned).
    unsafe fn store(p: *mut f32, v: Self::V);
    fn splat(x: f32) -> Self::V;
    fn add(a: Self::V, b: Self::V) -> Self::V;
    fn sub(a: Self::V, b: Self::V) -> Self::V;
    fn mul(a: Self::V, b: Self::V) -> Self::V;
    fn div(a: Self::V, b: Self::V) -> Self::V;
    fn max(a: Self::V, b: Self::V) -> Self::V;
    fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused where the instruction set has it.
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn abs(a: Self::V) -> Self::V;
    /// Per lane: `if x >= 0 { if_nonneg } else { otherwise }`.
    fn select_nonneg(x: Self::V, if_nonneg: Self::V, otherwise: Self::V) -> Self::V;
    /// `2^n` for lanes holding whole numbers `n` in `-126..=127` (built in the exponent bits).
    fn pow2(n: Self::V) -> Self::V;
}

/// 4 lanes in plain Rust: the fallback for targets without a SIMD implementation here (the
/// bare-metal `no_std` proof), and the reference the native tests hold the others against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar;

impl Scalar {
    #[inline(always)]
    fn map2(a: [f32; 4], b: [f32; 4], f: impl Fn(f32, f32) -> f32) -> [f32; 4] {
        [f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2]), f(a[3], b[3])]
    }
}

impl Simd for Scalar {
    type V = [f32; 4];
    const LANES: usize = 4;

    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 4] {
        unsafe { p.cast::<[f32; 4]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; 4]) {
        unsafe { p.cast::<[f32; 4]>().write_unaligned(v) }
    }
    #[inline(always)]
    fn splat(x: f32) -> [f32; 4] {
        [x; 4]
    }
    #[inline(always)]
    fn add(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        Self::map2(a, b, |x, y| x + y)
    }
    #[inline(always)]
    fn sub(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        Self::map2(a, b, |x, y| x - y)
    }
    #[inline(always)]
    fn mul(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        Self::map2(a, b, |x, y| x * y)
    }
    #[inline(always)]
    fn div(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        Self::map2(a, b, |x, y| x / y)
    }
    #[inline(always)]
    fn max(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        Self::map2(a, b, |x, y| if x > y { x } else { y })
    }
    #[inline(always)]
    fn min(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        Self::map2(a, b, |x, y| if x < y { x } else { y })
    }
    #[inline(always)]
    fn mul_add(a: [f32; 4], b: [f32; 4], c: [f32; 4]) -> [f32; 4] {
        Self::add(Self::mul(a, b), c)
    }
    #[inline(always)]
    fn abs(a: [f32; 4]) -> [f32; 4] {
        a.map(|x| f32::from_bits(x.to_bits() & 0x7fff_ffff))
    }
    #[inline(always)]
    fn select_nonneg(x: [f32; 4], if_nonneg: [f32; 4], otherwise: [f32; 4]) -> [f32; 4] {
        core::array::from_fn(|i| {
            if x[i] >= 0.0 {
                if_nonneg[i]
            } else {
                otherwise[i]
            }
        })
    }
    #[inline(always)]
    fn pow2(n: [f32; 4]) -> [f32; 4] {
        n.map(|n| f32::from_bits(((n as i32 + 127) as u32) << 23))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2Fma, Sse2};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use core::arch::x86_64::*;

    /// SSE2, which every x86-64 CPU has: 4 lanes, separate multiply and add.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Sse2;

    // SAFETY (every `unsafe` block below): SSE2 is part of the x86-64 baseline.
    #[allow(unused_unsafe)]
    impl Simd for Sse2 {
        type V = __m128;
        const LANES: usize = 4;

        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m128 {
            unsafe { _mm_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m128) {
            unsafe { _mm_storeu_ps(p, v) }
        }
        #[inline(always)]
        fn splat(x: f32) -> __m128 {
            unsafe { _mm_set1_ps(x) }
        }
        #[inline(always)]
        fn add(a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_mul_ps(a, b) }
        }
        #[inline(always)]
        fn div(a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_div_ps(a, b) }
        }
        #[inline(always)]
        fn max(a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_min_ps(a, b) }
        }
        #[inline(always)]
        fn mul_add(a: __m128, b: __m128, c: __m128) -> __m128 {
            unsafe { _mm_add_ps(_mm_mul_ps(a, b), c) }
        }
        #[inline(always)]
        fn abs(a: __m128) -> __m128 {
            unsafe { _mm_andnot_ps(_mm_set1_ps(-0.0), a) }
        }
        #[inline(always)]
        fn select_nonneg(x: __m128, if_nonneg: __m128, otherwise: __m128) -> __m128 {
            unsafe {
                let mask = _mm_cmpge_ps(x, _mm_setzero_ps());
                _mm_or_ps(_mm_and_ps(mask, if_nonneg), _mm_andnot_ps(mask, otherwise))
            }
        }
        #[inline(always)]
        fn pow2(n: __m128) -> __m128 {
            unsafe {
                let bits =
                    _mm_slli_epi32::<23>(_mm_add_epi32(_mm_cvttps_epi32(n), _mm_set1_epi32(127)));
                _mm_castsi128_ps(bits)
            }
        }
    }

    /// AVX2 + FMA: 8 lanes, fused multiply-add. Only inside `#[target_feature(enable =
    /// "avx2,fma")]` code, after checking the CPU has both (`super::super::Isa::Avx2Fma`).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2Fma;

    // SAFETY (every `unsafe` block below): these AVX/FMA intrinsics are only reached from the
    // `#[target_feature(enable = "avx2,fma")]` entry point, which runs only on CPUs with both.
    impl Simd for Avx2Fma {
        type V = __m256;
        const LANES: usize = 8;

        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn div(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        fn max(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn abs(a: __m256) -> __m256 {
            unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
        }
        #[inline(always)]
        fn select_nonneg(x: __m256, if_nonneg: __m256, otherwise: __m256) -> __m256 {
            unsafe {
                let mask = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_setzero_ps());
                _mm256_blendv_ps(otherwise, if_nonneg, mask)
            }
        }
        #[inline(always)]
        fn pow2(n: __m256) -> __m256 {
            unsafe {
                let n = _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127));
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n))
            }
        }
    }
}

#[cfg(all(
    target_arch = "wasm32",
    target_feature = "simd128",
    feature = "relaxed-simd"
))]
pub(crate) use wasm::Relaxed;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) use wasm::Simd128;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::Simd;
    use core::arch::wasm32::*;

    /// The body shared by both wasm instruction sets; only `mul_add` differs.
    macro_rules! wasm_simd {
        ($name:ident, $mul_add:expr) => {
            #[allow(unused_unsafe)]
            impl Simd for $name {
                type V = v128;
                const LANES: usize = 4;

                #[inline(always)]
                unsafe fn load(p: *const f32) -> v128 {
                    unsafe { v128_load(p.cast()) }
                }
                #[inline(always)]
                unsafe fn store(p: *mut f32, v: v128) {
                    unsafe { v128_store(p.cast(), v) }
                }
                #[inline(always)]
                fn splat(x: f32) -> v128 {
                    f32x4_splat(x)
                }
                #[inline(always)]
                fn add(a: v128, b: v128) -> v128 {
                    f32x4_add(a, b)
                }
                #[inline(always)]
                fn sub(a: v128, b: v128) -> v128 {
                    f32x4_sub(a, b)
                }
                #[inline(always)]
                fn mul(a: v128, b: v128) -> v128 {
                    f32x4_mul(a, b)
                }
                #[inline(always)]
                fn div(a: v128, b: v128) -> v128 {
                    f32x4_div(a, b)
                }
                // pmax/pmin (`b < a ? a : b`): one instruction on x86, unlike IEEE max/min,
                // and the same on the finite values the kernels produce.
                #[inline(always)]
                fn max(a: v128, b: v128) -> v128 {
                    f32x4_pmax(a, b)
                }
                #[inline(always)]
                fn min(a: v128, b: v128) -> v128 {
                    f32x4_pmin(a, b)
                }
                #[inline(always)]
                fn mul_add(a: v128, b: v128, c: v128) -> v128 {
                    $mul_add(a, b, c)
                }
                #[inline(always)]
                fn abs(a: v128) -> v128 {
                    f32x4_abs(a)
                }
                #[inline(always)]
                fn select_nonneg(x: v128, if_nonneg: v128, otherwise: v128) -> v128 {
                    v128_bitselect(if_nonneg, otherwise, f32x4_ge(x, f32x4_splat(0.0)))
                }
                #[inline(always)]
                fn pow2(n: v128) -> v128 {
                    i32x4_shl(i32x4_add(i32x4_trunc_sat_f32x4(n), i32x4_splat(127)), 23)
                }
            }
        };
    }

    /// wasm `simd128`: 4 lanes, separate multiply and add (what every SIMD browser runs).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Simd128;
    wasm_simd!(Simd128, |a, b, c| f32x4_add(f32x4_mul(a, b), c));

    /// wasm `simd128` + `relaxed-simd`: `f32x4.relaxed_madd`, a fused multiply-add where the
    /// CPU has one. Only inside the `#[target_feature(enable = "relaxed-simd")]` entry point.
    #[cfg(feature = "relaxed-simd")]
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Relaxed;
    // SAFETY: only reached from the relaxed-simd entry point; a browser without relaxed SIMD
    // refuses the whole module at validation, so it cannot run there.
    #[cfg(feature = "relaxed-simd")]
    wasm_simd!(Relaxed, |a, b, c| unsafe { f32x4_relaxed_madd(a, b, c) });
}
