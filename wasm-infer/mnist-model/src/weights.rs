//! Loading `model.safetensors` (a PyTorch state_dict written by `trainer/export.py`).
//!
//! burn-store does the tensor work: `SafetensorsStore` reads the file and
//! `PyTorchToBurnAdapter` transposes Linear weights and renames BatchNorm's
//! `weight`/`bias` to `gamma`/`beta`. This module adds the checks that make a wrong file fail
//! loudly: the architecture, its layer plan and the normalisation constants in the metadata,
//! and no missing, mis-shaped or unused tensor.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use burn::prelude::*;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use safetensors::SafeTensors;

use crate::model::Model;
use crate::plan::{self, Layer};

/// Value of the `architecture` metadata key of the default model, the `cnn`
/// (`trainer.model.ARCHITECTURE`): the burn model [`Model`]; the burn backends run it only.
pub const ARCHITECTURE: &str = "mnist-conv-bn-gelu-v1";

/// Why a weights file was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadError {
    /// Not a readable safetensors file (truncated, corrupt header, ...).
    Format(String),
    /// A metadata key is missing or unparsable.
    Metadata {
        /// The metadata key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The file holds an architecture this backend cannot run (the reason is given).
    Architecture {
        /// The file's `architecture` id.
        found: String,
        /// Why this backend cannot run it.
        problem: String,
    },
    /// Tensors do not match the model; the message names each of them.
    Tensors(String),
    /// The backend's device did not start (wgpu: no adapter, device request refused).
    Device {
        /// The backend's name ([`crate::Backend::name`]).
        backend: &'static str,
        /// What the device or the CPU said.
        problem: String,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Format(e) => write!(f, "not a readable safetensors file: {e}"),
            LoadError::Metadata { key, problem } => {
                write!(f, "weights metadata `{key}`: {problem}")
            }
            LoadError::Architecture { found, problem } => {
                write!(f, "weights are for architecture `{found}`: {problem}")
            }
            LoadError::Tensors(e) => write!(f, "weights do not match the model: {e}"),
            LoadError::Device { backend, problem } => {
                write!(f, "the {backend} device did not start: {problem}")
            }
        }
    }
}

impl core::error::Error for LoadError {}

/// Input normalisation read from the metadata: `(pixel / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Mean of the training pixels scaled to 0..1 (MNIST: 0.1307).
    pub mean: f32,
    /// Their standard deviation (MNIST: 0.3081).
    pub std: f32,
}

/// What the metadata says about the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Metadata {
    /// The `architecture` id, e.g. `mnist-conv-bn-gelu-v1` (the `cnn`) or `mnist-mlp-v1`.
    pub architecture: String,
    /// The layer plan (`layers`; the `cnn`'s for a file from before plans).
    pub plan: Vec<Layer>,
    /// `mnist_mean`, `mnist_std`: the input normalisation.
    pub normalization: Normalization,
    /// `unsure_mutual_information`: the MC-dropout mutual information (nats) above which a
    /// prediction is "not sure", chosen on a validation split (`trainer.uncertainty`); none
    /// when the file has not been calibrated.
    pub unsure_threshold: Option<f32>,
    /// `not_a_digit_max_probability`, τ in `(0, 1]`: an image whose largest eval-mode softmax
    /// probability is below it is "not a digit" ([`crate::Classifier::not_a_digit`]); none
    /// when the file has no such rule.
    pub not_a_digit_threshold: Option<f32>,
}

/// The metadata key of the "not a digit" threshold τ ([`Metadata::not_a_digit_threshold`]).
pub const NOT_A_DIGIT_KEY: &str = "not_a_digit_max_probability";

/// Load the model and its normalisation from the bytes of a safetensors file.
#[cfg_attr(
    not(any(feature = "ndarray", feature = "flex", feature = "wgpu")),
    allow(dead_code) // a fast-only build reads the file itself (fast.rs); tests compare
)]
pub fn load(bytes: &[u8], device: &Device) -> Result<(Model, Metadata), LoadError> {
    let metadata = read_metadata(bytes)?;
    if metadata.plan != plan::cnn() {
        return Err(LoadError::Architecture {
            found: metadata.architecture,
            problem: format!("the burn model `Model` is the `{ARCHITECTURE}` layers only"),
        });
    }
    let mut model = Model::new(device);
    let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
        .with_from_adapter(PyTorchToBurnAdapter)
        .validate(true)
        .allow_partial(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| LoadError::Tensors(e.to_string()))?;
    // Errors (shape or dtype mismatches) already fail the load with `validate(true)` and
    // missing tensors with `allow_partial(false)`; burn-store only lists unused ones.
    let unused: Vec<&String> = result
        .unused
        .iter()
        .filter(|name| !name.ends_with("num_batches_tracked"))
        .collect();
    if !unused.is_empty() {
        return Err(LoadError::Tensors(format!(
            "tensors in the file that the model does not use: {unused:?}"
        )));
    }
    Ok((model, metadata))
}

