//! The MNIST model of this project in burn 0.22.1, as a `#![no_std]` (alloc only) library.
//!
//! One model core shared by every binding (the wasm-bindgen layer in `wasm-infer/mnist-wasm`,
//! the PyO3 module in `wasm-infer/mnist-infer`): it owns the architecture ([`model::Model`]), the weight loading from the
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
//! name (`ndarray`, `flex`, `wgpu`); `simd` adds flex's SIMD kernels (needs a target with std).
//! `fast` adds [`Backend::Fast`]: this project's own SIMD kernels ([`kernels`], the
//! `mnist-kernels` crate) run the model, read from the same file without burn's runtime, with
//! BatchNorm folded and the weights packed once at load.
//! The CPU backends are ready at once and answer synchronously. wgpu (WebGPU in a browser) must
//! be started with [`Classifier::from_safetensors_async`] and read with
//! [`Classifier::probabilities_async`]: a browser cannot block on the GPU.
//!
//! Where things are: [`Classifier`] (`classifier.rs`: loading, input checks, softmax, MC
//! dropout, teaching) builds one [`Pass`] (`pass.rs`) per call and hands it to one engine:
//! [`model::Model`] (burn's `cnn` Module), `layers` (any layer plan on burn's tensor
//! operations) or [`kernels`] (this project's kernels, built by `fast.rs`). [`Backend`]
//! (`backend.rs`) names the engines; the input errors are in `error.rs`; [`LoadError`] and
//! loading through burn-store in `weights.rs`; `params.rs` checks a plan's tensors by name and
//! shape; [`plan`] reads the layer plan from the metadata, [`adapt`] adapts the model to taught examples,
//! [`uncertainty`] summarises MC dropout.

#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub mod adapt;
mod backend;
mod classifier;
mod error;
#[cfg(feature = "fast")]
mod fast;
/// This project's own SIMD kernels: the `mnist-kernels` crate (feature `fast`).
#[cfg(feature = "fast")]
pub use mnist_kernels as kernels;
#[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
pub mod layers;
pub mod model;
mod params;
mod pass;
pub mod plan;
pub mod uncertainty;
mod weights;

pub use adapt::{Adapted, Head, Settings};
pub use backend::Backend;
pub use classifier::{Classifier, Reconstruction, check_pixels, check_probabilities, softmax_rows};
pub use error::{InputError, PredictError, ReconstructError, TeachError};
#[cfg(feature = "fast")]
pub use fast::LoadNetwork;
#[cfg(feature = "fast")]
pub use kernels::{Isa, Network};
pub use model::Model;
pub use pass::{McDropout, Pass};
pub use uncertainty::Uncertainty;
pub use weights::{ARCHITECTURE, LoadError, Metadata, NOT_A_DIGIT_KEY};

/// Side of the square input image, in pixels.
pub const IMAGE_SIZE: usize = 28;
/// Values per input image: 28 x 28, row-major.
pub const INPUT_LEN: usize = IMAGE_SIZE * IMAGE_SIZE;
/// Outputs per image: one per digit 0-9.
pub const NUM_CLASSES: usize = model::NUM_CLASSES;
/// Largest accepted pixel value (ink); the background is 0.
pub const MAX_PIXEL: f32 = 255.0;
/// Most MC-dropout samples one call takes (the page and the API use 20 by default).
pub const MAX_SAMPLES: usize = 1000;
/// Most examples one [`Classifier::teach`] takes (a fit on 1000, without virtual examples then,
/// took 1.1 s natively on the 2-core machine, busy; 30 with theirs 60 ms).
pub const MAX_TAUGHT: usize = 1000;

#[cfg(not(any(
    feature = "ndarray",
    feature = "flex",
    feature = "wgpu",
    feature = "fast"
)))]
compile_error!(
    "enable at least one backend feature of mnist-model: `ndarray`, `flex`, `wgpu` or `fast`"
);
