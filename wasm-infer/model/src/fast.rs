//! The model's weights turned, once, into a [`Network`] for this crate's own kernels.
//!
//! Two sources give the same network, bit for bit (a test holds them together):
//!
//! * [`Network::from_safetensors`]: straight from the PyTorch state_dict in the safetensors
//!   file, by the names `trainer/model.py` gives the tensors. This is what the fast builds
//!   load with: no burn tensor is made, so none of burn's runtime (its tensor operations,
//!   burn-store's conversions) is linked into them, which keeps the wasm small and the first
//!   prediction early. The layer configurations (stride, padding, pool, BatchNorm epsilon)
//!   still come from the burn model's definition (`crate::model`).
//! * [`Network::from_model`]: from the burn [`Model`] that burn-store loaded (the reference
//!   path, also used by the burn backends).
//!
//! Either way, the weights are then
//!
//! * folded: each BatchNorm (eval mode: running statistics) into the convolution before it,
//!   `s = γ / √(var + ε)`, `w' = w · s`, `b' = (b - mean) · s + β`, per output channel, in f64;
//! * packed into the kernels' column blocks for the chosen [`Isa`];
//! * permuted: the first linear layer's inputs from PyTorch's flatten order `(c, h, w)` to
//!   the kernels' NHWC order `(h, w, c)`.
//!
//! Shapes are read from the tensors, not assumed: any channels, kernel sizes and feature
//! counts. What the kernels cannot do (strides, dilation, groups, padding) is refused.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::kernels::{Activation, ConvLayer, Isa, LinearLayer, Network, Packed};
use crate::model::{self, CONV_BLOCKS, ConvBlock, LINEARS, Model};

/// One conv block's parameters in PyTorch's layouts, as f32.
struct ConvParams {
    /// `[c_out, c_in, kh, kw]`, row-major.
    weight: Vec<f32>,
    shape: [usize; 4],
    /// `[c_out]`, or none for a convolution without bias.
    bias: Option<Vec<f32>>,
    /// BatchNorm's `γ`, `β`, running mean and running variance, each `[c_out]`.
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    epsilon: f64,
}

/// One linear layer's parameters in PyTorch's layout, as f32.
struct LinearParams {
    /// `[out_features, in_features]`, row-major (PyTorch's `nn.Linear.weight`).
    weight: Vec<f32>,
    shape: [usize; 2],
    /// `[out_features]`, or none.
    bias: Option<Vec<f32>>,
}

/// Why a model cannot run on the kernels (a layer configuration they do not implement).
fn unsupported(what: String) -> String {
    format!("the fast kernels do not support {what}")
}

/// The convolution geometry the kernels implement: stride 1, no dilation, no groups, valid.
fn check_conv(
    name: &str,
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    padding: &PaddingConfig2d,
) -> Result<(), String> {
    if stride != [1, 1] || dilation != [1, 1] || groups != 1 {
        return Err(unsupported(format!(
            "{name}: stride {stride:?}, dilation {dilation:?}, groups {groups} (only 1, 1, 1)"
        )));
    }
    if !matches!(padding, PaddingConfig2d::Valid) {
        return Err(unsupported(format!(
            "{name}: padding {padding:?} (only valid)"
        )));
    }
    Ok(())
}

/// The pool the kernels fuse: 2x2, stride 2, floor mode, no padding or dilation.
fn check_pool(
    name: &str,
    kernel_size: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
    padding: &PaddingConfig2d,
) -> Result<(), String> {
    if kernel_size != [2, 2]
        || stride != [2, 2]
        || dilation != [1, 1]
        || ceil_mode
        || !matches!(padding, PaddingConfig2d::Valid)
    {
        return Err(unsupported(format!(
            "{name}: a max-pool other than 2x2, stride 2, floor mode, no padding"
        )));
    }
    Ok(())
}

