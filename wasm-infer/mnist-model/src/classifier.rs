//! [`Classifier`]: a weights file loaded on one backend, with the input checks, softmax, MC
//! dropout, teaching and profiling. It builds one [`Pass`] per call and dispatches it once to
//! its engine: burn's `cnn` Module or a layer plan on burn's tensor operations, or this
//! project's kernels.

use alloc::format;
use alloc::string::{String, ToString};
#[cfg(feature = "fast")]
use alloc::vec;
use alloc::vec::Vec;

#[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
use burn::prelude::*;

use crate::adapt::{Adapted, Head, Settings};
use crate::backend::Backend;
use crate::error::{InputError, PredictError, ReconstructError, TeachError};
#[cfg(feature = "fast")]
use crate::fast::LoadNetwork;
#[cfg(feature = "fast")]
use crate::kernels::{Isa, Network};
use crate::pass::{McDropout, Pass};
use crate::uncertainty::{self, Uncertainty};
use crate::weights::{self, LoadError, Metadata};
use crate::{IMAGE_SIZE, INPUT_LEN, MAX_PIXEL, MAX_SAMPLES, MAX_TAUGHT, NUM_CLASSES, params};
#[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
use crate::{layers, model::Model, plan};

/// The model [`Classifier::teach`] adapted (the trained head and its correction), and how many
/// examples of each class it learnt.
#[derive(Clone, Debug)]
struct Taught {
    adapted: Adapted,
    counts: [usize; NUM_CLASSES],
}

