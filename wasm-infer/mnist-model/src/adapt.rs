//! Few-shot personalisation ("teach it your hand"): the trained classifier plus a local
//! correction of its logits near a few of one user's labelled drawings. The layers of the
//! trained model, its last linear layer (the head `logits = W f + b` on the penultimate
//! features `f`) included, are not touched: far from what was taught the model answers as
//! trained, and the predict time stays that of the trained model plus `m` distances in the
//! 128-wide feature space.
//!
//! Teaching `n` examples (28 x 28 images, 0..=255, ink = 255) does three things:
//!
//! 1. **Virtual examples**: every example is also written again by a few small affine
//!    transforms about its ink's centre of mass ([`VARIANTS`]: rotated ±10°, sheared, stretched
//!    and squeezed by 10 % along x and y; [`augment`]), so three drawings of a digit stand for
//!    the ways that writer's next one will differ (Niyogi, Girosi & Poggio, "Incorporating prior
//!    information in machine learning by creating virtual examples", Proc. IEEE 1998; Simard,
//!    Steinkraus & Platt, ICDAR 2003, for affine distortions of digits). At most
//!    [`AUGMENT_BUDGET`] images in all: with more examples each gets fewer variants.
//! 2. The penultimate features of all those images (one forward pass of the trained model).
//! 3. A **radial basis function correction** centred on the `m = n` examples' own features
//!    `cᵢ` (Broomhead & Lowe, "Multivariable functional interpolation and adaptive networks",
//!    Complex Systems 1988): for an image with features `f`,
//!
//! ```text
//! logits(f) = W₀ f + b₀ + Σᵢ kᵢ(f) aᵢ,     kᵢ(f) = exp(−β ‖f − cᵢ‖² / (½ (‖f‖² + ‖cᵢ‖²)))
//! ```
//!
//! where `W₀`, `b₀` are the trained head, `aᵢ` one amplitude per class for centre `i` and `β`
//! the [`WIDTH`]. The distance is relative to the two feature vectors' own size (it is 0 for
//! the same features, at most 2 for the non-negative features of a ReLU, 4 for any): a small
//! feature vector is near only to what is as small and alike. That matters: a model trained to
//! be unsure of non-digits (outlier exposure) maps every drawing it is unsure of to small
//! features, close together in plain distance, and a kernel of plain distance
//! (`exp(−β ‖f − cᵢ‖² / mean ‖f‖²)`, tried first) taught on such a drawing took up all of them,
//! MNIST digits of every class (0.2–0.4 points of MNIST for writers it read perfectly). The
//! amplitudes `A = (aᵢ)`
//! `[m, classes]` minimise a convex objective, multinomial logistic regression on the `N`
//! fitted images (the examples and their variants) with an L2 pull toward zero, that is toward
//! the trained model:
//!
//! ```text
//! J(A) = 1/N Σⱼ CE(softmax(W₀ fⱼ + b₀ + Σᵢ Kⱼᵢ aᵢ), yⱼ) + λ/2 ‖A‖²,    Kⱼᵢ = kᵢ(fⱼ)
//! ```
//!
//! by Nesterov's accelerated gradient, [`STEPS`] steps of size `1 / L` from `A = 0` (the trained
//! model), where `L = ½ · ‖K‖₁ ‖K‖∞ / N + λ` bounds the Hessian's largest eigenvalue (the
//! softmax cross-entropy's Hessian in the logits is at most ½ I, and `‖K‖₂² ≤ ‖K‖₁ ‖K‖∞`, the
//! largest column sum times the largest row sum). Fixed steps, fixed transforms and `libm`'s
//! software `exp` make it deterministic: the same examples give the same model on every
//! backend, natively and in wasm (up to the backends' own differences in the features).
//!
//! Why a local correction and not a re-fit of the head (this crate's method until 2026-12,
//! L2-SP: Li, Grandvalet & Davoine, ICML 2018): a linear layer moved to read one writer's
//! shapes moves its class boundaries for every other drawing too. On the tuning style writers
//! the re-fit with the pull it had (λ = 1) took the weak writers only from 92.5 % to 97.6 %, and
//! a weaker pull that learns as much as this correction (λ = 0.1: 99.7 %) cost MNIST 0.05 points
//! on average and up to 0.7; this correction costs 0.02 on average (0.04 for 95 % of the
//! writers) for as much accuracy.
//! `λ`, `β` and the variants were chosen by `invoke personalize --tune` on style writers other
//! than the ones it reports (see `trainer/evaluation/personalize.py` and docs/evaluation.md,
//! "Teach it your hand"): the most accuracy on the writers the trained model reads worst, with
//! at most 0.3 points of MNIST test accuracy lost (issue 15) for 95 % of the writers and 0.6 for
//! any (a hand whose 1 is the shape of MNIST's 7s cannot be read without reading some of them
//! as 1s).

