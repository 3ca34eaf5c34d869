//! The layer plan: which layers a weights file's network has, in order, read from the file's
//! `layers` metadata (JSON written by `mnist_common.plan.layers_to_json`; the Python `Layer` specs
//! there document each kind). The fast kernels build any plan of these kinds; the burn model
//! ([`crate::model::Model`]) is the `cnn` plan, [`cnn`].
//!
//! ```text
//! [{"kind":"conv","name":"conv1","in_channels":1,"out_channels":64,"kernel_size":3,
//!   "padding":0,"norm":true,"activation":"gelu","pool":2}, ..., {"kind":"flatten"},
//!  {"kind":"linear","name":"fc1","in_features":1600,"out_features":128,"activation":"relu"},
//!  {"kind":"dropout","p":0.25}, ...]
//! ```
//!
//! The capsule network (`capsnet`; Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
//! NeurIPS 2017) adds strided convolutions (`"stride"`, absent in older plans: 1) and four
//! kinds: `primary_caps`, `digit_caps`, `decoder` and `capsule_length`. burn's tensor
//! operations (`crate::layers`) and the fast kernels (`crate::fast`, the `mnist-kernels`
//! crate's capsule layers) run them.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Deserialize;

use crate::model::{CONV_BLOCKS, DROPOUT, LINEARS};

/// The activation that ends a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    /// The layer's output as it is.
    None,
    /// `max(x, 0)`.
    Relu,
    /// Exact (erf-based) GELU.
    Gelu,
}

/// One layer of a plan. Names are state_dict prefixes: a conv's tensors are `NAME.conv.*` and
/// `NAME.norm.*`, a residual block's `NAME.a.*`, `NAME.b.*`, `NAME.shortcut.*`, a linear
/// layer's `NAME.weight` / `NAME.bias`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// Convolution (`stride`, zero padding), optional BatchNorm, activation, optional
    /// `pool` x `pool` max-pool (0: none).
    Conv {
        /// The state_dict prefix of its tensors (`conv1`, `fc1`, ...).
        name: String,
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Square kernel side, pixels.
        kernel_size: usize,
        /// Zero padding on each side, pixels.
        padding: usize,
        /// A BatchNorm follows the convolution (eps 1e-5, PyTorch's default).
        norm: bool,
        /// The activation after it.
        activation: Act,
        /// Max-pool side after the activation (0: none).
        pool: usize,
        /// Step between the kernel's positions, pixels (1 in plans written before strides).
        #[serde(default = "one")]
        stride: usize,
    },
    /// `relu(b(a(x)) + shortcut(x))`: `a` = "same" conv + BatchNorm + ReLU, `b` = the same
    /// without ReLU, shortcut = identity or (channels change) 1x1 conv + BatchNorm.
    Residual {
        /// The state_dict prefix of its tensors (`conv1`, `fc1`, ...).
        name: String,
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Square kernel side, pixels.
        kernel_size: usize,
    },
    /// `kernel_size` x `kernel_size` max-pool, stride `kernel_size`, floor mode.
    MaxPool {
        /// Window side and stride, pixels.
        kernel_size: usize,
    },
    /// Mean over the pixels of each channel: `[C, H, W]` -> `[C]`.
    GlobalAvgPool,
    /// `[C, H, W]` -> `[C * H * W]` in PyTorch's `(c, h, w)` order.
    Flatten,
    /// Fully connected layer and activation.
    Linear {
        /// The state_dict prefix of its tensors (`conv1`, `fc1`, ...).
        name: String,
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// The activation after it.
        activation: Act,
    },
    /// Inverted dropout with probability `p`: the identity at inference, random masks under
    /// MC dropout.
    Dropout {
        /// Probability of dropping a value, 0..1.
        p: f32,
    },
    /// Primary capsules: a `kernel_size` x `kernel_size` convolution with `stride`, no padding
    /// and no activation, to `capsules * dim` channels, cut into `capsules` types of
    /// `dim`-D capsules at each of its `H' x W'` positions, each squashed
    /// (`squash(s) = s |s| / (1 + |s|²)`). `[C, H, W]` -> `[capsules * H' * W', dim]`,
    /// capsule `(c * H' + y) * W' + x` = type `c` at `(y, x)`, its value `d` = channel
    /// `c * dim + d`. Tensors `NAME.conv.weight`, `NAME.conv.bias`.
    PrimaryCaps {
        /// The state_dict prefix of its tensors.
        name: String,
        /// Input channels.
        in_channels: usize,
        /// Capsule types.
        capsules: usize,
        /// Values per capsule.
        dim: usize,
        /// Square kernel side, pixels.
        kernel_size: usize,
        /// Step between the kernel's positions, pixels.
        stride: usize,
    },
    /// Digit capsules, routing by agreement (the paper's Procedure 1): `û_j|i = W_ij u_i`,
    /// from `b_ij = 0`, `routing` times `c_ij = softmax_j b_ij`, `v_j = squash(Σ_i c_ij û_j|i)`,
    /// `b_ij += û_j|i · v_j` (not after the last). `[in_capsules, in_dim]` ->
    /// `[capsules, dim]`. Tensor `NAME.weight` `[in_capsules, capsules, dim, in_dim]`.
    DigitCaps {
        /// The state_dict prefix of its tensors.
        name: String,
        /// Input capsules.
        in_capsules: usize,
        /// Values per input capsule.
        in_dim: usize,
        /// Output capsules (one per class).
        capsules: usize,
        /// Values per output capsule.
        dim: usize,
        /// Routing iterations, at least 1.
        routing: usize,
    },
    /// The reconstruction decoder, a side branch (the capsules go on unchanged): every capsule
    /// but one (the predicted digit's, the longest) zeroed, flattened in (capsule, value)
    /// order, then `NAME.fc1` + ReLU -> `NAME.fc2` + ReLU -> `NAME.fc3` + sigmoid: the image
    /// the network sees, `out_features` values in (0, 1), ink = 1.
    Decoder {
        /// The state_dict prefix of its tensors.
        name: String,
        /// Capsules it reads.
        capsules: usize,
        /// Values per capsule.
        dim: usize,
        /// Outputs of `fc1`.
        hidden1: usize,
        /// Outputs of `fc2`.
        hidden2: usize,
        /// Outputs of `fc3`: the reconstruction's pixels.
        out_features: usize,
    },
    /// Class scores of capsules: logits `scale * |v_j|` (`[capsules, dim]` -> `[capsules]`).
    CapsuleLength {
        /// The logits per unit of capsule length.
        scale: f32,
    },
}

