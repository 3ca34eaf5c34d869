//! This project's own CPU kernels: the forward pass of a conv/linear network on raw f32
//! buffers, SIMD-tiled for the instruction set at hand, generic over shapes. `#![no_std]` +
//! alloc, no dependency: the scalar kernels build for bare metal.
//!
//! A [`Network`] is built once ([`Network::new`]) from layers in PyTorch's layouts ([`Layer`]):
//! the weights are packed for the kernels then, and the first linear layer after a flatten is
//! permuted to the kernels' image layout. (`mnist-model` builds its layers from a safetensors
//! file, BatchNorm folded into the convolutions.) A [`Network`] is
//!
//! ```text
//! input [N, C, H, W] (NCHW, normalised) -> to NHWC
//!   -> operations on NHWC images: convolutions (any stride, zero padding; + bias, activation,
//!      optional fused 2x2 max-pool), residual blocks, max-pools, global average pool
//!   -> flatten (h, w, c)   (the first linear layer's weights are permuted to match at build)
//!   -> linear layers (+ bias, activation), dropout  -> logits [N, classes]
//!
//! or a capsule network (Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
//! NeurIPS 2017), after its convolutions:
//!   -> primary capsules: a (strided) convolution, its channels cut into capsules, squashed
//!                                                               [N, types * H' * W', dim]
//!   -> digit capsules: û_j|i = W_ij u_i (the GEMM), routing by agreement     [N, J, D]
//!   -> (decoder: a side branch, Network::reconstruct)
//!   -> capsule lengths x scale                                   -> logits [N, J]
//! ```
//!
//! The instruction set is chosen at run time ([`Isa`]); every kernel is written once (`gemm`,
//! `gelu`) over the `simd::Simd` vocabulary.
//!
//! The crate's property tests (`tests/properties.rs`, and `examples/wasm_properties.rs` for
//! the wasm instruction sets) hold every kernel on every instruction set to a plain f64
//! reference, on random shapes: see docs/kernels.md.

#![no_std]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod capsules;
mod exp;
mod gelu;
mod gemm;
mod simd;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

pub use gemm::Activation;
use gemm::{ConvLayer, LinearLayer, Packed};
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

    /// The name of the kernels on this instruction set as a backend (`mnist_model::Backend`'s):
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

/// The shape of one image's values entering or leaving an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// An NHWC image: `[height, width, channels]`.
    Image([usize; 3]),
    /// Features.
    Flat(usize),
    /// Capsules: `[capsules, values per capsule]`, capsule by capsule.
    Capsules([usize; 2]),
}

impl Shape {
    /// Values per image.
    pub fn len(self) -> usize {
        match self {
            Shape::Image([h, w, c]) => h * w * c,
            Shape::Flat(n) => n,
            Shape::Capsules([n, d]) => n * d,
        }
    }

    /// Whether an image of this shape has no values.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// `28x28x1 image` (height x width x channels), `1600 features` or `288 capsules of 8`.
impl core::fmt::Display for Shape {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Shape::Image([h, w, c]) => write!(f, "{h}x{w}x{c} image"),
            Shape::Flat(n) => write!(f, "{n} features"),
            Shape::Capsules([n, d]) => write!(f, "{n} capsules of {d}"),
        }
    }
}

/// A 2-D convolution in PyTorch's layout, as [`Network::new`] takes it: output pixel `(y, x)`
/// reads the (zero-padded) input from `(stride * y, stride * x)` on, PyTorch's `Conv2d`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv<'a> {
    /// `[c_out, c_in, kh, kw]`, row-major (PyTorch's `Conv2d.weight`; BatchNorm, if any,
    /// already folded in).
    pub weight: &'a [f32],
    /// `[c_out, c_in, kh, kw]`.
    pub shape: [usize; 4],
    /// `[c_out]`.
    pub bias: &'a [f32],
    /// Zero padding on every side, in pixels.
    pub padding: usize,
    /// Step between the kernel's positions, in pixels, both directions (at least 1).
    pub stride: usize,
    /// The activation after the bias.
    pub activation: Activation,
    /// A 2x2 max-pool (stride 2, floor mode) after the activation, fused into the kernel.
    pub pool: bool,
}

/// A fully connected layer in PyTorch's layout, as [`Network::new`] takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linear<'a> {
    /// `[out_features, in_features]`, row-major (PyTorch's `Linear.weight`). After a
    /// [`Layer::Flatten`], the inputs are in PyTorch's flatten order `(c, h, w)`.
    pub weight: &'a [f32],
    /// `[out_features, in_features]`.
    pub shape: [usize; 2],
    /// `[out_features]`.
    pub bias: &'a [f32],
    /// The activation after the bias.
    pub activation: Activation,
}

