//! A weights file turned, once, into a [`Network`] for this crate's own kernels.
//!
//! The layers and their parameters are read and checked by `crate::params` (from the
//! safetensors file, or from the burn `cnn` that burn-store loaded: the same network bit for
//! bit, a test holds them together); this module hands them, BatchNorm already folded in and
//! in PyTorch's layouts, to the kernels' [`Network::new`] (the `mnist-kernels` crate), which
//! packs them for the chosen [`Isa`]: each weight matrix into its column blocks, the first
//! linear layer after a flatten permuted from PyTorch's flatten order `(c, h, w)` to the
//! kernels' NHWC order `(h, w, c)` (the flatten itself is no operation), the digit capsules'
//! `W_ij` as one `[in_dim, capsules * dim]` matrix per input capsule. Every step of a plan
//! maps to one kernel layer, the capsule network's included (strided convolutions, primary
//! and digit capsules, the decoder, capsule lengths: Sabour, Frosst & Hinton 2017).
//!
//! A fast build reads the file this way and makes no burn tensor, so none of burn's runtime
//! (its tensor operations, burn-store's conversions) is linked into it, which keeps the wasm
//! small and the first prediction early.

use alloc::string::String;
use alloc::vec::Vec;

use safetensors::SafeTensors;

use crate::kernels::{self, Activation, Isa, Layer, Network};
use crate::model::Model;
use crate::params::{self, Checked, Step};
use crate::pass::{McDropout, Pass};
use crate::plan::Act;

fn activation(act: Act) -> Activation {
    match act {
        Act::None => Activation::Identity,
        Act::Relu => Activation::Relu,
        Act::Gelu => Activation::Gelu,
    }
}

/// A folded convolution as the kernels take it (PyTorch's layout, borrowed).
fn conv(conv: &params::Conv) -> kernels::Conv<'_> {
    kernels::Conv {
        weight: &conv.weight,
        shape: conv.shape,
        bias: &conv.bias,
        padding: conv.padding,
        stride: conv.stride,
        activation: activation(conv.activation),
        pool: conv.pool,
    }
}

/// A linear layer as the kernels take it (PyTorch's layout, borrowed).
fn linear(dense: &params::Dense) -> kernels::Linear<'_> {
    kernels::Linear {
        weight: &dense.weight,
        shape: dense.shape,
        bias: &dense.bias,
        activation: activation(dense.activation),
    }
}

/// Pack a checked plan for instruction set `isa` (`input`: `[channels, height, width]`).
///
/// # Errors
/// What [`Network::new`] refuses that the plan's checks let through (a plan ending with a
/// flatten, an empty image), or an `isa` this CPU lacks.
fn from_checked(checked: &Checked, input: [usize; 3], isa: Isa) -> Result<Network, String> {
    let layers = checked
        .steps
        .iter()
        .zip(&checked.names)
        .map(|(step, name)| {
            let layer = match step {
                Step::Conv(c) => Layer::Conv(conv(c)),
                Step::Residual { a, b, shortcut } => Layer::Residual {
                    a: conv(a),
                    b: conv(b),
                    shortcut: shortcut.as_ref().map(conv),
                },
                Step::MaxPool(k) => Layer::MaxPool(*k),
                Step::GlobalAvgPool => Layer::GlobalAvgPool,
                Step::Flatten(_) => Layer::Flatten,
                Step::Linear(dense) => Layer::Linear(linear(dense)),
                Step::Dropout(p) => Layer::Dropout(*p),
                Step::PrimaryCaps {
                    conv: c,
                    capsules,
                    dim,
                } => Layer::PrimaryCaps {
                    conv: conv(c),
                    capsules: *capsules,
                    dim: *dim,
                },
                Step::DigitCaps(routing) => Layer::DigitCaps(kernels::Routing {
                    weight: &routing.weight,
                    shape: routing.shape,
                    iterations: routing.iterations,
                }),
                // fc3's sigmoid is the kernels' decoder's own, as `crate::layers`'.
                Step::Decoder(fc) => Layer::Decoder(fc.each_ref().map(linear)),
                Step::CapsuleLength(scale) => Layer::CapsuleLength(*scale),
            };
            (name.clone(), layer)
        });
    Network::new(isa, input, layers)
}

