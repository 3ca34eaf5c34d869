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
//! name (`ndarray`, `flex`, `wgpu`); `simd` adds flex's SIMD kernels (needs a target with std).
//! `fast` adds [`Backend::Fast`]: this crate's own SIMD kernels ([`kernels`]) run the model,
//! read from the same file without burn's runtime, with BatchNorm folded and the weights
//! packed once at load.
//! The CPU backends are ready at once and answer synchronously. wgpu (WebGPU in a browser) must
//! be started with [`Classifier::from_safetensors_async`] and read with
//! [`Classifier::probabilities_async`]: a browser cannot block on the GPU.

#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "fast")]
mod fast;
#[cfg(feature = "fast")]
pub mod kernels;
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
#[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
use burn::tensor::activation::softmax;

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
    /// This crate's own SIMD kernels on the given instruction set (the weights are read into
    /// a [`Network`] without burn: [`Network::from_safetensors`]).
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
            // lives (`Network::from_model`).
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
                let device = Device::wgpu_options()
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
            metadata,
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
            metadata,
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

    /// Logits for a batch of images.
    ///
    /// `pixels`: `N * 784` values, N >= 1, each image 28x28 row-major, 0..=255, ink = 255.
    /// Returns `N * 10` logits, image by image.
    ///
    /// # Errors
    /// [`InputError`] for a wrong length, a non-finite value or a value outside 0..=255.
    pub fn logits(&self, pixels: &[f32]) -> Result<Vec<f32>, InputError> {
        check_pixels(pixels)?;
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                Ok(to_vec(model.forward(self.images(pixels, device))))
            }
            #[cfg(feature = "fast")]
            Engine::Fast(network) => Ok(network.forward(&self.normalize(pixels))),
        }
    }

    /// Softmax probabilities for a batch of images: like [`Classifier::logits`], each group of
    /// 10 values sums to 1. Reads the result back synchronously: on wgpu in a browser use
    /// [`Classifier::probabilities_async`].
    pub fn probabilities(&self, pixels: &[f32]) -> Result<Vec<f32>, InputError> {
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                check_pixels(pixels)?;
                Ok(to_vec(softmax(
                    model.forward(self.images(pixels, device)),
                    1,
                )))
            }
            #[cfg(feature = "fast")]
            Engine::Fast(_) => {
                let mut values = self.logits(pixels)?;
                kernels::softmax_rows(&mut values, NUM_CLASSES);
                Ok(values)
            }
        }
    }

    /// [`Classifier::probabilities`] with an asynchronous read-back, which every backend
    /// supports and wgpu in a browser requires.
    ///
    /// # Errors
    /// [`PredictError::Input`] as `probabilities`; [`PredictError::Device`] when the device
    /// fails to return the result.
    pub async fn probabilities_async(&self, pixels: &[f32]) -> Result<Vec<f32>, PredictError> {
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                check_pixels(pixels)?;
                let probabilities = softmax(model.forward(self.images(pixels, device)), 1);
                let data = probabilities
                    .into_data_async()
                    .await
                    .map_err(|e| PredictError::Device(format!("{e:?}")))?;
                Ok(f32_values(data))
            }
            #[cfg(feature = "fast")]
            Engine::Fast(_) => Ok(self.probabilities(pixels)?),
        }
    }

    /// MC dropout on one image: `samples` forward passes with dropout on, masks drawn from
    /// `seed` ([`uncertainty::dropout_mask`]), summarised ([`Uncertainty`]). Synchronous:
    /// on wgpu in a browser use [`Classifier::uncertainty_async`].
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
        let probabilities = match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => to_vec(softmax(
                model.forward_mc(self.images(pixels, device), samples, seed),
                1,
            )),
            #[cfg(feature = "fast")]
            Engine::Fast(network) => {
                let mut values = network.forward_mc(&self.normalize(pixels), samples, seed);
                kernels::softmax_rows(&mut values, NUM_CLASSES);
                values
            }
        };
        Ok(uncertainty::summarize(&probabilities, NUM_CLASSES))
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
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                self.check_mc(pixels, samples)?;
                let logits = model.forward_mc(self.images(pixels, device), samples, seed);
                let data = softmax(logits, 1)
                    .into_data_async()
                    .await
                    .map_err(|e| PredictError::Device(format!("{e:?}")))?;
                Ok(uncertainty::summarize(&f32_values(data), NUM_CLASSES))
            }
            #[cfg(feature = "fast")]
            Engine::Fast(_) => Ok(self.uncertainty(pixels, samples, seed)?),
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
                let ms = mean(&mut || kernels::softmax_rows(&mut x.clone(), NUM_CLASSES));
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
