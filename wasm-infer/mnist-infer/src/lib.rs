//! Python's view of the model: the native module `mnist_infer` (PyO3, built with maturin) over
//! [`mnist_model::Classifier`], the same model core and weight loading as the wasm build.
//!
//! ```python
//! import numpy as np, mnist_infer
//! probabilities = mnist_infer.predict(pixels)      # (784,) -> (10,), or (N, 784) -> (N, 10)
//! clf = mnist_infer.Classifier("other.safetensors", backend="flex")
//! u = mnist_infer.uncertainty(pixels, samples=20, seed=0)  # MC dropout: dict of the summary
//! mnist_infer.not_a_digit(probabilities)  # (10,) -> True/False: max < τ; None without τ
//! clf.teach(examples, labels)   # (N, 784), (N,) digits: adapt the model to a hand
//! clf.taught, clf.forget()      # examples per class; back to the trained model
//! digits, images = mnist_infer.Classifier(capsnet_file).reconstruct(pixels)  # what it sees
//! ```
//!
//! Pixels follow MNIST's convention: 28x28 row-major, 0..=255, ink = 255 (the model normalises
//! them itself). Any numeric array-like is accepted and converted to float32. The computation
//! runs with the GIL released, so Python threads (e.g. a threaded HTTP server) can overlap.

