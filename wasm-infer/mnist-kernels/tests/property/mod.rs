//! Property tests of the kernels: random layers and shapes, run on one instruction set and
//! held to a plain f64 reference (loops in PyTorch's layouts, no SIMD, no tiling).
//!
//! Shared by the native tests (`tests/properties.rs`, every instruction set this CPU has) and
//! the wasm module (`examples/wasm_properties.rs`, run in Node on simd128 and relaxed SIMD).
//! Case `i` of a property is drawn from `(seed, property, i)` alone, so a case that fails on one
//! instruction set can be replayed on any other, natively too.
//!
//! # Tolerances
//!
//! Each reference value carries a bound on the error an f32 computation of it may have, from
//! the classic forward error analysis (Higham, "Accuracy and Stability of Numerical
//! Algorithms", 2nd ed., §3.1), with `u = 2^-24` (f32's unit roundoff) and
//! `γ(n) = n·u / (1 - n·u)`:
//!
//! * a dot product `b + Σ_k a_k·w_k` of `K` terms, in any order, with or without fused
//!   multiply-adds (the tiles, the single-row path's four partial sums): at most
//!   `γ(K + 2)·(|b| + Σ|a_k·w_k|)`, plus `Σ|w_k|·e_k` for inputs already off by `e_k`;
//! * ReLU, max-pools (fused or not) and flatten add nothing (they pick values); a mean of `P`
//!   values adds `γ(P + 1)·mean|a|`; a residual sum and a dropout factor one rounding each;
//! * GELU adds its approximation's error, `1.5e-6 + 2^-23·|gelu(x)|` (the bound the `gelu`
//!   property holds it to: 1.5e-6 absolute as documented in src/gelu.rs, plus one f32 ulp of the
//!   result for large `|x|`), to its input's error times GELU's steepest slope, 1.13.
//!
//! The check is `|got - reference| <= bound + 1e-37` (the constant covers underflow to 0).
//! The bound is relative to the magnitudes summed (`Σ|a_k·w_k|`), not to the result, so
//! cancellation cannot make it fail spuriously; it is still about `10^-5` of those magnitudes
//! for the largest `K` here, while a wrong index, a missed tail column or a stale accumulator
//! is off by the size of a term.

#![allow(dead_code)] // each harness uses its part

use mnist_kernels::{Activation, Conv, Isa, Layer, Linear, Network, Routing};

/// f32's unit roundoff, `2^-24`.
const U: f64 = 1.0 / 16_777_216.0;
/// Largest slope of the exact GELU (at `x = √2`: `Φ(√2) + √2·φ(√2) ≈ 1.1289`).
const GELU_SLOPE: f64 = 1.13;
/// Absolute slack of every comparison: results that underflow to (or from) 0.
const TINY: f64 = 1e-37;
/// Most multiply-adds one case's reference may do (keeps a case well under a millisecond
/// optimised and the whole run under the time budget unoptimised too).
const WORK: usize = 400_000;

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu)
}

/// PyTorch's exact GELU, `0.5·x·erfc(-x / √2)`, in f64 (`erfc`: no cancellation for `x < 0`).
pub fn gelu_f64(x: f64) -> f64 {
    0.5 * x * libm::erfc(-x / core::f64::consts::SQRT_2)
}

/// The error the kernels' GELU may add to a result of size `y`.
fn gelu_error(y: f64) -> f64 {
    1.5e-6 + y.abs() / 8_388_608.0
}

// --- a small seeded generator -----------------------------------------------------------

/// SplitMix64 (Steele, Lea & Flood, 2014): one 64-bit state, every draw independent enough
/// for picking shapes and values.
pub struct Rng(u64);

