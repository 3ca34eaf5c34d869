//! MC dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation", 2016): `T` forward
//! passes with dropout on, each with its own random masks, summarised as the mean
//! probabilities, their spread, the predictive entropy and the mutual information.
//!
//! The masks come from a counter-based generator ([`uniform`]), so that Python
//! (`trainer.uncertainty`) can draw exactly the same ones from the same seed and the two
//! sides can be compared number for number.
//!
//! [`crate::Classifier::uncertainty`] also judges the image by the weights file's two rules:
//! "not sure" (the mutual information above `unsure_mutual_information`) and "not a digit" (the
//! largest probability of one eval-mode pass below `not_a_digit_max_probability`); `unsure`
//! is true when either fires.

use alloc::vec::Vec;

/// The `i`-th uniform number in `[0, 1)` (24 bits) of the stream `seed`: SplitMix64 (Steele,
/// Lea & Flood, 2014) of `seed + (i + 1) * 0x9E3779B97F4A7C15`, its top 24 bits divided by
/// 2^24. Each value is computed on its own; `trainer.uncertainty.uniform` is the same function.
pub fn uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// `len` inverted-dropout factors for values `start .. start + len` of the stream `seed`:
/// `1 / (1 - p)` where `uniform(seed, i) >= p` (kept), 0 otherwise. `p` in `[0, 1)`.
pub fn dropout_mask(seed: u64, start: u64, len: usize, p: f32) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    (0..len as u64)
        .map(|i| {
            if uniform(seed, start + i) >= p {
                scale
            } else {
                0.0
            }
        })
        .collect()
}

/// What MC dropout says about one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Uncertainty {
    /// Mean over the samples of the softmax probabilities, per class (sums to 1).
    pub probabilities: Vec<f32>,
    /// Standard deviation over the samples (population: divided by `T`), per class.
    pub std: Vec<f32>,
    /// Predictive entropy `H[mean p]`, in nats: 0 (certain) to ln 10 ≈ 2.303.
    pub entropy: f32,
    /// Mutual information between the prediction and the weights, in nats:
    /// `H[mean p] - mean H[p_t]`, >= 0; high when the samples disagree (epistemic uncertainty).
    pub mutual_information: f32,
    /// Number of samples `T`.
    pub samples: usize,
    /// Whether the image is "not a digit" ([`crate::Classifier::not_a_digit`] on the
    /// probabilities of one eval-mode pass of the same image, dropout off: not on the mean
    /// above); `None` when the weights file has no `not_a_digit_max_probability`, and from
    /// [`summarize`] alone.
    pub not_a_digit: Option<bool>,
    /// "Not sure": true when either of the file's rules fires (the mutual information above
    /// `unsure_mutual_information`, or `not_a_digit`); with one of the two thresholds only,
    /// that rule decides; `None` when the file has neither, and from [`summarize`] alone
    /// ([`crate::Classifier::unsure`]).
    pub unsure: Option<bool>,
}

/// The "not a digit" rule on one image: the largest of its `probabilities` (10 softmax values
/// of an eval-mode pass, each in 0..=1) is below `threshold` (τ, in `(0, 1]`). NaN values
/// are passed over; no values at all count as "not a digit". [`crate::Classifier::not_a_digit`]
/// applies it with the file's τ.
pub(crate) fn largest_below(probabilities: &[f32], threshold: f32) -> bool {
    probabilities
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
        < threshold
}

/// "Not sure" from the two rules' verdicts (each `None` when the file lacks its threshold):
/// true when either fires, `None` when neither rule exists.
pub(crate) fn either(mutual_information: Option<bool>, not_a_digit: Option<bool>) -> Option<bool> {
    match (mutual_information, not_a_digit) {
        (None, None) => None,
        (a, b) => Some(a == Some(true) || b == Some(true)),
    }
}

/// Entropy in nats of one probability vector (0 log 0 = 0).
fn entropy(p: impl Iterator<Item = f64>) -> f64 {
    p.filter(|&v| v > 0.0).map(|v| -v * libm::log(v)).sum()
}

