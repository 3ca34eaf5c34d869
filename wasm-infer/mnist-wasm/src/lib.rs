//! The browser's view of the model: a wasm-bindgen class over [`mnist_model::Classifier`],
//! with the weights embedded at compile time.
//!
//! CPU builds (`fast-relaxed`, `fast-simd128`, `flex`, `ndarray`) start and predict
//! synchronously:
//!
//! ```js
//! import init, { Classifier } from "./pkg/fast-simd128/mnist_wasm.js";
//! await init();
//! const classifier = new Classifier();              // throws if the weights do not load
//! const probabilities = classifier.predict(pixels); // Float32Array(784) -> Float32Array(10)
//! const other = Classifier.fromBytes(new Uint8Array(await (await fetch(url)).arrayBuffer()));
//! const { probabilities, std, mutualInformation, notADigit, unsure } =
//!   JSON.parse(classifier.uncertainty(pixels, 20, 0));  // MC dropout, 20 samples, seed 0
//! classifier.notADigit(probabilities); // true | false; undefined without the file's threshold
//! classifier.teach(examples, labels);  // N * 784 pixels, N digits: adapt to a hand
//! classifier.taught;                   // Uint32Array(10): examples per class
//! classifier.forget();                 // back to the trained model
//! classifier.reconstructs;             // true for a model with a decoder (the capsnet)
//! const seen = classifier.reconstruct(pixels); // what it sees, from one forward pass:
//! seen.digit;                          // the predicted digit, 0-9, whose capsule it drew from
//! seen.pixels;                         // Float32Array(784): the decoder's image, 0..=255
//! seen.free();                         // (or leave it to the garbage collector)
//! ```
//!
//! The WebGPU build (`wgpu`) must wait for the GPU, so both calls return Promises:
//!
//! ```js
//! import init, { Classifier } from "./pkg/wgpu/mnist_wasm.js";
//! await init();
//! const classifier = await Classifier.create();          // rejects without a WebGPU device
//! const probabilities = await classifier.predict(pixels);
//! const other = await Classifier.fromBytes(bytes);
//! const summary = JSON.parse(await classifier.uncertainty(pixels, 20, 0));
//! await classifier.teach(examples, labels);
//! const seen = await classifier.reconstruct(pixels); // a capsule network's: digit, pixels
//! ```

use mnist_model::{Backend, INPUT_LEN, InputError, NUM_CLASSES, check_probabilities};
use wasm_bindgen::prelude::*;

#[cfg(any(
    all(feature = "ndarray", feature = "flex"),
    all(feature = "ndarray", feature = "wgpu"),
    all(feature = "flex", feature = "wgpu"),
    all(
        feature = "fast",
        any(feature = "ndarray", feature = "flex", feature = "wgpu")
    ),
))]
compile_error!(
    "build mnist-wasm with exactly one backend feature: `ndarray`, `flex`, `wgpu`, `fast` or `fast-relaxed`"
);

#[cfg(feature = "wgpu")]
const BACKEND: Backend = Backend::Wgpu;
#[cfg(feature = "flex")]
const BACKEND: Backend = Backend::Flex;
#[cfg(feature = "ndarray")]
const BACKEND: Backend = Backend::NdArray;
/// The fast kernels on the best instruction set compiled in: relaxed SIMD in the
/// `fast-relaxed` build, plain simd128 in the `fast` build.
#[cfg(feature = "fast")]
const BACKEND: Backend = Backend::Fast(*mnist_model::Isa::ALL.last().unwrap());

#[cfg(target_family = "wasm")]
unsafe extern "C" {
    /// Synthesised by the linker (wasm-ld): runs the module's static constructors, e.g. the
    /// `inventory` registrations of cubecl's IR crates in the wgpu build.
    fn __wasm_call_ctors();
}

/// Runs once, when `init()` instantiates the module: the static constructors. Calling them
/// explicitly matters for speed: a module that never does is taken by wasm-ld for a
/// "command" run once, and every export (wasm-bindgen's externref table helpers included)
/// is wrapped in a call to all of them. In the wgpu build that cost ~180 ms per predict.
#[cfg(target_family = "wasm")]
#[wasm_bindgen(start)]
fn run_static_constructors() {
    // SAFETY: called exactly once, before any other export, as wasm-ld expects.
    unsafe { __wasm_call_ctors() }
}

/// `models/model.safetensors` (or `$MNIST_WEIGHTS` at build time), embedded in the wasm.
static WEIGHTS: &[u8] = include_bytes!(env!("MNIST_WEIGHTS_PATH"));