/// Digit capsules: the transformation matrices `W_ij` of a capsule layer with routing by
/// agreement (Sabour et al. 2017, Procedure 1), as [`Network::new`] takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Routing<'a> {
    /// `[in_capsules, capsules, dim, in_dim]`, row-major (PyTorch's `DigitCapsules.weight`):
    /// `W_ij`, the `[dim, in_dim]` matrix at `[i, j]`, predicts output capsule `j` from input
    /// capsule `i`: `û_j|i = W_ij u_i`.
    pub weight: &'a [f32],
    /// `[in_capsules, capsules, dim, in_dim]`.
    pub shape: [usize; 4],
    /// Routing iterations, at least 1.
    pub iterations: usize,
}

/// One layer of a network, as [`Network::new`] takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layer<'a> {
    /// A convolution with bias, activation and optional fused 2x2 max-pool.
    Conv(Conv<'a>),
    /// A residual block `relu(b(a(x)) + shortcut(x))`: each convolution with its own
    /// activation and pool; the shortcut is the identity when `None`. `b`'s output and the
    /// shortcut's must have the same shape.
    Residual {
        /// The first convolution, on the block's input.
        a: Conv<'a>,
        /// The second convolution, on `a`'s output.
        b: Conv<'a>,
        /// The projection of the block's input, or `None` for the identity.
        shortcut: Option<Conv<'a>>,
    },
    /// A `k` x `k` max-pool, stride `k`, floor mode.
    MaxPool(usize),
    /// The mean over the pixels of each channel: images `[h, w, c]` to `c` features.
    GlobalAvgPool,
    /// Images to features in PyTorch's order `(c, h, w)`. No operation runs: the next linear
    /// layer's weights are permuted to the kernels' NHWC order instead, so it must be followed
    /// by a [`Layer::Linear`].
    Flatten,
    /// A linear layer with bias and activation, on features.
    Linear(Linear<'a>),
    /// Dropout with this probability in `[0, 1)`, on features: the identity, except under MC
    /// dropout ([`Network::forward_mc`]).
    Dropout(f32),
    /// Primary capsules, on images: the convolution (PyTorch's has no activation and no pool),
    /// its `capsules * dim` output channels cut into `capsules` types of `dim`-D capsules at
    /// each of its `H' x W'` positions, each squashed, `s |s| / (1 + |s|²)`. Images
    /// `[H, W, C]` -> capsules `[capsules * H' * W', dim]`: capsule `(c * H' + y) * W' + x` is
    /// type `c` at `(y, x)`, its value `d` the convolution's channel `c * dim + d` there (the
    /// kernels' NHWC image holds those `dim` channels together).
    PrimaryCaps {
        /// The convolution, `[capsules * dim, C, kh, kw]`.
        conv: Conv<'a>,
        /// Capsule types.
        capsules: usize,
        /// Values per capsule.
        dim: usize,
    },
    /// Digit capsules, routing by agreement: capsules `[in_capsules, in_dim]` -> `[capsules,
    /// dim]`. The predictions `û_j|i = W_ij u_i` are one product per input capsule `i`
    /// (`u_i` of every image in the batch times `W_i`, packed as one `[in_dim, capsules *
    /// dim]` matrix), then `iterations` of routing: from `b = 0`, `c_i = softmax_j(b_i)`,
    /// `v_j = squash(Σ_i c_ij û_j|i)`, `b_ij += û_j|i · v_j` but after the last.
    DigitCaps(Routing<'a>),
    /// The reconstruction decoder, on capsules `[J, D]`: a side branch that the forward pass
    /// skips (the capsules go on unchanged) and [`Network::reconstruct`] runs: every capsule
    /// but the longest zeroed, flattened (capsule by capsule), then the three linear layers
    /// (`J * D` inputs for the first; each with its own activation: ReLU, ReLU, none in
    /// PyTorch's), then the logistic sigmoid. At most one per network.
    Decoder([Linear<'a>; 3]),
    /// Class scores of capsules `[J, D]`: `scale * |v_j|`, `J` features (the logits).
    CapsuleLength(f32),
}

/// One step of [`Network::forward`] (an index into the network's operations), for timing
/// them separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage(pub usize);

/// One operation of the forward pass, on NHWC images or flat feature rows.
#[derive(Clone, Debug, PartialEq)]
enum Op {
    /// Convolution with bias (BatchNorm folded in), activation, optional 2x2 max-pool.
    Conv(ConvLayer),
    /// `relu(b(a(x)) + shortcut(x))`.
    Residual(Box<Residual>),
    /// `k` x `k` max-pool, stride `k`, floor mode.
    MaxPool(usize),
    /// Mean over the pixels of each channel.
    GlobalAvgPool,
    /// Linear layer with bias and activation. After a flatten of NHWC images of this `[h, w,
    /// c]`, its inputs were permuted at build from PyTorch's `(c, h, w)` flatten order to the
    /// kernels' `(h, w, c)`.
    Linear(LinearLayer, Option<[usize; 3]>),
    /// Dropout with this probability: the identity, except under MC dropout.
    Dropout(f32),
    /// Primary capsules: the convolution, then `dim`-D capsules cut from its channels,
    /// squashed.
    PrimaryCaps(ConvLayer, usize),
    /// Digit capsules with routing by agreement.
    DigitCaps(Box<DigitCaps>),
    /// The reconstruction decoder: the identity in the forward pass; its steps (each with the
    /// shape it gives) run in [`Network::reconstruct`] on the masked capsules.
    Decoder(Box<[(Op, Shape); 4]>),
    /// Logits `scale * |v_j|`.
    CapsuleLength(f32),
    /// The logistic sigmoid of every value (the decoder's last step).
    Sigmoid,
}

/// Digit capsules: `W_i` packed per input capsule, and the routing.
#[derive(Clone, Debug, PartialEq)]
struct DigitCaps {
    /// `matrices[i]`: `W_i` as a linear layer `in_dim -> capsules * dim` (no bias), column
    /// `j * dim + d` being row `d` of `W_ij`.
    matrices: Vec<LinearLayer>,
    /// `[capsules, dim]` out.
    out: [usize; 2],
    /// Routing iterations, at least 1.
    iterations: usize,
}

/// A residual block's convolutions.
#[derive(Clone, Debug, PartialEq)]
struct Residual {
    a: ConvLayer,
    b: ConvLayer,
    shortcut: Option<ConvLayer>,
}

/// A network ready for the kernels: its weights packed for one instruction set.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    isa: Isa,
    /// `[channels, height, width]` of one input image.
    input: [usize; 3],
    ops: Vec<Op>,
    /// A readable name per operation, e.g. `conv1 + bias + GELU + 2x2 max-pool (fused)`.
    names: Vec<String>,
    /// `shapes[i]` enters `ops[i]`; `shapes[ops.len()]` is the output.
    shapes: Vec<Shape>,
}

/// Pack `conv` for `isa`, checked against the images of `shape` it runs on; with its output
/// shape.
fn conv_layer(
    conv: &Conv,
    shape: Shape,
    name: &str,
    isa: Isa,
) -> Result<(ConvLayer, Shape), String> {
    let [h, w, c] = match shape {
        Shape::Image(image) => image,
        Shape::Flat(n) => return Err(format!("{name} needs images, gets {n} flat features")),
        Shape::Capsules(_) => return Err(format!("{name} needs images, gets {shape}")),
    };
    let [c_out, c_in, kh, kw] = conv.shape;
    if conv.weight.len() != c_out * c_in * kh * kw || conv.bias.len() != c_out {
        return Err(format!(
            "{name}: {} weights and {} biases for a {c_out}x{c_in}x{kh}x{kw} convolution",
            conv.weight.len(),
            conv.bias.len(),
        ));
    }
    let (ph, pw) = (h + 2 * conv.padding, w + 2 * conv.padding);
    if c_in != c || kh == 0 || kw == 0 || ph < kh || pw < kw {
        return Err(format!(
            "{name} takes {c_in} channels of at least {kh}x{kw}, gets {c} of {ph}x{pw}"
        ));
    }
    if conv.stride == 0 {
        return Err(format!("{name}: stride 0"));
    }
    // k = (ky * kw + kx) * c_in + c, the order of the kernels' segments.
    let weight_at = |k: usize, o: usize| {
        let (c, kx, ky) = (k % c_in, (k / c_in) % kw, k / c_in / kw);
        conv.weight[((o * c_in + c) * kh + ky) * kw + kx]
    };
    let layer = ConvLayer {
        weights: Packed::new(
            kh * kw * c_in,
            c_out,
            isa.block_width(),
            weight_at,
            conv.bias,
        ),
        in_channels: c_in,
        kernel_size: [kh, kw],
        padding: conv.padding,
        stride: conv.stride,
        activation: conv.activation,
        max_pool_2x2: conv.pool,
    };
    let [oh, ow] = layer.output_size([h, w]);
    let out = Shape::Image([oh, ow, c_out]);
    if out.is_empty() {
        return Err(format!("{name} gives an empty image ({oh}x{ow}x{c_out})"));
    }
    Ok((layer, out))
}

/// Pack `linear` for `isa`, checked to take `features` inputs; `order[kk]`, after a flatten,
/// is PyTorch's index of the kernels' input `kk` (the weights' inputs permuted to match).
fn linear_layer(
    linear: &Linear,
    features: usize,
    order: Option<&[usize]>,
    name: &str,
    isa: Isa,
) -> Result<LinearLayer, String> {
    let [n, k] = linear.shape;
    if linear.weight.len() != n * k || linear.bias.len() != n {
        return Err(format!(
            "{name}: {} weights and {} biases for a {n}x{k} linear layer",
            linear.weight.len(),
            linear.bias.len(),
        ));
    }
    if k != features {
        return Err(format!("{name} takes {k} features, gets {features}"));
    }
    if n == 0 {
        return Err(format!("{name} has no outputs"));
    }
    let weight_at = |kk: usize, col: usize| {
        let row = order.map_or(kk, |order| order[kk]);
        linear.weight[col * k + row]
    };
    Ok(LinearLayer {
        weights: Packed::new(k, n, isa.block_width(), weight_at, linear.bias),
        activation: linear.activation,
    })
}

/// Pack digit capsules' matrices for `isa`, checked against their input capsules `shape`;
/// with the output shape.
fn digit_caps(
    routing: &Routing,
    shape: Shape,
    name: &str,
    isa: Isa,
) -> Result<(DigitCaps, Shape), String> {
    let [inputs, classes, dim, in_dim] = routing.shape;
    let Shape::Capsules(given) = shape else {
        return Err(format!(
            "{name} needs capsules (primary capsules first), gets {shape}"
        ));
    };
    if given != [inputs, in_dim] {
        return Err(format!(
            "{name} takes {inputs} capsules of {in_dim}, gets {shape}"
        ));
    }
    if routing.weight.len() != inputs * classes * dim * in_dim {
        return Err(format!(
            "{name}: {} weights for {inputs}x{classes}x{dim}x{in_dim} matrices",
            routing.weight.len()
        ));
    }
    if classes * dim == 0 {
        return Err(format!(
            "{name} gives no capsule values ({classes} of {dim})"
        ));
    }
    if routing.iterations == 0 {
        return Err(format!("{name}: no routing iteration (at least 1)"));
    }
    let per_input = classes * dim;
    let zero = vec![0.0; per_input];
    let matrices = (0..inputs)
        .map(|i| {
            // Column j * dim + d of W_i is row d of W_ij: [i, j, d, e] row-major.
            let weight_at =
                |e: usize, col: usize| routing.weight[(i * per_input + col) * in_dim + e];
            LinearLayer {
                weights: Packed::new(in_dim, per_input, isa.block_width(), weight_at, &zero),
                activation: Activation::Identity,
            }
        })
        .collect();
    let caps = DigitCaps {
        matrices,
        out: [classes, dim],
        iterations: routing.iterations,
    };
    Ok((caps, Shape::Capsules([classes, dim])))
}

impl Network {
    /// Pack `layers`, each with a readable name (shown by [`Network::stage_name`]; a flatten's
    /// is dropped), for instruction set `isa` and input images of `input` =
    /// `[channels, height, width]`.
    ///
    /// # Errors
    /// A message naming the layer when the shapes do not chain (a convolution's channels or
    /// kernel against its input, a linear layer's input features, a weight or bias of the
    /// wrong length), when an image would be empty, when a linear layer follows images
    /// without a flatten or pool, when dropout is put on images, when a flatten is not
    /// followed by a linear layer, when a dropout probability is not in `[0, 1)`; or when this
    /// CPU lacks `isa` ([`Isa::available`]).
    pub fn new<'a>(
        isa: Isa,
        input: [usize; 3],
        layers: impl IntoIterator<Item = (String, Layer<'a>)>,
    ) -> Result<Network, String> {
        if !isa.available() {
            return Err(format!("this CPU lacks the instruction set {}", isa.name()));
        }
        let [c, h, w] = input;
        let mut shape = Shape::Image([h, w, c]);
        if shape.is_empty() {
            return Err(format!("an empty input image ({c}x{h}x{w})"));
        }
        let mut network = Network {
            isa,
            input,
            ops: Vec::new(),
            names: Vec::new(),
            shapes: vec![shape],
        };
        // After a flatten of NHWC images `[h, w, c]`: PyTorch's index of each of the kernels'
        // features, for the linear layer that must follow.
        let mut flatten_order: Option<(String, [usize; 3], Vec<usize>)> = None;
        for (name, layer) in layers {
            if flatten_order.is_some() && !matches!(layer, Layer::Linear(_)) {
                return Err(format!("{name} follows a flatten: only a linear layer may"));
            }
            let (op, next) = match &layer {
                Layer::Conv(conv) => {
                    let (conv, next) = conv_layer(conv, shape, &name, isa)?;
                    (Op::Conv(conv), next)
                }
                Layer::Residual { a, b, shortcut } => {
                    let (a, inner) = conv_layer(a, shape, &format!("{name}.a"), isa)?;
                    let (b, next) = conv_layer(b, inner, &format!("{name}.b"), isa)?;
                    let shortcut = match shortcut {
                        Some(s) => {
                            let label = format!("{name}.shortcut");
                            let (s, projected) = conv_layer(s, shape, &label, isa)?;
                            if projected != next {
                                return Err(format!(
                                    "{label} gives {projected}, {name}.b gives {next}"
                                ));
                            }
                            Some(s)
                        }
                        None if shape != next => {
                            return Err(format!(
                                "{name}: an identity shortcut of {shape}, {name}.b gives {next}"
                            ));
                        }
                        None => None,
                    };
                    (Op::Residual(Box::new(Residual { a, b, shortcut })), next)
                }
                Layer::MaxPool(k) => {
                    let k = *k;
                    let Shape::Image([h, w, c]) = shape else {
                        return Err(format!("{name} needs images"));
                    };
                    if k == 0 || h < k || w < k {
                        return Err(format!("{name}: a {k}x{k} max-pool of a {h}x{w} image"));
                    }
                    (Op::MaxPool(k), Shape::Image([h / k, w / k, c]))
                }
                Layer::GlobalAvgPool => {
                    let Shape::Image([_, _, c]) = shape else {
                        return Err(format!("{name} needs images"));
                    };
                    (Op::GlobalAvgPool, Shape::Flat(c))
                }
                Layer::Flatten => {
                    let Shape::Image([h, w, c]) = shape else {
                        return Err(format!("{name} needs images"));
                    };
                    // PyTorch flattens NCHW: feature (c * H + h) * W + w; the kernels' NHWC
                    // buffer holds feature (h * W + w) * C + c at that position.
                    let order = (0..h * w * c).map(|i| (i % c) * h * w + i / c).collect();
                    flatten_order = Some((name, [h, w, c], order));
                    shape = Shape::Flat(shape.len());
                    *network.shapes.last_mut().expect("the input shape") = shape;
                    continue;
                }
                Layer::Linear(linear) => {
                    let Shape::Flat(features) = shape else {
                        return Err(format!("{name} needs flat features: flatten or pool first"));
                    };
                    let flattened = flatten_order.take();
                    let order = flattened.as_ref().map(|(_, _, order)| &order[..]);
                    let layer = linear_layer(linear, features, order, &name, isa)?;
                    let image = flattened.map(|(_, image, _)| image);
                    (Op::Linear(layer, image), Shape::Flat(linear.shape[0]))
                }
                Layer::Dropout(p) => {
                    if !(0.0..1.0).contains(p) {
                        return Err(format!("{name}: dropout probability {p} is not in [0, 1)"));
                    }
                    if !matches!(shape, Shape::Flat(_)) {
                        return Err(format!(
                            "{name}: dropout on images or capsules (only on features)"
                        ));
                    }
                    (Op::Dropout(*p), shape)
                }
                Layer::PrimaryCaps {
                    conv,
                    capsules,
                    dim,
                } => {
                    let (conv, grid) = conv_layer(conv, shape, &name, isa)?;
                    let Shape::Image([h, w, c]) = grid else {
                        unreachable!("a convolution gives images")
                    };
                    if *dim == 0 || c != capsules * dim {
                        return Err(format!(
                            "{name}: {c} channels are not {capsules} capsule types of {dim} values"
                        ));
                    }
                    let next = Shape::Capsules([capsules * h * w, *dim]);
                    (Op::PrimaryCaps(conv, *dim), next)
                }
                Layer::DigitCaps(routing) => {
                    let (caps, next) = digit_caps(routing, shape, &name, isa)?;
                    (Op::DigitCaps(Box::new(caps)), next)
                }
                Layer::Decoder(layers) => {
                    if !matches!(shape, Shape::Capsules(_)) {
                        return Err(format!("{name} needs capsules, gets {shape}"));
                    }
                    if network.ops.iter().any(|op| matches!(op, Op::Decoder(_))) {
                        return Err(format!("{name}: a second decoder"));
                    }
                    let mut features = shape.len();
                    let mut steps = Vec::new();
                    for (fc, linear) in ["fc1", "fc2", "fc3"].iter().zip(layers) {
                        let label = format!("{name}.{fc}");
                        let layer = linear_layer(linear, features, None, &label, isa)?;
                        features = linear.shape[0];
                        steps.push((Op::Linear(layer, None), Shape::Flat(features)));
                    }
                    steps.push((Op::Sigmoid, Shape::Flat(features)));
                    let steps: [(Op, Shape); 4] = steps.try_into().expect("4 steps");
                    (Op::Decoder(Box::new(steps)), shape)
                }
                Layer::CapsuleLength(scale) => {
                    let Shape::Capsules([capsules, _]) = shape else {
                        return Err(format!("{name} needs capsules, gets {shape}"));
                    };
                    if !scale.is_finite() {
                        return Err(format!("{name}: scale {scale}"));
                    }
                    (Op::CapsuleLength(*scale), Shape::Flat(capsules))
                }
            };
            network.ops.push(op);
            network.names.push(name);
            network.shapes.push(next);
            shape = next;
        }
        if let Some((name, _, _)) = flatten_order {
            return Err(format!(
                "{name} ends the network: a flatten needs a linear layer after it"
            ));
        }
        Ok(network)
    }

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
        self.output_shape().len()
    }

    /// The shape of one image's output: [`Shape::Flat`] after a linear layer or a global
    /// pool; an NHWC [`Shape::Image`] when the network ends on images (the input's shape
    /// when it has no layer).
    pub fn output_shape(&self) -> Shape {
        *self.shapes.last().expect("the input shape")
    }

    /// The steps of the forward pass, in order (dropout, the identity at inference, is none;
    /// nor is a decoder, a side branch that [`Network::reconstruct`] runs).
    pub fn stages(&self) -> Vec<Stage> {
        (0..self.ops.len())
            .filter(|&i| !matches!(self.ops[i], Op::Dropout(_) | Op::Decoder(_)))
            .map(Stage)
            .collect()
    }

    /// A readable name for `stage`, e.g. `conv1 + bias + GELU + 2x2 max-pool (fused)`.
    pub fn stage_name(&self, stage: Stage) -> String {
        self.names[stage.0].clone()
    }

    /// Outputs for a batch: `input` is `[N, C, H, W]` (NCHW, already normalised), `N >= 1`;
    /// returns `[N, output_len]` (NHWC `[N, H, W, C]` when the network ends on images).
    ///
    /// # Panics
    /// When `input` is empty or its length not a multiple of [`Network::input_len`].
    pub fn forward(&self, input: &[f32]) -> Vec<f32> {
        self.forward_to(input, self.ops.len())
    }

    /// The penultimate outputs `[N, F]` of a batch (`input` as [`Network::forward`]): every
    /// operation but the last (in `mnist-model`, the head that teaching re-fits), in the order
    /// that last operation's PyTorch weights take them: PyTorch's flatten order `(c, h, w)`
    /// when it is the linear layer after a flatten.
    ///
    /// # Panics
    /// As [`Network::forward`], and when the network has no layer.
    pub fn features(&self, input: &[f32]) -> Vec<f32> {
        let x = self.forward_to(input, self.ops.len() - 1);
        self.unflatten_head_input(x)
    }

    /// `x`, rows of the last operation's input, in PyTorch's flatten order where that
    /// operation is a linear layer after a flatten (the kernels hold them NHWC).
    fn unflatten_head_input(&self, x: Vec<f32>) -> Vec<f32> {
        let Some(&Op::Linear(_, Some([h, w, c]))) = self.ops.last() else {
            return x;
        };
        let mut out = vec![0.0; x.len()];
        for (src, dst) in x
            .chunks_exact(h * w * c)
            .zip(out.chunks_exact_mut(h * w * c))
        {
            for p in 0..h * w {
                for ch in 0..c {
                    dst[ch * h * w + p] = src[p * c + ch];
                }
            }
        }
        out
    }

    /// The operations before `end`, at inference (dropout is the identity).
    fn forward_to(&self, input: &[f32], end: usize) -> Vec<f32> {
        let mut x = self.to_nhwc(input);
        for stage in self.stages().into_iter().take_while(|s| s.0 < end) {
            x = self.run(stage, &x);
        }
        x
    }

    /// MC dropout (Gal & Ghahramani, 2016): outputs `[samples, output_len]` of one image
    /// (`input`: `[1, C, H, W]`, normalised) under `samples` dropout masks.
    ///
    /// The layers before the first dropout are deterministic, so they run once and their
    /// output is repeated `samples` times; every dropout layer then multiplies its `[samples,
    /// features]` input by `mask(start, len, p)`: `len` factors for the values `start ..
    /// start + len` of the mask stream (row-major, counting on across the dropout layers in
    /// order; the first layer's start at 0), `p` the layer's probability; inverted dropout's
    /// factors are 0 and `1 / (1 - p)` (`mnist_model::uncertainty::dropout_mask` draws them
    /// from a seed, as `trainer.uncertainty` does). Without dropout layers all rows are equal.
    ///
    /// # Panics
    /// When `input` is not one image, `samples` is 0, or `mask` returns fewer than `len`
    /// factors.
    pub fn forward_mc(
        &self,
        input: &[f32],
        samples: usize,
        mask: impl FnMut(u64, usize, f32) -> Vec<f32>,
    ) -> Vec<f32> {
        self.mc_to(input, samples, mask, self.ops.len())
    }

    /// [`Network::forward_mc`] up to the penultimate features: `[samples, F]`, the same masks,
    /// in the order of [`Network::features`].
    pub fn features_mc(
        &self,
        input: &[f32],
        samples: usize,
        mask: impl FnMut(u64, usize, f32) -> Vec<f32>,
    ) -> Vec<f32> {
        let x = self.mc_to(input, samples, mask, self.ops.len() - 1);
        self.unflatten_head_input(x)
    }

    fn mc_to(
        &self,
        input: &[f32],
        samples: usize,
        mut mask: impl FnMut(u64, usize, f32) -> Vec<f32>,
        end: usize,
    ) -> Vec<f32> {
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
                let factors = mask(counter, x.len(), p);
                assert!(factors.len() >= x.len(), "a mask of {} factors", x.len());
                x.iter_mut().zip(&factors).for_each(|(v, m)| *v *= m);
                counter += x.len() as u64;
            } else if !matches!(op, Op::Decoder(_)) {
                x = self.run(Stage(i), &x);
            }
        }
        if !repeated {
            x = x.repeat(samples);
        }
        x
    }

    /// NCHW -> NHWC: `input` `[N, C, H, W]` as the first stage takes it (a copy; the same
    /// layout when C = 1).
    ///
    /// # Panics
    /// When `input` is empty or its length not a multiple of [`Network::input_len`].
    pub fn to_nhwc(&self, input: &[f32]) -> Vec<f32> {
        let [c, h, w] = self.input;
        let per_image = self.input_len();
        assert!(
            !input.is_empty() && input.len().is_multiple_of(per_image),
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
        let shapes = [self.shapes[stage.0], self.shapes[stage.0 + 1]];
        self.apply(&self.ops[stage.0], shapes, input)
    }

    /// What a capsule network sees (its reconstruction decoder, Sabour et al. 2017): for
    /// each image of `input` (`[N, C, H, W]` as [`Network::forward`]), the decoder's output
    /// from the capsules it reads (the digit capsules), every capsule zeroed but the longest
    /// (the predicted digit's; the first of equally long ones, as PyTorch's `argmax`), from
    /// one forward pass.
    ///
    /// Returns `(kept, pixels)`: `kept`, `N` indices `j` in `0..J`, the capsule each image's
    /// reconstruction was drawn from (the longest: the predicted class, the argmax of
    /// [`Network::forward`]'s logits `scale * |v_j|` for a positive scale); `pixels`,
    /// `[N, pixels]`, each value in `(0, 1)` (a 28x28 MNIST image: 784 values, row-major,
    /// ink = 1). `None` for a network without a [`Layer::Decoder`].
    ///
    /// # Panics
    /// As [`Network::forward`].
    pub fn reconstruct(&self, input: &[f32]) -> Option<(Vec<usize>, Vec<f32>)> {
        let at = self
            .ops
            .iter()
            .position(|op| matches!(op, Op::Decoder(_)))?;
        let (Op::Decoder(steps), Shape::Capsules([_, dim])) = (&self.ops[at], self.shapes[at])
        else {
            unreachable!("a decoder on capsules (checked by Network::new)")
        };
        let mut x = self.forward_to(input, at);
        let mut shape = self.shapes[at];
        let kept = x
            .chunks_exact_mut(shape.len())
            .map(|v| capsules::keep_longest(v, dim))
            .collect();
        for (op, next) in steps.iter() {
            x = self.apply(op, [shape, *next], &x);
            shape = *next;
        }
        Some((kept, x))
    }

    /// `op` over a batch of `shapes[0]` inputs, giving `shapes[1]` outputs per image.
    fn apply(&self, op: &Op, shapes: [Shape; 2], input: &[f32]) -> Vec<f32> {
        let [in_len, out_len] = shapes.map(Shape::len);
        assert!(
            in_len > 0 && input.len().is_multiple_of(in_len),
            "a batch of {in_len}-value inputs"
        );
        let mut out = vec![0.0; input.len() / in_len * out_len];
        match self.isa {
            Isa::Scalar => apply_plain::<simd::Scalar>(op, shapes, input, &mut out),
            #[cfg(target_arch = "x86_64")]
            Isa::Sse2 => apply_plain::<simd::Sse2>(op, shapes, input, &mut out),
            // SAFETY: a Network only holds Avx2Fma when `Isa::available` said the CPU has it
            // (checked by `Network::new`, the only way to make one).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { apply_avx2(op, shapes, input, &mut out) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => apply_plain::<simd::Simd128>(op, shapes, input, &mut out),
            // SAFETY: a module using relaxed SIMD only instantiates where the engine has it.
            #[cfg(all(
                target_arch = "wasm32",
                target_feature = "simd128",
                feature = "relaxed-simd"
            ))]
            Isa::Relaxed => unsafe { apply_relaxed(op, shapes, input, &mut out) },
        }
        out
    }
}

