//! Any layer plan (`crate::plan`) on burn's tensor operations: how the burn backends (flex,
//! ndarray, wgpu) run the models that are not the burn `Module` [`crate::Model`] (the `cnn`,
//! which burn-store loads by its field names). The steps come from `crate::params` (read,
//! checked, BatchNorm folded), so the kernels and this agree on what a plan means.
//!
//! ```text
//! [N, C, H, W] -> conv2d (+ bias) -> activation -> max_pool2d   (BatchNorm folded in)
//!              -> residual: relu(b(a(x)) + shortcut(x))
//!              -> max_pool2d | mean over H, W | flatten (PyTorch's (c, h, w) order)
//!              -> matmul + bias -> activation, dropout (identity, or MC masks)  -> [N, 10]
//!
//! capsules:    -> conv2d (stride) -> [N, C, D, H', W'] -> [N, C·H'·W', D], squash
//!              -> û = W u (one batched matmul over the input capsules), routing   [N, J, D]
//!              -> logits scale·|v_j|                                              [N, J]
//!              (decoder, a side branch: v masked to the longest capsule -> 3 linear layers)
//! ```

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use burn::prelude::*;
use burn::tensor::activation::{gelu, relu, sigmoid, softmax};
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};

use crate::params::{Checked, Conv, Step};
use crate::pass::{McDropout, Pass};
use crate::plan::Act;
use crate::uncertainty::dropout_mask;

/// A convolution as burn tensors.
#[derive(Debug)]
struct ConvTensors {
    /// `[c_out, c_in, kh, kw]`, BatchNorm folded in.
    weight: Tensor<4>,
    bias: Tensor<1>,
    padding: usize,
    stride: usize,
    activation: Act,
    pool: bool,
}

/// One step on burn tensors.
#[derive(Debug)]
enum Op {
    Conv(ConvTensors),
    Residual(Box<(ConvTensors, ConvTensors, Option<ConvTensors>)>),
    MaxPool(usize),
    GlobalAvgPool,
    Flatten,
    /// `weight` `[in, out]` (transposed from PyTorch's `[out, in]`), `bias` `[out]`.
    Linear(Tensor<2>, Tensor<1>, Act),
    Dropout(f32),
    /// Primary capsules: the convolution, then `capsules` types of `dim` values, squashed.
    PrimaryCaps(ConvTensors, usize, usize),
    /// Digit capsules: `W` as `[I, J * D, E]` (`û_i = W_i u_i` is one batched matmul), the
    /// output capsules `J` and their `D`, and the routing iterations.
    DigitCaps(Tensor<3>, [usize; 2], usize),
    /// The decoder's three linear layers, `[in, out]` weights and `[out]` biases (ReLU, ReLU,
    /// sigmoid): a side branch that [`LayerModel::reconstruct`] runs.
    Decoder(Box<[(Tensor<2>, Tensor<1>); 3]>),
    /// Logits `scale * |v_j|`.
    CapsuleLength(f32),
}

/// The values between steps: images `[N, C, H, W]`, features `[N, F]` or capsules
/// `[N, capsules, D]`.
enum Values {
    Images(Tensor<4>),
    Features(Tensor<2>),
    Capsules(Tensor<3>),
}

/// A checked plan on a burn device.
#[derive(Debug)]
pub struct LayerModel {
    ops: Vec<Op>,
    names: Vec<String>,
}

fn act<const D: usize>(x: Tensor<D>, a: Act) -> Tensor<D> {
    match a {
        Act::None => x,
        Act::Relu => relu(x),
        Act::Gelu => gelu(x),
    }
}

/// The squash non-linearity over each capsule (the last dimension) of `s` `[N, C, D]`:
/// `s |s| / (1 + |s|²)` (Sabour et al. 2017, eq. 1, written without dividing by `|s|`, so 0
/// stays 0), as `trainer.model.squash`.
fn squash(s: Tensor<3>) -> Tensor<3> {
    let squared = (s.clone() * s.clone()).sum_dim(2);
    let norm = squared.clone().sqrt();
    s * (norm / (squared + 1.0))
}

