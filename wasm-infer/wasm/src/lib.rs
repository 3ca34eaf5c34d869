//! The browser's view of the model: a wasm-bindgen class over [`mnist_model::Classifier`],
//! with the weights embedded at compile time.
//!
//! ```js
//! import init, { Classifier } from "./pkg/flex/mnist_wasm.js";
//! await init();
//! const classifier = new Classifier();            // throws if the weights do not load
//! const probabilities = classifier.predict(pixels); // Float32Array(784) -> Float32Array(10)
//! ```

use mnist_model::{Backend, INPUT_LEN, NUM_CLASSES};
use wasm_bindgen::prelude::*;

#[cfg(all(feature = "ndarray", feature = "flex"))]
compile_error!("build mnist-wasm with exactly one backend feature: `ndarray` or `flex`");

#[cfg(feature = "flex")]
const BACKEND: Backend = Backend::Flex;
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
const BACKEND: Backend = Backend::NdArray;

/// `models/model.safetensors` (or `$MNIST_WEIGHTS` at build time), embedded in the wasm.
static WEIGHTS: &[u8] = include_bytes!(env!("MNIST_WEIGHTS_PATH"));

/// The MNIST classifier, loaded with the embedded weights.
#[wasm_bindgen]
pub struct Classifier {
    inner: mnist_model::Classifier,
}

#[wasm_bindgen]
impl Classifier {
    /// Load the embedded weights. Throws an `Error` naming the problem if they do not fit
    /// the model (they were checked at build time by the native tests, so this is a guard).
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<Classifier, JsError> {
        let inner = mnist_model::Classifier::from_safetensors(WEIGHTS, BACKEND)
            .map_err(|e| JsError::new(&e.to_string()))?;
        Ok(Classifier { inner })
    }

    /// Classify one image.
    ///
    /// `pixels`: Float32Array (or array) of 784 values, row-major 28x28, 0..=255, ink = 255.
    /// Returns a Float32Array of 10 probabilities (softmax), digit 0 first.
    /// Throws an `Error` for a wrong length, a non-finite value or a value outside 0..=255;
    /// the instance stays usable.
    pub fn predict(&self, pixels: &[f32]) -> Result<Vec<f32>, JsError> {
        if pixels.len() != INPUT_LEN {
            return Err(JsError::new(&mnist_model::InputError::Length(pixels.len()).to_string()));
        }
        self.inner
            .probabilities(pixels)
            .map_err(|e| JsError::new(&e.to_string()))
    }

    /// Name of the compiled-in backend: `"ndarray"` or `"flex"`.
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
}
