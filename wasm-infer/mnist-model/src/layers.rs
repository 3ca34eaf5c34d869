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
//! ```

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use burn::prelude::*;
use burn::tensor::activation::{gelu, relu};
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
}

/// The values between steps: images `[N, C, H, W]` or features `[N, F]`.
enum Values {
    Images(Tensor<4>),
    Features(Tensor<2>),
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

impl ConvTensors {
    fn new(conv: &Conv, device: &Device) -> Self {
        let [o, i, kh, kw] = conv.shape;
        Self {
            weight: Tensor::from_data(TensorData::new(conv.weight.clone(), [o, i, kh, kw]), device),
            bias: Tensor::from_data(TensorData::new(conv.bias.clone(), [o]), device),
            padding: conv.padding,
            activation: conv.activation,
            pool: conv.pool,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let p = self.padding;
        let options = ConvOptions::new([1, 1], [p, p], [1, 1], 1);
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
                    let [n, k] = d.shape;
                    let weight: Tensor<2> =
                        Tensor::from_data(TensorData::new(d.weight.clone(), [n, k]), device);
                    let bias = Tensor::from_data(TensorData::new(d.bias.clone(), [n]), device);
                    Op::Linear(weight.transpose(), bias, d.activation)
                }
                Step::Dropout(p) => Op::Dropout(*p),
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
            Values::Images(_) => unreachable!("checked: a plan ends with features"),
        }
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
        }
    }
}
