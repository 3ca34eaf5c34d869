//! A weights file turned, once, into a [`Network`] for this crate's own kernels.
//!
//! The layers and their parameters are read and checked by `crate::params` (from the
//! safetensors file, or from the burn `cnn` that burn-store loaded: the same network bit for
//! bit, a test holds them together); this module packs them for the kernels:
//!
//! * each convolution's weights (BatchNorm already folded in) into the kernels' column blocks
//!   for the chosen [`Isa`], `k = (ky * kw + kx) * c_in + c`;
//! * the first linear layer after a flatten of images permuted from PyTorch's flatten order
//!   `(c, h, w)` to the kernels' NHWC order `(h, w, c)` (the flatten itself is no operation).
//!
//! A fast build reads the file this way and makes no burn tensor, so none of burn's runtime
//! (its tensor operations, burn-store's conversions) is linked into it, which keeps the wasm
//! small and the first prediction early.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use safetensors::SafeTensors;

use crate::kernels::{Activation, ConvLayer, Isa, LinearLayer, Network, Op, Packed, Residual};
use crate::model::Model;
use crate::params::{self, Checked, Conv, Dense, Step};
use crate::plan::{Act, Layer};

fn activation(act: Act) -> Activation {
    match act {
        Act::None => Activation::Identity,
        Act::Relu => Activation::Relu,
        Act::Gelu => Activation::Gelu,
    }
}

/// A folded convolution packed for the kernels.
fn conv_layer(conv: &Conv, isa: Isa) -> ConvLayer {
    let [c_out, c_in, kh, kw] = conv.shape;
    // k = (ky * kw + kx) * c_in + c, the order of the kernels' segments.
    let weight_at = |k: usize, o: usize| {
        let (c, kx, ky) = (k % c_in, (k / c_in) % kw, k / c_in / kw);
        conv.weight[((o * c_in + c) * kh + ky) * kw + kx]
    };
    ConvLayer {
        weights: Packed::new(
            kh * kw * c_in,
            c_out,
            isa.block_width(),
            weight_at,
            &conv.bias,
        ),
        in_channels: c_in,
        kernel_size: [kh, kw],
        padding: conv.padding,
        activation: activation(conv.activation),
        max_pool_2x2: conv.pool,
    }
}

/// A linear layer packed for the kernels, its input features permuted by `input_order`
/// (`input_order[i]` = PyTorch's index of the kernels' input `i`).
fn linear_layer(dense: &Dense, input_order: Option<&[usize]>, isa: Isa) -> LinearLayer {
    let [n, k] = dense.shape;
    let weight_at = |kk: usize, col: usize| {
        let row = input_order.map_or(kk, |order| order[kk]);
        dense.weight[col * k + row]
    };
    LinearLayer {
        weights: Packed::new(k, n, isa.block_width(), weight_at, &dense.bias),
        activation: activation(dense.activation),
    }
}

impl Network {
    /// Pack a checked plan for instruction set `isa`.
    fn from_checked(checked: Checked, input: [usize; 3], isa: Isa) -> Network {
        let mut ops = Vec::new();
        let mut names = Vec::new();
        let mut shapes = alloc::vec![checked.shapes[0]];
        // After a flatten of NHWC images: PyTorch's index of each of the kernels' features.
        let mut flatten_order: Option<Vec<usize>> = None;
        for ((step, name), shape) in checked
            .steps
            .iter()
            .zip(checked.names)
            .zip(&checked.shapes[1..])
        {
            let op = match step {
                Step::Conv(conv) => Op::Conv(conv_layer(conv, isa)),
                Step::Residual { a, b, shortcut } => Op::Residual(Box::new(Residual {
                    a: conv_layer(a, isa),
                    b: conv_layer(b, isa),
                    shortcut: shortcut.as_ref().map(|s| conv_layer(s, isa)),
                })),
                Step::MaxPool(k) => Op::MaxPool(*k),
                Step::GlobalAvgPool => Op::GlobalAvgPool,
                Step::Flatten([h, w, c]) => {
                    // PyTorch flattens NCHW: feature (c * H + h) * W + w; the kernels' NHWC
                    // buffer holds feature (h * W + w) * C + c at that position.
                    flatten_order = Some((0..h * w * c).map(|i| (i % c) * h * w + i / c).collect());
                    *shapes.last_mut().expect("the input shape") = *shape;
                    continue;
                }
                Step::Linear(dense) => {
                    Op::Linear(linear_layer(dense, flatten_order.take().as_deref(), isa))
                }
                Step::Dropout(p) => Op::Dropout(*p),
            };
            ops.push(op);
            names.push(name);
            shapes.push(*shape);
        }
        Network {
            isa,
            input,
            ops,
            names,
            shapes,
        }
    }

    /// The kernels' form of the model in a PyTorch safetensors file: its layer `plan` (from
    /// the metadata) with the tensors named as in `trainer/model.py`'s state_dict
    /// (`conv1.conv.weight`, `conv1.norm.running_var`, `fc1.weight`, ...), in f32, f16
    /// (widened to f32 exactly) or int8 with per-channel scales (`<name>_scale`, see
    /// `params::SCALE_SUFFIX`); `num_batches_tracked` is ignored. `input` is one image's
    /// `[channels, height, width]`, `isa` the instruction set to pack for.
    ///
    /// # Errors
    /// A message naming the tensor when one is missing, of another rank, dtype or length than
    /// its layer needs, or not used by the plan; or naming the layer when the shapes do not
    /// chain or its configuration is one the kernels do not implement.
    pub fn from_safetensors(
        file: &SafeTensors,
        plan: &[Layer],
        input: [usize; 3],
        isa: Isa,
    ) -> Result<Network, String> {
        let checked = params::check_file(plan, file, input)?;
        if checked
            .steps
            .last()
            .is_some_and(|s| matches!(s, Step::Flatten(_)))
        {
            return Err(String::from("the plan ends with a flatten"));
        }
        Ok(Network::from_checked(checked, input, isa))
    }

    /// The kernels' form of the burn `model` (loaded by burn-store; the `cnn` plan), for
    /// instruction set `isa`; `input` is one image's `[channels, height, width]`. The
    /// reference for [`Network::from_safetensors`].
    ///
    /// # Errors
    /// A message naming the layer when its configuration is one the kernels do not implement,
    /// when the shapes do not chain, or when a parameter is not f32.
    pub fn from_model(model: &Model, input: [usize; 3], isa: Isa) -> Result<Network, String> {
        Ok(Network::from_checked(
            params::check_model(model, input)?,
            input,
            isa,
        ))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use burn::prelude::Device;

    fn weights() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/model.safetensors"
        );
        std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Reading the state_dict ourselves gives exactly the network that burn-store's loading
    /// (with its PyTorch adapter: transposed linear weights, renamed BatchNorm parameters)
    /// gives: every packed weight and bias bit for bit, on every instruction set.
    #[test]
    fn the_direct_reader_agrees_with_burn_store_bit_for_bit() {
        let bytes = weights();
        let (model, _) = crate::weights::load(&bytes, &Device::flex()).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        for &isa in Isa::ALL {
            let input = [1, 28, 28];
            let plan = crate::plan::cnn();
            let direct = Network::from_safetensors(&file, &plan, input, isa).unwrap();
            assert_eq!(
                direct,
                Network::from_model(&model, input, isa).unwrap(),
                "{isa:?}"
            );
        }
    }
}
