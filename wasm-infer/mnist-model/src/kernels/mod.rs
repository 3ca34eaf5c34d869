//! This project's own CPU kernels: the forward pass of a conv/linear network on raw f32
//! buffers, SIMD-tiled for the instruction set at hand, generic over shapes.
//!
//! burn stays the model definition; `crate::fast` builds a [`Network`] once, from the
//! safetensors file (or, as the reference, from a burn [`crate::Model`] loaded by burn-store):
//! BatchNorm folded into the convolutions, weights packed for the kernels. A [`Network`] is
//!
//! ```text
//! input [N, C, H, W] (NCHW, normalised) -> to NHWC
//!   -> operations on NHWC images: convolutions (stride 1, zero padding; + bias, activation,
//!      optional fused 2x2 max-pool), residual blocks, max-pools, global average pool
//!   -> flatten (h, w, c)   (the first linear layer's weights are permuted to match at load)
//!   -> linear layers (+ bias, activation), dropout  -> logits [N, classes]
//! ```
//!
//! The operations come from the weights file's layer plan (`crate::plan`) and their shapes
//! from its tensors, so any architecture made of these kinds of layers runs on these kernels. The instruction set
//! is chosen at run time ([`Isa`]); every kernel is written once (`gemm`, `gelu`) over the
//! `simd::Simd` vocabulary.

mod gelu;
mod gemm;
mod simd;

use alloc::vec;
use alloc::vec::Vec;

pub(crate) use crate::params::Shape;
pub use gemm::Activation;
pub(crate) use gemm::{ConvLayer, LinearLayer, Packed};
use simd::Simd;

/// An instruction set the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, 4 lanes at a time: runs anywhere (the bare-metal fallback).
    Scalar,
    /// x86-64's baseline SSE2: 4 lanes.
    #[cfg(target_arch = "x86_64")]
    Sse2,
    /// x86-64 AVX2 + FMA: 8 lanes, fused multiply-add (when the CPU has both).
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// wasm `simd128`: 4 lanes, multiply then add.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
    /// wasm `simd128` + `relaxed-simd`: `f32x4.relaxed_madd` (a build of its own, feature
    /// `relaxed-simd`; the page loads it only where the browser validates relaxed SIMD).
    #[cfg(all(
        target_arch = "wasm32",
        target_feature = "simd128",
        feature = "relaxed-simd"
    ))]
    Relaxed,
}

impl Isa {
    /// Every instruction set compiled into this build (whether this CPU has it or not).
    pub const ALL: &'static [Isa] = &[
        Isa::Scalar,
        #[cfg(target_arch = "x86_64")]
        Isa::Sse2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma,
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128,
        #[cfg(all(
            target_arch = "wasm32",
            target_feature = "simd128",
            feature = "relaxed-simd"
        ))]
        Isa::Relaxed,
    ];

    /// Short name: `scalar`, `sse2`, `avx2`, `simd128` or `relaxed`.
    pub fn name(self) -> &'static str {
        &self.backend_name()["fast-".len()..]
    }

    /// The name of the kernels on this instruction set as a backend (`crate::Backend::name`):
    /// `fast-scalar`, `fast-sse2`, `fast-avx2`, `fast-simd128` or `fast-relaxed`.
    pub fn backend_name(self) -> &'static str {
        match self {
            Isa::Scalar => "fast-scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Sse2 => "fast-sse2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => "fast-avx2",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => "fast-simd128",
            #[cfg(all(
                target_arch = "wasm32",
                target_feature = "simd128",
                feature = "relaxed-simd"
            ))]
            Isa::Relaxed => "fast-relaxed",
        }
    }

    /// Whether this CPU can run it. AVX2 + FMA is detected at run time with the `std`
    /// feature, and otherwise only when the build targets it (`-C target-feature`).
    pub fn available(self) -> bool {
        match self {
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            Isa::Avx2Fma => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
            Isa::Avx2Fma => cfg!(all(target_feature = "avx2", target_feature = "fma")),
            _ => true,
        }
    }

    /// The fastest instruction set this build and CPU have.
    pub fn best() -> Isa {
        Self::ALL
            .iter()
            .rev()
            .copied()
            .find(|isa| isa.available())
            .unwrap_or(Isa::Scalar)
    }

    /// f32 lanes per vector: the packed weights' column blocks are twice this wide.
    fn lanes(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => 8,
            _ => 4,
        }
    }

    /// Width of a packed column block for this instruction set.
    pub(crate) fn block_width(self) -> usize {
        2 * self.lanes()
    }
}

