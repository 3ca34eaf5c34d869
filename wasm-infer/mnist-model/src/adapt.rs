//! Few-shot personalisation ("teach it your hand"): the classifier's last linear layer, the
//! head `logits = W f + b` on the penultimate features `f`, re-fitted to a few of one user's
//! labelled drawings while staying close to the trained head. The layers below it are not
//! touched, so the features and the predict time stay those of the trained model.
//!
//! The re-fit minimises a convex objective, multinomial logistic regression on the taught
//! examples with an L2 pull toward the trained weights `W₀`, `b₀` (the "L2-SP" regulariser of
//! Li, Grandvalet & Davoine, "Explicit inductive bias for transfer learning with convolutional
//! networks", ICML 2018):
//!
//! ```text
//! J(W, b) = 1/n Σᵢ CE(softmax(W fᵢ + b), yᵢ) + λ/2 (‖W − W₀‖² + ‖b − b₀‖²)
//! ```
//!
//! by Nesterov's accelerated gradient, `STEPS` steps of size `1 / L` from `(W₀, b₀)`, where
//! `L = ½ · mean ‖(fᵢ, 1)‖² + λ` bounds the Hessian's largest eigenvalue (the softmax
//! cross-entropy's Hessian in the logits is at most ½ I). Fixed steps make it deterministic:
//! the same examples give the same head on every backend. `λ` and the step count were chosen
//! on synthetic writers other than the ones `invoke personalize` reports (see
//! `trainer/evaluation/personalize.py`): enough pull to keep MNIST accuracy (issue 15 allows at most 0.3
//! points lost), little enough to learn a writer's crossed 7 from three examples.

use alloc::vec;
use alloc::vec::Vec;

/// Strength `λ` of the pull toward the trained head. Chosen by `invoke personalize --tune` on
/// 60 tuning writers (6 digits per class, 3 taught) with the committed `cnn`: λ = 1 took them
/// from 98.0 % to 99.9 % and cost at most 0.15 points on 2,000 MNIST test digits; λ = 0.3 gave
/// 99.9 % but cost up to 0.35 points, λ = 0.1 up to 0.5, λ = 0.03 up to 1.4.
pub const PULL: f32 = 1.0;
/// Gradient steps of one re-fit: with λ = 1 the iteration has converged long before (400
/// steps give the same accuracies), and 30 examples take about 17 ms natively.
pub const STEPS: usize = 150;

/// A linear head: `logits = weight · features + bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    /// `[classes, features]`, row-major (PyTorch's `nn.Linear.weight`).
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
    /// Outputs: one logit per class.
    pub classes: usize,
    /// Inputs: the penultimate features' width.
    pub features: usize,
}