/// The lengths `[N, J]` of capsules `[N, J, D]`.
fn lengths(v: Tensor<3>) -> Tensor<2> {
    let [n, j, _] = v.dims();
    (v.clone() * v).sum_dim(2).sqrt().reshape([n, j])
}

/// A linear layer's burn tensors: the weight transposed to `[in, out]`, the bias `[out]`.
fn linear_tensors(d: &crate::params::Dense, device: &Device) -> (Tensor<2>, Tensor<1>) {
    let [n, k] = d.shape;
    let weight: Tensor<2> = Tensor::from_data(TensorData::new(d.weight.clone(), [n, k]), device);
    let bias = Tensor::from_data(TensorData::new(d.bias.clone(), [n]), device);
    (weight.transpose(), bias)
}

/// `x [N, in] · w [in, out] + b`.
fn affine(x: Tensor<2>, (w, b): &(Tensor<2>, Tensor<1>)) -> Tensor<2> {
    x.matmul(w.clone()) + b.clone().unsqueeze()
}

/// Digit capsules `[N, J, D]` from input capsules `u` `[N, I, E]`: the predictions
/// `û_j|i = W_ij u_i` and `iterations` of routing by agreement (the paper's Procedure 1, as
/// `trainer.model.route`): from `b = 0`, `c = softmax_j b`, `v = squash(Σ_i c_ij û_j|i)`,
/// `b += û_j|i · v_j` but after the last.
fn digit_capsules(
    u: Tensor<3>,
    weight: &Tensor<3>,
    [j, d]: [usize; 2],
    iterations: usize,
) -> Tensor<3> {
    let [n, i, _] = u.dims();
    // [I, J*D, E] x [I, E, N] -> [I, J*D, N] -> [N, I, J, D]
    let u_hat: Tensor<4> = weight
        .clone()
        .matmul(u.permute([1, 2, 0]))
        .reshape([i, j, d, n])
        .permute([3, 0, 1, 2]);
    let mut logits: Tensor<3> = Tensor::zeros([n, i, j], &u_hat.device());
    let mut v = None;
    for iteration in 0..iterations {
        let coupling = softmax(logits.clone(), 2).unsqueeze_dim::<4>(3);
        let s: Tensor<3> = (coupling * u_hat.clone()).sum_dim(1).reshape([n, j, d]);
        let out = squash(s);
        if iteration + 1 < iterations {
            let agreement = (u_hat.clone() * out.clone().unsqueeze_dim::<4>(1)).sum_dim(3);
            logits = logits + agreement.reshape([n, i, j]);
        }
        v = Some(out);
    }
    v.expect("at least one routing iteration (checked by crate::plan::parse)")
}

impl ConvTensors {
    fn new(conv: &Conv, device: &Device) -> Self {
        let [o, i, kh, kw] = conv.shape;
        Self {
            weight: Tensor::from_data(TensorData::new(conv.weight.clone(), [o, i, kh, kw]), device),
            bias: Tensor::from_data(TensorData::new(conv.bias.clone(), [o]), device),
            padding: conv.padding,
            stride: conv.stride,
            activation: conv.activation,
            pool: conv.pool,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let p = self.padding;
        let s = self.stride;
        let options = ConvOptions::new([s, s], [p, p], [1, 1], 1);
        let x = act(
            conv2d(x, self.weight.clone(), Some(self.bias.clone()), options),
            self.activation,
        );
        if self.pool {
            max_pool2d(x, MaxPoolOptions::new([2, 2]))
        } else {
            x
        }
    }
}

impl LayerModel {
    /// The checked plan's tensors on `device`.
    pub(crate) fn new(checked: &Checked, device: &Device) -> Self {
        let ops = checked
            .steps
            .iter()
            .map(|step| match step {
                Step::Conv(c) => Op::Conv(ConvTensors::new(c, device)),
                Step::Residual { a, b, shortcut } => Op::Residual(Box::new((
                    ConvTensors::new(a, device),
                    ConvTensors::new(b, device),
                    shortcut.as_ref().map(|s| ConvTensors::new(s, device)),
                ))),
                Step::MaxPool(k) => Op::MaxPool(*k),
                Step::GlobalAvgPool => Op::GlobalAvgPool,
                Step::Flatten(_) => Op::Flatten,
                Step::Linear(d) => {
                    let (weight, bias) = linear_tensors(d, device);
                    Op::Linear(weight, bias, d.activation)
                }
                Step::Dropout(p) => Op::Dropout(*p),
                Step::PrimaryCaps {
                    conv,
                    capsules,
                    dim,
                } => Op::PrimaryCaps(ConvTensors::new(conv, device), *capsules, *dim),
                Step::DigitCaps(routing) => {
                    let [i, j, d, e] = routing.shape;
                    let data = TensorData::new(routing.weight.clone(), [i, j * d, e]);
                    Op::DigitCaps(Tensor::from_data(data, device), [j, d], routing.iterations)
                }
                Step::Decoder(layers) => Op::Decoder(Box::new(
                    layers.each_ref().map(|d| linear_tensors(d, device)),
                )),
                Step::CapsuleLength(scale) => Op::CapsuleLength(*scale),
            })
            .collect();
        Self {
            ops,
            names: checked.names.clone(),
        }
    }

