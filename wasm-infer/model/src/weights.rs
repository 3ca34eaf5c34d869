//! Loading `model.safetensors` (a PyTorch state_dict written by `trainer/export.py`).
//!
//! burn-store does the tensor work: `SafetensorsStore` reads the file and
//! `PyTorchToBurnAdapter` transposes Linear weights and renames BatchNorm's
//! `weight`/`bias` to `gamma`/`beta`. This module adds the checks that make a wrong file fail
//! loudly: the architecture name and the normalisation constants in the metadata, and no
//! missing, mis-shaped or unused tensor.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use burn::prelude::*;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use safetensors::SafeTensors;

use crate::model::Model;

/// Value of the `architecture` metadata key that this crate implements
/// (`trainer.model.ARCHITECTURE`).
pub const ARCHITECTURE: &str = "mnist-conv-bn-gelu-v1";

/// Why a weights file was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadError {
    /// Not a readable safetensors file (truncated, corrupt header, ...).
    Format(String),
    /// A metadata key is missing or unparsable.
    Metadata { key: &'static str, problem: String },
    /// The file holds another architecture.
    Architecture { found: String },
    /// Tensors do not match the model; the message names each of them.
    Tensors(String),
    /// The backend's device did not start (wgpu: no adapter, device request refused).
    Device {
        backend: &'static str,
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
            LoadError::Architecture { found } => write!(
                f,
                "weights are for architecture `{found}`, this model is `{ARCHITECTURE}`"
            ),
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
    pub mean: f32,
    pub std: f32,
}

/// Load the model and its normalisation from the bytes of a safetensors file.
#[cfg_attr(
    not(any(feature = "ndarray", feature = "flex", feature = "wgpu")),
    allow(dead_code) // a fast-only build reads the file itself (fast.rs); tests compare
)]
pub fn load(bytes: &[u8], device: &Device) -> Result<(Model, Normalization), LoadError> {
    let normalization = read_metadata(bytes)?;
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
    Ok((model, normalization))
}

/// Check the metadata (architecture, normalisation) of a safetensors file, before any tensor
/// is read.
///
/// # Errors
/// [`LoadError::Format`] for an unreadable header, [`LoadError::Architecture`] for another
/// model, [`LoadError::Metadata`] for a missing or invalid key.
pub(crate) fn read_metadata(bytes: &[u8]) -> Result<Normalization, LoadError> {
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
    let architecture = get("architecture")?;
    if architecture != ARCHITECTURE {
        return Err(LoadError::Architecture {
            found: architecture.to_string(),
        });
    }
    let number = |key: &'static str| -> Result<f32, LoadError> {
        let text = get(key)?;
        match text.parse::<f32>() {
            Ok(v) if v.is_finite() && (key != "mnist_std" || v > 0.0) => Ok(v),
            _ => Err(LoadError::Metadata {
                key,
                problem: format!("`{text}` is not a valid value"),
            }),
        }
    };
    Ok(Normalization {
        mean: number("mnist_mean")?,
        std: number("mnist_std")?,
    })
}