impl Head {
    /// Logits `[n, classes]` of features `[n, features]`, row-major.
    ///
    /// # Panics
    /// When `features.len()` is not a multiple of `self.features`.
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        assert!(
            features.len().is_multiple_of(self.features),
            "[n, {}] features",
            self.features
        );
        let mut out = Vec::with_capacity(features.len() / self.features * self.classes);
        for f in features.chunks_exact(self.features) {
            for c in 0..self.classes {
                let row = &self.weight[c * self.features..(c + 1) * self.features];
                out.push(self.bias[c] + dot(row, f));
            }
        }
        out
    }

    /// This head re-fitted to `features` `[n, features]` labelled `labels` (`n` values, each
    /// below `classes`), by minimising `J` above from this head. `n = 0` gives this head.
    ///
    /// # Panics
    /// When the lengths disagree or a label is out of range (callers check first).
    pub fn fit(&self, features: &[f32], labels: &[usize]) -> Head {
        self.fit_with(features, labels, PULL, STEPS)
    }

    /// [`Head::fit`] with another pull `λ` (> 0) and step count: for tuning them
    /// (`trainer/evaluation/personalize.py --tune`).
    ///
    /// # Panics
    /// As `fit`, and when `pull` is not positive.
    pub fn fit_with(&self, features: &[f32], labels: &[usize], pull: f32, steps: usize) -> Head {
        assert!(
            pull > 0.0,
            "the pull toward the trained head must be positive"
        );
        let (k, d) = (self.classes, self.features);
        let n = labels.len();
        assert!(features.len() == n * d && labels.iter().all(|&y| y < k));
        if n == 0 {
            return self.clone();
        }
        let mean_norm = features
            .chunks_exact(d)
            .map(|f| dot(f, f) + 1.0)
            .sum::<f32>()
            / n as f32;
        let lipschitz = 0.5 * mean_norm + pull;
        let rate = 1.0 / lipschitz;
        // Nesterov's constant momentum for a `PULL`-strongly convex, `L`-smooth objective.
        let ratio = libm::sqrtf(pull / lipschitz);
        let momentum = (1.0 - ratio) / (1.0 + ratio);

        // Parameters as one vector: `[W (k * d), b (k)]`.
        let start: Vec<f32> = self.weight.iter().chain(&self.bias).copied().collect();
        let mut theta = start.clone();
        let mut previous = start.clone();
        let mut gradient = vec![0.0f32; theta.len()];
        let mut probabilities = vec![0.0f32; k];
        for _ in 0..steps {
            // Look-ahead point v = θ + μ (θ − θ_prev), then θ_prev = θ, θ = v − η ∇J(v).
            let look: Vec<f32> = theta
                .iter()
                .zip(&previous)
                .map(|(t, p)| t + momentum * (t - p))
                .collect();
            gradient
                .iter_mut()
                .zip(look.iter().zip(&start))
                .for_each(|(g, (v, s))| *g = pull * (v - s));
            let (w, b) = look.split_at(k * d);
            for (f, &y) in features.chunks_exact(d).zip(labels) {
                for c in 0..k {
                    probabilities[c] = b[c] + dot(&w[c * d..(c + 1) * d], f);
                }
                softmax(&mut probabilities);
                for c in 0..k {
                    let g = (probabilities[c] - if c == y { 1.0 } else { 0.0 }) / n as f32;
                    gradient[c * d..(c + 1) * d]
                        .iter_mut()
                        .zip(f)
                        .for_each(|(gw, x)| *gw += g * x);
                    gradient[k * d + c] += g;
                }
            }
            previous = core::mem::replace(
                &mut theta,
                look.iter()
                    .zip(&gradient)
                    .map(|(v, g)| v - rate * g)
                    .collect(),
            );
        }
        let bias = theta.split_off(k * d);
        Head {
            weight: theta,
            bias,
            classes: k,
            features: d,
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn softmax(values: &mut [f32]) {
    crate::softmax_rows(values, values.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        // Two classes on two features: class 0 where f0 > f1.
        Head {
            weight: vec![1.0, -1.0, -1.0, 1.0],
            bias: vec![0.0, 0.0],
            classes: 2,
            features: 2,
        }
    }

    #[test]
    fn logits_are_the_linear_map() {
        assert_eq!(
            head().logits(&[2.0, 1.0, 0.0, 3.0]),
            vec![1.0, -1.0, -3.0, 3.0]
        );
    }

    #[test]
    fn no_examples_keep_the_head() {
        assert_eq!(head().fit(&[], &[]), head());
    }

    #[test]
    fn fitting_learns_a_relabelled_point_and_keeps_the_others() {
        // The trained head calls (2, 1) class 0; a user says it is class 1.
        let fitted = head().fit_with(&[2.0, 1.0, 2.0, 1.0, 2.0, 1.0], &[1, 1, 1], 0.02, STEPS);
        let after = fitted.logits(&[2.0, 1.0]);
        assert!(
            after[1] > after[0],
            "the taught point is class 1 now: {after:?}"
        );
        // The re-fit moves the weights along (f, 1) = (2, 1, 1): a class-0 point whose (f, 1)
        // is orthogonal to that keeps its logits.
        let other = fitted.logits(&[1.0, -3.0]);
        assert!(
            other[0] > other[1] + 7.0,
            "another class-0 point stays class 0: {other:?}"
        );
    }

    #[test]
    fn fitting_is_deterministic_and_agrees_with_the_objective() {
        let (features, labels) = ([0.5, 2.0, 3.0, 0.1, 1.0, 1.0], [0usize, 0, 1]);
        let a = head().fit(&features, &labels);
        assert_eq!(a, head().fit(&features, &labels));
        // J is lower at the fit than at the start.
        let objective = |h: &Head| {
            let logits = h.logits(&features);
            let ce: f32 = logits
                .chunks_exact(2)
                .zip(labels)
                .map(|(l, y)| {
                    let mut p = l.to_vec();
                    softmax(&mut p);
                    -libm::logf(p[y])
                })
                .sum::<f32>()
                / 3.0;
            let pull: f32 = h
                .weight
                .iter()
                .chain(&h.bias)
                .zip(head().weight.iter().chain(&head().bias))
                .map(|(x, s)| (x - s) * (x - s))
                .sum();
            ce + PULL / 2.0 * pull
        };
        assert!(objective(&a) < objective(&head()) - 0.1);
    }
}