    /// One step; `masks`: MC dropout's `(seed, next value index)`, or none at inference.
    fn step(&self, op: &Op, x: Values, masks: &mut Option<(u64, u64)>) -> Values {
        match (op, x) {
            (Op::Conv(c), Values::Images(x)) => Values::Images(c.forward(x)),
            (Op::Residual(block), Values::Images(x)) => {
                let (a, b, shortcut) = &**block;
                let skip = match shortcut {
                    Some(s) => s.forward(x.clone()),
                    None => x.clone(),
                };
                Values::Images(relu(b.forward(a.forward(x)) + skip))
            }
            (Op::MaxPool(k), Values::Images(x)) => {
                Values::Images(max_pool2d(x, MaxPoolOptions::new([*k, *k])))
            }
            (Op::GlobalAvgPool, Values::Images(x)) => {
                let [n, c, _, _] = x.dims();
                Values::Features(x.mean_dim(3).mean_dim(2).reshape([n, c]))
            }
            (Op::Flatten, Values::Images(x)) => Values::Features(x.flatten(1, 3)),
            (Op::Linear(w, bias, a), Values::Features(x)) => {
                Values::Features(act(x.matmul(w.clone()) + bias.clone().unsqueeze(), *a))
            }
            (Op::PrimaryCaps(conv, capsules, dim), Values::Images(x)) => {
                let x = conv.forward(x);
                let [n, _, h, w] = x.dims();
                let x: Tensor<5> = x.reshape([n, *capsules, *dim, h, w]);
                let x = x
                    .permute([0, 1, 3, 4, 2])
                    .reshape([n, capsules * h * w, *dim]);
                Values::Capsules(squash(x))
            }
            (Op::DigitCaps(weight, out, iterations), Values::Capsules(u)) => {
                Values::Capsules(digit_capsules(u, weight, *out, *iterations))
            }
            (Op::Decoder(_), Values::Capsules(v)) => Values::Capsules(v),
            (Op::CapsuleLength(scale), Values::Capsules(v)) => {
                Values::Features(lengths(v) * *scale)
            }
            (Op::Dropout(p), Values::Features(x)) => match masks {
                None => Values::Features(x),
                Some((seed, next)) => {
                    let [n, f] = x.dims();
                    let mask = dropout_mask(*seed, *next, n * f, *p);
                    *next += (n * f) as u64;
                    let mask = Tensor::<2>::from_data(TensorData::new(mask, [n, f]), &x.device());
                    Values::Features(x * mask)
                }
            },
            _ => unreachable!("the step kinds were chained by crate::params::check"),
        }
    }

    /// The steps before `end` (all of them for logits, all but the last for features).
    fn run(&self, images: Tensor<4>, mut masks: Option<(u64, u64)>, end: usize) -> Tensor<2> {
        let mut x = Values::Images(images);
        for op in &self.ops[..end] {
            x = self.step(op, x, &mut masks);
        }
        match x {
            Values::Features(values) => values,
            // The penultimate values of a capsule network: its digit capsules, flattened.
            Values::Capsules(v) => v.flatten(1, 2),
            Values::Images(_) => unreachable!("checked: a plan ends with features"),
        }
    }

