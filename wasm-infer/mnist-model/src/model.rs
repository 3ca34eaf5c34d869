//! The network, layer for layer the PyTorch `trainer.model.Net`.
//!
//! Field names are the PyTorch state_dict names (`conv1.conv.weight`, `fc1.bias`, ...), so
//! burn-store's `PyTorchToBurnAdapter` maps a PyTorch file onto this struct by name.

use alloc::vec::Vec;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Gelu, Linear, LinearConfig, Relu};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::pass::{McDropout, Pass};

/// Output channels of both convolutions.
pub const CHANNELS: usize = 64;
/// Features after the second block: 64 channels x 5 x 5.
pub const FLAT_FEATURES: usize = CHANNELS * 5 * 5;
/// Width of the two hidden linear layers.
pub const HIDDEN: usize = 128;
/// Dropout probability after `fc1` and `fc2` (training, and MC dropout at inference).
pub const DROPOUT: f32 = 0.25;
/// Number of classes (digits 0-9).
pub const NUM_CLASSES: usize = 10;

/// The convolution blocks: state_dict prefix, input channels, output channels.
pub const CONV_BLOCKS: [(&str, usize, usize); 2] =
    [("conv1", 1, CHANNELS), ("conv2", CHANNELS, CHANNELS)];
/// The linear layers: state_dict prefix, input features, output features. ReLU follows every
/// one but the last.
pub const LINEARS: [(&str, usize, usize); 3] = [
    ("fc1", FLAT_FEATURES, HIDDEN),
    ("fc2", HIDDEN, HIDDEN),
    ("fc3", HIDDEN, NUM_CLASSES),
];

/// A block's convolution: 3x3, stride 1, no padding (PyTorch `nn.Conv2d(c_in, c_out, 3)`).
/// Read by [`ConvBlock::new`] and by the fast kernels' loader, which has no burn module.
pub fn conv_config(in_channels: usize, out_channels: usize) -> Conv2dConfig {
    Conv2dConfig::new([in_channels, out_channels], [3, 3])
}

/// A block's BatchNorm: epsilon 1e-5, PyTorch's `nn.BatchNorm2d` default.
pub fn norm_config(channels: usize) -> BatchNormConfig {
    BatchNormConfig::new(channels)
}

/// A block's max-pool: 2x2, stride 2, floor mode (PyTorch `nn.MaxPool2d(2)`).
pub fn pool_config() -> MaxPool2dConfig {
    MaxPool2dConfig::new([2, 2])
}

/// 3x3 valid convolution -> BatchNorm -> GELU (exact, erf-based) -> 2x2 max-pool.
///
/// Shapes: `[N, C_in, H, W]` -> `[N, C_out, (H - 2) / 2, (W - 2) / 2]`.
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub(crate) conv: Conv2d,
    pub(crate) norm: BatchNorm,
    activation: Gelu,
    pub(crate) pool: MaxPool2d,
}

impl ConvBlock {
    /// A block with freshly initialised weights (they are replaced when weights are loaded).
    pub fn new(in_channels: usize, out_channels: usize, device: &Device) -> Self {
        Self {
            conv: conv_config(in_channels, out_channels).init(device),
            norm: norm_config(out_channels).init(device),
            activation: Gelu::new(),
            pool: pool_config().init(),
        }
    }

    /// `[N, C_in, H, W]` -> `[N, C_out, (H - 2) / 2, (W - 2) / 2]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.conv.forward(x);
        let x = self.norm.forward(x);
        let x = self.activation.forward(x);
        self.pool.forward(x)
    }
}

/// The MNIST classifier: 260,554 trainable parameters + 256 BatchNorm running statistics.
///
/// Dropout is a training-time layer and has no place here: inference is PyTorch's eval mode.
#[derive(Module, Debug)]
pub struct Model {
    pub(crate) conv1: ConvBlock,
    pub(crate) conv2: ConvBlock,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) fc3: Linear,
    activation: Relu,
}

impl Model {
    /// A model with freshly initialised weights, on `device`.
    pub fn new(device: &Device) -> Self {
        Self {
            conv1: ConvBlock::new(CONV_BLOCKS[0].1, CONV_BLOCKS[0].2, device),
            conv2: ConvBlock::new(CONV_BLOCKS[1].1, CONV_BLOCKS[1].2, device),
            fc1: LinearConfig::new(LINEARS[0].1, LINEARS[0].2).init(device),
            fc2: LinearConfig::new(LINEARS[1].1, LINEARS[1].2).init(device),
            fc3: LinearConfig::new(LINEARS[2].1, LINEARS[2].2).init(device),
            activation: Relu::new(),
        }
    }