/// One step of [`Network::forward`] (an index into the network's operations), for timing
/// them separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage(pub usize);

/// One operation of the forward pass, on NHWC images or flat feature rows.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// Convolution with bias (BatchNorm folded in), activation, optional 2x2 max-pool.
    Conv(ConvLayer),
    /// `relu(b(a(x)) + shortcut(x))`.
    Residual(alloc::boxed::Box<Residual>),
    /// `k` x `k` max-pool, stride `k`, floor mode.
    MaxPool(usize),
    /// Mean over the pixels of each channel.
    GlobalAvgPool,
    /// Linear layer with bias and activation (after convolutions, its inputs are permuted
    /// at load from PyTorch's `(c, h, w)` flatten order to the kernels' `(h, w, c)`).
    Linear(LinearLayer),
    /// Dropout with this probability: the identity, except under MC dropout.
    Dropout(f32),
}

/// A residual block's convolutions (`b` and `shortcut` without activation).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Residual {
    pub a: ConvLayer,
    pub b: ConvLayer,
    pub shortcut: Option<ConvLayer>,
}

/// A network ready for the kernels (built by `crate::fast` from a layer plan and weights).
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub(crate) isa: Isa,
    /// `[channels, height, width]` of one input image.
    pub(crate) input: [usize; 3],
    pub(crate) ops: Vec<Op>,
    /// A readable name per operation, e.g. `conv1 + bias + GELU + 2x2 max-pool (fused)`.
    pub(crate) names: Vec<alloc::string::String>,
    /// `shapes[i]` enters `ops[i]`; `shapes[ops.len()]` is the output.
    pub(crate) shapes: Vec<Shape>,
}

impl Network {
    /// The instruction set the kernels run on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Values per input image (`C * H * W`).
    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    /// Outputs per image (the last operation's features).
    pub fn output_len(&self) -> usize {
        self.shapes.last().map_or(0, |s| s.len())
    }

    /// The steps of the forward pass, in order (dropout, the identity at inference, is none).
    pub fn stages(&self) -> Vec<Stage> {
        (0..self.ops.len())
            .filter(|&i| !matches!(self.ops[i], Op::Dropout(_)))
            .map(Stage)
            .collect()
    }

    /// A readable name for `stage`, e.g. `conv1 + bias + GELU + 2x2 max-pool (fused)`.
    pub fn stage_name(&self, stage: Stage) -> alloc::string::String {
        self.names[stage.0].clone()
    }

    /// Logits for a batch: `input` is `[N, C, H, W]` (NCHW, already normalised), `N >= 1`;
    /// returns `[N, output_len]`.
    ///
    /// # Panics
    /// When `input.len()` is not a multiple of [`Network::input_len`] (callers check first).
    pub fn forward(&self, input: &[f32]) -> Vec<f32> {
        self.forward_to(input, self.ops.len())
    }

    /// The penultimate features `[N, F]` of a batch (`input` as [`Network::forward`]): every
    /// operation but the last, the head that `crate::adapt` re-fits.
    pub fn features(&self, input: &[f32]) -> Vec<f32> {
        self.forward_to(input, self.ops.len() - 1)
    }

    /// The operations before `end`, at inference (dropout is the identity).
    fn forward_to(&self, input: &[f32], end: usize) -> Vec<f32> {
        let mut x = self.to_nhwc(input);
        for stage in self.stages().into_iter().take_while(|s| s.0 < end) {
            x = self.run(stage, &x);
        }
        x
    }

    /// MC dropout (Gal & Ghahramani, 2016): logits `[samples, output_len]` of one image
    /// (`input`: `[1, C, H, W]`, normalised) under `samples` random dropout masks.
    ///
    /// The layers before the first dropout are deterministic, so they run once and their
    /// output is repeated `samples` times; every dropout layer then masks its `[samples,
    /// features]` input, value `i` (row-major, counting on across the dropout layers in order)
    /// kept when `uniform(seed, i) >= p` and scaled by `1 / (1 - p)`
    /// ([`crate::uncertainty::dropout_mask`]; `trainer.uncertainty` draws the same masks from
    /// the same seed). Without dropout layers all rows are equal.
    ///
    /// # Panics
    /// When `input` is not one image, or `samples` is 0.
    pub fn forward_mc(&self, input: &[f32], samples: usize, seed: u64) -> Vec<f32> {
        self.mc_to(input, samples, seed, self.ops.len())
    }