use std::path::PathBuf;
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use mnist_model::{Backend, INPUT_LEN, NUM_CLASSES, check_probabilities};
use numpy::ndarray::{Array1, Array2};
use numpy::{AllowTypeChange, IntoPyArray, PyArrayDyn, PyArrayLikeDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// `models/model.safetensors` (or `$MNIST_WEIGHTS` at build time), embedded in the module.
static WEIGHTS: &[u8] = include_bytes!(env!("MNIST_WEIGHTS_PATH"));

/// The backend used unless one is asked for: this project's own kernels on the best
/// instruction set of this CPU (`fast-avx2` on x86-64 with AVX2 + FMA), the fastest here (see
/// docs/benchmarks.md). `Backend::from_name("fast")` resolves it.
const DEFAULT_BACKEND: &str = "fast";

fn default_backend() -> Backend {
    Backend::from_name(DEFAULT_BACKEND).expect("the fast kernels are compiled in")
}

/// The MNIST classifier on one CPU backend.
///
/// `Classifier(weights=None, backend="fast")`: `weights` is a path to a `model.safetensors`
/// written by `trainer.export` (str or os.PathLike), its bytes, or None for the weights
/// embedded at build time. Raises ValueError when the file does not fit the model (the message
/// names the tensor), OSError when it cannot be read, ValueError for an unknown backend.
///
/// Predictions from several threads run in parallel; `teach` and `forget` wait for them (the
/// lock is taken with the GIL released).
#[pyclass(module = "mnist_infer", frozen)]
struct Classifier {
    inner: RwLock<mnist_model::Classifier>,
}

#[pymethods]
impl Classifier {
    #[new]
    #[pyo3(signature = (weights = None, backend = DEFAULT_BACKEND))]
    fn new(weights: Option<Weights>, backend: &str) -> PyResult<Self> {
        let backend = backend_named(backend)?;
        let load = |bytes: &[u8], origin: &str| {
            mnist_model::Classifier::from_safetensors(bytes, backend)
                .map_err(|e| PyValueError::new_err(format!("{origin}: {e}")))
        };
        let inner = match weights {
            None => load(WEIGHTS, "embedded weights")?,
            Some(Weights::Bytes(bytes)) => load(&bytes, "weights bytes")?,
            Some(Weights::Path(path)) => {
                let bytes = std::fs::read(&path).map_err(|e| {
                    PyOSError::new_err(format!("cannot read weights {}: {e}", path.display()))
                })?;
                load(&bytes, &path.display().to_string())?
            }
        };
        Ok(Self {
            inner: RwLock::new(inner),
        })
    }

    /// Probabilities (softmax): float32 (784,) -> (10,) or (N, 784) -> (N, 10).
    fn predict<'py>(
        &self,
        py: Python<'py>,
        pixels: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        run(py, self, pixels, mnist_model::Classifier::probabilities)
    }

    /// Logits (before softmax), shaped like [`Classifier::predict`]'s result.
    fn logits<'py>(
        &self,
        py: Python<'py>,
        pixels: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        run(py, self, pixels, mnist_model::Classifier::logits)
    }

    /// What the model sees: a capsule network's predicted digit and its decoder's image of
    /// it, from one forward pass. Returns `(digits, images)`: for pixels (784,), an int and
    /// float32 (784,); for (N, 784), int64 (N,) and float32 (N, 784). The digits are the
    /// argmax of `logits`; the images 0..255, ink = 255, row-major 28x28. Raises ValueError
    /// for bad pixels or a model without a reconstruction decoder (every model but the
    /// capsule network).
    fn reconstruct<'py>(
        &self,
        py: Python<'py>,
        pixels: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyArrayDyn<f32>>)> {
        let batch = batch_of(&pixels)?;
        let values: Vec<f32> = pixels.as_array().iter().copied().collect();
        let seen = py
            .detach(|| self.read().reconstruct(&values).map_err(|e| e.to_string()))
            .map_err(PyValueError::new_err)?;
        let digits: Vec<i64> = seen.digits.iter().map(|&d| d as i64).collect();
        let digits = match batch {
            None => digits[0].into_pyobject(py)?.into_any(),
            Some(_) => Array1::from_vec(digits).into_pyarray(py).into_any(),
        };
        Ok((digits, shaped(py, batch, seen.pixels)))
    }

    /// MC dropout on one image (784 pixels): `samples` passes with dropout on, masks from
    /// `seed` (the same as `trainer.uncertainty`'s). Returns a dict: `probabilities` and `std`
    /// (float32 (10,): mean and standard deviation over the samples), `entropy` and
    /// `mutual_information` (float, nats), `samples` (int), `not_a_digit` (bool: `not_a_digit`
    /// on one more pass with dropout off; None when the weights file has no
    /// `not_a_digit_max_probability`) and `unsure` (bool: either rule fires, the mutual
    /// information above `unsure_threshold` or `not_a_digit`; None when the file has neither
    /// threshold).
    /// Raises ValueError for bad pixels, not one image, or samples outside 1..=1000.
    #[pyo3(signature = (pixels, samples = 20, seed = 0))]
    fn uncertainty<'py>(
        &self,
        py: Python<'py>,
        pixels: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
        samples: usize,
        seed: u64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let values: Vec<f32> = pixels.as_array().iter().copied().collect();
        let u = py
            .detach(|| {
                self.read()
                    .uncertainty(&values, samples, seed)
                    .map_err(|e| e.to_string())
            })
            .map_err(PyValueError::new_err)?;
        let dict = PyDict::new(py);
        dict.set_item(
            "probabilities",
            Array1::from_vec(u.probabilities).into_pyarray(py),
        )?;
        dict.set_item("std", Array1::from_vec(u.std).into_pyarray(py))?;
        dict.set_item("entropy", u.entropy)?;
        dict.set_item("mutual_information", u.mutual_information)?;
        dict.set_item("samples", u.samples)?;
        dict.set_item("not_a_digit", u.not_a_digit)?;
        dict.set_item("unsure", u.unsure)?;
        Ok(dict)
    }

    /// Whether an image is "not a digit": the largest of its `probabilities` (the 10 that
    /// `predict` gave for it, each 0..=1; any array-like of 10 numbers) is below
    /// `not_a_digit_threshold`. Returns True or False, or None when the weights file has no
    /// `not_a_digit_max_probability`. Raises ValueError for another shape than (10,), or a
    /// value that is not a number in 0..=1.
    fn not_a_digit<'py>(
        &self,
        probabilities: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<Option<bool>> {
        if probabilities.shape() != [NUM_CLASSES] {
            return Err(PyValueError::new_err(format!(
                "probabilities must have shape ({NUM_CLASSES},): one image's, got {:?}",
                probabilities.shape()
            )));
        }
        let values: Vec<f32> = probabilities.as_array().iter().copied().collect();
        check_probabilities(&values).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(self.read().not_a_digit(&values))
    }

    /// Teach the classifier a hand: fit a correction of its logits near these examples and
    /// their virtual examples (`pixels`: (N, 784) or (784,); `labels`: N digits 0-9; see
    /// `mnist_model::adapt`), replacing what was taught before; every prediction uses it from
    /// then on. Empty arrays forget. Raises ValueError naming the problem (a blank image, a
    /// label that is not a digit, not one label per image, bad pixels, a model that cannot be
    /// taught); the classifier then keeps what it had.
    ///
    /// `pull`, `width`, `steps` and `augment` override the fit's defaults (`TEACH_PULL`,
    /// `TEACH_WIDTH`, `TEACH_STEPS`, virtual examples on), for tuning them
    /// (`trainer/evaluation/personalize.py --tune`); `pull` and `width` must be > 0.
    #[pyo3(signature = (
        pixels,
        labels,
        *,
        pull = mnist_model::adapt::PULL,
        steps = mnist_model::adapt::STEPS,
        width = mnist_model::adapt::WIDTH,
        augment = true,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn teach<'py>(
        &self,
        py: Python<'py>,
        pixels: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
        labels: PyArrayLikeDyn<'py, i64, AllowTypeChange>,
        pull: f32,
        steps: usize,
        width: f32,
        augment: bool,
    ) -> PyResult<()> {
        for (name, value) in [("pull", pull), ("width", width)] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(PyValueError::new_err(format!(
                    "{name} must be a positive number, got {value}"
                )));
            }
        }
        let settings = mnist_model::Settings {
            pull,
            width,
            steps,
            augment,
        };
        let values: Vec<f32> = pixels.as_array().iter().copied().collect();
        let labels: Vec<u32> = labels
            .as_array()
            .iter()
            .map(|&l| u32::try_from(l).unwrap_or(u32::MAX))
            .collect();
        py.detach(|| {
            self.write()
                .teach_with(&values, &labels, settings)
                .map_err(|e| e.to_string())
        })
        .map_err(PyValueError::new_err)
    }

    /// Undo `teach`: back to the trained model.
    fn forget(&self, py: Python<'_>) {
        py.detach(|| self.write().forget());
    }

    /// Examples taught per digit 0-9: a list of 10 ints (zeros before `teach`).
    #[getter]
    fn taught(&self) -> Vec<usize> {
        self.read().taught().to_vec()
    }

    /// The `architecture` id in the weights file's metadata, e.g. "mnist-conv-bn-gelu-v1".
    #[getter]
    fn architecture(&self) -> String {
        self.read().metadata().architecture.clone()
    }

    /// The "not sure" threshold on the mutual information (nats), or None.
    #[getter]
    fn unsure_threshold(&self) -> Option<f32> {
        self.read().metadata().unsure_threshold
    }

    /// The "not a digit" threshold τ in (0, 1] (`not_a_digit_max_probability`): an image whose
    /// largest probability is below it is not a digit; None when the file has none.
    #[getter]
    fn not_a_digit_threshold(&self) -> Option<f32> {
        self.read().metadata().not_a_digit_threshold
    }

    /// Name of the backend: "fast-avx2", "fast-sse2", "fast-scalar", or (built with the cargo
    /// features of the same names) "flex" or "ndarray".
    #[getter]
    fn backend(&self) -> &'static str {
        self.read().backend().name()
    }

    /// `(mean, std)` of the input normalisation, read from the weights file's metadata.
    #[getter]
    fn normalization(&self) -> (f32, f32) {
        self.read().normalization()
    }

    fn __repr__(&self) -> String {
        format!("Classifier(backend={:?})", self.backend())
    }
}

