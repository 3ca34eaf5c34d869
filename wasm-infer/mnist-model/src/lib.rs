//! The MNIST model of this project in burn 0.22.1, as a `#![no_std]` (alloc only) library.
//!
//! One model core shared by every binding (the wasm-bindgen layer in `wasm-infer/mnist-wasm`, a
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
//! name (`ndarray`, `flex`, `wgpu`); `simd` adds flex's SIMD kernels (needs a target with std).
//! `fast` adds [`Backend::Fast`]: this project's own SIMD kernels ([`kernels`], the
//! `mnist-kernels` crate) run the model, read from the same file without burn's runtime, with
//! BatchNorm folded and the weights packed once at load.
//! The CPU backends are ready at once and answer synchronously. wgpu (WebGPU in a browser) must
//! be started with [`Classifier::from_safetensors_async`] and read with
//! [`Classifier::probabilities_async`]: a browser cannot block on the GPU.

#![no_std]

extern crate alloc;

pub mod adapt;
#[cfg(feature = "fast")]
mod fast;
/// This project's own SIMD kernels: the `mnist-kernels` crate (feature `fast`).
#[cfg(feature = "fast")]
pub use mnist_kernels as kernels;
#[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
pub mod layers;
pub mod model;
mod params;
pub mod plan;
pub mod uncertainty;
mod weights;

use alloc::format;
use alloc::string::{String, ToString};
#[cfg(feature = "fast")]
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use burn::prelude::*;

pub use adapt::Head;
#[cfg(feature = "fast")]
pub use fast::LoadNetwork;
#[cfg(feature = "fast")]
pub use kernels::{Isa, Network};
pub use model::Model;
pub use uncertainty::Uncertainty;
pub use weights::{ARCHITECTURE, LoadError, Metadata};

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
/// Most examples one [`Classifier::teach`] takes (re-fitting on 1000 takes about a second).
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

/// A backend compiled into this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// burn-ndarray (deprecated by burn 0.22 in favour of flex; built without SIMD, which
    /// does not compile without std in 0.22.1).
    #[cfg(feature = "ndarray")]
    NdArray,
    /// burn-flex: burn's pure-Rust CPU backend (SIMD kernels with the `simd` feature).
    #[cfg(feature = "flex")]
    Flex,
    /// burn-wgpu: compute shaders on the GPU through wgpu (WebGPU in a browser).
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// This project's own SIMD kernels on the given instruction set (the weights are read into
    /// a [`Network`] without burn: [`LoadNetwork::from_safetensors`]).
    #[cfg(feature = "fast")]
    Fast(Isa),
}

