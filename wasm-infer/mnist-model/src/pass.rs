//! What one forward pass computes. Every engine has one entry point that takes a [`Pass`]:
//! burn's `cnn` Module ([`crate::Model::pass`]), any layer plan on burn's tensor operations
//! (`layers::LayerModel::pass`) and this project's kernels (`fast::pass`); the
//! [`crate::Classifier`] builds the `Pass` once and dispatches once.

/// MC dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016) on one
/// image: the image is repeated `samples` times and every dropout layer masks its
/// `[samples, features]` input with [`crate::uncertainty::dropout_mask`] drawn from `seed` (value
/// index counting on across the dropout layers in order), the masks `trainer.uncertainty`
/// draws from the same seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McDropout {
    /// Forward passes, `1..=MAX_SAMPLES`: the output has this many rows.
    pub samples: usize,
    /// Seed of the masks: the same seed gives the same masks on every engine.
    pub seed: u64,
}

/// What a forward pass computes and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Stop before the last layer: the penultimate features `[N, F]` (the input of the head
    /// that [`crate::adapt`] re-fits) instead of the logits `[N, classes]`.
    pub features: bool,
    /// MC dropout on one image (`N` = its `samples`), or `None`: inference, dropout off.
    pub mc: Option<McDropout>,
}

impl Pass {
    /// Logits at inference: the ordinary forward pass.
    pub const LOGITS: Pass = Pass {
        features: false,
        mc: None,
    };

    /// The penultimate features at inference.
    pub const FEATURES: Pass = Pass {
        features: true,
        mc: None,
    };
}