impl Classifier {
    /// The model for reading. A panic while teaching leaves the lock poisoned but the model
    /// whole (`teach` only replaces the taught head once it is computed), so go on with it.
    fn read(&self) -> RwLockReadGuard<'_, mnist_model::Classifier> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, mnist_model::Classifier> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where the weights come from: a file path or the file's bytes.
#[derive(FromPyObject)]
enum Weights {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

/// Names of the backends this build has and this CPU runs.
fn available() -> Vec<&'static str> {
    Backend::ALL
        .iter()
        .filter(|b| b.available())
        .map(|b| b.name())
        .collect()
}

fn backend_named(name: &str) -> PyResult<Backend> {
    Backend::from_name(name).ok_or_else(|| {
        // burn's backends are left out of the module `invoke serve` builds.
        let hint = if name == "ndarray" || name == "flex" {
            format!(
                " (burn's {name} backend is compiled in with the cargo feature `{name}`: \
                 `invoke setup` or `./dev test` builds the module with it)"
            )
        } else {
            String::new()
        };
        PyValueError::new_err(format!(
            "unknown backend {name:?}: choose one of fast, {}{hint}",
            available().join(", ")
        ))
    })
}

/// Check the array's shape, copy it out, compute without the GIL, shape the result.
fn run<'py, E: std::fmt::Display>(
    py: Python<'py>,
    classifier: &Classifier,
    pixels: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    compute: fn(&mnist_model::Classifier, &[f32]) -> Result<Vec<f32>, E>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let batch = batch_of(&pixels)?;
    let values: Vec<f32> = pixels.as_array().iter().copied().collect();
    let out = py
        .detach(|| {
            let inner = classifier.read();
            compute(&inner, &values).map_err(|e| e.to_string())
        })
        .map_err(PyValueError::new_err)?;
    Ok(shaped(py, batch, out))
}