/// Conv -> BatchNorm -> GELU -> 2x2 max-pool, BatchNorm folded in.
fn conv_layer(p: &ConvParams, isa: Isa) -> ConvLayer {
    let [c_out, c_in, kh, kw] = p.shape;
    let scale: Vec<f64> = (0..c_out)
        .map(|o| p.gamma[o] as f64 / libm::sqrt(p.var[o] as f64 + p.epsilon))
        .collect();
    let folded_bias: Vec<f32> = (0..c_out)
        .map(|o| {
            let bias = p.bias.as_ref().map_or(0.0, |b| b[o] as f64);
            ((bias - p.mean[o] as f64) * scale[o] + p.beta[o] as f64) as f32
        })
        .collect();
    // k = (ky * kw + kx) * c_in + c, the order of the kernels' segments.
    let weight_at = |k: usize, o: usize| {
        let (c, kx, ky) = (k % c_in, (k / c_in) % kw, k / c_in / kw);
        (p.weight[((o * c_in + c) * kh + ky) * kw + kx] as f64 * scale[o]) as f32
    };
    ConvLayer {
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
    }
}

/// A linear layer, its input features permuted by `input_order` (`input_order[i]` = PyTorch's
/// index of the kernels' input `i`).
fn linear_layer(
    p: &LinearParams,
    activation: Activation,
    input_order: Option<&[usize]>,
    isa: Isa,
) -> LinearLayer {
    let [n, k] = p.shape;
    let zeros = alloc::vec![0.0; n];
    let weight_at = |kk: usize, col: usize| {
        let row = input_order.map_or(kk, |order| order[kk]);
        p.weight[col * k + row]
    };
    LinearLayer {
        weights: Packed::new(
            k,
            n,
            isa.block_width(),
            weight_at,
            p.bias.as_ref().unwrap_or(&zeros),
        ),
        activation,
    }
}