    /// Normalised images `[N, 1, 28, 28]` -> logits `[N, 10]` (the same as
    /// `self.pass(images, Pass::LOGITS)`).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.pass(images, Pass::LOGITS)
    }

    /// The one forward pass ([`Pass`]): normalised images `[N, 1, 28, 28]` -> logits
    /// `[N, 10]`, or with `pass.features` the penultimate features `[N, 128]` (the input of
    /// `fc3`, the head that `crate::adapt` re-fits).
    ///
    /// With `pass.mc` ([`McDropout`]), MC dropout on one image `[1, 1, 28, 28]`: it is
    /// repeated into a `[samples, 1, 28, 28]` batch, and the dropout after `fc1` and after
    /// `fc2` (p = 0.25, as `trainer.model.CNN`) is applied with the masks of
    /// [`crate::uncertainty::dropout_mask`] from `seed` (the first layer's `samples * 128`
    /// values, then the second's): the same masks as the fast kernels and `trainer.uncertainty`.
    /// The output then has `samples` rows.
    pub fn pass(&self, images: Tensor<4>, pass: Pass) -> Tensor<2> {
        let device = images.device();
        let (images, mask) = match pass.mc {
            None => (images, None),
            Some(McDropout { samples, seed }) => {
                (images.repeat_dim(0, samples), Some((samples, seed)))
            }
        };
        let dropout = |x: Tensor<2>, layer: u64| match mask {
            None => x,
            Some((samples, seed)) => {
                let start = layer * (samples * HIDDEN) as u64;
                let values =
                    crate::uncertainty::dropout_mask(seed, start, samples * HIDDEN, DROPOUT);
                x * Tensor::<2>::from_data(TensorData::new(values, [samples, HIDDEN]), &device)
            }
        };
        let x = self.conv2.forward(self.conv1.forward(images));
        let x: Tensor<2> = x.flatten(1, 3);
        let x = dropout(self.activation.forward(self.fc1.forward(x)), 0);
        let x = dropout(self.activation.forward(self.fc2.forward(x)), 1);
        if pass.features {
            x
        } else {
            self.fc3.forward(x)
        }
    }
}

/// Run `layer` on `input` `repeats` times; returns its output and the mean time per run in
/// `now`'s unit. The CPU backends compute eagerly, so the time is the layer's.
fn timed<I: Clone, O>(
    input: I,
    repeats: usize,
    now: &mut dyn FnMut() -> f64,
    layer: impl Fn(I) -> O,
) -> (O, f64) {
    let start = now();
    for _ in 1..repeats.max(1) {
        drop(layer(input.clone()));
    }
    let out = layer(input);
    (out, (now() - start) / repeats.max(1) as f64)
}

impl Model {
    /// [`Model::forward`] + softmax, one layer at a time, each layer run `repeats` times on the
    /// same input and timed with `now` (e.g. `performance.now()`, ms). Returns the layers'
    /// names and mean times, in order. For the CPU backends (eager).
    pub fn profile(
        &self,
        images: Tensor<4>,
        repeats: usize,
        now: &mut dyn FnMut() -> f64,
    ) -> Vec<(&'static str, f64)> {
        let mut times = Vec::new();
        let mut x = images;
        for (block, names) in [
            (
                &self.conv1,
                ["conv1", "norm1 (BatchNorm)", "gelu1", "pool1"],
            ),
            (
                &self.conv2,
                ["conv2", "norm2 (BatchNorm)", "gelu2", "pool2"],
            ),
        ] {
            let (y, t) = timed(x, repeats, now, |x| block.conv.forward(x));
            times.push((names[0], t));
            let (y, t) = timed(y, repeats, now, |x| block.norm.forward(x));
            times.push((names[1], t));
            let (y, t) = timed(y, repeats, now, |x| block.activation.forward(x));
            times.push((names[2], t));
            let (y, t) = timed(y, repeats, now, |x| block.pool.forward(x));
            times.push((names[3], t));
            x = y;
        }
        let flat: Tensor<2> = x.flatten(1, 3);
        let (y, t) = timed(flat, repeats, now, |x| {
            self.activation.forward(self.fc1.forward(x))
        });
        times.push(("fc1 + ReLU", t));
        let (y, t) = timed(y, repeats, now, |x| {
            self.activation.forward(self.fc2.forward(x))
        });
        times.push(("fc2 + ReLU", t));
        let (y, t) = timed(y, repeats, now, |x| self.fc3.forward(x));
        times.push(("fc3", t));
        let (_, t) = timed(y, repeats, now, |x| softmax(x, 1));
        times.push(("softmax", t));
        times
    }
}