impl Rng {
    /// The stream of case `case` of the property named `name` under `seed`.
    pub fn new(seed: u64, name: &str, case: u64) -> Self {
        // FNV-1a of the name, so that properties draw different cases from one seed.
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = Rng(seed ^ hash.rotate_left(17) ^ case.wrapping_mul(0xd1b5_4a32_d192_ed03));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[-scale, scale)`, as f32.
    fn value(&mut self, scale: f64) -> f32 {
        ((2.0 * self.unit() - 1.0) * scale) as f32
    }

    fn values(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| self.value(scale)).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }

    fn activation(&mut self) -> Activation {
        self.pick(&[Activation::Identity, Activation::Relu, Activation::Gelu])
    }
}

// --- layers the generator draws (owned: `Layer` borrows) ---------------------------------

/// A convolution: PyTorch's `[c_out, c_in, kh, kw]` weight, `[c_out]` bias.
#[derive(Clone, Debug)]
struct ConvSpec {
    weight: Vec<f32>,
    shape: [usize; 4],
    bias: Vec<f32>,
    padding: usize,
    stride: usize,
    activation: Activation,
    pool: bool,
}

impl ConvSpec {
    /// Random weights, scaled so that outputs stay about the size of the inputs.
    fn random(
        rng: &mut Rng,
        shape: [usize; 4],
        padding: usize,
        activation: Activation,
        pool: bool,
    ) -> Self {
        let [c_out, c_in, kh, kw] = shape;
        let scale = (3.0 / (c_in * kh * kw) as f64).sqrt();
        ConvSpec {
            weight: rng.values(c_out * c_in * kh * kw, scale),
            shape,
            bias: rng.values(c_out, 0.5),
            padding,
            stride: 1,
            activation,
            pool,
        }
    }

    fn layer(&self) -> Conv<'_> {
        Conv {
            weight: &self.weight,
            shape: self.shape,
            bias: &self.bias,
            padding: self.padding,
            stride: self.stride,
            activation: self.activation,
            pool: self.pool,
        }
    }

    /// `[oh, ow]` on an `[h, w]` image (after the pool).
    fn output_size(&self, [h, w]: [usize; 2]) -> [usize; 2] {
        let [_, _, kh, kw] = self.shape;
        let s = self.stride;
        let (oh, ow) = (
            (h + 2 * self.padding - kh) / s + 1,
            (w + 2 * self.padding - kw) / s + 1,
        );
        if self.pool {
            [oh / 2, ow / 2]
        } else {
            [oh, ow]
        }
    }
}

/// A linear layer: PyTorch's `[out, in]` weight, `[out]` bias.
#[derive(Clone, Debug)]
struct LinearSpec {
    weight: Vec<f32>,
    shape: [usize; 2],
    bias: Vec<f32>,
    activation: Activation,
}

impl LinearSpec {
    fn random(rng: &mut Rng, n: usize, k: usize, activation: Activation) -> Self {
        LinearSpec {
            weight: rng.values(n * k, (3.0 / k as f64).sqrt()),
            shape: [n, k],
            bias: rng.values(n, 0.5),
            activation,
        }
    }

    fn layer(&self) -> Linear<'_> {
        Linear {
            weight: &self.weight,
            shape: self.shape,
            bias: &self.bias,
            activation: self.activation,
        }
    }
}

/// Digit capsules: PyTorch's `[in_capsules, capsules, dim, in_dim]` matrices.
#[derive(Clone, Debug)]
struct RoutingSpec {
    weight: Vec<f32>,
    shape: [usize; 4],
    iterations: usize,
}

impl RoutingSpec {
    fn layer(&self) -> Routing<'_> {
        Routing {
            weight: &self.weight,
            shape: self.shape,
            iterations: self.iterations,
        }
    }
}

#[derive(Clone, Debug)]
enum Spec {
    Conv(ConvSpec),
    Residual(ConvSpec, ConvSpec, Option<ConvSpec>),
    MaxPool(usize),
    GlobalAvgPool,
    Flatten,
    Linear(LinearSpec),
    Dropout(f32),
    /// The convolution, capsule types, values per capsule.
    PrimaryCaps(ConvSpec, usize, usize),
    DigitCaps(RoutingSpec),
    Decoder(Box<[LinearSpec; 3]>),
    CapsuleLength(f32),
}

impl ConvSpec {
    /// Shape and options, without the numbers: `conv [8, 2, 3, 3] pad 1 stride 2 Gelu pool`.
    fn describe(&self) -> String {
        format!(
            "conv {:?} pad {}{} {:?}{}",
            self.shape,
            self.padding,
            if self.stride > 1 {
                format!(" stride {}", self.stride)
            } else {
                String::new()
            },
            self.activation,
            if self.pool { " pool" } else { "" }
        )
    }
}

/// The layers' kinds and shapes, without the numbers (a failure's case is replayed from its
/// seed).
fn describe(specs: &[Spec]) -> String {
    let parts: Vec<String> = specs
        .iter()
        .map(|spec| match spec {
            Spec::Conv(c) => c.describe(),
            Spec::Residual(a, b, s) => format!(
                "residual({}; {}; shortcut {})",
                a.describe(),
                b.describe(),
                s.as_ref().map_or("identity".into(), ConvSpec::describe)
            ),
            Spec::MaxPool(k) => format!("max-pool {k}"),
            Spec::GlobalAvgPool => "global average pool".into(),
            Spec::Flatten => "flatten".into(),
            Spec::Linear(l) => format!("linear {:?} {:?}", l.shape, l.activation),
            Spec::Dropout(p) => format!("dropout {p}"),
            Spec::PrimaryCaps(c, types, dim) => {
                format!(
                    "primary capsules ({}; {types} types of {dim})",
                    c.describe()
                )
            }
            Spec::DigitCaps(r) => format!(
                "digit capsules {:?}, {} routing iterations",
                r.shape, r.iterations
            ),
            Spec::Decoder(fc) => format!(
                "decoder {:?} -> {:?} -> {:?}",
                fc[0].shape, fc[1].shape, fc[2].shape
            ),
            Spec::CapsuleLength(scale) => format!("capsule lengths x {scale}"),
        })
        .collect();
    parts.join(", ")
}

impl Spec {
    fn layer(&self) -> Layer<'_> {
        match self {
            Spec::Conv(c) => Layer::Conv(c.layer()),
            Spec::Residual(a, b, s) => Layer::Residual {
                a: a.layer(),
                b: b.layer(),
                shortcut: s.as_ref().map(ConvSpec::layer),
            },
            Spec::MaxPool(k) => Layer::MaxPool(*k),
            Spec::GlobalAvgPool => Layer::GlobalAvgPool,
            Spec::Flatten => Layer::Flatten,
            Spec::Linear(l) => Layer::Linear(l.layer()),
            Spec::Dropout(p) => Layer::Dropout(*p),
            Spec::PrimaryCaps(c, types, dim) => Layer::PrimaryCaps {
                conv: c.layer(),
                capsules: *types,
                dim: *dim,
            },
            Spec::DigitCaps(r) => Layer::DigitCaps(r.layer()),
            Spec::Decoder(fc) => Layer::Decoder([fc[0].layer(), fc[1].layer(), fc[2].layer()]),
            Spec::CapsuleLength(scale) => Layer::CapsuleLength(*scale),
        }
    }
}

/// The network of `specs` on `isa`, for input images `[c, h, w]`.
fn network(isa: Isa, input: [usize; 3], specs: &[Spec]) -> Result<Network, String> {
    let layers = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("layer{i}"), s.layer()));
    Network::new(isa, input, layers)
        .map_err(|e| format!("Network::new refused [{}]: {e}", describe(specs)))
}

// --- the reference: f64, PyTorch's layouts, plain loops ----------------------------------

/// A batch in PyTorch's layout (`[n, c, h, w]` images or `[n, f]` features), each value with
/// a bound on the error of its f32 computation.
#[derive(Clone, Debug)]
struct Reference {
    /// `[n, c, h, w]`, or `[n, f, 1, 1]` for features.
    dims: [usize; 4],
    value: Vec<f64>,
    bound: Vec<f64>,
    /// Whether these are features (flat) rather than images.
    flat: bool,
}

impl Reference {
    /// Exact f32 inputs, NCHW.
    fn input(x: &[f32], dims: [usize; 4]) -> Self {
        assert_eq!(x.len(), dims.iter().product::<usize>());
        Reference {
            dims,
            value: x.iter().map(|&v| v as f64).collect(),
            bound: vec![0.0; x.len()],
            flat: false,
        }
    }

    fn at(&self, n: usize, c: usize, y: usize, x: usize) -> usize {
        let [_, cs, h, w] = self.dims;
        ((n * cs + c) * h + y) * w + x
    }

    /// The layout the kernels give: NHWC for images, `[n, f]` for features.
    fn kernel_order(&self) -> (Vec<f64>, Vec<f64>) {
        let [n, c, h, w] = self.dims;
        let mut value = Vec::with_capacity(self.value.len());
        let mut bound = Vec::with_capacity(self.value.len());
        for i in 0..n {
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..c {
                        value.push(self.value[self.at(i, ch, y, x)]);
                        bound.push(self.bound[self.at(i, ch, y, x)]);
                    }
                }
            }
        }
        (value, bound)
    }
}

/// `activation(pre)` with its error bound, for a pre-activation value `v` off by `e`.
fn activate(activation: Activation, v: f64, e: f64) -> (f64, f64) {
    match activation {
        Activation::Identity => (v, e),
        Activation::Relu => (v.max(0.0), e),
        Activation::Gelu => {
            // The kernels' GELU runs on an input off by `e`: its result is off by the slope
            // times that, plus the approximation's own error there.
            let y = gelu_f64(v);
            (y, GELU_SLOPE * e + gelu_error(y.abs() + GELU_SLOPE * e))
        }
    }
}

/// Convolution, bias, activation and optional 2x2 max-pool (floor), NCHW.
fn conv_ref(x: &Reference, conv: &ConvSpec) -> Reference {
    let [n, c_in, h, w] = x.dims;
    let [c_out, wc_in, kh, kw] = conv.shape;
    assert_eq!(c_in, wc_in);
    let p = conv.padding as isize;
    let (ch, cw) = (
        (h + 2 * conv.padding - kh) / conv.stride + 1,
        (w + 2 * conv.padding - kw) / conv.stride + 1,
    );
    let s = conv.stride as isize;
    let terms = c_in * kh * kw;
    let mut out = Reference {
        dims: [n, c_out, ch, cw],
        value: vec![0.0; n * c_out * ch * cw],
        bound: vec![0.0; n * c_out * ch * cw],
        flat: false,
    };
    for i in 0..n {
        for o in 0..c_out {
            for oy in 0..ch {
                for ox in 0..cw {
                    let bias = conv.bias[o] as f64;
                    let (mut sum, mut magnitude, mut carried) = (bias, bias.abs(), 0.0);
                    for c in 0..c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (y, xx) = (
                                    s * oy as isize + ky as isize - p,
                                    s * ox as isize + kx as isize - p,
                                );
                                if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                    continue; // zero padding
                                }
                                let src = x.at(i, c, y as usize, xx as usize);
                                let wt = conv.weight[((o * c_in + c) * kh + ky) * kw + kx] as f64;
                                sum += wt * x.value[src];
                                magnitude += (wt * x.value[src]).abs() + wt.abs() * x.bound[src];
                                carried += wt.abs() * x.bound[src];
                            }
                        }
                    }
                    let e = carried + gamma(terms + 2) * magnitude;
                    let (v, e) = activate(conv.activation, sum, e);
                    let dst = out.at(i, o, oy, ox);
                    out.value[dst] = v;
                    out.bound[dst] = e;
                }
            }
        }
    }
    if conv.pool {
        max_pool_ref(&out, 2)
    } else {
        out
    }
}

/// `k` x `k` max-pool, stride `k`, floor mode.
fn max_pool_ref(x: &Reference, k: usize) -> Reference {
    let [n, c, h, w] = x.dims;
    let (oh, ow) = (h / k, w / k);
    let mut out = Reference {
        dims: [n, c, oh, ow],
        value: vec![f64::NEG_INFINITY; n * c * oh * ow],
        bound: vec![0.0; n * c * oh * ow],
        flat: false,
    };
    for i in 0..n {
        for ch in 0..c {
            for y in 0..oh {
                for xx in 0..ow {
                    let dst = out.at(i, ch, y, xx);
                    for dy in 0..k {
                        for dx in 0..k {
                            let src = x.at(i, ch, y * k + dy, xx * k + dx);
                            out.value[dst] = out.value[dst].max(x.value[src]);
                            out.bound[dst] = out.bound[dst].max(x.bound[src]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Mean over each channel's pixels: `[n, c]` features.
fn global_avg_pool_ref(x: &Reference) -> Reference {
    let [n, c, h, w] = x.dims;
    let pixels = h * w;
    let mut out = Reference {
        dims: [n, c, 1, 1],
        value: vec![0.0; n * c],
        bound: vec![0.0; n * c],
        flat: true,
    };
    for i in 0..n {
        for ch in 0..c {
            let (mut sum, mut magnitude, mut carried) = (0.0, 0.0, 0.0);
            for y in 0..h {
                for xx in 0..w {
                    let src = x.at(i, ch, y, xx);
                    sum += x.value[src];
                    magnitude += x.value[src].abs() + x.bound[src];
                    carried += x.bound[src];
                }
            }
            out.value[i * c + ch] = sum / pixels as f64;
            out.bound[i * c + ch] = (carried + gamma(pixels + 1) * magnitude) / pixels as f64;
        }
    }
    out
}

/// `relu(b + s)` of two batches of the same shape.
fn residual_sum_ref(b: &Reference, s: &Reference) -> Reference {
    assert_eq!(b.dims, s.dims);
    let mut out = b.clone();
    for i in 0..out.value.len() {
        let (v, e) = (b.value[i] + s.value[i], b.bound[i] + s.bound[i]);
        out.value[i] = v.max(0.0);
        out.bound[i] = e + U * (v.abs() + e);
    }
    out
}

/// PyTorch's flatten: `[n, c, h, w]` to `[n, c·h·w]` in `(c, h, w)` order (no data moves).
fn flatten_ref(x: &Reference) -> Reference {
    let [n, c, h, w] = x.dims;
    Reference {
        dims: [n, c * h * w, 1, 1],
        flat: true,
        ..x.clone()
    }
}

/// `activation(x · Wᵀ + b)`, `W` `[out, in]`.
fn linear_ref(x: &Reference, linear: &LinearSpec) -> Reference {
    assert!(x.flat);
    let [n, k, _, _] = x.dims;
    let [outs, wk] = linear.shape;
    assert_eq!(k, wk);
    let mut out = Reference {
        dims: [n, outs, 1, 1],
        value: vec![0.0; n * outs],
        bound: vec![0.0; n * outs],
        flat: true,
    };
    for i in 0..n {
        for o in 0..outs {
            let bias = linear.bias[o] as f64;
            let (mut sum, mut magnitude, mut carried) = (bias, bias.abs(), 0.0);
            for j in 0..k {
                let (a, e) = (x.value[i * k + j], x.bound[i * k + j]);
                let wt = linear.weight[o * k + j] as f64;
                sum += a * wt;
                magnitude += (a * wt).abs() + wt.abs() * e;
                carried += wt.abs() * e;
            }
            let (v, e) = activate(linear.activation, sum, carried + gamma(k + 2) * magnitude);
            out.value[i * outs + o] = v;
            out.bound[i * outs + o] = e;
        }
    }
    out
}

/// Multiply by dropout factors (row-major over the batch's values).
fn dropout_ref(x: &Reference, factors: &[f32]) -> Reference {
    let mut out = x.clone();
    let values = out.value.iter_mut().zip(&mut out.bound);
    for ((v, e), &m) in values.zip(factors) {
        let m = m as f64;
        *e = m.abs() * (*e + U * (v.abs() + *e));
        *v *= m;
    }
    out
}

/// `x` repeated `times` over the batch (MC dropout's samples of one image).
fn repeat_ref(x: &Reference, times: usize) -> Reference {
    let mut out = x.clone();
    out.dims[0] *= times;
    out.value = x.value.repeat(times);
    out.bound = x.bound.repeat(times);
    out
}

// --- capsules (Sabour, Frosst & Hinton 2017): a batch of capsules is a `Reference` of dims
// `[n, 1, capsules, dim]`, flat: capsule by capsule, as the kernels hold them.

/// Largest Lipschitz constant of squash, `s -> s |s| / (1 + |s|²)`, in the 2-norm: its
/// Jacobian's eigenvalues are `2r / (1 + r²)²` (along `s`; at most 0.6495, at `r = 1/√3`) and
/// `r / (1 + r²)` (across; at most 1/2), `r = |s|`.
const SQUASH_SLOPE: f64 = 0.65;

/// Bound on the relative error of the kernels' `exp` (`exp.rs`, range reduction and a degree-7
/// polynomial; `capsules.rs`' unit test measures at most 3 roundoffs), as a perturbation of its
/// argument: `exp~(t) = exp(t + θ)`, `|θ| <= EXP_ERROR`.
const EXP_ERROR: f64 = 8.0 * U;

/// Absolute error of the kernels' `exp` below its clamp at `-87` (`e^-87` = 1.6e-38 for any
/// smaller value), bounding its contribution to the softmax and the sigmoid.
const EXP_FLOOR: f64 = 2e-38;

/// One capsule `s` off by `e` (per value), squashed: `s |s| / (1 + |s|²)`, each value off by
/// at most `SQUASH_SLOPE·|e|₂` (from the input) plus the rounding of the f32 computation
/// (`|s|²` summed, its square root, `1 + |s|²`, a division and a product: `1.5·γ(D) + 4u`
/// relative, bounded by `γ(2D + 6)`).
fn squash_ref(s: &[f64], e: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let squared: f64 = s.iter().map(|v| v * v).sum();
    let factor = squared.sqrt() / (1.0 + squared);
    let carried = SQUASH_SLOPE * e.iter().map(|e| e * e).sum::<f64>().sqrt();
    let rounding = gamma(2 * s.len() + 6);
    s.iter()
        .map(|v| {
            let v = v * factor;
            (v, carried + rounding * (v.abs() + carried))
        })
        .unzip()
}

/// Primary capsules: the convolution (`[n, types * dim, h, w]`), its channels cut into `dim`-D
/// capsules, capsule `(t * h + y) * w + x` = channels `t * dim ..` at `(y, x)`, squashed.
fn primary_caps_ref(x: &Reference, conv: &ConvSpec, dim: usize) -> Reference {
    let y = conv_ref(x, conv);
    let [n, c, h, w] = y.dims;
    let count = c / dim * h * w;
    let mut out = Reference {
        dims: [n, 1, count, dim],
        value: vec![0.0; n * count * dim],
        bound: vec![0.0; n * count * dim],
        flat: true,
    };
    for i in 0..n {
        for capsule in 0..count {
            let (t, p) = (capsule / (h * w), capsule % (h * w));
            let at = |d: usize| y.at(i, t * dim + d, p / w, p % w);
            let values: Vec<f64> = (0..dim).map(|d| y.value[at(d)]).collect();
            let bounds: Vec<f64> = (0..dim).map(|d| y.bound[at(d)]).collect();
            let (v, e) = squash_ref(&values, &bounds);
            let dst = (i * count + capsule) * dim;
            out.value[dst..dst + dim].copy_from_slice(&v);
            out.bound[dst..dst + dim].copy_from_slice(&e);
        }
    }
    out
}

/// Digit capsules: the predictions `û_j|i = W_ij u_i` (dot products of `in_dim` terms, as a
/// linear layer without bias), then routing by agreement ([`route_ref`]).
fn digit_caps_ref(x: &Reference, routing: &RoutingSpec) -> Reference {
    let [inputs, classes, dim, in_dim] = routing.shape;
    let [n, _, count, e_dim] = x.dims;
    assert_eq!([count, e_dim], [inputs, in_dim]);
    let per_input = classes * dim;
    let mut out = Reference {
        dims: [n, 1, classes, dim],
        value: vec![0.0; n * per_input],
        bound: vec![0.0; n * per_input],
        flat: true,
    };
    for image in 0..n {
        let mut u_hat = vec![0.0; inputs * per_input];
        let mut e_hat = vec![0.0; inputs * per_input];
        for i in 0..inputs {
            for col in 0..per_input {
                let (mut sum, mut magnitude, mut carried) = (0.0, 0.0, 0.0);
                for e in 0..in_dim {
                    let src = (image * inputs + i) * in_dim + e;
                    let (a, ea) = (x.value[src], x.bound[src]);
                    let wt = routing.weight[(i * per_input + col) * in_dim + e] as f64;
                    sum += a * wt;
                    magnitude += (a * wt).abs() + wt.abs() * ea;
                    carried += wt.abs() * ea;
                }
                u_hat[i * per_input + col] = sum;
                e_hat[i * per_input + col] = carried + gamma(in_dim + 2) * magnitude;
            }
        }
        let (v, e) = route_ref(&u_hat, &e_hat, inputs, [classes, dim], routing.iterations);
        out.value[image * per_input..][..per_input].copy_from_slice(&v);
        out.bound[image * per_input..][..per_input].copy_from_slice(&e);
    }
    out
}

/// Routing by agreement (Procedure 1) of one image's predictions `u_hat` `[I, J, D]`, off by
/// `e_hat`: the output capsules `[J, D]` and their bounds. Per step:
///
/// * `c_i = softmax_j(b_i)`: with each `exp` argument off by at most `Δ` (the input's error,
///   the rounding of `b - max`, `exp`'s own error as [`EXP_ERROR`]), every `c_ij` is within a
///   factor `e^{±2Δ}` of the exact one; the sum and the division add `γ(J)` relative, the
///   clamp of `exp` [`EXP_FLOOR`];
/// * `s_j = Σ_i c_ij û_j|i`: the errors carried, plus `γ(I + 1)` of the magnitudes summed;
/// * `v_j = squash(s_j)` ([`squash_ref`]);
/// * `b_ij += û_j|i · v_j`: the errors carried, `γ(D + 1)` of the magnitudes, one rounding.
fn route_ref(
    u_hat: &[f64],
    e_hat: &[f64],
    inputs: usize,
    [classes, dim]: [usize; 2],
    iterations: usize,
) -> (Vec<f64>, Vec<f64>) {
    let per_input = classes * dim;
    let mut b = vec![0.0; inputs * classes];
    let mut eb = vec![0.0; inputs * classes];
    let (mut v, mut ev) = (vec![0.0; per_input], vec![0.0; per_input]);
    for iteration in 0..iterations {
        let mut c = vec![0.0; inputs * classes];
        let mut ec = vec![0.0; inputs * classes];
        for i in 0..inputs {
            let (row, erow) = (&b[i * classes..][..classes], &eb[i * classes..][..classes]);
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let emax = erow.iter().copied().fold(0.0, f64::max);
            let sum: f64 = row.iter().map(|b| (b - max).exp()).sum();
            let delta = (0..classes)
                .map(|j| erow[j] + U * ((row[j] - max).abs() + erow[j] + emax) + EXP_ERROR)
                .fold(0.0, f64::max);
            let spread = (2.0 * delta).exp() * (1.0 + gamma(classes)) - 1.0;
            for j in 0..classes {
                let cij = (row[j] - max).exp() / sum;
                c[i * classes + j] = cij;
                ec[i * classes + j] = cij * spread + EXP_FLOOR;
            }
        }
        let mut s = vec![0.0; per_input];
        let mut es = vec![0.0; per_input];
        for col in 0..per_input {
            let (mut sum, mut magnitude, mut carried) = (0.0, 0.0, 0.0);
            for i in 0..inputs {
                let (cij, e) = (c[i * classes + col / dim], ec[i * classes + col / dim]);
                let (u, eu) = (u_hat[i * per_input + col], e_hat[i * per_input + col]);
                sum += cij * u;
                carried += cij * eu + u.abs() * e + e * eu;
                magnitude += (cij + e) * (u.abs() + eu);
            }
            s[col] = sum;
            es[col] = carried + gamma(inputs + 1) * magnitude;
        }
        for j in 0..classes {
            let (vj, ej) = squash_ref(&s[j * dim..][..dim], &es[j * dim..][..dim]);
            v[j * dim..][..dim].copy_from_slice(&vj);
            ev[j * dim..][..dim].copy_from_slice(&ej);
        }
        if iteration + 1 < iterations {
            for i in 0..inputs {
                for j in 0..classes {
                    let (mut sum, mut magnitude, mut carried) = (0.0, 0.0, 0.0);
                    for d in 0..dim {
                        let k = i * per_input + j * dim + d;
                        let (u, eu, vv, e) = (u_hat[k], e_hat[k], v[j * dim + d], ev[j * dim + d]);
                        sum += u * vv;
                        carried += u.abs() * e + vv.abs() * eu + e * eu;
                        magnitude += (u.abs() + eu) * (vv.abs() + e);
                    }
                    let ea = carried + gamma(dim + 1) * magnitude;
                    let k = i * classes + j;
                    let next = b[k] + sum;
                    eb[k] += ea + U * (next.abs() + eb[k] + ea);
                    b[k] = next;
                }
            }
        }
    }
    (v, ev)
}

/// `|v|` of each capsule, off by at most `|e|₂` (length is 1-Lipschitz) plus its rounding
/// (`|v|²` summed: `γ(D)`; the root halves it and rounds; a product by the scale): `γ(D + 4)`.
fn capsule_length_ref(x: &Reference, scale: f32) -> Reference {
    let [n, _, count, dim] = x.dims;
    let scale = scale as f64;
    let mut out = Reference {
        dims: [n, count, 1, 1],
        value: vec![0.0; n * count],
        bound: vec![0.0; n * count],
        flat: true,
    };
    for k in 0..n * count {
        let (v, e) = (&x.value[k * dim..][..dim], &x.bound[k * dim..][..dim]);
        let length = v.iter().map(|v| v * v).sum::<f64>().sqrt();
        let carried = e.iter().map(|e| e * e).sum::<f64>().sqrt();
        out.value[k] = scale * length;
        out.bound[k] = scale.abs() * (carried + gamma(dim + 4) * (length + carried));
    }
    out
}

/// The logistic sigmoid, off by at most a quarter of its input's error (its largest slope) plus
/// its f32 rounding: `exp`'s error twice (in `e / (1 + e)`), three roundings, `exp`'s clamp.
fn sigmoid_ref(x: &Reference) -> Reference {
    let mut out = x.clone();
    for (v, e) in out.value.iter_mut().zip(&mut out.bound) {
        let y = 1.0 / (1.0 + (-*v).exp());
        let carried = 0.25 * *e;
        *e = carried + (2.0 * EXP_ERROR + 3.0 * U) * (y + carried) + EXP_FLOOR;
        *v = y;
    }
    out
}

/// The decoder's reconstruction of each image of capsules `x`: the longest capsule's index and
/// the image (`[1, pixels]`) from every capsule zeroed but that one (the first of equally long
/// ones), three linear layers, the sigmoid; `None` for an image whose longest capsule the
/// error bounds leave in doubt (another capsule's length within the bounds of it).
fn decoder_ref(x: &Reference, fc: &[LinearSpec; 3]) -> Vec<Option<(usize, Reference)>> {
    let [n, _, count, dim] = x.dims;
    let lengths = capsule_length_ref(x, 1.0);
    (0..n)
        .map(|image| {
            let l = &lengths.value[image * count..][..count];
            let el = &lengths.bound[image * count..][..count];
            let mut longest = 0;
            for j in 1..count {
                if l[j] > l[longest] {
                    longest = j;
                }
            }
            let clear = (0..count).all(|j| j == longest || l[j] + el[j] < l[longest] - el[longest]);
            if !clear {
                return None;
            }
            let mut masked = Reference {
                dims: [1, count * dim, 1, 1],
                value: vec![0.0; count * dim],
                bound: vec![0.0; count * dim],
                flat: true,
            };
            let src = (image * count + longest) * dim;
            masked.value[longest * dim..][..dim].copy_from_slice(&x.value[src..][..dim]);
            masked.bound[longest * dim..][..dim].copy_from_slice(&x.bound[src..][..dim]);
            let hidden = linear_ref(&linear_ref(&masked, &fc[0]), &fc[1]);
            Some((longest, sigmoid_ref(&linear_ref(&hidden, &fc[2]))))
        })
        .collect()
}

/// MC dropout's `mask(start, len, p)`, as `Network::forward_mc` takes it.
type Mask<'a> = &'a mut dyn FnMut(u64, usize, f32) -> Vec<f32>;

/// Every spec on `x`; `mask` draws each dropout layer's factors as `Network::forward_mc`
/// does (`None`: inference, dropout is the identity).
fn forward_ref(x: &Reference, specs: &[Spec], mut mc: Option<(usize, Mask)>) -> Reference {
    let mut x = x.clone();
    let mut repeated = false;
    let mut counter = 0u64;
    for spec in specs {
        x = match spec {
            Spec::Conv(c) => conv_ref(&x, c),
            Spec::Residual(a, b, s) => {
                let inner = conv_ref(&conv_ref(&x, a), b);
                let skip = s.as_ref().map_or_else(|| x.clone(), |s| conv_ref(&x, s));
                residual_sum_ref(&inner, &skip)
            }
            Spec::MaxPool(k) => max_pool_ref(&x, *k),
            Spec::GlobalAvgPool => global_avg_pool_ref(&x),
            Spec::Flatten => flatten_ref(&x),
            Spec::Linear(l) => linear_ref(&x, l),
            Spec::PrimaryCaps(c, _, dim) => primary_caps_ref(&x, c, *dim),
            Spec::DigitCaps(r) => digit_caps_ref(&x, r),
            Spec::Decoder(_) => x, // a side branch: see `decoder_ref`
            Spec::CapsuleLength(scale) => capsule_length_ref(&x, *scale),
            Spec::Dropout(p) => match &mut mc {
                None => x,
                Some((samples, mask)) => {
                    if !repeated {
                        x = repeat_ref(&x, *samples);
                        repeated = true;
                    }
                    let factors = mask(counter, x.value.len(), *p);
                    counter += x.value.len() as u64;
                    dropout_ref(&x, &factors)
                }
            },
        };
    }
    if let (Some((samples, _)), false) = (&mc, repeated) {
        x = repeat_ref(&x, *samples);
    }
    x
}

/// `error <= allowed`, false for a NaN error (a NaN output fails).
fn within(error: f64, allowed: f64) -> bool {
    error <= allowed
}

/// Where the kernels' output `got` (their layout) leaves the reference's bounds, described.
fn compare(got: &[f32], want: &Reference) -> Result<(), String> {
    let (value, bound) = want.kernel_order();
    if got.len() != value.len() {
        return Err(format!(
            "{} outputs, the reference has {}",
            got.len(),
            value.len()
        ));
    }
    let mut worst: Option<(usize, f64)> = None;
    let mut bad = 0;
    for i in 0..got.len() {
        let error = (got[i] as f64 - value[i]).abs();
        let allowed = bound[i] + TINY;
        if !within(error, allowed) {
            bad += 1;
            if worst.is_none_or(|(_, ratio)| error / allowed > ratio) {
                worst = Some((i, error / allowed));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{bad} of {} outputs off; worst at {i} (kernels' layout, reference dims {:?}{}): got {}, \
             reference {}, |error| {:.3e} > bound {:.3e}",
            got.len(),
            want.dims,
            if want.flat { ", features" } else { ", NCHW" },
            got[i],
            value[i],
            (got[i] as f64 - value[i]).abs(),
            bound[i] + TINY,
        )),
    }
}

/// Random NCHW inputs for `dims`.
fn inputs(rng: &mut Rng, dims: [usize; 4]) -> Vec<f32> {
    rng.values(dims.iter().product(), 1.0)
}

// --- the properties ---------------------------------------------------------------------

/// One property: draws a case from the generator and checks it on an instruction set.
pub struct Property {
    /// Its name, e.g. `convolution`.
    pub name: &'static str,
    /// Draw one case and check it on `isa`; `Err` describes the case and the mismatch.
    pub check: fn(&mut Rng, Isa) -> Result<(), String>,
}

/// Every property, cheapest first.
pub const PROPERTIES: &[Property] = &[
    Property {
        name: "gelu",
        check: gelu,
    },
    Property {
        name: "gemm",
        check: gemm,
    },
    Property {
        name: "convolution",
        check: convolution,
    },
    Property {
        name: "fused pool",
        check: fused_pool,
    },
    Property {
        name: "strided convolution",
        check: strided_convolution,
    },
    Property {
        name: "pools",
        check: pools,
    },
    Property {
        name: "primary capsules",
        check: primary_capsules,
    },
    Property {
        name: "routing",
        check: routing,
    },
    Property {
        name: "network",
        check: random_network,
    },
];

/// The property named `name`.
pub fn property(name: &str) -> &'static Property {
    PROPERTIES
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no property {name}"))
}

/// Run cases `0..cases` of `property` on `isa`; the failures, each described with what
/// replays it (seed, case).
pub fn run(property: &Property, isa: Isa, seed: u64, cases: usize) -> Vec<String> {
    (0..cases)
        .filter_map(|case| {
            let mut rng = Rng::new(seed, property.name, case as u64);
            (property.check)(&mut rng, isa).err().map(|e| {
                format!(
                    "{} on {}, seed {seed}, case {case}: {e}",
                    property.name,
                    isa.name()
                )
            })
        })
        .collect()
}

/// The exact GELU on every lane: a 1x1 convolution with identity weights (its product is the
/// input exactly) and GELU, over inputs from every region of the approximation: the bulk,
/// the tails, huge values, zeros, tiny values, GELU's minimum.
fn gelu(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    let c = rng.range(1, 20);
    let (h, w, n) = (rng.range(1, 6), rng.range(1, 6), rng.range(1, 9));
    let mut weight = vec![0.0f32; c * c];
    (0..c).for_each(|i| weight[i * c + i] = 1.0);
    let spec = Spec::Conv(ConvSpec {
        weight,
        shape: [c, c, 1, 1],
        bias: vec![0.0; c],
        padding: 0,
        stride: 1,
        activation: Activation::Gelu,
        pool: false,
    });
    let special = [
        0.0, -0.0, 1e-30, -1e-30, 1.2e-38, -0.75, -0.7518, 1.0, -1.0, 12.0, -12.0, 1e4, -1e4, 87.0,
        -87.0, 1e30, -1e30,
    ];
    let x: Vec<f32> = (0..n * c * h * w)
        .map(|_| match rng.range(0, 19) {
            0..=13 => rng.value(6.0),
            14..=16 => rng.value(20.0),
            17 => rng.value(1000.0),
            _ => rng.pick(&special),
        })
        .collect();
    let got = network(isa, [c, h, w], std::slice::from_ref(&spec))?.forward(&x);
    // NHWC of the kernels against NCHW here.
    let mut i = 0;
    for b in 0..n {
        for p in 0..h * w {
            for ch in 0..c {
                let input = x[(b * c + ch) * h * w + p];
                let want = gelu_f64(input as f64);
                let error = (got[i] as f64 - want).abs();
                if !within(error, gelu_error(want)) {
                    return Err(format!(
                        "gelu({input:e}) = {}, exact {want:e}: |error| {error:.3e} > {:.3e} \
                         ({c} channels)",
                        got[i],
                        gelu_error(want)
                    ));
                }
                i += 1;
            }
        }
    }
    Ok(())
}

/// Linear layers as the GEMM `[batch, k] x [k, n]`: batches 1-9 (the single-row path, the
/// 4-row tiles and their tails) and some larger ones, `n` not a multiple of the column
/// blocks, `k` up to a few hundred, every activation; input as `[k, 1, 1]` or `[1, 1, k]`
/// images, flattened. One case in 20 has more than 512 KB of weights (`k` 2,100-3,000, `n`
/// 63-90, batches 5-9), which the GEMM runs block-major (column block outside, rows inside).
fn gemm(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    let large = rng.chance(0.05);
    let batch = if large {
        rng.range(5, 9)
    } else if rng.chance(0.8) {
        rng.range(1, 9)
    } else {
        rng.range(10, 40)
    };
    let k = if large {
        rng.range(2100, 3000)
    } else if rng.chance(0.8) {
        rng.range(1, 96)
    } else {
        rng.range(97, 600)
    };
    let n = if large {
        rng.range(63, 90)
    } else if rng.chance(0.8) {
        rng.range(1, 40)
    } else {
        rng.range(41, 80)
    };
    let activation = rng.activation();
    let linear = LinearSpec::random(rng, n, k, activation);
    let input = if rng.chance(0.5) {
        [k, 1, 1]
    } else {
        [1, 1, k]
    };
    let specs = [Spec::Flatten, Spec::Linear(linear)];
    let dims = [batch, input[0], input[1], input[2]];
    let x = inputs(rng, dims);
    let got = network(isa, input, &specs)?.forward(&x);
    let want = forward_ref(&Reference::input(&x, dims), &specs, None);
    compare(&got, &want).map_err(|e| format!("batch {batch}, k {k}, n {n}: {e}"))
}

/// A random convolution (kernel sizes 1-7, not always square; padding 0-3; 1-20 input and
/// 1-40 output channels; odd and even image sizes; batches 1-9), the work capped by [`WORK`].
/// `strided`: strides 2-4, and a third of the kernels 7-9 wide (the capsule network's primary
/// capsules: 9x9, stride 2); else stride 1.
fn random_conv(rng: &mut Rng, pool: bool, strided: bool) -> (ConvSpec, [usize; 4]) {
    loop {
        let stride = if strided { rng.range(2, 4) } else { 1 };
        let kh = if strided && rng.chance(0.3) {
            rng.range(7, 9)
        } else {
            rng.range(1, 7)
        };
        let kw = if rng.chance(0.7) { kh } else { rng.range(1, 7) };
        let padding = rng.range(0, 3);
        let c_in = rng.range(1, 20);
        let c_out = rng.range(1, 40);
        // The padded image at least the kernel (a pool's window of outputs more).
        let least = |k: usize| {
            (k + usize::from(pool) * stride)
                .saturating_sub(2 * padding)
                .max(1)
        };
        let h = rng.range(least(kh), least(kh) + 10 + 2 * (stride - 1));
        let w = rng.range(least(kw), least(kw) + 10 + 2 * (stride - 1));
        let batch = rng.range(1, 9);
        let activation = if pool && rng.chance(0.5) {
            Activation::Gelu // the fused pool's own path: max(gelu(max), gelu(min))
        } else {
            rng.activation()
        };
        let conv = ConvSpec {
            stride,
            ..ConvSpec::random(rng, [c_out, c_in, kh, kw], padding, activation, pool)
        };
        let [oh, ow] = conv.output_size([h, w]);
        let work = batch * oh * ow * (1 + 3 * usize::from(pool)) * c_out * c_in * kh * kw;
        if oh >= 1 && ow >= 1 && work <= WORK {
            return (conv, [batch, c_in, h, w]);
        }
    }
}

/// One convolution layer against the reference (NCHW in, NHWC out).
fn check_conv(rng: &mut Rng, isa: Isa, pool: bool, strided: bool) -> Result<(), String> {
    let (conv, dims) = random_conv(rng, pool, strided);
    let description = format!(
        "input {dims:?}, kernel {:?}, padding {}, stride {}, {:?}{}",
        conv.shape,
        conv.padding,
        conv.stride,
        conv.activation,
        if pool { ", 2x2 max-pool" } else { "" }
    );
    let x = inputs(rng, dims);
    let specs = [Spec::Conv(conv)];
    let got = network(isa, [dims[1], dims[2], dims[3]], &specs)?.forward(&x);
    let want = forward_ref(&Reference::input(&x, dims), &specs, None);
    compare(&got, &want).map_err(|e| format!("{description}: {e}"))
}

fn convolution(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    check_conv(rng, isa, false, false)
}

/// Convolutions with the 2x2 max-pool fused into the kernel (the 4 rows of a tile are one
/// pool window; odd sizes drop a row and a column).
fn fused_pool(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    check_conv(rng, isa, true, false)
}

/// Strided convolutions (strides 2-4, kernels up to 9x9, padding, a fused pool in a quarter of
/// them): the rows of the GEMM start `stride` pixels apart, the rest is the stride-1 kernel.
fn strided_convolution(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    let pool = rng.chance(0.25);
    check_conv(rng, isa, pool, true)
}

/// Primary capsules: a convolution (strides 1-3, kernels 1-9, mostly no padding and no
/// activation, as the capsule network's), its channels cut into 1-4 capsule types of 1-9
/// values, each squashed; weights scaled by 0.1-10, so that capsules are short (squash
/// quadratic), near 1 and long (saturated).
fn primary_capsules(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    let (conv, dims, types, dim) = loop {
        let (types, dim) = (rng.range(1, 4), rng.range(1, 9));
        let (k, stride) = (rng.range(1, 9), rng.range(1, 3));
        let padding = if rng.chance(0.2) { 1 } else { 0 };
        let c_in = rng.range(1, 8);
        let least = k.saturating_sub(2 * padding).max(1);
        let (h, w) = (rng.range(least, least + 12), rng.range(least, least + 12));
        let batch = rng.range(1, 5);
        let activation = if rng.chance(0.8) {
            Activation::Identity
        } else {
            rng.activation()
        };
        let shape = [types * dim, c_in, k, k];
        let mut conv = ConvSpec::random(rng, shape, padding, activation, false);
        conv.stride = stride;
        let gain = rng.pick(&[0.1, 1.0, 10.0]);
        conv.weight.iter_mut().for_each(|w| *w *= gain);
        let [oh, ow] = conv.output_size([h, w]);
        if batch * oh * ow * types * dim * c_in * k * k <= WORK {
            break (conv, [batch, c_in, h, w], types, dim);
        }
    };
    let description = format!(
        "input {dims:?}, {}, {types} types of {dim}",
        conv.describe()
    );
    let x = inputs(rng, dims);
    let specs = [Spec::PrimaryCaps(conv, types, dim)];
    let got = network(isa, [dims[1], dims[2], dims[3]], &specs)?.forward(&x);
    let want = forward_ref(&Reference::input(&x, dims), &specs, None);
    compare(&got, &want).map_err(|e| format!("{description}: {e}"))
}

/// A small capsule network: maybe a convolution, primary capsules (a grid of 1-4 x 1-4
/// positions, 1-3 types of 1-8 values), digit capsules (1-12 of 1-16 values, 1-4 routing
/// iterations, matrices scaled so that the routing meets short and long capsules), maybe a
/// decoder (two hidden ReLU layers, the sigmoid), capsule lengths x a scale. Checked: the logits
/// (`forward`, and `forward_mc`, which repeats them without dropout), the digit capsules
/// (`features`) and the reconstruction (`reconstruct`; an image whose longest capsule the
/// error bounds leave in doubt is skipped).
fn routing(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    let c = rng.range(1, 4);
    let mut specs = Vec::new();
    let mut channels = c;
    if rng.chance(0.3) {
        let c_out = rng.range(1, 6);
        let activation = rng.activation();
        specs.push(Spec::Conv(ConvSpec::random(
            rng,
            [c_out, c, 3, 3],
            1,
            activation,
            false,
        )));
        channels = c_out;
    }
    let (types, dim) = (rng.range(1, 3), rng.range(1, 8));
    let (k, stride) = (rng.range(1, 5), rng.range(1, 3));
    let (gh, gw) = (rng.range(1, 4), rng.range(1, 4));
    // The image the grid needs, and some of what the stride leaves out.
    let h = (gh - 1) * stride + k + rng.range(0, stride - 1);
    let w = (gw - 1) * stride + k + rng.range(0, stride - 1);
    let mut primary = ConvSpec::random(
        rng,
        [types * dim, channels, k, k],
        0,
        Activation::Identity,
        false,
    );
    primary.stride = stride;
    let in_capsules = types * gh * gw;
    specs.push(Spec::PrimaryCaps(primary, types, dim));
    let (classes, out_dim, iterations) = (rng.range(1, 12), rng.range(1, 16), rng.range(1, 4));
    let gain = rng.pick(&[0.3, 1.0, 3.0]) * (3.0 / dim as f64).sqrt();
    let shape = [in_capsules, classes, out_dim, dim];
    let weight = rng.values(shape.iter().product(), gain);
    specs.push(Spec::DigitCaps(RoutingSpec {
        weight,
        shape,
        iterations,
    }));
    let decoder = rng.chance(0.5).then(|| {
        let (h1, h2, pixels) = (rng.range(1, 24), rng.range(1, 24), rng.range(1, 40));
        Box::new([
            LinearSpec::random(rng, h1, classes * out_dim, Activation::Relu),
            LinearSpec::random(rng, h2, h1, Activation::Relu),
            LinearSpec::random(rng, pixels, h2, Activation::Identity),
        ])
    });
    if let Some(fc) = &decoder {
        specs.push(Spec::Decoder(fc.clone()));
    }
    specs.push(Spec::CapsuleLength(rng.pick(&[1.0, 10.0, 0.37])));
    let network = network(isa, [c, h, w], &specs)?;
    let batch = rng.range(1, 5);
    let dims = [batch, c, h, w];
    let x = inputs(rng, dims);
    let input = Reference::input(&x, dims);
    let layers = describe(&specs);
    let describe = |what: &str, e: String| format!("{what} of {dims:?} through [{layers}]: {e}");
    let logits = forward_ref(&input, &specs, None);
    compare(&network.forward(&x), &logits).map_err(|e| describe("forward", e))?;
    let head = &specs[..specs.len() - 1];
    let capsules = forward_ref(&input, head, None);
    compare(&network.features(&x), &capsules).map_err(|e| describe("features", e))?;
    let samples = rng.range(1, 3);
    let one = &x[..c * h * w];
    let got = network.forward_mc(one, samples, |_, len, _| vec![1.0; len]);
    let want = forward_ref(
        &Reference::input(one, [1, c, h, w]),
        &specs,
        Some((samples, &mut |_, len, _| vec![1.0; len])),
    );
    compare(&got, &want).map_err(|e| describe("forward_mc", e))?;
    let reconstruction = network.reconstruct(&x);
    match (&decoder, reconstruction) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(describe("reconstruct", "an image without a decoder".into())),
        (Some(_), None) => Err(describe("reconstruct", "no image from a decoder".into())),
        (Some(fc), Some((kept, got))) => {
            let pixels = fc[2].shape[0];
            let wanted = decoder_ref(&capsules, fc);
            if kept.len() != batch || got.len() != batch * pixels {
                return Err(describe(
                    "reconstruct",
                    format!(
                        "{} capsules kept, {} values for {batch} images",
                        kept.len(),
                        got.len()
                    ),
                ));
            }
            for (image, want) in wanted.iter().enumerate() {
                if let Some((longest, want)) = want {
                    if kept[image] != *longest {
                        return Err(describe(
                            &format!("reconstruct, image {image}"),
                            format!("kept capsule {}, the longest is {longest}", kept[image]),
                        ));
                    }
                    compare(&got[image * pixels..][..pixels], want)
                        .map_err(|e| describe(&format!("reconstruct, image {image}"), e))?;
                }
            }
            Ok(())
        }
    }
}

/// The stand-alone pools: a `k` x `k` max-pool (floor mode) or the global average pool.
fn pools(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    let c = rng.range(1, 20);
    let (h, w, n) = (rng.range(1, 13), rng.range(1, 13), rng.range(1, 9));
    let spec = if rng.chance(0.5) {
        Spec::MaxPool(rng.range(1, h.min(w).min(4)))
    } else {
        Spec::GlobalAvgPool
    };
    let dims = [n, c, h, w];
    let x = inputs(rng, dims);
    let specs = [spec];
    let got = network(isa, [c, h, w], &specs)?.forward(&x);
    let want = forward_ref(&Reference::input(&x, dims), &specs, None);
    compare(&got, &want).map_err(|e| format!("{} of {dims:?}: {e}", describe(&specs)))
}

/// A random network: convolutions (some pooled), residual blocks (identity or projected
/// shortcut), max-pools, then a flatten (the first linear layer's inputs permuted from
/// PyTorch's order) or a global average pool, then linear layers with dropout between them.
/// Checked at inference (`forward`, `features`) and under MC dropout (`forward_mc`,
/// `features_mc`, the masks drawn from a hash of the value index).
fn random_network(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    let c = rng.range(1, 4);
    let (h, w) = (rng.range(5, 12), rng.range(5, 12));
    let mut specs = Vec::new();
    let (mut ch, mut size) = (c, [h, w]);
    for _ in 0..rng.range(1, 3) {
        let c_out = rng.range(1, 8);
        match rng.range(0, 3) {
            0 | 1 => {
                let k = rng.range(1, 5).min(size[0] + 2).min(size[1] + 2);
                // Enough padding for the kernel to fit (at most 1 here), at most 2 and k - 1.
                let need = k.saturating_sub(size[0].min(size[1])).div_ceil(2);
                let padding = rng.range(need, need.max(2.min(k - 1)));
                let activation = rng.activation();
                let conv = ConvSpec::random(rng, [c_out, ch, k, k], padding, activation, false);
                let [oh, ow] = conv.output_size(size);
                let pool = oh >= 4 && ow >= 4 && rng.chance(0.5);
                let conv = ConvSpec { pool, ..conv };
                size = conv.output_size(size);
                specs.push(Spec::Conv(conv));
                ch = c_out;
            }
            2 => {
                let k = rng.pick(&[1, 3, 5]);
                let activation = rng.activation();
                let a = ConvSpec::random(rng, [c_out, ch, k, k], k / 2, activation, false);
                let b = ConvSpec::random(
                    rng,
                    [c_out, c_out, k, k],
                    k / 2,
                    Activation::Identity,
                    false,
                );
                let shortcut = (c_out != ch || rng.chance(0.3)).then(|| {
                    ConvSpec::random(rng, [c_out, ch, 1, 1], 0, Activation::Identity, false)
                });
                specs.push(Spec::Residual(a, b, shortcut));
                ch = c_out;
            }
            _ if size[0] >= 2 && size[1] >= 2 => {
                specs.push(Spec::MaxPool(2));
                size = [size[0] / 2, size[1] / 2];
            }
            _ => {}
        }
    }
    let mut features = if rng.chance(0.6) {
        specs.push(Spec::Flatten);
        ch * size[0] * size[1]
    } else {
        specs.push(Spec::GlobalAvgPool);
        ch
    };
    let linears = rng.range(1, 3);
    for i in 0..linears {
        let last = i + 1 == linears;
        let n = if last {
            rng.range(1, 12)
        } else {
            rng.range(1, 24)
        };
        let activation = if last {
            Activation::Identity
        } else {
            rng.activation()
        };
        specs.push(Spec::Linear(LinearSpec::random(
            rng, n, features, activation,
        )));
        features = n;
        if !last && rng.chance(0.6) {
            specs.push(Spec::Dropout(rng.pick(&[0.1, 0.25, 0.5])));
        }
    }
    let network = network(isa, [c, h, w], &specs)?;
    let batch = rng.range(1, 5);
    let dims = [batch, c, h, w];
    let x = inputs(rng, dims);
    let input = Reference::input(&x, dims);
    let layers = describe(&specs);
    let describe = |what: &str, e: String| format!("{what} of {dims:?} through [{layers}]: {e}");
    let got = network.forward(&x);
    compare(&got, &forward_ref(&input, &specs, None)).map_err(|e| describe("forward", e))?;
    let head = &specs[..specs.len() - 1];
    let got = network.features(&x);
    compare(&got, &forward_ref(&input, head, None)).map_err(|e| describe("features", e))?;
    // MC dropout of the first image: inverted dropout's factors from a hash of the index.
    let one = &x[..c * h * w];
    let one_ref = Reference::input(one, [1, c, h, w]);
    let samples = rng.range(1, 4);
    let salt = rng.next();
    let mask = move |start: u64, len: usize, p: f32| -> Vec<f32> {
        (start..start + len as u64)
            .map(|i| {
                let mut r = Rng::new(salt, "mask", i);
                if r.unit() >= p as f64 {
                    1.0 / (1.0 - p)
                } else {
                    0.0
                }
            })
            .collect()
    };
    let got = network.forward_mc(one, samples, mask);
    let want = forward_ref(&one_ref, &specs, Some((samples, &mut { mask })));
    compare(&got, &want).map_err(|e| describe("forward_mc", e))?;
    let got = network.features_mc(one, samples, mask);
    let want = forward_ref(&one_ref, head, Some((samples, &mut { mask })));
    compare(&got, &want).map_err(|e| describe("features_mc", e))
}