impl Backend {
    /// Every backend compiled into this build (the fast kernels once per instruction set
    /// compiled in, whether this CPU has it or not: see [`Backend::available`]).
    pub const ALL: &'static [Backend] = &[
        #[cfg(feature = "ndarray")]
        Backend::NdArray,
        #[cfg(feature = "flex")]
        Backend::Flex,
        #[cfg(feature = "wgpu")]
        Backend::Wgpu,
        #[cfg(feature = "fast")]
        Backend::Fast(Isa::Scalar),
        #[cfg(all(feature = "fast", target_arch = "x86_64"))]
        Backend::Fast(Isa::Sse2),
        #[cfg(all(feature = "fast", target_arch = "x86_64"))]
        Backend::Fast(Isa::Avx2Fma),
        #[cfg(all(feature = "fast", target_arch = "wasm32", target_feature = "simd128"))]
        Backend::Fast(Isa::Simd128),
        #[cfg(all(
            feature = "fast",
            target_arch = "wasm32",
            target_feature = "simd128",
            feature = "relaxed-simd"
        ))]
        Backend::Fast(Isa::Relaxed),
    ];

    /// The name used on the command line, in URLs and in `window.mnist.backend`: `ndarray`,
    /// `flex`, `wgpu`, or `fast-<instruction set>` (`fast-simd128`, `fast-relaxed`,
    /// `fast-avx2`, `fast-sse2`, `fast-scalar`).
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "ndarray")]
            Backend::NdArray => "ndarray",
            #[cfg(feature = "flex")]
            Backend::Flex => "flex",
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => "wgpu",
            #[cfg(feature = "fast")]
            Backend::Fast(isa) => isa.backend_name(),
        }
    }

    /// Whether this machine can run it (only the fast kernels' AVX2 build can be missing).
    pub fn available(self) -> bool {
        match self {
            #[cfg(feature = "fast")]
            Backend::Fast(isa) => isa.available(),
            #[allow(unreachable_patterns)]
            _ => true,
        }
    }

    /// The backend called `name`, if it is compiled in and this machine can run it. `fast`
    /// names the fast kernels on the best instruction set here ([`Isa::best`]).
    pub fn from_name(name: &str) -> Option<Backend> {
        #[cfg(feature = "fast")]
        if name == "fast" {
            return Some(Backend::Fast(Isa::best()));
        }
        Self::ALL
            .iter()
            .copied()
            .find(|b| b.name() == name && b.available())
    }

    /// The burn device that runs this backend. The wgpu device is created lazily, on first
    /// use, which only works natively: in a browser use [`Backend::start`].
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "ndarray")]
            // The design names ndarray; flex is its successor, built too.
            #[allow(deprecated)]
            Backend::NdArray => Device::ndarray(),
            #[cfg(feature = "flex")]
            Backend::Flex => Device::flex(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            // The kernels need no device; flex is where a burn model to compare them with
            // lives (`LoadNetwork::from_model`).
            #[cfg(feature = "fast")]
            Backend::Fast(_) => Device::flex(),
        }
    }

    /// Start this backend's device. The CPU backends are ready at once; wgpu requests a GPU
    /// adapter and device (in a browser: `navigator.gpu`), which only completes asynchronously.
    ///
    /// # Errors
    /// [`LoadError::Device`] when there is no usable adapter or the device request fails.
    pub async fn start(self) -> Result<Device, LoadError> {
        match self {
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => {
                // burn registers one runtime per device: a second model (loaded at run time)
                // shares the device the first one started.
                use core::sync::atomic::{AtomicBool, Ordering};
                static STARTED: AtomicBool = AtomicBool::new(false);
                if STARTED.load(Ordering::Acquire) {
                    return Ok(self.device());
                }
                let device =
                    Device::wgpu_options()
                        .init_async()
                        .await
                        .map_err(|e| LoadError::Device {
                            backend: self.name(),
                            problem: without_js_stack(&e.to_string()),
                        })?;
                STARTED.store(true, Ordering::Release);
                Ok(device)
            }
            #[allow(unreachable_patterns)] // every backend is wgpu in a wgpu-only build
            cpu => Ok(cpu.device()),
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
    /// MC dropout takes one image: this many values were given.
    NotOneImage(usize),
    /// MC dropout's sample count is outside `1..=MAX_SAMPLES`.
    Samples(usize),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::Length(len) => write!(
                f,
                "expected {INPUT_LEN} pixel values per image (28x28, row-major), got {len}"
            ),
            InputError::NonFinite { index, value } => {
                write!(
                    f,
                    "pixel {index} is {value}: every pixel must be a finite number"
                )
            }
            InputError::OutOfRange { index, value } => write!(
                f,
                "pixel {index} is {value}: pixels must be raw values in 0..=255 (ink = 255), not normalised"
            ),
            InputError::NotOneImage(len) => write!(
                f,
                "MC dropout takes one image ({INPUT_LEN} pixel values), got {len} values"
            ),
            InputError::Samples(n) => write!(
                f,
                "MC dropout samples must be between 1 and {MAX_SAMPLES}, got {n}"
            ),
        }
    }
}

impl core::error::Error for InputError {}

/// Why a prediction failed.
#[derive(Clone, Debug, PartialEq)]
pub enum PredictError {
    /// The pixels were refused before anything was computed.
    Input(InputError),
    /// The device could not compute or return the result (e.g. the GPU device was lost).
    Device(String),
}

impl fmt::Display for PredictError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PredictError::Input(e) => e.fmt(f),
            PredictError::Device(e) => write!(f, "the device could not return the result: {e}"),
        }
    }
}

