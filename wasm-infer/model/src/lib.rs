//! The MNIST model of this project in burn 0.22.1, as a `#![no_std]` (alloc only) library.
//!
//! One model core shared by every binding (the wasm-bindgen layer in `wasm-infer/wasm`, a
//! native one later): it owns the architecture ([`model::Model`]), the weight loading from the
//! PyTorch safetensors file, the input normalisation and the input checks. Nothing here knows
//! about browsers.
//!
//! ```text
//! pixels [N * 784] f32, 0..=255, ink = 255, row-major 28x28 (MNIST's convention)
//!   -> (x / 255 - mean) / std          mean, std read from the weights file's metadata
//!   -> Model::forward  [N, 1, 28, 28] -> logits [N, 10]
//!   -> softmax                         probabilities [N, 10]
//! ```
//!
//! The backend is a runtime [`Backend`]; each is compiled in by the cargo feature of the same
//! name (`ndarray`, `flex`); `simd` adds flex's SIMD kernels (needs a target with std).

#![no_std]

extern crate alloc;

pub mod model;
mod weights;

use alloc::vec::Vec;
use core::fmt;

use burn::prelude::*;
use burn::tensor::activation::softmax;

pub use model::Model;
pub use weights::{ARCHITECTURE, LoadError};

/// Side of the square input image, in pixels.
pub const IMAGE_SIZE: usize = 28;
/// Values per input image: 28 x 28, row-major.
pub const INPUT_LEN: usize = IMAGE_SIZE * IMAGE_SIZE;
/// Outputs per image: one per digit 0-9.
pub const NUM_CLASSES: usize = model::NUM_CLASSES;
/// Largest accepted pixel value (ink); the background is 0.
pub const MAX_PIXEL: f32 = 255.0;

#[cfg(not(any(feature = "ndarray", feature = "flex")))]
compile_error!("enable at least one backend feature of mnist-model: `ndarray` or `flex`");

/// A CPU backend compiled into this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// burn-ndarray (deprecated by burn 0.22 in favour of flex; built without SIMD, which
    /// does not compile without std in 0.22.1).
    #[cfg(feature = "ndarray")]
    NdArray,
    /// burn-flex: burn's pure-Rust CPU backend (SIMD kernels with the `simd` feature).
    #[cfg(feature = "flex")]
    Flex,
}

impl Backend {
    /// Every backend compiled into this build.
    pub const ALL: &'static [Backend] = &[
        #[cfg(feature = "ndarray")]
        Backend::NdArray,
        #[cfg(feature = "flex")]
        Backend::Flex,
    ];

    /// The name used on the command line, in URLs and in `window.mnist.backend`.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "ndarray")]
            Backend::NdArray => "ndarray",
            #[cfg(feature = "flex")]
            Backend::Flex => "flex",
        }
    }

    /// The backend called `name`, if it is compiled in.
    pub fn from_name(name: &str) -> Option<Backend> {
        Self::ALL.iter().copied().find(|b| b.name() == name)
    }

    /// The burn device that runs this backend.
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)] // the design names ndarray; flex is its successor, built too
            Backend::NdArray => Device::ndarray(),
            #[cfg(feature = "flex")]
            Backend::Flex => Device::flex(),
        }
    }
}

/// Why a batch of pixels was refused. Nothing is computed for a refused batch.
#[derive(Clone, Debug, PartialEq)]
pub enum InputError {
    /// The length is zero or not a multiple of [`INPUT_LEN`] (784).
    Length(usize),
    /// A value is NaN or infinite.
    NonFinite { index: usize, value: f32 },
    /// A value is outside `0.0..=255.0` (raw pixels are expected, not normalised ones).
    OutOfRange { index: usize, value: f32 },
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::Length(len) => write!(
                f,
                "expected {INPUT_LEN} pixel values per image (28x28, row-major), got {len}"
            ),
            InputError::NonFinite { index, value } => {
                write!(f, "pixel {index} is {value}: every pixel must be a finite number")
            }
            InputError::OutOfRange { index, value } => write!(
                f,
                "pixel {index} is {value}: pixels must be raw values in 0..=255 (ink = 255), not normalised"
            ),
        }
    }
}

impl core::error::Error for InputError {}

/// The loaded model, ready to classify on one backend.
#[derive(Debug)]
pub struct Classifier {
    model: Model,
    device: Device,
    backend: Backend,
    mean: f32,
    std: f32,
}

impl Classifier {
    /// Load the model from the bytes of a `model.safetensors` written by `trainer.export`.
    ///
    /// # Errors
    /// [`LoadError`] when the bytes are not safetensors, the metadata lacks the architecture or
    /// normalisation, or any tensor is missing, unused or of the wrong shape (named).
    pub fn from_safetensors(bytes: &[u8], backend: Backend) -> Result<Self, LoadError> {
        let device = backend.device();
        let (model, normalization) = weights::load(bytes, &device)?;
        Ok(Self {
            model,
            device,
            backend,
            mean: normalization.mean,
            std: normalization.std,
        })
    }

    /// The backend this classifier runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The input normalisation `(mean, std)` read from the weights file.
    pub fn normalization(&self) -> (f32, f32) {
        (self.mean, self.std)
    }

    /// Logits for a batch of images.
    ///
    /// `pixels`: `N * 784` values, N >= 1, each image 28x28 row-major, 0..=255, ink = 255.
    /// Returns `N * 10` logits, image by image.
    ///
    /// # Errors
    /// [`InputError`] for a wrong length, a non-finite value or a value outside 0..=255.
    pub fn logits(&self, pixels: &[f32]) -> Result<Vec<f32>, InputError> {
        let logits = self.forward(pixels)?;
        Ok(to_vec(logits))
    }

    /// Softmax probabilities for a batch of images: like [`Classifier::logits`], each group of
    /// 10 values sums to 1.
    pub fn probabilities(&self, pixels: &[f32]) -> Result<Vec<f32>, InputError> {
        let logits = self.forward(pixels)?;
        Ok(to_vec(softmax(logits, 1)))
    }

    fn forward(&self, pixels: &[f32]) -> Result<Tensor<2>, InputError> {
        check_pixels(pixels)?;
        let n = pixels.len() / INPUT_LEN;
        // The same operations, in the same order, as `trainer.model.normalize`.
        let normalized: Vec<f32> = pixels
            .iter()
            .map(|&p| (p / MAX_PIXEL - self.mean) / self.std)
            .collect();
        let images = Tensor::<4>::from_data(
            TensorData::new(normalized, [n, 1, IMAGE_SIZE, IMAGE_SIZE]),
            &self.device,
        );
        Ok(self.model.forward(images))
    }
}

/// Check a batch of raw pixels without computing anything.
pub fn check_pixels(pixels: &[f32]) -> Result<(), InputError> {
    if pixels.is_empty() || pixels.len() % INPUT_LEN != 0 {
        return Err(InputError::Length(pixels.len()));
    }
    for (index, &value) in pixels.iter().enumerate() {
        if !value.is_finite() {
            return Err(InputError::NonFinite { index, value });
        }
        if !(0.0..=MAX_PIXEL).contains(&value) {
            return Err(InputError::OutOfRange { index, value });
        }
    }
    Ok(())
}

fn to_vec(tensor: Tensor<2>) -> Vec<f32> {
    // The CPU backends hold f32 data in host memory: reading it back cannot fail.
    let data = tensor.into_data();
    data.as_slice::<f32>()
        .expect("the model computes in f32")
        .to_vec()
}
