//! The network, layer for layer the PyTorch `trainer.model.Net`.
//!
//! Field names are the PyTorch state_dict names (`conv1.conv.weight`, `fc1.bias`, ...), so
//! burn-store's `PyTorchToBurnAdapter` maps a PyTorch file onto this struct by name.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Gelu, Linear, LinearConfig, Relu};
use burn::prelude::*;

/// Output channels of both convolutions.
pub const CHANNELS: usize = 64;
/// Features after the second block: 64 channels x 5 x 5.
pub const FLAT_FEATURES: usize = CHANNELS * 5 * 5;
/// Width of the two hidden linear layers.
pub const HIDDEN: usize = 128;
/// Number of classes (digits 0-9).
pub const NUM_CLASSES: usize = 10;

/// 3x3 valid convolution -> BatchNorm -> GELU (exact, erf-based) -> 2x2 max-pool.
///
/// Shapes: `[N, C_in, H, W]` -> `[N, C_out, (H - 2) / 2, (W - 2) / 2]`.
#[derive(Module, Debug)]
pub struct ConvBlock {
    conv: Conv2d,
    norm: BatchNorm,
    activation: Gelu,
    pool: MaxPool2d,
}

impl ConvBlock {
    /// A block with freshly initialised weights (they are replaced when weights are loaded).
    pub fn new(in_channels: usize, out_channels: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([in_channels, out_channels], [3, 3]).init(device),
            norm: BatchNormConfig::new(out_channels).init(device),
            activation: Gelu::new(),
            pool: MaxPool2dConfig::new([2, 2]).init(),
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
    conv1: ConvBlock,
    conv2: ConvBlock,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    activation: Relu,
}

impl Model {
    /// A model with freshly initialised weights, on `device`.
    pub fn new(device: &Device) -> Self {
        Self {
            conv1: ConvBlock::new(1, CHANNELS, device),
            conv2: ConvBlock::new(CHANNELS, CHANNELS, device),
            fc1: LinearConfig::new(FLAT_FEATURES, HIDDEN).init(device),
            fc2: LinearConfig::new(HIDDEN, HIDDEN).init(device),
            fc3: LinearConfig::new(HIDDEN, NUM_CLASSES).init(device),
            activation: Relu::new(),
        }
    }

    /// Normalised images `[N, 1, 28, 28]` -> logits `[N, 10]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.conv2.forward(self.conv1.forward(images));
        let x: Tensor<2> = x.flatten(1, 3);
        let x = self.activation.forward(self.fc1.forward(x));
        let x = self.activation.forward(self.fc2.forward(x));
        self.fc3.forward(x)
    }
}