/// `None` for one image (784,), `Some(N)` for a batch (N, 784); ValueError for another shape.
fn batch_of(pixels: &PyArrayLikeDyn<'_, f32, AllowTypeChange>) -> PyResult<Option<usize>> {
    match pixels.shape() {
        [INPUT_LEN] => Ok(None),
        [n, INPUT_LEN] if *n > 0 => Ok(Some(*n)),
        shape => Err(PyValueError::new_err(format!(
            "pixels must have shape ({INPUT_LEN},) or (N, {INPUT_LEN}) with N >= 1 (28x28 images, row-major), got {shape:?}"
        ))),
    }
}

/// The model's values for the images, shaped as the input was ([`batch_of`]): (K,) for one
/// image, (N, K) for a batch.
fn shaped(py: Python<'_>, batch: Option<usize>, out: Vec<f32>) -> Bound<'_, PyArrayDyn<f32>> {
    match batch {
        None => Array1::from_vec(out).into_dyn().into_pyarray(py),
        Some(n) => Array2::from_shape_vec((n, out.len() / n), out)
            .expect("the model returns as many values for each image")
            .into_dyn()
            .into_pyarray(py),
    }
}

/// The classifier with the embedded weights on the default backend, loaded on first use.
fn default_classifier() -> PyResult<&'static Classifier> {
    static DEFAULT: OnceLock<Result<Classifier, String>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            mnist_model::Classifier::from_safetensors(WEIGHTS, default_backend())
                .map(|inner| Classifier {
                    inner: RwLock::new(inner),
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PyValueError::new_err(e.clone()))
}

/// Probabilities from the embedded model on the default backend (`BACKEND`): float32 (784,) -> (10,) or (N, 784) -> (N, 10).
///
/// Pixels: 28x28 row-major, 0..=255, ink = 255 (any numeric array-like; converted to float32).
/// Raises ValueError for another shape, a non-finite value or a value outside 0..=255.
#[pyfunction]
fn predict<'py>(
    py: Python<'py>,
    pixels: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    default_classifier()?.predict(py, pixels)
}

/// Logits from the embedded model on the default backend, shaped like [`predict`]'s result.
#[pyfunction]
fn logits<'py>(
    py: Python<'py>,
    pixels: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    default_classifier()?.logits(py, pixels)
}

/// MC dropout on the embedded model (see `Classifier.uncertainty`).
#[pyfunction]
#[pyo3(signature = (pixels, samples = 20, seed = 0))]
fn uncertainty<'py>(
    py: Python<'py>,
    pixels: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    samples: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyDict>> {
    default_classifier()?.uncertainty(py, pixels, samples, seed)
}

/// The "not a digit" rule of the embedded model (see `Classifier.not_a_digit`): True, False, or
/// None when its weights file has no `not_a_digit_max_probability`.
#[pyfunction]
fn not_a_digit<'py>(
    probabilities: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
) -> PyResult<Option<bool>> {
    default_classifier()?.not_a_digit(probabilities)
}

/// The native module: `predict`, `logits`, `uncertainty`, `not_a_digit`, `Classifier`, and
/// constants describing the input.
#[pymodule]
fn mnist_infer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(predict, m)?)?;
    m.add_function(wrap_pyfunction!(logits, m)?)?;
    m.add_function(wrap_pyfunction!(uncertainty, m)?)?;
    m.add_function(wrap_pyfunction!(not_a_digit, m)?)?;
    m.add_class::<Classifier>()?;
    m.add("BACKEND", default_backend().name())?;
    m.add("BACKENDS", available())?;
    m.add("INPUT_LEN", INPUT_LEN)?;
    m.add("NUM_CLASSES", NUM_CLASSES)?;
    m.add("ARCHITECTURE", mnist_model::ARCHITECTURE)?;
    m.add("TEACH_PULL", mnist_model::adapt::PULL)?;
    m.add("TEACH_STEPS", mnist_model::adapt::STEPS)?;
    m.add("TEACH_WIDTH", mnist_model::adapt::WIDTH)?;
    m.add("TEACH_AUGMENT_BUDGET", mnist_model::adapt::AUGMENT_BUDGET)?;
    Ok(())
}