/// The MNIST classifier, loaded with the embedded weights.
#[wasm_bindgen]
pub struct Classifier {
    inner: mnist_model::Classifier,
}

/// The page predicts one image per call: refuse batches here, with the model's message.
fn check_one_image(pixels: &[f32]) -> Result<(), JsError> {
    if pixels.len() != INPUT_LEN {
        return Err(js_error(InputError::Length(pixels.len())));
    }
    Ok(())
}

fn js_error(e: impl core::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[cfg(not(feature = "wgpu"))]
#[wasm_bindgen]
impl Classifier {
    /// Load the embedded weights. Throws an `Error` naming the problem if they do not fit
    /// the model (they were checked at build time by the native tests, so this is a guard).
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<Classifier, JsError> {
        let inner =
            mnist_model::Classifier::from_safetensors(WEIGHTS, BACKEND).map_err(js_error)?;
        Ok(Classifier { inner })
    }

    /// Load a weights file at run time instead of the embedded one: `bytes` (Uint8Array) of a
    /// `model.safetensors` written by `trainer.export` (f32; the fast builds also read f16
    /// and int8, `invoke build-wasm --weights-dtype f16|int8`). Throws an `Error` naming the problem (not a
    /// safetensors file, another architecture, a missing, mis-shaped or unused tensor);
    /// classifiers made before are untouched.
    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(bytes: &[u8]) -> Result<Classifier, JsError> {
        let inner = mnist_model::Classifier::from_safetensors(bytes, BACKEND).map_err(js_error)?;
        Ok(Classifier { inner })
    }

    /// Classify one image.
    ///
    /// `pixels`: Float32Array (or array) of 784 values, row-major 28x28, 0..=255, ink = 255.
    /// Returns a Float32Array of 10 probabilities (softmax), digit 0 first.
    /// Throws an `Error` for a wrong length, a non-finite value or a value outside 0..=255;
    /// the instance stays usable.
    pub fn predict(&self, pixels: &[f32]) -> Result<Vec<f32>, JsError> {
        check_one_image(pixels)?;
        self.inner.probabilities(pixels).map_err(js_error)
    }

    /// MC dropout on one image: `samples` (1..=1000) forward passes with dropout on, masks
    /// drawn from `seed` (the same masks as `trainer.uncertainty`). Returns JSON:
    /// `{"probabilities": [10 means], "std": [10 standard deviations], "entropy": nats,
    /// "mutualInformation": nats, "samples": n, "notADigit": true | false | null,
    /// "unsure": true | false | null}`: `notADigit` is `notADigit` on one more pass with
    /// dropout off (null without the weights' `not_a_digit_max_probability`); `unsure` is
    /// true when either rule fires (the mutual information above `unsureThreshold`, or
    /// `notADigit`), null when the weights have neither threshold. Throws like `predict`, and
    /// for a sample count out of range.
    pub fn uncertainty(
        &self,
        pixels: &[f32],
        samples: usize,
        seed: u32,
    ) -> Result<String, JsError> {
        let u = self
            .inner
            .uncertainty(pixels, samples, seed.into())
            .map_err(js_error)?;
        Ok(uncertainty_json(&u))
    }

    /// Teach the classifier a hand: adapt it to `labels.length` examples (`pixels`:
    /// Float32Array of `labels.length * 784` values, as `predict`; `labels`: Uint32Array of
    /// digits 0-9) by a local correction of its logits near them and their virtual examples
    /// (`mnist_model::adapt`), replacing what was taught before; `predict` and `uncertainty`
    /// use it from then on. Empty arrays forget. Throws an `Error` naming the
    /// problem (a blank image, a label that is not a digit, not one label per image, bad
    /// pixels); the classifier then keeps what it had.
    pub fn teach(&mut self, pixels: &[f32], labels: &[u32]) -> Result<(), JsError> {
        self.inner.teach(pixels, labels).map_err(js_error)
    }

    /// What a capsule network sees: the predicted digit and the image its decoder draws from
    /// that digit's capsule (Sabour et al. 2017), from one forward pass. `pixels`: 784
    /// values, as `predict`. Returns a [`Reconstruction`] (`digit`, `pixels`). Throws like
    /// `predict`, and for a model without a decoder (see `reconstructs`).
    pub fn reconstruct(&self, pixels: &[f32]) -> Result<Reconstruction, JsError> {
        check_one_image(pixels)?;
        self.inner
            .reconstruct(pixels)
            .map(Reconstruction::of_one)
            .map_err(js_error)
    }
}

#[cfg(feature = "wgpu")]
#[wasm_bindgen]
impl Classifier {
    /// Request a WebGPU adapter and device, then load the embedded weights onto it.
    /// Resolves to a `Classifier`; rejects with an `Error` naming the problem (no adapter,
    /// device request refused, weights that do not fit).
    pub async fn create() -> Result<Classifier, JsError> {
        let inner = mnist_model::Classifier::from_safetensors_async(WEIGHTS, BACKEND)
            .await
            .map_err(js_error)?;
        Ok(Classifier { inner })
    }

    /// Classify one image on the GPU.
    ///
    /// `pixels`: Float32Array (or array) of 784 values, row-major 28x28, 0..=255, ink = 255.
    /// Resolves to a Float32Array of 10 probabilities (softmax), digit 0 first. Rejects with
    /// an `Error` for a wrong length, a non-finite value, a value outside 0..=255 or a GPU
    /// failure; the instance stays usable after a refused input.
    pub async fn predict(&self, pixels: Vec<f32>) -> Result<Vec<f32>, JsError> {
        check_one_image(&pixels)?;
        self.inner
            .probabilities_async(&pixels)
            .await
            .map_err(js_error)
    }

    /// Load a weights file at run time onto a new WebGPU device: resolves to a `Classifier`,
    /// rejects like `create` and for a file the burn backends cannot run (named).
    #[wasm_bindgen(js_name = fromBytes)]
    pub async fn from_bytes(bytes: Vec<u8>) -> Result<Classifier, JsError> {
        let inner = mnist_model::Classifier::from_safetensors_async(&bytes, BACKEND)
            .await
            .map_err(js_error)?;
        Ok(Classifier { inner })
    }

    /// MC dropout on the GPU: resolves to the JSON of the CPU builds' `uncertainty`.
    pub async fn uncertainty(
        &self,
        pixels: Vec<f32>,
        samples: usize,
        seed: u32,
    ) -> Result<String, JsError> {
        let u = self
            .inner
            .uncertainty_async(&pixels, samples, seed.into())
            .await
            .map_err(js_error)?;
        Ok(uncertainty_json(&u))
    }

    /// What a capsule network sees, on the GPU: resolves to the CPU builds' `reconstruct`
    /// (a [`Reconstruction`]: `digit`, `pixels`), from one forward pass and one read-back;
    /// rejects like it (and for a GPU failure).
    pub async fn reconstruct(&self, pixels: Vec<f32>) -> Result<Reconstruction, JsError> {
        check_one_image(&pixels)?;
        self.inner
            .reconstruct_async(&pixels)
            .await
            .map(Reconstruction::of_one)
            .map_err(js_error)
    }

    /// Teach on the GPU's features: resolves when done, rejects like the CPU builds'
    /// `teach` (and for a GPU failure).
    pub async fn teach(&mut self, pixels: Vec<f32>, labels: Vec<u32>) -> Result<(), JsError> {
        self.inner
            .teach_async(&pixels, &labels)
            .await
            .map_err(js_error)
    }
}

/// What `reconstruct` gives for one image: a capsule network's predicted digit and its
/// decoder's image of it, from the same forward pass.
#[wasm_bindgen]
pub struct Reconstruction {
    digit: usize,
    pixels: Vec<f32>,
}

impl Reconstruction {
    /// The one image of a checked single-image call.
    fn of_one(seen: mnist_model::Reconstruction) -> Self {
        Reconstruction {
            digit: seen.digits[0],
            pixels: seen.pixels,
        }
    }
}

#[wasm_bindgen]
impl Reconstruction {
    /// The digit 0-9 whose capsule the decoder drew from: the predicted digit (the largest of
    /// `predict`'s probabilities).
    #[wasm_bindgen(getter)]
    pub fn digit(&self) -> usize {
        self.digit
    }

    /// The decoder's image: a Float32Array of 784 values, 0..=255, ink = 255, row-major 28x28
    /// (a copy on each read).
    #[wasm_bindgen(getter)]
    pub fn pixels(&self) -> Vec<f32> {
        self.pixels.clone()
    }
}

/// The JSON the `uncertainty` methods return (see the CPU builds' `uncertainty`).
fn uncertainty_json(u: &mnist_model::Uncertainty) -> String {
    let list = |values: &[f32]| {
        let items: Vec<String> = values.iter().map(|v| format!("{v}")).collect();
        format!("[{}]", items.join(","))
    };
    format!(
        "{{\"probabilities\":{},\"std\":{},\"entropy\":{},\"mutualInformation\":{},\"samples\":{},\"notADigit\":{},\"unsure\":{}}}",
        list(&u.probabilities),
        list(&u.std),
        u.entropy,
        u.mutual_information,
        u.samples,
        json_flag(u.not_a_digit),
        json_flag(u.unsure)
    )
}

/// `true`, `false` or `null`.
fn json_flag(flag: Option<bool>) -> &'static str {
    match flag {
        Some(true) => "true",
        Some(false) => "false",
        None => "null",
    }
}