/// Building the kernels' [`Network`] from this crate's sources of weights (a trait, since
/// [`Network`] is the `mnist-kernels` crate's: bring it into scope to call
/// `Network::from_safetensors`).
pub trait LoadNetwork: Sized {
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
    /// chain or its configuration is one the kernels do not implement; or when this CPU lacks
    /// `isa`.
    fn from_safetensors(
        file: &SafeTensors,
        plan: &[crate::plan::Layer],
        input: [usize; 3],
        isa: Isa,
    ) -> Result<Self, String>;

    /// The kernels' form of the burn `model` (loaded by burn-store; the `cnn` plan), for
    /// instruction set `isa`; `input` is one image's `[channels, height, width]`. The
    /// reference for [`LoadNetwork::from_safetensors`].
    ///
    /// # Errors
    /// A message naming the layer when its configuration is one the kernels do not implement,
    /// when the shapes do not chain, or when a parameter is not f32; or when this CPU lacks
    /// `isa`.
    fn from_model(model: &Model, input: [usize; 3], isa: Isa) -> Result<Self, String>;
}

impl LoadNetwork for Network {
    fn from_safetensors(
        file: &SafeTensors,
        plan: &[crate::plan::Layer],
        input: [usize; 3],
        isa: Isa,
    ) -> Result<Network, String> {
        from_checked(&params::check_file(plan, file, input)?, input, isa)
    }

    fn from_model(model: &Model, input: [usize; 3], isa: Isa) -> Result<Network, String> {
        from_checked(&params::check_model(model, input)?, input, isa)
    }
}

/// The kernels' one forward pass ([`Pass`]): `input` `[N, C, H, W]` (NCHW, normalised) ->
/// logits `[N, classes]`, or with `pass.features` the penultimate features `[N, F]`; with
/// `pass.mc`, MC dropout on one image (`samples` rows out), its masks drawn by
/// [`crate::uncertainty::dropout_mask`] from the seed (the masks of `trainer.uncertainty` and
/// of the burn paths).
///
/// # Panics
/// As the [`Network`] method it calls: an input that is not whole images, or for MC dropout
/// not one image or no samples (the [`crate::Classifier`] checks first).
pub(crate) fn pass(network: &Network, input: &[f32], pass: Pass) -> Vec<f32> {
    let Some(McDropout { samples, seed }) = pass.mc else {
        return if pass.features {
            network.features(input)
        } else {
            network.forward(input)
        };
    };
    let mask = move |start, len, p| crate::uncertainty::dropout_mask(seed, start, len, p);
    if pass.features {
        network.features_mc(input, samples, mask)
    } else {
        network.forward_mc(input, samples, mask)
    }
}

/// The reference here is burn-store's loading on flex: a build with only `fast` has no burn
/// backend to load on.
#[cfg(all(test, feature = "flex"))]
mod tests {
    extern crate std;

    use alloc::vec::Vec;

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
    /// gives: every packed weight and bias bit for bit, on every instruction set here.
    #[test]
    fn the_direct_reader_agrees_with_burn_store_bit_for_bit() {
        let bytes = weights();
        let (model, _) = crate::weights::load(&bytes, &Device::flex()).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        for &isa in Isa::ALL.iter().filter(|isa| isa.available()) {
            let input = [1, 28, 28];
            let plan = crate::plan::cnn();
            let direct = Network::from_safetensors(&file, &plan, input, isa).unwrap();
            let reference = Network::from_model(&model, input, isa).unwrap();
            assert_eq!(direct, reference, "{isa:?}");
        }
    }
}