/// [`apply_with`] for an instruction set that needs no `#[target_feature]` entry point, as a
/// function of its own rather than inlined into [`Network::apply`]: each instruction set's
/// kernels are then a function apart, and a browser, which compiles a wasm function when it
/// is first called, compiles only those of the instruction set the network runs on (about
/// 40 KB of wasm each; the first prediction waits for that compilation, docs/benchmarks.md).
#[inline(never)]
fn apply_plain<S: Simd>(op: &Op, shapes: [Shape; 2], input: &[f32], out: &mut [f32]) {
    apply_with::<S>(op, shapes, input, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2(op: &Op, shapes: [Shape; 2], input: &[f32], out: &mut [f32]) {
    apply_with::<simd::Avx2Fma>(op, shapes, input, out)
}

#[cfg(all(
    target_arch = "wasm32",
    target_feature = "simd128",
    feature = "relaxed-simd"
))]
#[target_feature(enable = "relaxed-simd")]
unsafe fn apply_relaxed(op: &Op, shapes: [Shape; 2], input: &[f32], out: &mut [f32]) {
    apply_with::<simd::Relaxed>(op, shapes, input, out)
}

/// The operation's kernel for instruction set `S`, on a batch of `shapes[0]` inputs into
/// `shapes[1]` outputs; inlined into each entry point above so that it is compiled with that
/// entry point's target features. Each kernel is called from one place here (the
/// convolution's for every kind that convolves, the GEMM's for every product on features or
/// capsules), since each inlined copy costs code size.
#[inline(always)]
fn apply_with<S: Simd>(op: &Op, [shape, out_shape]: [Shape; 2], input: &[f32], out: &mut [f32]) {
    let batch = input.len() / shape.len();
    let images = input
        .chunks_exact(shape.len())
        .zip(out.chunks_exact_mut(out_shape.len()));
    let size = match shape {
        Shape::Image([h, w, _]) => [h, w],
        Shape::Flat(_) | Shape::Capsules(_) => [1, 1],
    };
    match op {
        Op::Conv(_) | Op::Residual(_) | Op::PrimaryCaps(..) => {
            // Every kind as convolution steps, so that the kernel is inlined once.
            let (steps, residual) = match op {
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
                Op::PrimaryCaps(conv, _) => {
                    (alloc::vec![(conv, Buffer::Input, Buffer::Temp)], None)
                }
                _ => unreachable!(),
            };
            for (src, dst) in images {
                let temp = convolve::<S>(&steps, src, size, dst);
                if let Some(block) = residual {
                    // relu(b(a(x)) + shortcut(x)), the shortcut the identity or projected.
                    let skip = if block.shortcut.is_some() {
                        &temp[..]
                    } else {
                        src
                    };
                    dst.iter_mut()
                        .zip(skip)
                        .for_each(|(o, s)| *o = (*o + s).max(0.0));
                }
                if let Op::PrimaryCaps(conv, dim) = op {
                    capsules::primary(&temp, conv.output_size(size), *dim, dst);
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
        Op::Linear(..) | Op::DigitCaps(_) => {
            // A linear layer is one product (the images as rows); digit capsules one per input
            // capsule `i`: `u_i` of every image times `W_i`, into `û` `[I, N, J * D]`.
            let (products, mut u_hat) = match op {
                Op::DigitCaps(caps) => {
                    let [classes, dim] = caps.out;
                    let len = caps.matrices.len() * batch * classes * dim;
                    (caps.matrices.len(), vec![0.0; len])
                }
                _ => (1, Vec::new()),
            };
            for i in 0..products {
                let (layer, rows, target) = match op {
                    Op::Linear(linear, _) => (linear, linear.batch_rows(input.len()), &mut *out),
                    Op::DigitCaps(caps) => {
                        let (inputs, in_dim) = (caps.matrices.len(), caps.matrices[i].weights.k);
                        let per_input = caps.out[0] * caps.out[1];
                        let rows = (0..batch).map(|n| (n * inputs + i) * in_dim).collect();
                        let target = &mut u_hat[i * batch * per_input..][..batch * per_input];
                        (&caps.matrices[i], rows, target)
                    }
                    _ => unreachable!(),
                };
                layer.run::<S>(input, &rows, target);
            }
            if let Op::DigitCaps(caps) = op {
                let per_input = caps.out[0] * caps.out[1];
                for (n, v) in out.chunks_exact_mut(per_input).enumerate() {
                    let inputs = caps.matrices.len();
                    let u_hat = &u_hat[n * per_input..];
                    capsules::route(
                        u_hat,
                        inputs,
                        batch * per_input,
                        caps.out,
                        caps.iterations,
                        v,
                    );
                }
            }
        }
        Op::CapsuleLength(scale) => {
            let Shape::Capsules([_, dim]) = shape else {
                unreachable!("checked at load")
            };
            images.for_each(|(v, dst)| capsules::lengths(v, dim, *scale, dst));
        }
        Op::Sigmoid => {
            out.copy_from_slice(input);
            capsules::sigmoid_in_place(out);
        }
        Op::Dropout(_) | Op::Decoder(_) => out.copy_from_slice(input),
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