use alloc::vec;
use alloc::vec::Vec;

use crate::{IMAGE_SIZE, INPUT_LEN, MAX_PIXEL};

/// Strength `λ` of the pull of the correction's amplitudes toward zero (the trained model).
/// Chosen by `invoke personalize --tune` (docs/evaluation.md): smaller lets the taught drawings
/// be read with a larger margin and costs MNIST more.
pub const PULL: f32 = 1e-3;
/// `β`, how fast a kernel falls with the relative distance
/// (`kᵢ(f) = exp(−β ‖f − cᵢ‖² / (½ (‖f‖² + ‖cᵢ‖²)))`): larger is more local (less MNIST lost,
/// less learnt from each drawing). Chosen by `invoke personalize --tune` (docs/evaluation.md).
pub const WIDTH: f32 = 4.0;
/// Gradient steps of one fit: the accuracies do not change between 100 and 1,000 steps on the
/// tuning writers; 200 leave a margin.
pub const STEPS: usize = 200;
/// The most images one fit uses, examples and their variants together: each example gets
/// `min(1 + VARIANTS.len(), max(1, AUGMENT_BUDGET / n))` images (itself first, then the first
/// variants of [`VARIANTS`]), so 30 examples get all 8 variants (270 images) and a teach's time
/// stays bounded as examples accumulate (from 300 examples on, none get variants).
pub const AUGMENT_BUDGET: usize = 300;

/// Cosine and sine of 10°, as `f32`.
const COS_10: f32 = 0.984_807_7;
const SIN_10: f32 = 0.173_648_18;

/// The virtual examples' transforms, in the order they are used: each a 2 x 2 matrix
/// `[m00, m01, m10, m11]` (row-major, on `(x, y)` with `x` the column and `y` the row, `y`
/// down) that maps an output pixel's offset from the ink's centre of mass to the offset where
/// the source image is sampled ([`warp`]). Sampling at `M (p − c)` draws the image transformed
/// by `M⁻¹`: the first two turn the digit 10° one way and the other, the next two shear it by
/// ±0.2 (`x` moved by ∓0.2 · `y`: a slant), the last four stretch and squeeze it by about 10 %
/// along `x`, then along `y` (sampling at 0.9 and 1.1 times the offset).
pub const VARIANTS: [[f32; 4]; 8] = [
    [COS_10, SIN_10, -SIN_10, COS_10],
    [COS_10, -SIN_10, SIN_10, COS_10],
    [1.0, 0.2, 0.0, 1.0],
    [1.0, -0.2, 0.0, 1.0],
    [0.9, 0.0, 0.0, 1.0],
    [1.1, 0.0, 0.0, 1.0],
    [1.0, 0.0, 0.0, 0.9],
    [1.0, 0.0, 0.0, 1.1],
];

/// The knobs of one teach; [`Settings::DEFAULT`] is what the page and `mnist_infer` use (the
/// others are for `invoke personalize --tune`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// `λ` (> 0, finite): see [`PULL`].
    pub pull: f32,
    /// `β` (> 0, finite): see [`WIDTH`].
    pub width: f32,
    /// Gradient steps: see [`STEPS`].
    pub steps: usize,
    /// Whether examples get virtual examples ([`VARIANTS`], within [`AUGMENT_BUDGET`]).
    pub augment: bool,
}

impl Settings {
    /// [`PULL`], [`WIDTH`], [`STEPS`], with virtual examples.
    pub const DEFAULT: Settings = Settings {
        pull: PULL,
        width: WIDTH,
        steps: STEPS,
        augment: true,
    };

    /// Images fitted per example when `n` (≥ 1) examples are taught: 1 (the example itself)
    /// without `augment`, else `min(1 + VARIANTS.len(), max(1, AUGMENT_BUDGET / n))`.
    pub fn images_per_example(&self, n: usize) -> usize {
        if !self.augment {
            return 1;
        }
        (AUGMENT_BUDGET / n.max(1)).clamp(1, 1 + VARIANTS.len())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::DEFAULT
    }
}