/// Images per forward pass when teaching computes the features of the examples and their
/// variants (at most [`crate::adapt::AUGMENT_BUDGET`] or [`MAX_TAUGHT`] of them): bounds the
/// engines' intermediate buffers.
const FEATURE_BATCH: usize = 256;

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
    /// The model's one forward pass ([`Pass`]).
    fn pass(&self, images: Tensor<4>, pass: Pass) -> Tensor<2> {
        match self {
            BurnModel::Cnn(m) => m.pass(images, pass),
            BurnModel::Layers(m) => m.pass(images, pass),
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

    /// The `cnn`: burn-store loads the burn model on `device` (the backend's, from
    /// [`Backend::device`] or [`Backend::start`]); any other plan: its tensors on `device` for
    /// burn's tensor operations.
    #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
    fn load_burn(
        bytes: &[u8],
        backend: Backend,
        device: Option<Device>,
    ) -> Result<Self, LoadError> {
        let device = device.ok_or_else(|| LoadError::Device {
            backend: backend.name(),
            problem: "not one of burn's backends".to_string(),
        })?;
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
    /// "not sure" and "not a digit" thresholds.
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

    /// What the model sees (a capsule network's reconstruction decoder, Sabour et al. 2017):
    /// for each image, the predicted digit and the image its decoder draws from that digit's
    /// capsule (the longest; the other capsules zeroed), both from one forward pass.
    ///
    /// `pixels`: `N * 784` values as [`Classifier::logits`]. See [`Reconstruction`] for what
    /// comes back. Synchronous: on wgpu in a browser use [`Classifier::reconstruct_async`].
    ///
    /// # Errors
    /// [`ReconstructError::Input`] for bad pixels; [`ReconstructError::Unsupported`] for a
    /// model without a decoder.
    pub fn reconstruct(&self, pixels: &[f32]) -> Result<Reconstruction, ReconstructError> {
        check_pixels(pixels)?;
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                let (classes, values) = self.burn_reconstruction(model, pixels, device)?;
                Ok(Reconstruction::from_rows(
                    &to_vec(values),
                    pixels.len() / INPUT_LEN,
                    classes,
                ))
            }
            #[cfg(feature = "fast")]
            Engine::Fast(network) => {
                let (digits, image) = network
                    .reconstruct(&self.normalize(pixels))
                    .ok_or_else(no_decoder)?;
                Ok(Reconstruction {
                    digits,
                    pixels: image.into_iter().map(|v| v * MAX_PIXEL).collect(),
                })
            }
        }
    }

    /// [`Classifier::reconstruct`] with an asynchronous read-back (one, of the digits and the
    /// images together), which every backend supports and wgpu in a browser requires.
    ///
    /// # Errors
    /// As `reconstruct`, and [`ReconstructError::Device`] when the device fails to return
    /// the result.
    pub async fn reconstruct_async(
        &self,
        pixels: &[f32],
    ) -> Result<Reconstruction, ReconstructError> {
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                check_pixels(pixels)?;
                let (classes, values) = self.burn_reconstruction(model, pixels, device)?;
                let data = values
                    .into_data_async()
                    .await
                    .map_err(|e| ReconstructError::Device(format!("{e:?}")))?;
                Ok(Reconstruction::from_rows(
                    &f32_values(data),
                    pixels.len() / INPUT_LEN,
                    classes,
                ))
            }
            #[allow(unreachable_patterns)]
            _ => self.reconstruct(pixels),
        }
    }

    /// A burn model's reconstruction of checked pixels, not yet read back: `(J, values)`,
    /// `values` `[N, J + pixels]` holding each image's `J` capsule lengths then its decoder
    /// image in (0, 1), so that one read-back returns both ([`Reconstruction::from_rows`]).
    #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
    fn burn_reconstruction(
        &self,
        model: &BurnModel,
        pixels: &[f32],
        device: &Device,
    ) -> Result<(usize, Tensor<2>), ReconstructError> {
        // The burn `cnn` Module has no decoder.
        let BurnModel::Layers(model) = model else {
            return Err(no_decoder());
        };
        let (lengths, image) = model
            .reconstruct(self.images(pixels, device))
            .ok_or_else(no_decoder)?;
        let [_, classes] = lengths.dims();
        Ok((classes, Tensor::cat(alloc::vec![lengths, image], 1)))
    }

    /// MC dropout on one image: `samples` forward passes with dropout on, masks drawn from
    /// `seed` ([`uncertainty::dropout_mask`]), summarised ([`Uncertainty`]); with the taught
    /// head once examples are taught. Synchronous: on wgpu in a browser use
    /// [`Classifier::uncertainty_async`].
    ///
    /// The summary is judged by the file's rules: `not_a_digit` is
    /// [`Classifier::not_a_digit`] on one more pass, in eval mode (dropout off, the
    /// probabilities [`Classifier::probabilities`] gives), when the file has the rule; `unsure`
    /// is [`Classifier::unsure`] (either rule).
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
        let mut values = self.to_logits(self.output(pixels, Some(McDropout { samples, seed })));
        softmax_rows(&mut values, NUM_CLASSES);
        let mut summary = uncertainty::summarize(&values, NUM_CLASSES);
        // The "not a digit" rule is on one eval-mode pass (dropout off), run only when the file
        // has the rule.
        let eval = match self.metadata.not_a_digit_threshold {
            Some(_) => Some(self.probabilities(pixels)?),
            None => None,
        };
        self.judge(&mut summary, eval.as_deref());
        Ok(summary)
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
        let mut values = self.to_logits(
            self.output_async(pixels, Some(McDropout { samples, seed }))
                .await?,
        );
        softmax_rows(&mut values, NUM_CLASSES);
        let mut summary = uncertainty::summarize(&values, NUM_CLASSES);
        let eval = match self.metadata.not_a_digit_threshold {
            Some(_) => Some(self.probabilities_async(pixels).await?),
            None => None,
        };
        self.judge(&mut summary, eval.as_deref());
        Ok(summary)
    }

    /// Teach the classifier one user's hand: fit a correction of its logits near these
    /// labelled images and their virtual examples ([`crate::adapt`]), replacing what was taught
    /// before; from then on every prediction uses it. No examples: the same as
    /// [`Classifier::forget`]. Synchronous: on wgpu in a browser use
    /// [`Classifier::teach_async`].
    ///
    /// `pixels`: `N * 784` values as [`Classifier::logits`]; `labels`: `N` digits 0-9.
    ///
    /// # Errors
    /// [`TeachError`] for bad pixels, a blank image, a label that is not a digit, not one
    /// label per image, more than [`MAX_TAUGHT`] examples, or a model whose last layer is not
    /// linear. Refused examples change nothing.
    pub fn teach(&mut self, pixels: &[f32], labels: &[u32]) -> Result<(), TeachError> {
        self.teach_with(pixels, labels, Settings::DEFAULT)
    }

    /// [`Classifier::teach`] with other settings than [`Settings::DEFAULT`] (for tuning them;
    /// the pull and the width must be positive numbers, which callers check).
    ///
    /// # Errors
    /// As `teach`.
    pub fn teach_with(
        &mut self,
        pixels: &[f32],
        labels: &[u32],
        settings: Settings,
    ) -> Result<(), TeachError> {
        let Some(head) = self.check_teach(pixels, labels)? else {
            self.forget();
            return Ok(());
        };
        let per_example = settings.images_per_example(labels.len());
        let images = crate::adapt::augment(pixels, per_example);
        let features: Vec<f32> = images
            .chunks(FEATURE_BATCH * INPUT_LEN)
            .flat_map(|batch| self.engine_output(batch, Pass::FEATURES))
            .collect();
        self.taught = Some(fit(&head, &features, labels, per_example, settings));
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
        let settings = Settings::DEFAULT;
        let per_example = settings.images_per_example(labels.len());
        let images = crate::adapt::augment(pixels, per_example);
        let mut features = Vec::new();
        for batch in images.chunks(FEATURE_BATCH * INPUT_LEN) {
            features.extend(
                self.engine_output_async(batch, Pass::FEATURES)
                    .await
                    .map_err(|e| TeachError::Device(e.to_string()))?,
            );
        }
        self.taught = Some(fit(&head, &features, labels, per_example, settings));
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

    /// The engine's output for checked pixels: logits, or with a taught head its features;
    /// `mc`: MC dropout on one image.
    fn output(&self, pixels: &[f32], mc: Option<McDropout>) -> Vec<f32> {
        self.engine_output(pixels, self.pass(mc))
    }

    async fn output_async(
        &self,
        pixels: &[f32],
        mc: Option<McDropout>,
    ) -> Result<Vec<f32>, PredictError> {
        self.engine_output_async(pixels, self.pass(mc)).await
    }

    /// What the engine computes: the features when a taught head takes them, else logits.
    fn pass(&self, mc: Option<McDropout>) -> Pass {
        Pass {
            features: self.taught.is_some(),
            mc,
        }
    }

    /// The engine's one forward pass on checked pixels. Synchronous read-back.
    fn engine_output(&self, pixels: &[f32], pass: Pass) -> Vec<f32> {
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => to_vec(model.pass(self.images(pixels, device), pass)),
            #[cfg(feature = "fast")]
            Engine::Fast(network) => crate::fast::pass(network, &self.normalize(pixels), pass),
        }
    }

    /// [`Classifier::engine_output`] with an asynchronous read-back.
    async fn engine_output_async(
        &self,
        pixels: &[f32],
        pass: Pass,
    ) -> Result<Vec<f32>, PredictError> {
        match &self.engine {
            #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
            Engine::Burn { model, device } => {
                let data = model
                    .pass(self.images(pixels, device), pass)
                    .into_data_async()
                    .await
                    .map_err(|e| PredictError::Device(format!("{e:?}")))?;
                Ok(f32_values(data))
            }
            #[cfg(feature = "fast")]
            Engine::Fast(_) => Ok(self.engine_output(pixels, pass)),
        }
    }

    /// The taught head's logits of the engine's features, or the engine's logits as they are.
    fn to_logits(&self, values: Vec<f32>) -> Vec<f32> {
        match &self.taught {
            Some(taught) => taught.adapted.logits(&values),
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

    /// Whether an [`Uncertainty`] counts as "not sure": true when either of the file's rules
    /// fires, its mutual information above the `unsure_mutual_information` threshold, or its
    /// `not_a_digit` (see [`Classifier::not_a_digit`]); with one threshold only, that rule
    /// decides; `None` when the file has neither.
    pub fn unsure(&self, uncertainty: &Uncertainty) -> Option<bool> {
        let mutual_information = self
            .metadata
            .unsure_threshold
            .map(|t| uncertainty.mutual_information > t);
        uncertainty::either(mutual_information, uncertainty.not_a_digit)
    }

    /// The "not a digit" rule, the weights file's `not_a_digit_max_probability` τ in `(0, 1]`:
    /// an image is not a digit when the largest of its probabilities is below τ.
    ///
    /// `probabilities`: the 10 softmax probabilities of one image (each in 0..=1) from an
    /// eval-mode pass, dropout off: what [`Classifier::probabilities`] gives (with the taught
    /// head once examples are taught), not MC dropout's mean. Unchecked here: the bindings
    /// check values from outside with [`check_probabilities`]. Returns `Some(max < τ)`, or
    /// `None` when the file has no τ.
    pub fn not_a_digit(&self, probabilities: &[f32]) -> Option<bool> {
        self.metadata
            .not_a_digit_threshold
            .map(|t| uncertainty::largest_below(probabilities, t))
    }

    /// Set `summary`'s `not_a_digit` (from `eval`, the eval-mode probabilities of the same
    /// image, given when the file has the rule) and its `unsure` (either rule).
    fn judge(&self, summary: &mut Uncertainty, eval: Option<&[f32]>) {
        summary.not_a_digit = eval.and_then(|p| self.not_a_digit(p));
        summary.unsure = self.unsure(summary);
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

/// `head` adapted to checked examples, from the features `[n * per_example, features]` of
/// each example and its variants ([`crate::adapt::augment`]'s order).
fn fit(
    head: &Head,
    features: &[f32],
    labels: &[u32],
    per_example: usize,
    settings: Settings,
) -> Taught {
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    let mut counts = [0; NUM_CLASSES];
    labels.iter().for_each(|&l| counts[l] += 1);
    Taught {
        adapted: Adapted::fit(head, features, &labels, per_example, settings),
        counts,
    }
}

/// What [`Classifier::reconstruct`] gives for `N` images: what a capsule network sees, with
/// the digit it was drawn from, from one forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Reconstruction {
    /// `N` digits in `0..=9`, image by image: the class whose capsule the decoder drew from,
    /// the longest capsule (the first of equally long ones), which is the predicted digit,
    /// the argmax of [`Classifier::logits`] (a model with a decoder cannot be taught).
    pub digits: Vec<usize>,
    /// `N * 784` values in 0..=255, ink = 255, each image 28x28 row-major, image by image:
    /// the decoder's (0, 1) output times 255.
    pub pixels: Vec<f32>,
}

impl Reconstruction {
    /// From a burn engine's read-back of `images` rows `[classes + pixels]`: each image's
    /// `classes` capsule lengths, then its decoder image in (0, 1)
    /// ([`Classifier::burn_reconstruction`]).
    #[cfg(any(feature = "ndarray", feature = "flex", feature = "wgpu"))]
    fn from_rows(values: &[f32], images: usize, classes: usize) -> Self {
        let mut digits = Vec::with_capacity(images);
        let mut pixels = Vec::with_capacity(values.len() - images * classes);
        for row in values.chunks_exact(values.len() / images) {
            let (lengths, image) = row.split_at(classes);
            // The first of equally long capsules, as the fast kernels and PyTorch's argmax.
            let mut longest = 0;
            for (j, &length) in lengths.iter().enumerate() {
                if length > lengths[longest] {
                    longest = j;
                }
            }
            digits.push(longest);
            pixels.extend(image.iter().map(|v| v * MAX_PIXEL));
        }
        Reconstruction { digits, pixels }
    }
}

/// Why a model without a reconstruction decoder gives no [`Reconstruction`].
fn no_decoder() -> ReconstructError {
    ReconstructError::Unsupported(String::from("the model has no reconstruction decoder"))
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

/// Check one image's probabilities before [`Classifier::not_a_digit`] judges them: exactly
/// [`NUM_CLASSES`] (10) values, each a number in `0.0..=1.0` (NaN refused).
///
/// # Errors
/// [`InputError::Probabilities`] naming the length, or the first bad value and its position.
pub fn check_probabilities(probabilities: &[f32]) -> Result<(), InputError> {
    let len = probabilities.len();
    if len != NUM_CLASSES {
        return Err(InputError::Probabilities { len, bad: None });
    }
    match probabilities.iter().position(|p| !(0.0..=1.0).contains(p)) {
        Some(index) => Err(InputError::Probabilities {
            len,
            bad: Some((index, probabilities[index])),
        }),
        None => Ok(()),
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