impl Network {
    /// Build from parameters in PyTorch's layouts, checking that the shapes chain from an
    /// `input` of `[channels, height, width]`.
    fn from_params(
        convs: &[ConvParams],
        linears: &[LinearParams],
        input: [usize; 3],
        isa: Isa,
    ) -> Result<Network, String> {
        let mut channels = input[0];
        let mut size = [input[1], input[2]];
        let mut conv_layers = Vec::with_capacity(convs.len());
        for (p, (name, ..)) in convs.iter().zip(CONV_BLOCKS) {
            let [c_out, c_in, kh, kw] = p.shape;
            if c_in != channels || size[0] < kh || size[1] < kw {
                return Err(format!(
                    "{name} takes {c_in} channels of at least {:?}, gets {channels} of {size:?}",
                    [kh, kw]
                ));
            }
            let layer = conv_layer(p, isa);
            size = layer.output_size(size);
            channels = c_out;
            conv_layers.push(layer);
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
        let mut features = order.len();
        let mut linear_layers = Vec::with_capacity(linears.len());
        for (i, (p, (name, ..))) in linears.iter().zip(LINEARS).enumerate() {
            let [out, k] = p.shape;
            if k != features {
                return Err(format!("{name} takes {k} features, gets {features}"));
            }
            let last = i + 1 == linears.len();
            let activation = if last {
                Activation::Identity
            } else {
                Activation::Relu
            };
            linear_layers.push(linear_layer(
                p,
                activation,
                (i == 0).then_some(&order[..]),
                isa,
            ));
            features = out;
        }
        Ok(Network {
            isa,
            input,
            convs: conv_layers,
            linears: linear_layers,
        })
    }

    /// The kernels' form of the model in a PyTorch safetensors file, for instruction set
    /// `isa`; `input` is one image's `[channels, height, width]`. Reads the tensors named as in
    /// `trainer/model.py`'s state_dict (`conv1.conv.weight`, `conv1.norm.running_var`,
    /// `fc1.weight`, ...), in f32 or f16 (f16 is widened to f32 exactly); `num_batches_tracked`
    /// is ignored. The metadata is checked by the caller.
    ///
    /// # Errors
    /// A message naming the tensor when one is missing, of another rank, dtype or length than
    /// its layer needs, or not used by the model; or naming the layer when the shapes do not
    /// chain or its configuration is one the kernels do not implement.
    pub fn from_safetensors(
        file: &SafeTensors,
        input: [usize; 3],
        isa: Isa,
    ) -> Result<Network, String> {
        let mut used = BTreeSet::new();
        let mut convs = Vec::new();
        for (prefix, ..) in CONV_BLOCKS {
            // The geometry (stride, padding, bias, ...) is the same for any channel counts.
            let conv = model::conv_config(1, 1);
            check_conv(
                prefix,
                conv.stride,
                conv.dilation,
                conv.groups,
                &conv.padding,
            )?;
            let pool = model::pool_config();
            check_pool(
                prefix,
                pool.kernel_size,
                pool.strides,
                pool.dilation,
                pool.ceil_mode,
                &pool.padding,
            )?;
            let (weight, s) = read(file, &mut used, format!("{prefix}.conv.weight"), 4)?;
            let c_out = s[0];
            let mut vector =
                |suffix: &str| read_vector(file, &mut used, format!("{prefix}.{suffix}"), c_out);
            let bias = if conv.bias {
                Some(vector("conv.bias")?)
            } else {
                None
            };
            convs.push(ConvParams {
                weight,
                shape: [s[0], s[1], s[2], s[3]],
                bias,
                gamma: vector("norm.weight")?,
                beta: vector("norm.bias")?,
                mean: vector("norm.running_mean")?,
                var: vector("norm.running_var")?,
                epsilon: model::norm_config(c_out).epsilon,
            });
        }
        let mut linears = Vec::new();
        for (prefix, ..) in LINEARS {
            let (weight, s) = read(file, &mut used, format!("{prefix}.weight"), 2)?;
            let bias = read_vector(file, &mut used, format!("{prefix}.bias"), s[0])?;
            linears.push(LinearParams {
                weight,
                shape: [s[0], s[1]],
                bias: Some(bias),
            });
        }
        let unused: Vec<&str> = file
            .names()
            .into_iter()
            .filter(|name| !used.contains(*name) && !name.ends_with("num_batches_tracked"))
            .collect();
        if !unused.is_empty() {
            return Err(format!(
                "tensors in the file that the model does not use: {unused:?}"
            ));
        }
        Network::from_params(&convs, &linears, input, isa)
    }

    /// The kernels' form of the burn `model` (loaded by burn-store), for instruction set
    /// `isa`; `input` is one image's `[channels, height, width]`. The reference for
    /// [`Network::from_safetensors`].
    ///
    /// # Errors
    /// A message naming the layer when its configuration is one the kernels do not implement,
    /// when the shapes do not chain, or when a parameter is not f32.
    pub fn from_model(model: &Model, input: [usize; 3], isa: Isa) -> Result<Network, String> {
        let convs = [
            conv_params(&model.conv1, CONV_BLOCKS[0].0)?,
            conv_params(&model.conv2, CONV_BLOCKS[1].0)?,
        ];
        let linears = [
            linear_params(&model.fc1)?,
            linear_params(&model.fc2)?,
            linear_params(&model.fc3)?,
        ];
        Network::from_params(&convs, &linears, input, isa)
    }
}

/// Tensor `name` of the file as f32 values, with its shape, checked to have `rank`
/// dimensions; its name goes into `used`.
fn read(
    file: &SafeTensors,
    used: &mut BTreeSet<String>,
    name: String,
    rank: usize,
) -> Result<(Vec<f32>, Vec<usize>), String> {
    let view = file
        .tensor(&name)
        .map_err(|_| format!("tensor {name} is missing from the file"))?;
    let shape = view.shape().to_vec();
    if shape.len() != rank {
        return Err(format!(
            "{name} has shape {shape:?}, expected {rank} dimensions"
        ));
    }
    let values = widen(view.dtype(), view.data()).map_err(|e| format!("{name}: {e}"))?;
    used.insert(name);
    Ok((values, shape))
}

/// [`read`] of a 1-D tensor that must hold `len` values (a bias, a BatchNorm vector).
fn read_vector(
    file: &SafeTensors,
    used: &mut BTreeSet<String>,
    name: String,
    len: usize,
) -> Result<Vec<f32>, String> {
    let (values, _) = read(file, used, name.clone(), 1)?;
    if values.len() != len {
        return Err(format!(
            "{name} has {} values, expected {len}",
            values.len()
        ));
    }
    Ok(values)
}

/// Little-endian f32 or f16 values as f32.
fn widen(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    match dtype {
        Dtype::F32 => Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::F16 => Ok(bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        other => Err(format!(
            "dtype {other:?} (the fast kernels read F32 or F16)"
        )),
    }
}

/// A burn tensor's f32 values, with its shape. The model is built in f32 and burn-store
/// converts what it loads to the parameters' dtype, so no conversion happens here (a generic
/// one would link burn's conversions between every pair of dtypes).
fn values<const D: usize>(tensor: Tensor<D>) -> Result<(Vec<f32>, [usize; D]), String> {
    let shape: [usize; D] = tensor.dims();
    let data = tensor.into_data();
    let values = data
        .as_slice::<f32>()
        .map_err(|e| unsupported(format!("a parameter of dtype {:?} ({e:?})", data.dtype())))?;
    Ok((values.to_vec(), shape))
}

/// An optional bias's values (none for a layer built without bias).
fn bias_values(bias: &Option<Param<Tensor<1>>>) -> Result<Option<Vec<f32>>, String> {
    Ok(match bias {
        Some(b) => Some(values(b.val())?.0),
        None => None,
    })
}

fn conv_params(block: &ConvBlock, name: &str) -> Result<ConvParams, String> {
    let conv = &block.conv;
    check_conv(name, conv.stride, conv.dilation, conv.groups, &conv.padding)?;
    let pool = &block.pool;
    check_pool(
        name,
        pool.kernel_size,
        pool.stride,
        pool.dilation,
        pool.ceil_mode,
        &pool.padding,
    )?;
    let (weight, shape) = values(conv.weight.val())?;
    let norm = &block.norm;
    Ok(ConvParams {
        weight,
        shape,
        bias: bias_values(&conv.bias)?,
        gamma: values(norm.gamma.val())?.0,
        beta: values(norm.beta.val())?.0,
        mean: values(norm.running_mean.value())?.0,
        var: values(norm.running_var.value())?.0,
        epsilon: norm.epsilon,
    })
}

/// burn's `Linear` holds its weight as `[in, out]`: transposed back to PyTorch's `[out, in]`.
fn linear_params(layer: &burn::nn::Linear) -> Result<LinearParams, String> {
    let (weight, [k, n]) = values(layer.weight.val())?;
    let transposed = (0..n * k).map(|i| weight[(i % k) * n + i / k]).collect();
    Ok(LinearParams {
        weight: transposed,
        shape: [n, k],
        bias: bias_values(&layer.bias)?,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

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
            let direct = Network::from_safetensors(&file, input, isa).unwrap();
            assert_eq!(
                direct,
                Network::from_model(&model, input, isa).unwrap(),
                "{isa:?}"
            );
        }
    }

    #[test]
    fn f16_values_widen_exactly_and_other_dtypes_are_named() {
        let halves = [1.0f32, -2.5, 0.000_061_035_156, 65504.0];
        let bytes: Vec<u8> = halves
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(widen(Dtype::F16, &bytes).unwrap(), halves);
        let message = widen(Dtype::F64, &[0; 8]).unwrap_err();
        assert!(message.contains("F64"), "{message}");
    }
}
