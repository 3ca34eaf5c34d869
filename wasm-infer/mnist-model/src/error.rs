//! Why a prediction or a teaching was refused: the input checks' errors (loading has its own,
//! [`crate::LoadError`]).

use alloc::string::String;
use core::fmt;

use crate::{INPUT_LEN, MAX_SAMPLES, MAX_TAUGHT, NUM_CLASSES};

/// Why a batch of pixels was refused. Nothing is computed for a refused batch.
#[derive(Clone, Debug, PartialEq)]
pub enum InputError {
    /// The length is zero or not a multiple of [`INPUT_LEN`] (784).
    Length(usize),
    /// A value is NaN or infinite.
    NonFinite {
        /// Position in the batch (image * 784 + row * 28 + column).
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// A value is outside `0.0..=255.0` (raw pixels are expected, not normalised ones).
    OutOfRange {
        /// Position in the batch (image * 784 + row * 28 + column).
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// MC dropout takes one image: this many values were given.
    NotOneImage(usize),
    /// MC dropout's sample count is outside `1..=MAX_SAMPLES`.
    Samples(usize),
    /// Not one image's probabilities ([`crate::check_probabilities`]): [`NUM_CLASSES`] numbers
    /// in `0.0..=1.0` were expected.
    Probabilities {
        /// How many values were given.
        len: usize,
        /// The first value that is not a number in `0.0..=1.0`, and its position (`None` when
        /// the length is wrong).
        bad: Option<(usize, f32)>,
    },
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
            InputError::Probabilities { len, bad: None } => write!(
                f,
                "expected the {NUM_CLASSES} probabilities of one image, got {len} values"
            ),
            InputError::Probabilities {
                bad: Some((index, value)),
                ..
            } => write!(
                f,
                "probability {index} is {value}: probabilities are numbers in 0..=1"
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

/// Why [`Classifier::reconstruct`] gave no image.
#[derive(Clone, Debug, PartialEq)]
pub enum ReconstructError {
    /// The pixels were refused before anything was computed.
    Input(InputError),
    /// The model has no reconstruction decoder (of the project's models, only the capsule
    /// network has one), or this backend does not run it (the reason is given).
    Unsupported(String),
    /// The device could not compute or return the image (e.g. the GPU device was lost).
    Device(String),
}

impl fmt::Display for ReconstructError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReconstructError::Input(e) => e.fmt(f),
            ReconstructError::Unsupported(e) => write!(f, "no reconstruction: {e}"),
            ReconstructError::Device(e) => {
                write!(f, "the device could not return the reconstruction: {e}")
            }
        }
    }
}

impl core::error::Error for ReconstructError {}

impl From<InputError> for ReconstructError {
    fn from(e: InputError) -> Self {
        ReconstructError::Input(e)
    }
}

/// Why [`Classifier::teach`] refused its examples. Nothing changes for refused examples: the
/// classifier keeps what it was taught before.
#[derive(Clone, Debug, PartialEq)]
pub enum TeachError {
    /// The pixels were refused ([`InputError`]).
    Input(InputError),
    /// Not one label (0-9) per image: this many images, these labels.
    Labels {
        /// Images given.
        images: usize,
        /// Labels given.
        labels: usize,
    },
    /// A label is not a digit 0-9.
    Label {
        /// Which example.
        index: usize,
        /// Its label.
        label: u32,
    },
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