/// `images` `[n * 784]` (0..=255, ink = 255, not blank) each followed by its first
/// `per_example - 1` variants ([`VARIANTS`], [`warp`]): `[n * per_example * 784]`, example by
/// example, the example itself first.
///
/// # Panics
/// When `per_example` is 0 or above `1 + VARIANTS.len()`, or `images` is not whole images.
pub fn augment(images: &[f32], per_example: usize) -> Vec<f32> {
    assert!((1..=1 + VARIANTS.len()).contains(&per_example));
    assert!(images.len().is_multiple_of(INPUT_LEN), "[n * 784] pixels");
    let mut out = Vec::with_capacity(images.len() * per_example);
    for image in images.chunks_exact(INPUT_LEN) {
        out.extend_from_slice(image);
        for sampling in &VARIANTS[..per_example - 1] {
            out.extend(warp(image, *sampling));
        }
    }
    out
}

/// One 28 x 28 image (`[784]`, 0..=255) transformed about its ink's centre of mass `c`
/// (`Σ p · (x, y) / Σ p` over the pixels, in pixel indices): output pixel `p = (x, y)` is the
/// source sampled bilinearly at `c + M (p − c)`, `M = sampling` (`[m00, m01, m10, m11]`,
/// row-major), 0 outside the image; clamped to 0..=255. A blank image gives itself.
pub fn warp(image: &[f32], sampling: [f32; 4]) -> Vec<f32> {
    assert_eq!(image.len(), INPUT_LEN, "one 28 x 28 image");
    let (mut mass, mut mx, mut my) = (0.0f32, 0.0f32, 0.0f32);
    for (i, &p) in image.iter().enumerate() {
        mass += p;
        mx += p * (i % IMAGE_SIZE) as f32;
        my += p * (i / IMAGE_SIZE) as f32;
    }
    if mass <= 0.0 {
        return image.to_vec();
    }
    let (cx, cy) = (mx / mass, my / mass);
    let [m00, m01, m10, m11] = sampling;
    let pixel = |x: i32, y: i32| -> f32 {
        if (0..IMAGE_SIZE as i32).contains(&x) && (0..IMAGE_SIZE as i32).contains(&y) {
            image[y as usize * IMAGE_SIZE + x as usize]
        } else {
            0.0
        }
    };
    let mut out = vec![0.0f32; INPUT_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        let dx = (i % IMAGE_SIZE) as f32 - cx;
        let dy = (i / IMAGE_SIZE) as f32 - cy;
        let sx = cx + (m00 * dx + m01 * dy);
        let sy = cy + (m10 * dx + m11 * dy);
        let (x0, y0) = (libm::floorf(sx), libm::floorf(sy));
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i32, y0 as i32);
        let value = (1.0 - fx) * (1.0 - fy) * pixel(x0, y0)
            + fx * (1.0 - fy) * pixel(x0 + 1, y0)
            + (1.0 - fx) * fy * pixel(x0, y0 + 1)
            + fx * fy * pixel(x0 + 1, y0 + 1);
        *o = value.clamp(0.0, MAX_PIXEL);
    }
    out
}

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
}

/// The trained head with a correction fitted to taught examples (see the module's text).
#[derive(Clone, Debug, PartialEq)]
pub struct Adapted {
    /// The trained head `W₀`, `b₀`, unchanged.
    pub head: Head,
    /// The centres `cᵢ`: the taught examples' features, `[m, features]`.
    pub centres: Vec<f32>,
    /// The amplitudes `aᵢ`, `[m, classes]`.
    pub amplitudes: Vec<f32>,
    /// `‖cᵢ‖²`, `[m]`.
    pub norms: Vec<f32>,
    /// `β` ([`WIDTH`]).
    pub width: f32,
}

