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
//! * GELU adds its approximation's error, `1e-6 + 2^-23·|gelu(x)|` (the bound the `gelu` property
//!   holds it to: 1e-6 absolute as documented in src/gelu.rs, plus one f32 ulp of the result
//!   for large `|x|`), to its input's error times GELU's steepest slope, 1.13.
//!
//! The check is `|got - reference| <= bound + 1e-37` (the constant covers underflow to 0).
//! The bound is relative to the magnitudes summed (`Σ|a_k·w_k|`), not to the result, so
//! cancellation cannot make it fail spuriously; it is still about `10^-5` of those magnitudes
//! for the largest `K` here, while a wrong index, a missed tail column or a stale accumulator
//! is off by the size of a term.

#![allow(dead_code)] // each harness uses its part

use mnist_kernels::{Activation, Conv, Isa, Layer, Linear, Network};

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
    1e-6 + y.abs() / 8_388_608.0
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
            activation: self.activation,
            pool: self.pool,
        }
    }

    /// `[oh, ow]` on an `[h, w]` image (after the pool).
    fn output_size(&self, [h, w]: [usize; 2]) -> [usize; 2] {
        let [_, _, kh, kw] = self.shape;
        let (oh, ow) = (h + 2 * self.padding + 1 - kh, w + 2 * self.padding + 1 - kw);
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

#[derive(Clone, Debug)]
enum Spec {
    Conv(ConvSpec),
    Residual(ConvSpec, ConvSpec, Option<ConvSpec>),
    MaxPool(usize),
    GlobalAvgPool,
    Flatten,
    Linear(LinearSpec),
    Dropout(f32),
}

impl ConvSpec {
    /// Shape and options, without the numbers: `conv [8, 2, 3, 3] pad 1 Gelu pool`.
    fn describe(&self) -> String {
        format!(
            "conv {:?} pad {} {:?}{}",
            self.shape,
            self.padding,
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
    let (ch, cw) = (h + 2 * conv.padding + 1 - kh, w + 2 * conv.padding + 1 - kw);
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
                                let (y, xx) =
                                    (oy as isize + ky as isize - p, ox as isize + kx as isize - p);
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
        name: "pools",
        check: pools,
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
/// images, flattened.
fn gemm(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    let batch = if rng.chance(0.8) {
        rng.range(1, 9)
    } else {
        rng.range(10, 40)
    };
    let k = if rng.chance(0.8) {
        rng.range(1, 96)
    } else {
        rng.range(97, 600)
    };
    let n = if rng.chance(0.8) {
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
fn random_conv(rng: &mut Rng, pool: bool) -> (ConvSpec, [usize; 4]) {
    loop {
        let kh = rng.range(1, 7);
        let kw = if rng.chance(0.7) { kh } else { rng.range(1, 7) };
        let padding = rng.range(0, 3);
        let c_in = rng.range(1, 20);
        let c_out = rng.range(1, 40);
        // The padded image at least the kernel (at least twice the pool's window).
        let least = |k: usize| (k + usize::from(pool)).saturating_sub(2 * padding).max(1);
        let h = rng.range(least(kh), least(kh) + 10);
        let w = rng.range(least(kw), least(kw) + 10);
        let batch = rng.range(1, 9);
        let activation = if pool && rng.chance(0.5) {
            Activation::Gelu // the fused pool's own path: max(gelu(max), gelu(min))
        } else {
            rng.activation()
        };
        let conv = ConvSpec::random(rng, [c_out, c_in, kh, kw], padding, activation, pool);
        let [oh, ow] = conv.output_size([h, w]);
        let work = batch * oh * ow * (1 + 3 * usize::from(pool)) * c_out * c_in * kh * kw;
        if oh >= 1 && ow >= 1 && work <= WORK {
            return (conv, [batch, c_in, h, w]);
        }
    }
}

/// One convolution layer against the reference (NCHW in, NHWC out).
fn check_conv(rng: &mut Rng, isa: Isa, pool: bool) -> Result<(), String> {
    let (conv, dims) = random_conv(rng, pool);
    let description = format!(
        "input {dims:?}, kernel {:?}, padding {}, {:?}{}",
        conv.shape,
        conv.padding,
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
    check_conv(rng, isa, false)
}

/// Convolutions with the 2x2 max-pool fused into the kernel (the 4 rows of a tile are one
/// pool window; odd sizes drop a row and a column).
fn fused_pool(rng: &mut Rng, isa: Isa) -> Result<(), String> {
    check_conv(rng, isa, true)
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