impl core::error::Error for PredictError {}

impl From<InputError> for PredictError {
    fn from(e: InputError) -> Self {
        PredictError::Input(e)
    }
}

/// Why [`Classifier::teach`] refused its examples. Nothing changes for refused examples: the
/// classifier keeps what it was taught before.
#[derive(Clone, Debug, PartialEq)]
pub enum TeachError {
    /// The pixels were refused ([`InputError`]).
    Input(InputError),
    /// Not one label (0-9) per image: this many images, these labels.
    Labels { images: usize, labels: usize },
    /// A label is not a digit 0-9.
    Label { index: usize, label: u32 },
    /// Image `index` has no ink: there is nothing to learn from it.
    Blank(usize),
    /// More than [`MAX_TAUGHT`] examples.
    TooMany(usize),
    /// The model cannot be taught (its last layer is not a linear one; the reason).
    Unsupported(String),
    /// The device could not return the features.
    Device(String),
}

impl fmt::Display for TeachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeachError::Input(e) => e.fmt(f),
            TeachError::Labels { images, labels } => write!(
                f,
                "one label per image is needed: {images} images, {labels} labels"
            ),
            TeachError::Label { index, label } => {
                write!(f, "label {index} is {label}: labels are digits 0-9")
            }
            TeachError::Blank(index) => write!(
                f,
                "image {index} is blank: draw the digit before teaching it"
            ),
            TeachError::TooMany(n) => write!(
                f,
                "at most {MAX_TAUGHT} examples can be taught at once, got {n}"
            ),
            TeachError::Unsupported(why) => write!(f, "this model cannot be taught: {why}"),
            TeachError::Device(e) => write!(f, "the device could not return the features: {e}"),
        }
    }
}

impl core::error::Error for TeachError {}

impl From<InputError> for TeachError {
    fn from(e: InputError) -> Self {
        TeachError::Input(e)
    }
}

/// The head re-fitted by [`Classifier::teach`], and how many examples of each class it learnt.
#[derive(Clone, Debug)]
struct Taught {
    head: Head,
    counts: [usize; NUM_CLASSES],
}

/// What runs the forward pass.
#[derive(Debug)]
enum Engine {
    /// A burn model on a burn device (absent from a build with only `fast`, so that none
    /// of burn's compute kernels is linked into it).
    #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
    Burn { model: BurnModel, device: Device },
    /// This crate's kernels, on the weights read from the file.
    #[cfg(feature = "fast")]
    Fast(Network),
}

/// What runs on a burn backend: the burn `Module` of the `cnn` (loaded by burn-store), or any
/// other layer plan on burn's tensor operations ([`layers::LayerModel`]).
#[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
#[derive(Debug)]
enum BurnModel {
    Cnn(Model),
    Layers(layers::LayerModel),
}

#[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
impl BurnModel {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            BurnModel::Cnn(m) => m.forward(images),
            BurnModel::Layers(m) => m.forward(images),
        }
    }

    fn forward_mc(&self, image: Tensor<4>, samples: usize, seed: u64) -> Tensor<2> {
        match self {
            BurnModel::Cnn(m) => m.forward_mc(image, samples, seed),
            BurnModel::Layers(m) => m.forward_mc(image, samples, seed),
        }
    }

    fn features(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            BurnModel::Cnn(m) => m.features(images),
            BurnModel::Layers(m) => m.features(images),
        }
    }

    fn features_mc(&self, image: Tensor<4>, samples: usize, seed: u64) -> Tensor<2> {
        match self {
            BurnModel::Cnn(m) => m.features_mc(image, samples, seed),
            BurnModel::Layers(m) => m.features_mc(image, samples, seed),
        }
    }

    /// Logits, or with a taught head the features it takes; `mc`: MC dropout's
    /// `(samples, seed)` on one image.
    fn output(&self, images: Tensor<4>, mc: Option<(usize, u64)>, features: bool) -> Tensor<2> {
        match (mc, features) {
            (None, false) => self.forward(images),
            (None, true) => self.features(images),
            (Some((n, seed)), false) => self.forward_mc(images, n, seed),
            (Some((n, seed)), true) => self.features_mc(images, n, seed),
        }
    }

    fn profile(
        &self,
        images: Tensor<4>,
        repeats: usize,
        now: &mut dyn FnMut() -> f64,
    ) -> Vec<(String, f64)> {
        match self {
            BurnModel::Cnn(m) => m
                .profile(images, repeats, now)
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect(),
            BurnModel::Layers(m) => m.profile(images, repeats, now),
        }
    }
}