/// A field's value in plans written before it existed.
fn one() -> usize {
    1
}

/// Parse a plan from its JSON text.
///
/// # Errors
/// A message naming the problem: not JSON, an unknown kind or field, a missing field, an empty
/// plan, or a dropout probability outside `[0, 1)`.
pub fn parse(json: &str) -> Result<Vec<Layer>, String> {
    let plan: Vec<Layer> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if plan.is_empty() {
        return Err("the plan has no layers".to_string());
    }
    for layer in &plan {
        match layer {
            Layer::Dropout { p } if !(0.0..1.0).contains(p) => {
                return Err(format!("dropout probability {p} is not in [0, 1)"));
            }
            Layer::Conv { name, stride, .. } | Layer::PrimaryCaps { name, stride, .. }
                if *stride == 0 =>
            {
                return Err(format!("{name}: stride 0"));
            }
            Layer::DigitCaps { name, routing, .. } if *routing == 0 => {
                return Err(format!("{name}: no routing iteration (at least 1)"));
            }
            Layer::CapsuleLength { scale } if !(scale.is_finite() && *scale > 0.0) => {
                return Err(format!(
                    "capsule length scale {scale} is not a positive number"
                ));
            }
            _ => {}
        }
    }
    Ok(plan)
}

/// The `cnn` plan, from the burn model's own definition ([`crate::model`]'s `CONV_BLOCKS` and
/// `LINEARS`; `DROPOUT` after each hidden linear layer, as `trainer.model.CNN`). What the
/// burn backends run, and the plan of a file that predates plans in the metadata.
pub fn cnn() -> Vec<Layer> {
    let mut plan: Vec<Layer> = CONV_BLOCKS
        .iter()
        .map(|&(name, c_in, c_out)| Layer::Conv {
            name: name.to_string(),
            in_channels: c_in,
            out_channels: c_out,
            kernel_size: 3,
            padding: 0,
            norm: true,
            activation: Act::Gelu,
            pool: 2,
            stride: 1,
        })
        .collect();
    plan.push(Layer::Flatten);
    for (i, &(name, k, n)) in LINEARS.iter().enumerate() {
        let last = i + 1 == LINEARS.len();
        plan.push(Layer::Linear {
            name: name.to_string(),
            in_features: k,
            out_features: n,
            activation: if last { Act::None } else { Act::Relu },
        });
        if !last {
            plan.push(Layer::Dropout { p: DROPOUT });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_are_named() {
        let plan = parse(
            r#"[{"kind":"flatten"},{"kind":"linear","name":"fc","in_features":784,
                "out_features":10,"activation":"none"},{"kind":"dropout","p":0.5}]"#,
        )
        .unwrap();
        assert_eq!(plan.len(), 3);
        assert!(matches!(plan[2], Layer::Dropout { p } if p == 0.5));
        let unknown = parse(r#"[{"kind":"attention"}]"#).unwrap_err();
        assert!(unknown.contains("attention"), "{unknown}");
        let field = parse(r#"[{"kind":"max_pool","kernel_size":2,"stride":1}]"#).unwrap_err();
        assert!(field.contains("stride"), "{field}");
        assert!(parse("[]").unwrap_err().contains("no layers"));
        assert!(parse(r#"[{"kind":"dropout","p":1.0}]"#).is_err());
        assert!(parse("not json").is_err());
    }

    #[test]
    fn capsule_plans_parse_and_old_convolutions_have_stride_1() {
        let plan = parse(
            r#"[{"kind":"conv","name":"c","in_channels":1,"out_channels":8,"kernel_size":9,
                "padding":0,"norm":false,"activation":"relu","pool":0},
               {"kind":"primary_caps","name":"p","in_channels":8,"capsules":2,"dim":4,
                "kernel_size":9,"stride":2},
               {"kind":"digit_caps","name":"d","in_capsules":72,"in_dim":4,"capsules":10,
                "dim":16,"routing":3},
               {"kind":"decoder","name":"r","capsules":10,"dim":16,"hidden1":8,"hidden2":8,
                "out_features":784},
               {"kind":"capsule_length","scale":10.0}]"#,
        )
        .unwrap();
        assert!(matches!(plan[0], Layer::Conv { stride: 1, .. }));
        assert!(matches!(plan[2], Layer::DigitCaps { routing: 3, .. }));
        let no_routing = parse(
            r#"[{"kind":"digit_caps","name":"d","in_capsules":1,"in_dim":1,"capsules":1,
                "dim":1,"routing":0}]"#,
        );
        assert!(no_routing.unwrap_err().contains("routing"));
        let scale = parse(r#"[{"kind":"capsule_length","scale":-1.0}]"#).unwrap_err();
        assert!(scale.contains("scale"), "{scale}");
    }
}