    /// [`Network::forward_mc`] up to the penultimate features: `[samples, F]`, the same masks.
    pub fn features_mc(&self, input: &[f32], samples: usize, seed: u64) -> Vec<f32> {
        self.mc_to(input, samples, seed, self.ops.len() - 1)
    }

    fn mc_to(&self, input: &[f32], samples: usize, seed: u64, end: usize) -> Vec<f32> {
        assert!(input.len() == self.input_len() && samples > 0);
        let mut x = self.to_nhwc(input);
        let mut repeated = false;
        let mut counter = 0u64;
        for (i, op) in self.ops[..end].iter().enumerate() {
            if let Op::Dropout(p) = *op {
                if !repeated {
                    x = x.repeat(samples);
                    repeated = true;
                }
                let mask = crate::uncertainty::dropout_mask(seed, counter, x.len(), p);
                x.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
                counter += x.len() as u64;
            } else {
                x = self.run(Stage(i), &x);
            }
        }
        if !repeated {
            x = x.repeat(samples);
        }
        x
    }

    /// NCHW -> NHWC (a copy; the same layout when C = 1).
    pub(crate) fn to_nhwc(&self, input: &[f32]) -> Vec<f32> {
        let [c, h, w] = self.input;
        let per_image = self.input_len();
        assert!(
            !input.is_empty() && input.len() % per_image == 0,
            "input is not [N, {c}, {h}, {w}]"
        );
        if c == 1 {
            return input.to_vec();
        }
        let mut out = vec![0.0; input.len()];
        for (src, dst) in input
            .chunks_exact(per_image)
            .zip(out.chunks_exact_mut(per_image))
        {
            for ch in 0..c {
                for p in 0..h * w {
                    dst[p * c + ch] = src[ch * h * w + p];
                }
            }
        }
        out
    }

    /// One stage over a batch: `input` is the previous stage's output (NHWC after `to_nhwc`).
    ///
    /// # Panics
    /// When `input.len()` is not a whole batch of the stage's input shape.
    pub fn run(&self, stage: Stage, input: &[f32]) -> Vec<f32> {
        let (in_len, out_len) = (self.shapes[stage.0].len(), self.shapes[stage.0 + 1].len());
        assert!(
            in_len > 0 && input.len().is_multiple_of(in_len),
            "a batch of {in_len}-value inputs"
        );
        let mut out = vec![0.0; input.len() / in_len * out_len];
        match self.isa {
            Isa::Scalar => self.run_with::<simd::Scalar>(stage, input, &mut out),
            #[cfg(target_arch = "x86_64")]
            Isa::Sse2 => self.run_with::<simd::Sse2>(stage, input, &mut out),
            // SAFETY: a Network only holds Avx2Fma when `Isa::available` said the CPU has it.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { self.run_avx2(stage, input, &mut out) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => self.run_with::<simd::Simd128>(stage, input, &mut out),
            // SAFETY: a module using relaxed SIMD only instantiates where the engine has it.
            #[cfg(all(
                target_arch = "wasm32",
                target_feature = "simd128",
                feature = "relaxed-simd"
            ))]
            Isa::Relaxed => unsafe { self.run_relaxed(stage, input, &mut out) },
        }
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, stage: Stage, input: &[f32], out: &mut [f32]) {
        self.run_with::<simd::Avx2Fma>(stage, input, out)
    }

    #[cfg(all(
        target_arch = "wasm32",
        target_feature = "simd128",
        feature = "relaxed-simd"
    ))]
    #[target_feature(enable = "relaxed-simd")]
    unsafe fn run_relaxed(&self, stage: Stage, input: &[f32], out: &mut [f32]) {
        self.run_with::<simd::Relaxed>(stage, input, out)
    }

    /// The stage's kernel for instruction set `S`; inlined into each entry point above so
    /// that it is compiled with that entry point's target features.
    #[inline(always)]
    fn run_with<S: Simd>(&self, stage: Stage, input: &[f32], out: &mut [f32]) {
        let (shape, out_shape) = (self.shapes[stage.0], self.shapes[stage.0 + 1]);
        let images = input
            .chunks_exact(shape.len())
            .zip(out.chunks_exact_mut(out_shape.len()));
        let size = match shape {
            Shape::Image([h, w, _]) => [h, w],
            Shape::Flat(_) => [1, 1],
        };
        match &self.ops[stage.0] {
            Op::Conv(_) | Op::Residual(_) => {
                // Both kinds as convolution steps, so that the kernel is inlined once.
                let (steps, residual) = match &self.ops[stage.0] {
                    Op::Conv(conv) => (alloc::vec![(conv, Buffer::Input, Buffer::Out)], None),
                    Op::Residual(block) => {
                        let mut steps = alloc::vec![
                            (&block.a, Buffer::Input, Buffer::Temp),
                            (&block.b, Buffer::Temp, Buffer::Out),
                        ];
                        if let Some(shortcut) = &block.shortcut {
                            steps.push((shortcut, Buffer::Input, Buffer::Temp));
                        }
                        (steps, Some(block))
                    }
                    _ => unreachable!(),
                };
                for (src, dst) in images {
                    let projected = convolve::<S>(&steps, src, size, dst);
                    if let Some(block) = residual {
                        // relu(b(a(x)) + shortcut(x)), the shortcut the identity or projected.
                        let skip = if block.shortcut.is_some() {
                            &projected[..]
                        } else {
                            src
                        };
                        dst.iter_mut()
                            .zip(skip)
                            .for_each(|(o, s)| *o = (*o + s).max(0.0));
                    }
                }
            }
            Op::MaxPool(k) => {
                let Shape::Image([_, _, c]) = shape else {
                    unreachable!("checked at load")
                };
                images.for_each(|(src, dst)| max_pool(src, [size[0], size[1], c], *k, dst));
            }
            Op::GlobalAvgPool => images.for_each(|(src, dst)| global_avg_pool(src, dst)),
            Op::Linear(linear) => linear.run::<S>(input, out),
            Op::Dropout(_) => out.copy_from_slice(input),
        }
    }
}