impl Adapted {
    /// The trained `head` corrected to fit taught examples, by minimising `J` above.
    ///
    /// `features`: `[n * per_example, head.features]`, the features of each example followed by
    /// those of its `per_example - 1` variants ([`augment`]'s order); `labels`: `n` values,
    /// each below `head.classes`, one per example. `n = 0` gives the trained head (no centre).
    ///
    /// # Panics
    /// When the lengths disagree, a label is out of range, `per_example` is 0, or `settings`
    /// has a pull or width that is not a positive number (callers check first).
    pub fn fit(
        head: &Head,
        features: &[f32],
        labels: &[usize],
        per_example: usize,
        settings: Settings,
    ) -> Adapted {
        let Settings {
            pull, width, steps, ..
        } = settings;
        assert!(
            pull > 0.0 && pull.is_finite() && width > 0.0 && width.is_finite(),
            "the pull and the width must be positive numbers"
        );
        let (k, d, m) = (head.classes, head.features, labels.len());
        let rows = m * per_example;
        assert!(per_example >= 1 && features.len() == rows * d);
        assert!(labels.iter().all(|&y| y < k));
        let centres: Vec<f32> = features
            .chunks_exact(d * per_example)
            .flat_map(|example| example[..d].iter().copied())
            .collect();
        let norms: Vec<f32> = centres.chunks_exact(d).map(|c| dot(c, c)).collect();
        let mut adapted = Adapted {
            head: head.clone(),
            centres,
            norms,
            amplitudes: Vec::new(),
            width,
        };
        if m == 0 {
            return adapted;
        }
        adapted.amplitudes = vec![0.0; m * k];
        // K [rows, m], the trained logits [rows, k], each row's label.
        let kernel: Vec<f32> = features
            .chunks_exact(d)
            .flat_map(|f| adapted.kernel(f))
            .collect();
        let base = head.logits(features);
        let targets: Vec<usize> = labels
            .iter()
            .flat_map(|&y| core::iter::repeat_n(y, per_example))
            .collect();
        let largest_row = kernel
            .chunks_exact(m)
            .map(|r| r.iter().sum::<f32>())
            .fold(0.0f32, f32::max);
        let largest_column = (0..m)
            .map(|i| kernel.iter().skip(i).step_by(m).sum::<f32>())
            .fold(0.0f32, f32::max);
        let lipschitz = 0.5 * largest_row * largest_column / rows as f32 + pull;
        let rate = 1.0 / lipschitz;
        // Nesterov's constant momentum for a `λ`-strongly convex, `L`-smooth objective.
        let ratio = libm::sqrtf(pull / lipschitz);
        let momentum = (1.0 - ratio) / (1.0 + ratio);

        let mut theta = vec![0.0f32; m * k];
        let mut previous = theta.clone();
        let mut gradient = vec![0.0f32; m * k];
        let mut residual = vec![0.0f32; k];
        for _ in 0..steps {
            // Look-ahead point v = θ + μ (θ − θ_prev), then θ_prev = θ, θ = v − η ∇J(v).
            let look: Vec<f32> = theta
                .iter()
                .zip(&previous)
                .map(|(t, p)| t + momentum * (t - p))
                .collect();
            gradient
                .iter_mut()
                .zip(&look)
                .for_each(|(g, v)| *g = pull * v);
            for ((row, logits), &y) in kernel
                .chunks_exact(m)
                .zip(base.chunks_exact(k))
                .zip(&targets)
            {
                residual.copy_from_slice(logits);
                for (&kij, a) in row.iter().zip(look.chunks_exact(k)) {
                    residual.iter_mut().zip(a).for_each(|(r, a)| *r += kij * a);
                }
                crate::softmax_rows(&mut residual, k);
                residual[y] -= 1.0;
                for (&kij, g) in row.iter().zip(gradient.chunks_exact_mut(k)) {
                    let weight = kij / rows as f32;
                    g.iter_mut()
                        .zip(&residual)
                        .for_each(|(g, r)| *g += weight * r);
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
        adapted.amplitudes = theta;
        adapted
    }

    /// Logits `[n, classes]` of features `[n, features]`, row-major: the trained head's plus
    /// the correction.
    ///
    /// # Panics
    /// When `features.len()` is not a multiple of the features' width.
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        let mut out = self.head.logits(features);
        let k = self.head.classes;
        if self.amplitudes.is_empty() {
            return out;
        }
        for (f, logits) in features
            .chunks_exact(self.head.features)
            .zip(out.chunks_exact_mut(k))
        {
            for (kij, a) in self.kernel(f).zip(self.amplitudes.chunks_exact(k)) {
                logits.iter_mut().zip(a).for_each(|(l, a)| *l += kij * a);
            }
        }
        out
    }

    /// `kᵢ(f)` for every centre, in order (1 where `f` and `cᵢ` are both 0).
    fn kernel<'a>(&'a self, f: &'a [f32]) -> impl Iterator<Item = f32> + 'a {
        let norm = dot(f, f);
        self.centres
            .chunks_exact(self.head.features)
            .zip(&self.norms)
            .map(move |(c, &c_norm)| {
                let distance: f32 = c.iter().zip(f).map(|(c, x)| (x - c) * (x - c)).sum();
                let size = 0.5 * (norm + c_norm);
                if size > 0.0 {
                    libm::expf(-self.width * distance / size)
                } else {
                    1.0
                }
            })
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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

    fn fit(features: &[f32], labels: &[usize], settings: Settings) -> Adapted {
        Adapted::fit(&head(), features, labels, 1, settings)
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
        let adapted = fit(&[], &[], Settings::DEFAULT);
        assert_eq!(adapted.logits(&[2.0, 1.0]), head().logits(&[2.0, 1.0]));
    }

    #[test]
    fn fitting_learns_a_relabelled_point_and_keeps_the_far_ones() {
        // The trained head calls (2, 1) class 0; a user says it is class 1.
        let adapted = fit(&[2.0, 1.0], &[1], Settings::DEFAULT);
        let after = adapted.logits(&[2.0, 1.0]);
        assert!(
            after[1] > after[0],
            "the taught point is class 1 now: {after:?}"
        );
        let near = adapted.logits(&[2.05, 1.0]);
        assert!(near[1] > near[0], "and so is a point next to it: {near:?}");
        // Far away (relative distance² 20 / 15): the correction there is exp(−4/3 β), 0.5 % of
        // the taught point's, and the far point stays class 0 by a wide margin.
        let far = [4.0, -3.0];
        let (taught, trained) = (adapted.logits(&far), head().logits(&far));
        let moved = (taught[1] - taught[0]) - (trained[1] - trained[0]);
        let at_point = (after[1] - after[0]) - (0.0 - 2.0);
        assert!(
            moved.abs() < 0.01 * at_point && taught[0] > taught[1] + 10.0,
            "{taught:?} (trained {trained:?})"
        );
    }

    #[test]
    fn fitting_is_deterministic_and_lowers_the_objective() {
        let (features, labels) = ([0.5, 2.0, 3.0, 0.1, 1.0, 1.1], [0usize, 0, 1]);
        let settings = Settings {
            width: 1.0,
            ..Settings::DEFAULT
        };
        let a = fit(&features, &labels, settings);
        assert_eq!(a, fit(&features, &labels, settings));
        let objective = |amplitudes: &[f32]| {
            let h = Adapted {
                amplitudes: amplitudes.to_vec(),
                ..a.clone()
            };
            let logits = h.logits(&features);
            let ce: f32 = logits
                .chunks_exact(2)
                .zip(labels)
                .map(|(l, y)| {
                    let mut p = l.to_vec();
                    crate::softmax_rows(&mut p, 2);
                    -libm::logf(p[y])
                })
                .sum::<f32>()
                / 3.0;
            ce + settings.pull / 2.0 * amplitudes.iter().map(|x| x * x).sum::<f32>()
        };
        assert!(objective(&a.amplitudes) < objective(&[0.0; 6]) - 0.1);
    }

    #[test]
    fn the_budget_bounds_the_images() {
        let s = Settings::DEFAULT;
        assert_eq!(s.images_per_example(1), 9);
        assert_eq!(s.images_per_example(30), 9);
        assert_eq!(s.images_per_example(100), 3);
        assert_eq!(s.images_per_example(1000), 1);
        let plain = Settings {
            augment: false,
            ..s
        };
        assert_eq!(plain.images_per_example(30), 1);
    }

    #[test]
    fn the_variants_move_ink_about_its_centre() {
        // A horizontal bar through the centre: turned 10°, its ends move up and down by
        // about tan 10° · 8 ≈ 1.4 px; the centre pixel keeps its ink.
        let mut bar = vec![0.0f32; INPUT_LEN];
        (6..=22).for_each(|x| bar[14 * IMAGE_SIZE + x] = 255.0);
        let turned = warp(&bar, VARIANTS[0]);
        assert_eq!(turned[14 * IMAGE_SIZE + 14], 255.0);
        let row_of_ink = |image: &[f32], x: usize| {
            let column: Vec<f32> = (0..IMAGE_SIZE).map(|y| image[y * IMAGE_SIZE + x]).collect();
            (0..IMAGE_SIZE).map(|y| y as f32 * column[y]).sum::<f32>() / column.iter().sum::<f32>()
        };
        let (left, right) = (row_of_ink(&turned, 7), row_of_ink(&turned, 20));
        assert!(
            (left - right).abs() > 2.0,
            "the bar's ends at rows {left}, {right}"
        );
        // The identity gives the image back; every variant keeps values in 0..=255.
        assert_eq!(warp(&bar, [1.0, 0.0, 0.0, 1.0]), bar);
        let all = augment(&bar, 9);
        assert_eq!(all.len(), 9 * INPUT_LEN);
        assert!(all.iter().all(|p| (0.0..=MAX_PIXEL).contains(p)));
        assert_eq!(&all[..INPUT_LEN], &bar[..]);
    }
}