/// Check the metadata (architecture, layer plan, normalisation) of a safetensors file, before
/// any tensor is read.
///
/// # Errors
/// [`LoadError::Format`] for an unreadable header, [`LoadError::Architecture`] for a file
/// from before layer plans that is not the `cnn`, [`LoadError::Metadata`] for a missing or
/// invalid key.
pub(crate) fn read_metadata(bytes: &[u8]) -> Result<Metadata, LoadError> {
    let (_, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| LoadError::Format(e.to_string()))?;
    let map = metadata.metadata().as_ref();
    let get = |key: &'static str| -> Result<&str, LoadError> {
        map.and_then(|m| m.get(key))
            .map(String::as_str)
            .ok_or(LoadError::Metadata {
                key,
                problem: "missing (was the file written by trainer/export.py?)".to_string(),
            })
    };
    let architecture = get("architecture")?.to_string();
    let plan = match map.and_then(|m| m.get("layers")) {
        Some(json) => plan::parse(json).map_err(|problem| LoadError::Metadata {
            key: "layers",
            problem,
        })?,
        None if architecture == ARCHITECTURE => plan::cnn(),
        None => {
            return Err(LoadError::Architecture {
                found: architecture,
                problem: "no `layers` plan in the metadata".to_string(),
            });
        }
    };
    let number = |key: &'static str| -> Result<f32, LoadError> {
        let text = get(key)?;
        match text.parse::<f32>() {
            Ok(v) if v.is_finite() && (key == "mnist_mean" || v > 0.0) => Ok(v),
            _ => Err(LoadError::Metadata {
                key,
                problem: format!("`{text}` is not a valid value"),
            }),
        }
    };
    let unsure_threshold = match map.and_then(|m| m.get("unsure_mutual_information")) {
        Some(_) => Some(number("unsure_mutual_information")?),
        None => None,
    };
    let not_a_digit_threshold = match map.and_then(|m| m.get(NOT_A_DIGIT_KEY)) {
        Some(text) => Some(probability(text).map_err(|problem| LoadError::Metadata {
            key: NOT_A_DIGIT_KEY,
            problem,
        })?),
        None => None,
    };
    Ok(Metadata {
        architecture,
        plan,
        normalization: Normalization {
            mean: number("mnist_mean")?,
            std: number("mnist_std")?,
        },
        unsure_threshold,
        not_a_digit_threshold,
    })
}

/// The value of [`NOT_A_DIGIT_KEY`]: a number in `(0, 1]` written as text (Python's `f"{τ:.6g}"`);
/// 0 or less would call nothing "not a digit", and no softmax probability is above 1.
///
/// # Errors
/// The problem in words: not a number (NaN, text, surrounding spaces) or outside `(0, 1]`.
fn probability(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        Ok(v) if !v.is_nan() => Err(format!(
            "`{text}` ({v}) is outside (0, 1]: it must be a probability above 0"
        )),
        _ => Err(format!(
            "`{text}` is not a number (a probability in (0, 1] was expected)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_a_digit_threshold_is_a_probability_above_0() {
        assert_eq!(probability("0.9"), Ok(0.9));
        assert_eq!(probability("1"), Ok(1.0));
        assert_eq!(probability("1e-3"), Ok(0.001));
        for outside in ["0", "-0.5", "1.0001", "2", "inf", "-inf"] {
            let problem = probability(outside).unwrap_err();
            assert!(problem.contains("outside (0, 1]"), "{outside}: {problem}");
        }
        for text in ["", "NaN", "ninety percent", "0.9.1", "0,9", " 0.9"] {
            let problem = probability(text).unwrap_err();
            assert!(problem.contains("not a number"), "{text:?}: {problem}");
        }
    }
}
