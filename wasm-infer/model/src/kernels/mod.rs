//! This project's own CPU kernels: the forward pass of a conv/linear network on raw f32
//! buffers, SIMD-tiled for the instruction set at hand, generic over shapes.
//!
//! burn stays the model definition; `crate::fast` builds a [`Network`] once, from the
//! safetensors file (or, as the reference, from a burn [`crate::Model`] loaded by burn-store):
//! BatchNorm folded into the convolutions, weights packed for the kernels. A [`Network`] is
//!
//! ```text
//! input [N, C, H, W] (NCHW, normalised) -> to NHWC
//!   -> conv layers   (stride 1, valid; + bias, activation, optional 2x2 max-pool), NHWC
//!   -> flatten (h, w, c)   (the first linear layer's weights are permuted to match at load)
//!   -> linear layers (+ bias, activation)        -> logits [N, classes]
//! ```
//!
//! Shapes (channels, kernel sizes, image size, feature counts) are read from the weights, so a
//! changed architecture of the same kinds of layers keeps these kernels. The instruction set
//! is chosen at run time ([`Isa`]); every kernel is written once (`gemm`, `gelu`) over the
//! `simd::Simd` vocabulary.

mod gelu;
mod gemm;
mod simd;

use alloc::vec;
use alloc::vec::Vec;

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

/// One step of [`Network::forward`], for timing them separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Convolution `i` with its bias, activation and pool: NHWC in, NHWC out.
    Conv(usize),
    /// Linear layer `i` with its bias and activation.
    Linear(usize),
}

/// A conv/linear network ready for the kernels (built by `crate::fast` from a burn model).
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub(crate) isa: Isa,
    /// `[channels, height, width]` of one input image.
    pub(crate) input: [usize; 3],
    pub(crate) convs: Vec<ConvLayer>,
    pub(crate) linears: Vec<LinearLayer>,
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

    /// Outputs per image (the last linear layer's features; 1 if there is none).
    pub fn output_len(&self) -> usize {
        self.linears.last().map(|l| l.weights.n).unwrap_or(1)
    }

    /// The steps of the forward pass, in order.
    pub fn stages(&self) -> Vec<Stage> {
        (0..self.convs.len())
            .map(Stage::Conv)
            .chain((0..self.linears.len()).map(Stage::Linear))
            .collect()
    }

    /// A readable name for `stage`, e.g. `conv1 + bias + GELU + 2x2 max-pool` (1-based, like
    /// the PyTorch layer names).
    pub fn stage_name(&self, stage: Stage) -> alloc::string::String {
        let activation = |a: Activation| match a {
            Activation::Identity => "",
            Activation::Relu => " + ReLU",
            Activation::Gelu => " + GELU",
        };
        match stage {
            Stage::Conv(i) => alloc::format!(
                "conv{} + bias{}{} (fused)",
                i + 1,
                activation(self.convs[i].activation),
                if self.convs[i].max_pool_2x2 {
                    " + 2x2 max-pool"
                } else {
                    ""
                }
            ),
            Stage::Linear(i) => alloc::format!(
                "fc{} + bias{}",
                i + 1,
                activation(self.linears[i].activation)
            ),
        }
    }

    /// `[height, width]` of the images entering conv `i`.
    fn conv_input_size(&self, i: usize) -> [usize; 2] {
        let start = [self.input[1], self.input[2]];
        self.convs[..i]
            .iter()
            .fold(start, |size, conv| conv.output_size(size))
    }

    /// Values per image after `stage`.
    fn output_len_of(&self, stage: Stage) -> usize {
        match stage {
            Stage::Conv(i) => {
                let [h, w] = self.convs[i].output_size(self.conv_input_size(i));
                h * w * self.convs[i].weights.n
            }
            Stage::Linear(i) => self.linears[i].weights.n,
        }
    }

    /// Logits for a batch: `input` is `[N, C, H, W]` (NCHW, already normalised), `N >= 1`;
    /// returns `[N, output_len]`.
    ///
    /// # Panics
    /// When `input.len()` is not a multiple of [`Network::input_len`] (callers check first).
    pub fn forward(&self, input: &[f32]) -> Vec<f32> {
        let mut x = self.to_nhwc(input);
        for stage in self.stages() {
            x = self.run(stage, &x);
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
    pub fn run(&self, stage: Stage, input: &[f32]) -> Vec<f32> {
        let in_len = match stage {
            Stage::Conv(0) => self.input_len(),
            Stage::Conv(i) => self.output_len_of(Stage::Conv(i - 1)),
            Stage::Linear(_) => 0, // any batch of whole rows (checked by the kernel)
        };
        let batch = if in_len > 0 { input.len() / in_len } else { 1 };
        let out_len = match stage {
            Stage::Linear(i) => input.len() / self.linears[i].weights.k * self.linears[i].weights.n,
            _ => batch * self.output_len_of(stage),
        };
        let mut out = vec![0.0; out_len];
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
        match stage {
            Stage::Conv(i) => {
                let size = self.conv_input_size(i);
                let conv = &self.convs[i];
                let in_len = size[0] * size[1] * conv.in_channels;
                let out_len = out.len() / (input.len() / in_len);
                for (src, dst) in input
                    .chunks_exact(in_len)
                    .zip(out.chunks_exact_mut(out_len))
                {
                    conv.run::<S>(src, size, dst);
                }
            }
            Stage::Linear(i) => self.linears[i].run::<S>(input, out),
        }
    }
}

/// Row-wise softmax of `[N, classes]` logits, in place: `exp(x - max) / Σ exp(x - max)`.
pub fn softmax_rows(values: &mut [f32], classes: usize) {
    for row in values.chunks_exact_mut(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = libm::expf(*v - max);
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}
