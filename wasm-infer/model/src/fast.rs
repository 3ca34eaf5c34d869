//! The loaded burn [`Model`] turned, once, into a [`Network`] for this crate's own kernels.
//!
//! burn-store has already loaded and checked the PyTorch weights into the burn model
//! (`crate::weights`); this reads them back as f32 and
//!
//! * folds each BatchNorm (eval mode: running statistics) into the convolution before it:
//!   `s = γ / √(var + ε)`, `w' = w · s`, `b' = (b - mean) · s + β`, per output channel;
//! * packs every weight matrix into the kernels' column blocks for the chosen [`Isa`];
//! * permutes the first linear layer's inputs from PyTorch's flatten order `(c, h, w)` to the
//!   kernels' NHWC order `(h, w, c)`.
//!
//! Shapes are read from the tensors, not assumed: any channels, kernel sizes and feature
//! counts. What the kernels cannot do (strides, dilation, groups, padding) is refused.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use crate::kernels::{Activation, ConvLayer, Isa, LinearLayer, Network, Packed};
use crate::model::{ConvBlock, Model};

/// The model's tensors as f32 values, with their shape. The model is built in f32 and
/// burn-store converts what it loads to the parameters' dtype, so no conversion happens here
/// (a generic one would link burn's conversions between every pair of dtypes).
///
/// # Errors
/// A message when a parameter is not f32.
fn values<const D: usize>(tensor: Tensor<D>) -> Result<(Vec<f32>, [usize; D]), String> {
    let shape: [usize; D] = tensor.dims();
    let data = tensor.into_data();
    let values = data
        .as_slice::<f32>()
        .map_err(|e| unsupported(format!("a parameter of dtype {:?} ({e:?})", data.dtype())))?;
    Ok((values.to_vec(), shape))
}

/// Why a model cannot run on the kernels (a layer configuration they do not implement).
fn unsupported(what: String) -> String {
    format!("the fast kernels do not support {what}")
}

fn check_conv(conv: &Conv2d, name: &str) -> Result<(), String> {
    if conv.stride != [1, 1] || conv.dilation != [1, 1] || conv.groups != 1 {
        return Err(unsupported(format!(
            "{name}: stride {:?}, dilation {:?}, groups {} (only 1, 1, 1)",
            conv.stride, conv.dilation, conv.groups
        )));
    }
    if !matches!(conv.padding, PaddingConfig2d::Valid) {
        return Err(unsupported(format!(
            "{name}: padding {:?} (only valid)",
            conv.padding
        )));
    }
    Ok(())
}

/// Conv -> BatchNorm -> GELU -> 2x2 max-pool, BatchNorm folded in.
fn conv_block(block: &ConvBlock, name: &str, isa: Isa) -> Result<ConvLayer, String> {
    check_conv(&block.conv, name)?;
    let pool = &block.pool;
    if pool.kernel_size != [2, 2]
        || pool.stride != [2, 2]
        || pool.dilation != [1, 1]
        || pool.ceil_mode
        || !matches!(pool.padding, PaddingConfig2d::Valid)
    {
        return Err(unsupported(format!(
            "{name}: a max-pool other than 2x2, stride 2, floor mode, no padding"
        )));
    }
    let (weight, [c_out, c_in, kh, kw]) = values(block.conv.weight.val())?;
    let bias = match &block.conv.bias {
        Some(b) => values(b.val())?.0,
        None => alloc::vec![0.0; c_out],
    };
    let norm = &block.norm;
    let (gamma, _) = values(norm.gamma.val())?;
    let (beta, _) = values(norm.beta.val())?;
    let (mean, _) = values(norm.running_mean.value())?;
    let (var, _) = values(norm.running_var.value())?;
    // In f64, then rounded once: the fold itself adds no error worth speaking of.
    let scale: Vec<f64> = (0..c_out)
        .map(|o| gamma[o] as f64 / libm::sqrt(var[o] as f64 + norm.epsilon))
        .collect();
    let folded_bias: Vec<f32> = (0..c_out)
        .map(|o| ((bias[o] as f64 - mean[o] as f64) * scale[o] + beta[o] as f64) as f32)
        .collect();
    // k = (ky * kw + kx) * c_in + c, the order of the kernels' segments.
    let weight_at = |k: usize, o: usize| {
        let (c, kx, ky) = (k % c_in, (k / c_in) % kw, k / c_in / kw);
        (weight[((o * c_in + c) * kh + ky) * kw + kx] as f64 * scale[o]) as f32
    };
    Ok(ConvLayer {
        weights: Packed::new(
            kh * kw * c_in,
            c_out,
            isa.block_width(),
            weight_at,
            &folded_bias,
        ),
        in_channels: c_in,
        kernel_size: [kh, kw],
        activation: Activation::Gelu,
        max_pool_2x2: true,
    })
}