    /// What a capsule network sees, from one forward pass of normalised images
    /// `[N, 1, 28, 28]`: `(lengths, reconstruction)`, the lengths `[N, J]` of the digit
    /// capsules (the longest is the predicted digit) and the decoder's reconstruction
    /// `[N, pixels]` (each in (0, 1), ink = 1, row-major) from the longest capsule (the
    /// others zeroed, as the paper at inference); `None` for a plan without a decoder. Where
    /// two capsules are exactly as long, both go through (PyTorch's argmax would take the
    /// first).
    pub fn reconstruct(&self, images: Tensor<4>) -> Option<(Tensor<2>, Tensor<2>)> {
        let decoder = self
            .ops
            .iter()
            .position(|op| matches!(op, Op::Decoder(_)))?;
        let Values::Capsules(v) = self.ops[..decoder]
            .iter()
            .fold(Values::Images(images), |x, op| self.step(op, x, &mut None))
        else {
            unreachable!("checked: a decoder follows capsules")
        };
        let Op::Decoder(layers) = &self.ops[decoder] else {
            unreachable!()
        };
        let [n, j, _] = v.dims();
        let length = lengths(v.clone());
        let longest = length.clone().max_dim(1).expand([n, j]);
        let mask = length.clone().equal(longest).float().unsqueeze_dim::<3>(2);
        let x = (v * mask).flatten(1, 2);
        let x = relu(affine(x, &layers[0]));
        let x = relu(affine(x, &layers[1]));
        Some((length, sigmoid(affine(x, &layers[2]))))
    }

    /// Normalised images `[N, 1, 28, 28]` -> logits `[N, 10]` (the same as
    /// `self.pass(images, Pass::LOGITS)`).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.pass(images, Pass::LOGITS)
    }

    /// The one forward pass ([`Pass`]): normalised images `[N, 1, 28, 28]` -> logits
    /// `[N, 10]`, or with `pass.features` the penultimate features `[N, F]` (every step but
    /// the last, the head that `crate::adapt` re-fits).
    ///
    /// With `pass.mc` ([`McDropout`]), MC dropout on one image `[1, 1, 28, 28]`, repeated into
    /// a `[samples, 1, 28, 28]` batch, each dropout layer masked by [`dropout_mask`]`(seed,
    /// ...)` over its `[samples, features]` input, the value index counting on across the
    /// layers: the fast kernels' and `trainer.uncertainty`'s masks.
    pub fn pass(&self, images: Tensor<4>, pass: Pass) -> Tensor<2> {
        let end = self.ops.len() - usize::from(pass.features);
        match pass.mc {
            None => self.run(images, None, end),
            Some(McDropout { samples, seed }) => {
                self.run(images.repeat_dim(0, samples), Some((seed, 0)), end)
            }
        }
    }

    /// Each step run `repeats` times on the output of the one before, timed with `now`:
    /// `(name, mean time per run)` in order (dropout, the identity here, is left out).
    pub fn profile(
        &self,
        images: Tensor<4>,
        repeats: usize,
        now: &mut dyn FnMut() -> f64,
    ) -> Vec<(String, f64)> {
        let mut times = Vec::new();
        let mut x = Values::Images(images);
        for (op, name) in self.ops.iter().zip(&self.names) {
            if matches!(op, Op::Dropout(_)) {
                continue;
            }
            let start = now();
            for _ in 1..repeats.max(1) {
                drop(self.step(op, x.clone(), &mut None));
            }
            x = self.step(op, x, &mut None);
            times.push((name.clone(), (now() - start) / repeats.max(1) as f64));
        }
        times
    }
}

impl Clone for Values {
    fn clone(&self) -> Self {
        match self {
            Values::Images(x) => Values::Images(x.clone()),
            Values::Features(x) => Values::Features(x.clone()),
            Values::Capsules(x) => Values::Capsules(x.clone()),
        }
    }
}