#[wasm_bindgen]
extern "C" {
    /// `performance.now()`: ms, in a window and in a worker.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

#[cfg(not(feature = "wgpu"))]
#[wasm_bindgen]
impl Classifier {
    /// Where one prediction's time goes: every layer (burn's builds) or fused stage (the fast
    /// builds) of the forward pass on `pixels` (784 values, as `predict`), each run `repeats`
    /// times and timed with `performance.now()`. Returns a JSON array
    /// `[{"stage": name, "ms": mean ms per run}, ...]` in order. Throws like `predict`.
    pub fn profile(&self, pixels: &[f32], repeats: usize) -> Result<String, JsError> {
        check_one_image(pixels)?;
        let stages = self
            .inner
            .profile(pixels, repeats, &mut performance_now)
            .map_err(js_error)?;
        let rows: Vec<String> = stages
            .iter()
            .map(|(stage, ms)| format!("{{\"stage\":\"{stage}\",\"ms\":{ms}}}"))
            .collect();
        Ok(format!("[{}]", rows.join(",")))
    }
}

#[wasm_bindgen]
impl Classifier {
    /// Name of the compiled-in backend: `"fast-relaxed"`, `"fast-simd128"`, `"ndarray"`,
    /// `"flex"` or `"wgpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.inner.backend().name().to_string()
    }

    /// Values per input image (784).
    #[wasm_bindgen(getter, js_name = inputLength)]
    pub fn input_length(&self) -> usize {
        INPUT_LEN
    }

    /// Outputs per image (10).
    #[wasm_bindgen(getter, js_name = numClasses)]
    pub fn num_classes(&self) -> usize {
        NUM_CLASSES
    }

    /// The `architecture` id in the weights' metadata, e.g. `"mnist-conv-bn-gelu-v1"`.
    #[wasm_bindgen(getter)]
    pub fn architecture(&self) -> String {
        self.inner.metadata().architecture.clone()
    }

    /// The MC-dropout mutual information (nats) above which a prediction is "not sure", from
    /// the weights' metadata; `undefined` when the file has none.
    #[wasm_bindgen(getter, js_name = unsureThreshold)]
    pub fn unsure_threshold(&self) -> Option<f32> {
        self.inner.metadata().unsure_threshold
    }

    /// The "not a digit" threshold τ in (0, 1] from the weights' metadata
    /// (`not_a_digit_max_probability`): an image whose largest probability is below it is not
    /// a digit (`notADigit`); `undefined` when the file has none.
    #[wasm_bindgen(getter, js_name = notADigitThreshold)]
    pub fn not_a_digit_threshold(&self) -> Option<f32> {
        self.inner.metadata().not_a_digit_threshold
    }

    /// Whether an image is "not a digit": the largest of its `probabilities` (a Float32Array
    /// of the 10 that `predict` returned for it, each 0..=1; with the taught model's numbers
    /// once taught) is below `notADigitThreshold`. `true` or `false`, `undefined` when the
    /// weights have no threshold. Throws an `Error` for another length, or a value that is not
    /// a number in 0..=1. Synchronous in every build (no model runs).
    #[wasm_bindgen(js_name = notADigit)]
    pub fn not_a_digit(&self, probabilities: &[f32]) -> Result<Option<bool>, JsError> {
        check_probabilities(probabilities).map_err(js_error)?;
        Ok(self.inner.not_a_digit(probabilities))
    }

    /// Whether the model has a reconstruction decoder (the capsule network), so that
    /// `reconstruct` draws what it sees.
    #[wasm_bindgen(getter)]
    pub fn reconstructs(&self) -> bool {
        self.inner
            .metadata()
            .plan
            .iter()
            .any(|layer| matches!(layer, mnist_model::plan::Layer::Decoder { .. }))
    }

    /// Examples taught per digit 0-9 (a Uint32Array of 10; zeros before `teach`).
    #[wasm_bindgen(getter)]
    pub fn taught(&self) -> Vec<u32> {
        self.inner.taught().iter().map(|&n| n as u32).collect()
    }

    /// Undo `teach`: back to the trained model.
    pub fn forget(&mut self) {
        self.inner.forget();
    }
}