/// Where a convolution step of [`convolve`] reads or writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Buffer {
    /// The operation's input image.
    Input,
    /// A scratch image.
    Temp,
    /// The operation's output image.
    Out,
}

/// Run convolution steps on one image of `size`, each `(layer, from, to)`, in order; returns
/// the last image written to `Temp`. Every convolution of the network goes through this one
/// call of the kernel: each inlined copy of it is about 20 KB of wasm per instruction set.
#[inline(always)]
fn convolve<S: Simd>(
    steps: &[(&ConvLayer, Buffer, Buffer)],
    input: &[f32],
    size: [usize; 2],
    out: &mut [f32],
) -> Vec<f32> {
    let mut temp = Vec::new();
    for &(conv, from, to) in steps {
        let [oh, ow] = conv.output_size(size);
        let mut result = vec![0.0; oh * ow * conv.weights.n];
        let src = if from == Buffer::Temp {
            &temp[..]
        } else {
            input
        };
        conv.run::<S>(src, size, &mut result);
        if to == Buffer::Out {
            out.copy_from_slice(&result);
        } else {
            temp = result;
        }
    }
    temp
}

/// `k` x `k` max-pool (stride `k`, floor) of one NHWC image `[h, w, c]`.
fn max_pool(input: &[f32], [h, w, c]: [usize; 3], k: usize, out: &mut [f32]) {
    let (oh, ow) = (h / k, w / k);
    for y in 0..oh {
        for x in 0..ow {
            let dst = &mut out[(y * ow + x) * c..][..c];
            dst.fill(f32::NEG_INFINITY);
            for dy in 0..k {
                for dx in 0..k {
                    let src = &input[((y * k + dy) * w + x * k + dx) * c..][..c];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.max(*s));
                }
            }
        }
    }
}

/// Mean over the pixels of one NHWC image, per channel: `out` has the channels.
fn global_avg_pool(input: &[f32], out: &mut [f32]) {
    let c = out.len();
    out.fill(0.0);
    for pixel in input.chunks_exact(c) {
        out.iter_mut().zip(pixel).for_each(|(o, v)| *o += v);
    }
    let pixels = (input.len() / c) as f32;
    out.iter_mut().for_each(|o| *o /= pixels);
}