/// The loaded model, ready to classify on one backend.
#[derive(Debug)]
pub struct Classifier {
    engine: Engine,
    backend: Backend,
    metadata: Metadata,
    /// The trained last layer, which teaching re-fits, or why the model cannot be taught.
    head: Result<Head, String>,
    /// What [`Classifier::teach`] learnt; none until examples are taught.
    taught: Option<Taught>,
}

impl Classifier {
    /// Load the model from the bytes of a `model.safetensors` written by `trainer.export`.
    ///
    /// # Errors
    /// [`LoadError`] when the bytes are not safetensors, the metadata lacks the architecture or
    /// normalisation, or any tensor is missing, unused or of the wrong shape (named).
    pub fn from_safetensors(bytes: &[u8], backend: Backend) -> Result<Self, LoadError> {
        match backend {
            #[cfg(feature = "fast")]
            Backend::Fast(isa) => Self::load_fast(bytes, isa),
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            #[allow(unreachable_patterns)]
            burn => Self::load_burn(bytes, burn, burn.device()),
        }
    }

    /// Like [`Classifier::from_safetensors`], starting the device first with
    /// [`Backend::start`]: the way to load on wgpu in a browser.
    ///
    /// # Errors
    /// [`LoadError::Device`] when the device does not start, then as `from_safetensors`.
    pub async fn from_safetensors_async(bytes: &[u8], backend: Backend) -> Result<Self, LoadError> {
        match backend {
            #[cfg(feature = "fast")]
            Backend::Fast(isa) => Self::load_fast(bytes, isa),
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            #[allow(unreachable_patterns)]
            burn => {
                let device = burn.start().await?;
                Self::load_burn(bytes, burn, device)
            }
        }
    }

    /// The `cnn`: burn-store loads the burn model on `device`; any other plan: its tensors
    /// on `device` for burn's tensor operations.
    #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
    fn load_burn(bytes: &[u8], backend: Backend, device: Device) -> Result<Self, LoadError> {
        let metadata = weights::read_metadata(bytes)?;
        let model = if metadata.plan == plan::cnn() {
            BurnModel::Cnn(weights::load(bytes, &device)?.0)
        } else {
            let file = safetensors::SafeTensors::deserialize(bytes)
                .map_err(|e| LoadError::Format(e.to_string()))?;
            let checked = params::check_file(&metadata.plan, &file, [1, IMAGE_SIZE, IMAGE_SIZE])
                .map_err(LoadError::Tensors)?;
            check_outputs(checked.shapes.last().map_or(0, |s| s.len()))?;
            BurnModel::Layers(layers::LayerModel::new(&checked, &device))
        };
        Ok(Self {
            engine: Engine::Burn { model, device },
            backend,
            head: read_head(&metadata, bytes),
            metadata,
            taught: None,
        })
    }