/// A burn `Linear` (weight `[in, out]`), with its input features permuted by `input_order`
/// (`input_order[i]` = burn's index of the kernels' input `i`).
fn linear(
    layer: &burn::nn::Linear,
    activation: Activation,
    input_order: Option<&[usize]>,
    isa: Isa,
) -> Result<LinearLayer, String> {
    let (weight, [k, n]) = values(layer.weight.val())?;
    let bias = match &layer.bias {
        Some(b) => values(b.val())?.0,
        None => alloc::vec![0.0; n],
    };
    let weight_at = |kk: usize, col: usize| {
        let row = input_order.map_or(kk, |order| order[kk]);
        weight[row * n + col]
    };
    Ok(LinearLayer {
        weights: Packed::new(k, n, isa.block_width(), weight_at, &bias),
        activation,
    })
}

impl Network {
    /// The kernels' form of `model`, for instruction set `isa`; `input` is one image's
    /// `[channels, height, width]`.
    ///
    /// # Errors
    /// A message naming the layer when its configuration is one the kernels do not implement,
    /// or when the shapes do not chain.
    pub fn from_model(model: &Model, input: [usize; 3], isa: Isa) -> Result<Network, String> {
        let convs = [
            conv_block(&model.conv1, "conv1", isa)?,
            conv_block(&model.conv2, "conv2", isa)?,
        ];
        let mut channels = input[0];
        let mut size = [input[1], input[2]];
        for (conv, name) in convs.iter().zip(["conv1", "conv2"]) {
            if conv.in_channels != channels
                || size[0] < conv.kernel_size[0]
                || size[1] < conv.kernel_size[1]
            {
                return Err(format!(
                    "{name} takes {} channels of at least {:?}, gets {channels} of {size:?}",
                    conv.in_channels, conv.kernel_size
                ));
            }
            size = conv.output_size(size);
            channels = conv.weights.n;
        }
        // PyTorch flattens NCHW: feature (c * H + h) * W + w. The kernels' NHWC buffer holds
        // feature (h * W + w) * C + c at that position.
        let [h, w] = size;
        let order: Vec<usize> = (0..h * w * channels)
            .map(|i| {
                let (c, p) = (i % channels, i / channels);
                c * h * w + p
            })
            .collect();
        let linears = [
            linear(&model.fc1, Activation::Relu, Some(&order), isa)?,
            linear(&model.fc2, Activation::Relu, None, isa)?,
            linear(&model.fc3, Activation::Identity, None, isa)?,
        ];
        let mut features = order.len();
        for (layer, name) in linears.iter().zip(["fc1", "fc2", "fc3"]) {
            if layer.weights.k != features {
                return Err(format!(
                    "{name} takes {} features, gets {features}",
                    layer.weights.k
                ));
            }
            features = layer.weights.n;
        }
        Ok(Network {
            isa,
            input,
            convs: convs.into(),
            linears: linears.into(),
        })
    }
}