/// Summarise `[T, classes]` softmax probabilities (`T >= 1` rows). Computed in f64.
///
/// # Panics
/// When `probabilities` is empty or not a whole number of rows.
pub fn summarize(probabilities: &[f32], classes: usize) -> Uncertainty {
    assert!(classes > 0 && !probabilities.is_empty() && probabilities.len() % classes == 0);
    let samples = probabilities.len() / classes;
    let t = samples as f64;
    let column = |c: usize| {
        probabilities
            .iter()
            .skip(c)
            .step_by(classes)
            .map(|&v| v as f64)
    };
    let mean: Vec<f64> = (0..classes).map(|c| column(c).sum::<f64>() / t).collect();
    let std = (0..classes)
        .map(|c| {
            libm::sqrt(
                column(c)
                    .map(|v| (v - mean[c]) * (v - mean[c]))
                    .sum::<f64>()
                    / t,
            ) as f32
        })
        .collect();
    let total = entropy(mean.iter().copied());
    let expected = probabilities
        .chunks_exact(classes)
        .map(|row| entropy(row.iter().map(|&v| v as f64)))
        .sum::<f64>()
        / t;
    Uncertainty {
        probabilities: mean.iter().map(|&v| v as f32).collect(),
        std,
        entropy: total as f32,
        mutual_information: (total - expected).max(0.0) as f32,
        samples,
        not_a_digit: None,
        unsure: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_uniform_and_masks_keep_about_1_minus_p() {
        let n = 100_000;
        let mean = (0..n).map(|i| uniform(7, i) as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&uniform(7, i))));
        let mask = dropout_mask(7, 0, 10_000, 0.25);
        let kept = mask.iter().filter(|&&m| m > 0.0).count();
        assert!((7300..7700).contains(&kept), "{kept}");
        assert!(
            mask.iter()
                .all(|&m| m == 0.0 || (m - 4.0 / 3.0).abs() < 1e-6)
        );
        assert_ne!(dropout_mask(8, 0, 64, 0.5), dropout_mask(7, 0, 64, 0.5));
    }

    #[test]
    fn agreeing_samples_have_no_mutual_information() {
        let same = [0.9f32, 0.1, 0.9, 0.1];
        let u = summarize(&same, 2);
        assert!(u.mutual_information.abs() < 1e-6 && u.std.iter().all(|&s| s < 1e-6));
        let split = [1.0f32, 0.0, 0.0, 1.0];
        let u = summarize(&split, 2);
        assert!((u.mutual_information - core::f32::consts::LN_2).abs() < 1e-6);
        assert!((u.entropy - core::f32::consts::LN_2).abs() < 1e-6);
        assert_eq!(u.probabilities, [0.5, 0.5]);
        assert_eq!(u.std, [0.5, 0.5]);
        assert_eq!((u.not_a_digit, u.unsure), (None, None)); // the classifier's to judge
    }

    #[test]
    fn not_a_digit_when_the_largest_probability_is_below_the_threshold() {
        let confident = [0.01f32, 0.9, 0.01, 0.01, 0.01, 0.01, 0.01, 0.02, 0.01, 0.01];
        assert!(!largest_below(&confident, 0.5));
        assert!(!largest_below(&confident, 0.9)); // equal is not below
        assert!(largest_below(&confident, 0.900_001));
        let flat = [0.1f32; 10];
        assert!(largest_below(&flat, 0.5) && !largest_below(&flat, 0.1));
        // τ = 1: everything short of certainty; a probability of exactly 1 never fires.
        let mut certain = [0.0f32; 10];
        certain[3] = 1.0;
        assert!(!largest_below(&certain, 1.0) && largest_below(&confident, 1.0));
        // The largest wherever it is, NaN passed over.
        assert!(!largest_below(&[0.2, f32::NAN, 0.7, 0.1], 0.6));
        assert!(largest_below(&[], 0.5));
    }

    #[test]
    fn unsure_when_either_rule_fires_and_unknown_without_both() {
        assert_eq!(either(None, None), None);
        assert_eq!(either(Some(false), None), Some(false));
        assert_eq!(either(Some(true), None), Some(true));
        assert_eq!(either(None, Some(false)), Some(false));
        assert_eq!(either(None, Some(true)), Some(true));
        assert_eq!(either(Some(false), Some(false)), Some(false));
        assert_eq!(either(Some(true), Some(false)), Some(true));
        assert_eq!(either(Some(false), Some(true)), Some(true));
        assert_eq!(either(Some(true), Some(true)), Some(true));
    }
}