    /// The kernels' network, read from the file without burn (see `fast.rs`).
    #[cfg(feature = "fast")]
    fn load_fast(bytes: &[u8], isa: Isa) -> Result<Self, LoadError> {
        let backend = Backend::Fast(isa);
        if !isa.available() {
            return Err(LoadError::Device {
                backend: backend.name(),
                problem: "this CPU lacks the instruction set".to_string(),
            });
        }
        let metadata = weights::read_metadata(bytes)?;
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| LoadError::Format(e.to_string()))?;
        let input = [1, IMAGE_SIZE, IMAGE_SIZE];
        let network = Network::from_safetensors(&file, &metadata.plan, input, isa)
            .map_err(LoadError::Tensors)?;
        check_outputs(network.output_len())?;
        Ok(Self {
            engine: Engine::Fast(network),
            backend,
            head: read_head(&metadata, bytes),
            metadata,
            taught: None,
        })
    }

    /// The backend this classifier runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The input normalisation `(mean, std)` read from the weights file.
    pub fn normalization(&self) -> (f32, f32) {
        let n = self.metadata.normalization;
        (n.mean, n.std)
    }

    /// What the weights file's metadata says: architecture, layer plan, normalisation, the
    /// "not sure" threshold.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Logits for a batch of images (with the taught head once [`Classifier::teach`] has
    /// examples).
    ///
    /// `pixels`: `N * 784` values, N >= 1, each image 28x28 row-major, 0..=255, ink = 255.
    /// Returns `N * 10` logits, image by image.
    ///
    /// # Errors
    /// [`InputError`] for a wrong length, a non-finite value or a value outside 0..=255.
    pub fn logits(&self, pixels: &[f32]) -> Result<Vec<f32>, InputError> {
        check_pixels(pixels)?;
        Ok(self.to_logits(self.output(pixels, None)))
    }

    /// Softmax probabilities for a batch of images: like [`Classifier::logits`], each group of
    /// 10 values sums to 1. Reads the result back synchronously: on wgpu in a browser use
    /// [`Classifier::probabilities_async`].
    pub fn probabilities(&self, pixels: &[f32]) -> Result<Vec<f32>, InputError> {
        let mut values = self.logits(pixels)?;
        softmax_rows(&mut values, NUM_CLASSES);
        Ok(values)
    }

    /// [`Classifier::probabilities`] with an asynchronous read-back, which every backend
    /// supports and wgpu in a browser requires.
    ///
    /// # Errors
    /// [`PredictError::Input`] as `probabilities`; [`PredictError::Device`] when the device
    /// fails to return the result.
    pub async fn probabilities_async(&self, pixels: &[f32]) -> Result<Vec<f32>, PredictError> {
        check_pixels(pixels)?;
        let mut values = self.to_logits(self.output_async(pixels, None).await?);
        softmax_rows(&mut values, NUM_CLASSES);
        Ok(values)
    }

    /// MC dropout on one image: `samples` forward passes with dropout on, masks drawn from
    /// `seed` ([`uncertainty::dropout_mask`]), summarised ([`Uncertainty`]); with the taught
    /// head once examples are taught. Synchronous: on wgpu in a browser use
    /// [`Classifier::uncertainty_async`].
    ///
    /// `pixels`: 784 values as [`Classifier::logits`]. The fast kernels run the layers before
    /// the first dropout once; the burn backends run a `[samples, 1, 28, 28]` batch.
    ///
    /// # Errors
    /// [`InputError`] for bad pixels, more or fewer than one image, or `samples` outside
    /// `1..=MAX_SAMPLES`.
    pub fn uncertainty(
        &self,
        pixels: &[f32],
        samples: usize,
        seed: u64,
    ) -> Result<Uncertainty, InputError> {
        self.check_mc(pixels, samples)?;
        let mut values = self.to_logits(self.output(pixels, Some((samples, seed))));
        softmax_rows(&mut values, NUM_CLASSES);
        Ok(uncertainty::summarize(&values, NUM_CLASSES))
    }

    /// [`Classifier::uncertainty`] with an asynchronous read-back (wgpu in a browser).
    ///
    /// # Errors
    /// As `uncertainty`, and [`PredictError::Device`] when the device fails to return it.
    pub async fn uncertainty_async(
        &self,
        pixels: &[f32],
        samples: usize,
        seed: u64,
    ) -> Result<Uncertainty, PredictError> {
        self.check_mc(pixels, samples)?;
        let mut values = self.to_logits(self.output_async(pixels, Some((samples, seed))).await?);
        softmax_rows(&mut values, NUM_CLASSES);
        Ok(uncertainty::summarize(&values, NUM_CLASSES))
    }

    /// Teach the classifier one user's hand: re-fit its last layer to these labelled images
    /// ([`adapt`]), replacing what was taught before; from then on every prediction uses the
    /// re-fitted layer. No examples: the same as [`Classifier::forget`]. Synchronous: on wgpu
    /// in a browser use [`Classifier::teach_async`].
    ///
    /// `pixels`: `N * 784` values as [`Classifier::logits`]; `labels`: `N` digits 0-9.
    ///
    /// # Errors
    /// [`TeachError`] for bad pixels, a blank image, a label that is not a digit, not one
    /// label per image, more than [`MAX_TAUGHT`] examples, or a model whose last layer is not
    /// linear. Refused examples change nothing.
    pub fn teach(&mut self, pixels: &[f32], labels: &[u32]) -> Result<(), TeachError> {
        self.teach_with(pixels, labels, adapt::PULL, adapt::STEPS)
    }

    /// [`Classifier::teach`] with another pull and step count than [`adapt::PULL`] and
    /// [`adapt::STEPS`] (for tuning them; `pull` > 0).
    ///
    /// # Errors
    /// As `teach`.
    pub fn teach_with(
        &mut self,
        pixels: &[f32],
        labels: &[u32],
        pull: f32,
        steps: usize,
    ) -> Result<(), TeachError> {
        let Some(head) = self.check_teach(pixels, labels)? else {
            self.forget();
            return Ok(());
        };
        let features = self.engine_output(pixels, None, true);
        self.taught = Some(fit(&head, &features, labels, pull, steps));
        Ok(())
    }

    /// [`Classifier::teach`] with an asynchronous read-back of the features (wgpu in a
    /// browser).
    ///
    /// # Errors
    /// As `teach`, and [`TeachError::Device`] when the device fails to return the features.
    pub async fn teach_async(&mut self, pixels: &[f32], labels: &[u32]) -> Result<(), TeachError> {
        let Some(head) = self.check_teach(pixels, labels)? else {
            self.forget();
            return Ok(());
        };
        let features = self
            .engine_output_async(pixels, None, true)
            .await
            .map_err(|e| TeachError::Device(e.to_string()))?;
        self.taught = Some(fit(&head, &features, labels, adapt::PULL, adapt::STEPS));
        Ok(())
    }

    /// Undo [`Classifier::teach`]: back to the trained model.
    pub fn forget(&mut self) {
        self.taught = None;
    }

    /// Examples taught per class (0-9); all zero before [`Classifier::teach`].
    pub fn taught(&self) -> [usize; NUM_CLASSES] {
        self.taught.as_ref().map_or([0; NUM_CLASSES], |t| t.counts)
    }

    /// The head teaching starts from, when the examples are acceptable and there are some.
    fn check_teach(&self, pixels: &[f32], labels: &[u32]) -> Result<Option<Head>, TeachError> {
        if pixels.is_empty() && labels.is_empty() {
            return Ok(None);
        }
        check_pixels(pixels)?;
        let images = pixels.len() / INPUT_LEN;
        if labels.len() != images {
            return Err(TeachError::Labels {
                images,
                labels: labels.len(),
            });
        }
        if images > MAX_TAUGHT {
            return Err(TeachError::TooMany(images));
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= NUM_CLASSES)
        {
            return Err(TeachError::Label { index, label });
        }
        if let Some(index) = pixels
            .chunks_exact(INPUT_LEN)
            .position(|image| image.iter().all(|&p| p == 0.0))
        {
            return Err(TeachError::Blank(index));
        }
        self.head.clone().map(Some).map_err(TeachError::Unsupported)
    }

    /// The engine's output for checked pixels: logits, or with a taught head its features.
    fn output(&self, pixels: &[f32], mc: Option<(usize, u64)>) -> Vec<f32> {
        self.engine_output(pixels, mc, self.taught.is_some())
    }

    async fn output_async(
        &self,
        pixels: &[f32],
        mc: Option<(usize, u64)>,
    ) -> Result<Vec<f32>, PredictError> {
        self.engine_output_async(pixels, mc, self.taught.is_some())
            .await
    }

    /// Logits (`features` false) or the penultimate features of checked pixels; `mc`: MC
    /// dropout's `(samples, seed)` on one image. Synchronous read-back.
    fn engine_output(&self, pixels: &[f32], mc: Option<(usize, u64)>, features: bool) -> Vec<f32> {
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                to_vec(model.output(self.images(pixels, device), mc, features))
            }
            #[cfg(feature = "fast")]
            Engine::Fast(network) => {
                let x = self.normalize(pixels);
                match (mc, features) {
                    (None, false) => network.forward(&x),
                    (None, true) => network.features(&x),
                    (Some((n, seed)), false) => network.forward_mc(&x, n, mask(seed)),
                    (Some((n, seed)), true) => network.features_mc(&x, n, mask(seed)),
                }
            }
        }
    }

    /// [`Classifier::engine_output`] with an asynchronous read-back.
    async fn engine_output_async(
        &self,
        pixels: &[f32],
        mc: Option<(usize, u64)>,
        features: bool,
    ) -> Result<Vec<f32>, PredictError> {
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                let data = model
                    .output(self.images(pixels, device), mc, features)
                    .into_data_async()
                    .await
                    .map_err(|e| PredictError::Device(format!("{e:?}")))?;
                Ok(f32_values(data))
            }
            #[cfg(feature = "fast")]
            Engine::Fast(_) => Ok(self.engine_output(pixels, mc, features)),
        }
    }

    /// The taught head's logits of the engine's features, or the engine's logits as they are.
    fn to_logits(&self, values: Vec<f32>) -> Vec<f32> {
        match &self.taught {
            Some(taught) => taught.head.logits(&values),
            None => values,
        }
    }

    fn check_mc(&self, pixels: &[f32], samples: usize) -> Result<(), InputError> {
        check_pixels(pixels)?;
        if pixels.len() != INPUT_LEN {
            return Err(InputError::NotOneImage(pixels.len()));
        }
        if !(1..=MAX_SAMPLES).contains(&samples) {
            return Err(InputError::Samples(samples));
        }
        Ok(())
    }

    /// Whether an [`Uncertainty`] counts as "not sure": its mutual information is above the
    /// file's `unsure_mutual_information` threshold; `None` for an uncalibrated file.
    pub fn unsure(&self, uncertainty: &Uncertainty) -> Option<bool> {
        self.metadata
            .unsure_threshold
            .map(|t| uncertainty.mutual_information > t)
    }

    /// Where one prediction's time goes: each layer (burn backends) or fused stage (the fast
    /// kernels) of the forward pass on `pixels`, run `repeats` times and timed with `now`
    /// (any clock; `performance.now()` in a browser, ms). Returns `(name, mean time per run)`
    /// in order. Repeating makes stages far shorter than the clock's resolution measurable.
    /// Not for wgpu (asynchronous; returns an empty list).
    ///
    /// # Errors
    /// [`InputError`] as [`Classifier::logits`].
    pub fn profile(
        &self,
        pixels: &[f32],
        repeats: usize,
        now: &mut dyn FnMut() -> f64,
    ) -> Result<Vec<(String, f64)>, InputError> {
        check_pixels(pixels)?;
        let repeats = repeats.max(1);
        match &self.engine {
            #[cfg(feature = "wgpu")]
            Engine::Burn { .. } if self.backend == Backend::Wgpu => Ok(Vec::new()),
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                Ok(model.profile(self.images(pixels, device), repeats, now))
            }
            #[cfg(feature = "fast")]
            Engine::Fast(network) => {
                // Mean ms of `repeats` runs of `step`.
                let mut mean = |step: &mut dyn FnMut()| {
                    let start = now();
                    (0..repeats).for_each(|_| step());
                    (now() - start) / repeats as f64
                };
                let mut x = network.to_nhwc(&self.normalize(pixels));
                let mut times = vec![(
                    String::from("normalise"),
                    mean(&mut || drop(network.to_nhwc(&self.normalize(pixels)))),
                )];
                for stage in network.stages() {
                    let ms = mean(&mut || drop(network.run(stage, &x)));
                    times.push((network.stage_name(stage), ms));
                    x = network.run(stage, &x);
                }
                let ms = mean(&mut || softmax_rows(&mut x.clone(), NUM_CLASSES));
                times.push((String::from("softmax"), ms));
                Ok(times)
            }
        }
    }

    /// The kernels' network, when this classifier runs on [`Backend::Fast`].
    #[cfg(feature = "fast")]
    pub fn network(&self) -> Option<&Network> {
        match &self.engine {
            Engine::Fast(network) => Some(network),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Checked pixels `[N * 784]` -> normalised values, NCHW `[N, 1, 28, 28]`: the same
    /// operations, in the same order, as `trainer.model.normalize`.
    pub fn normalize(&self, pixels: &[f32]) -> Vec<f32> {
        pixels
            .iter()
            .map(|&p| {
                (p / MAX_PIXEL - self.metadata.normalization.mean) / self.metadata.normalization.std
            })
            .collect()
    }

    #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
    fn images(&self, pixels: &[f32], device: &Device) -> Tensor<4> {
        let n = pixels.len() / INPUT_LEN;
        Tensor::<4>::from_data(
            TensorData::new(self.normalize(pixels), [n, 1, IMAGE_SIZE, IMAGE_SIZE]),
            device,
        )
    }
}

/// The file's last layer as the head teaching re-fits, or why there is none.
fn read_head(metadata: &Metadata, bytes: &[u8]) -> Result<Head, String> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let dense = params::read_head(&metadata.plan, &file)?;
    Ok(Head {
        weight: dense.weight,
        bias: dense.bias,
        classes: dense.shape[0],
        features: dense.shape[1],
    })
}

/// MC dropout's masks for the kernels ([`Network::forward_mc`]): `len` factors from value
/// `start` of the stream `seed` ([`uncertainty::dropout_mask`], the masks `trainer.uncertainty`
/// and the burn paths draw).
#[cfg(feature = "fast")]
fn mask(seed: u64) -> impl Fn(u64, usize, f32) -> Vec<f32> {
    move |start, len, p| uncertainty::dropout_mask(seed, start, len, p)
}

/// `head` re-fitted to checked examples.
fn fit(head: &Head, features: &[f32], labels: &[u32], pull: f32, steps: usize) -> Taught {
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    let mut counts = [0; NUM_CLASSES];
    labels.iter().for_each(|&l| counts[l] += 1);
    Taught {
        head: head.fit_with(features, &labels, pull, steps),
        counts,
    }
}

/// Row-wise softmax of `[N, classes]` logits, in place: `exp(x - max) / Σ exp(x - max)`.
pub fn softmax_rows(values: &mut [f32], classes: usize) {
    for row in values.chunks_exact_mut(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = libm::expf(*v - max);
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}

/// A model must give one value per class.
fn check_outputs(outputs: usize) -> Result<(), LoadError> {
    if outputs != NUM_CLASSES {
        return Err(LoadError::Tensors(format!(
            "the model gives {outputs} outputs per image, not {NUM_CLASSES}"
        )));
    }
    Ok(())
}

/// wgpu wraps a browser exception as `JsValue(<name>: <message>\n<stack>)`: keep
/// `<name>: <message>`, which is what a user can act on.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn without_js_stack(message: &str) -> String {
    let Some(start) = message.find("JsValue(") else {
        return message.to_string();
    };
    let inner = &message[start + "JsValue(".len()..];
    let end = inner
        .find('\n')
        .or_else(|| inner.rfind(')'))
        .unwrap_or(inner.len());
    format!("{}{}", &message[..start], &inner[..end])
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

#[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
fn to_vec(tensor: Tensor<2>) -> Vec<f32> {
    // The CPU backends hold f32 data in host memory: reading it back cannot fail.
    f32_values(tensor.into_data())
}

#[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
fn f32_values(data: TensorData) -> Vec<f32> {
    data.as_slice::<f32>()
        .expect("the model computes in f32")
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::without_js_stack;

    #[test]
    fn browser_exceptions_lose_their_stack_and_wrapper() {
        assert_eq!(
            without_js_stack(
                "Unable to request a wgpu device: JsValue(OperationError: refused\nat f (x.js:1))"
            ),
            "Unable to request a wgpu device: OperationError: refused"
        );
        assert_eq!(
            without_js_stack("JsValue(TypeError: bad)"),
            "TypeError: bad"
        );
        assert_eq!(
            without_js_stack("No adapter available"),
            "No adapter available"
        );
    }
}
