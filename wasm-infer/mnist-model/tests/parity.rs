//! The Rust model against PyTorch on real MNIST test digits, and the loader's refusals.
//!
//! The fixture `tests/fixtures/mnist_parity.safetensors` is written by
//! `python -m trainer.fixtures` (`invoke fixtures`) from the committed `models/model.safetensors`:
//! `images` u8 [N, 784] (MNIST test digits, ink = 255), `labels` i64 [N] and `logits` f32
//! [N, 10] computed by PyTorch in eval mode.
//!
//! Run with every backend: `cargo test -p mnist-model --features ndarray,flex,simd,fast,std`
//! (`fast`: this project's own kernels on every instruction set this CPU has, the bare-metal
//! scalar fallback included).

use std::collections::HashMap;
use std::path::PathBuf;

use mnist_model::{Backend, Classifier, INPUT_LEN, InputError, LoadError, NUM_CLASSES};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

/// Largest allowed |Rust logit - PyTorch logit| (the issue's bound).
const LOGIT_TOLERANCE: f32 = 1e-4;

/// The backends this build has and this CPU runs.
fn backends() -> impl Iterator<Item = Backend> {
    Backend::ALL.iter().copied().filter(|b| b.available())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn weights() -> Vec<u8> {
    let path = root().join("models/model.safetensors");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Fixture {
    pixels: Vec<f32>,
    labels: Vec<i64>,
    logits: Vec<f32>,
}

fn fixture() -> Fixture {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mnist_parity.safetensors");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `invoke fixtures`)", path.display()));
    let file = SafeTensors::deserialize(&bytes).expect("fixture is safetensors");
    let images = file.tensor("images").expect("images");
    assert_eq!(images.dtype(), Dtype::U8);
    let labels = file.tensor("labels").expect("labels");
    let logits = file.tensor("logits").expect("logits");
    Fixture {
        pixels: images.data().iter().map(|&p| p as f32).collect(),
        labels: labels
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        logits: logits
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

#[test]
fn every_backend_matches_pytorch_on_real_digits() {
    let fixture = fixture();
    let n = fixture.labels.len();
    assert!(
        n >= 100,
        "fixture holds {n} images, the check needs at least 100"
    );
    assert!(backends().count() > 0);
    for backend in backends() {
        let classifier = Classifier::from_safetensors(&weights(), backend).expect("weights load");
        let logits = classifier.logits(&fixture.pixels).expect("valid input");
        assert_eq!(logits.len(), n * NUM_CLASSES);
        let mut max_diff = 0.0f32;
        let mut correct = 0;
        for i in 0..n {
            let ours = &logits[i * NUM_CLASSES..(i + 1) * NUM_CLASSES];
            let theirs = &fixture.logits[i * NUM_CLASSES..(i + 1) * NUM_CLASSES];
            for (a, b) in ours.iter().zip(theirs) {
                max_diff = max_diff.max((a - b).abs());
            }
            assert_eq!(
                argmax(ours),
                argmax(theirs),
                "{}: top-1 differs on image {i}",
                backend.name()
            );
            correct += (argmax(ours) as i64 == fixture.labels[i]) as usize;
        }
        println!(
            "{}: {n} images, max |logit diff| {max_diff:.2e}, accuracy {:.1}%",
            backend.name(),
            100.0 * correct as f32 / n as f32
        );
        assert!(
            max_diff <= LOGIT_TOLERANCE,
            "{}: max |logit diff| {max_diff} > {LOGIT_TOLERANCE}",
            backend.name()
        );
        assert!(
            correct * 100 >= n * 97,
            "{}: accuracy {correct}/{n} is implausibly low",
            backend.name()
        );
    }
}

#[test]
fn probabilities_are_a_softmax_per_image() {
    let fixture = fixture();
    let pixels = &fixture.pixels[..3 * INPUT_LEN];
    for backend in backends() {
        let classifier = Classifier::from_safetensors(&weights(), backend).unwrap();
        let probs = classifier.probabilities(pixels).unwrap();
        let logits = classifier.logits(pixels).unwrap();
        for (p, l) in probs.chunks(NUM_CLASSES).zip(logits.chunks(NUM_CLASSES)) {
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert_eq!(argmax(p), argmax(l));
        }
    }
}

#[test]
fn bad_pixels_are_refused_and_the_classifier_stays_usable() {
    let fixture = fixture();
    let good = &fixture.pixels[..INPUT_LEN];
    for backend in backends() {
        let classifier = Classifier::from_safetensors(&weights(), backend).unwrap();
        assert_eq!(classifier.logits(&[]), Err(InputError::Length(0)));
        assert_eq!(
            classifier.logits(&good[..783]),
            Err(InputError::Length(783))
        );
        let mut bad = good.to_vec();
        bad[5] = f32::NAN;
        assert!(matches!(
            classifier.logits(&bad),
            Err(InputError::NonFinite { index: 5, .. })
        ));
        bad[5] = -0.42; // a normalised value, not a raw pixel
        assert!(matches!(
            classifier.logits(&bad),
            Err(InputError::OutOfRange { index: 5, .. })
        ));
        let message = InputError::Length(783).to_string();
        assert!(
            message.contains("784") && message.contains("783"),
            "{message}"
        );
        assert_eq!(classifier.logits(good).unwrap().len(), NUM_CLASSES);
    }
}

/// Re-serialise the real weights with one change, to make a bad file.
fn altered(
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>, &mut HashMap<String, String>),
) -> Vec<u8> {
    altered_from(weights(), edit)
}

/// Re-serialise the safetensors file `bytes` with the tensors and metadata `edit` changes.
fn altered_from(
    bytes: Vec<u8>,
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>, &mut HashMap<String, String>),
) -> Vec<u8> {
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = meta.metadata().clone().unwrap_or_default();
    let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            )
        })
        .collect();
    edit(&mut tensors, &mut metadata);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(metadata)).unwrap()
}

/// Every backend refuses the same bad files for the same reason: burn-store's loader and the
/// fast kernels' own reader (src/fast.rs) alike.
#[test]
fn corrupt_or_mismatched_weights_fail_with_a_named_reason() {
    for backend in backends() {
        refuses_bad_weights(backend);
    }
}

fn refuses_bad_weights(backend: Backend) {
    let load_error = |bytes: &[u8]| -> LoadError {
        Classifier::from_safetensors(bytes, backend)
            .expect_err(&format!("{}: a bad file must be refused", backend.name()))
    };
    let good = weights();
    assert!(matches!(
        load_error(&good[..good.len() / 2]),
        LoadError::Format(_)
    ));
    assert!(matches!(
        load_error(b"not a safetensors file"),
        LoadError::Format(_)
    ));

    // Without a layer plan, only the cnn's id says what the layers are.
    let other_arch = altered(|_, meta| {
        meta.remove("layers");
        meta.insert("architecture".into(), "resnet18".into());
    });
    assert!(matches!(
        load_error(&other_arch),
        LoadError::Architecture { found, .. } if found == "resnet18"
    ));
    let bad_plan = altered(|_, meta| {
        meta.insert("layers".into(), r#"[{"kind":"attention"}]"#.into());
    });
    let error = load_error(&bad_plan);
    assert!(
        matches!(error, LoadError::Metadata { key: "layers", .. })
            && error.to_string().contains("attention"),
        "{error}"
    );
    // A plan that does not match the tensors (conv1 said to have 32 channels).
    let wrong_plan = altered(|_, meta| {
        let plan = meta["layers"].replacen(r#""out_channels":64"#, r#""out_channels":32"#, 1);
        meta.insert("layers".into(), plan);
    });
    let message = load_error(&wrong_plan).to_string();
    assert!(
        message.contains("conv1") || message.contains("burn backends"),
        "{message}"
    );

    let no_std = altered(|_, meta| {
        meta.remove("mnist_std");
    });
    assert!(matches!(
        load_error(&no_std),
        LoadError::Metadata {
            key: "mnist_std",
            ..
        }
    ));

    let missing = altered(|t, _| {
        t.remove("fc2.bias");
    });
    let message = load_error(&missing).to_string();
    assert!(message.contains("fc2.bias"), "{message}");

    let unused = altered(|t, _| {
        let extra = t["fc3.bias"].clone();
        t.insert("fc4.bias".into(), extra);
    });
    let message = load_error(&unused).to_string();
    assert!(message.contains("fc4.bias"), "{message}");

    let wrong_shape = altered(|t, _| {
        let (dtype, _, data) = t["fc3.bias"].clone();
        t.insert("fc3.bias".into(), (dtype, vec![5, 2], data));
    });
    let message = load_error(&wrong_shape).to_string();
    assert!(message.contains("fc3.bias"), "{message}");

    let too_short = altered(|t, _| {
        let (dtype, _, data) = t["conv2.norm.running_var"].clone();
        t.insert(
            "conv2.norm.running_var".into(),
            (dtype, vec![16], data[..64].to_vec()),
        );
    });
    let message = load_error(&too_short).to_string();
    assert!(message.contains("conv2.norm.running_var"), "{message}");
}

/// The fast kernels take other code paths for one image (a single-row product in the linear
/// layers) and for batches that are not a multiple of their 4-row tiles: each must give the
/// same logits as PyTorch, image by image.
#[cfg(feature = "fast")]
#[test]
fn fast_kernels_match_pytorch_one_by_one_and_in_odd_batches() {
    let fixture = fixture();
    let fast: Vec<Backend> = backends()
        .filter(|b| b.name().starts_with("fast"))
        .collect();
    assert!(
        fast.len() >= 2,
        "expected the scalar fallback and at least one SIMD instruction set: {fast:?}"
    );
    for backend in fast {
        let classifier = Classifier::from_safetensors(&weights(), backend).unwrap();
        let mut start = 0;
        for batch in [1, 2, 3, 5, 1, 7] {
            let pixels = &fixture.pixels[start * INPUT_LEN..(start + batch) * INPUT_LEN];
            let logits = classifier.logits(pixels).unwrap();
            let expected = &fixture.logits[start * NUM_CLASSES..(start + batch) * NUM_CLASSES];
            for (i, (a, b)) in logits.iter().zip(expected).enumerate() {
                assert!(
                    (a - b).abs() <= LOGIT_TOLERANCE,
                    "{}: batch of {batch}, value {i}: {a} vs PyTorch {b}",
                    backend.name()
                );
            }
            start += batch;
        }
    }
}

#[cfg(feature = "fast")]
#[test]
fn fast_profile_names_every_stage_and_times_it() {
    let fixture = fixture();
    let classifier =
        Classifier::from_safetensors(&weights(), Backend::from_name("fast").unwrap()).unwrap();
    let clock = std::time::Instant::now();
    let mut now = || clock.elapsed().as_secs_f64() * 1e3;
    let stages = classifier
        .profile(&fixture.pixels[..INPUT_LEN], 3, &mut now)
        .unwrap();
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(
        names[1].starts_with("conv1") && names[1].contains("GELU") && names[1].contains("max-pool"),
        "{names:?}"
    );
    assert!(
        names[5].starts_with("fc3") && names[6] == "softmax",
        "{names:?}"
    );
    assert!(stages.iter().all(|(_, ms)| *ms >= 0.0 && ms.is_finite()));
}

/// MC dropout gives the same samples on every backend: the burn backends run a batch of
/// `samples` copies of the image, the fast kernels the convolutions once, and both draw the
/// masks from the same seed. Different seeds give different samples; one image only.
#[test]
fn mc_dropout_agrees_across_backends_and_follows_the_seed() {
    let fixture = fixture();
    let image = &fixture.pixels[..INPUT_LEN];
    let reference = Classifier::from_safetensors(&weights(), backends().next().unwrap()).unwrap();
    let expected = reference.uncertainty(image, 20, 7).unwrap();
    assert_eq!(expected.samples, 20);
    assert!((expected.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    for backend in backends() {
        let classifier = Classifier::from_safetensors(&weights(), backend).unwrap();
        let u = classifier.uncertainty(image, 20, 7).unwrap();
        for (a, b) in u.probabilities.iter().zip(&expected.probabilities) {
            assert!((a - b).abs() < 1e-4, "{}: {a} vs {b}", backend.name());
        }
        assert!((u.mutual_information - expected.mutual_information).abs() < 1e-4);
        assert!(matches!(
            classifier.uncertainty(&fixture.pixels[..2 * INPUT_LEN], 20, 7),
            Err(InputError::NotOneImage(1568))
        ));
        assert!(matches!(
            classifier.uncertainty(image, 0, 7),
            Err(InputError::Samples(0))
        ));
    }
    // Another seed, other masks.
    let other = reference.uncertainty(image, 20, 8).unwrap();
    assert_ne!(other.std, expected.std);
}

/// The default model's layer plan, written by Python (`trainer.model.CNN`), is the burn
/// model's (`plan::cnn()`, from `model.rs`): so the burn backends run it as burn's `Module`.
#[test]
fn the_committed_cnn_plan_is_the_burn_models() {
    let bytes = weights();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let json = &meta.metadata().as_ref().unwrap()["layers"];
    assert_eq!(
        mnist_model::plan::parse(json).unwrap(),
        mnist_model::plan::cnn()
    );
}

/// `invoke build-wasm --weights-dtype int8` (`mnist_common.weights.quantize_int8`): each weight
/// of 2+ dimensions stored as int8 with one f32 scale per output channel in `<name>_scale`.
/// The fast kernels' reader must give exactly the logits of the f32 file holding `q * scale`,
/// and a missing or mis-shaped scale is refused by name.
#[cfg(feature = "fast")]
#[test]
fn int8_weights_are_their_values_times_the_channel_scales() {
    let fixture = fixture();
    let pixels = &fixture.pixels[..32 * INPUT_LEN];
    let mut dequantized = HashMap::new();
    let quantized = altered(|t, _| {
        let names: Vec<String> = t.keys().cloned().collect();
        for name in names {
            let (dtype, shape, data) = t[&name].clone();
            if shape.len() < 2 {
                continue;
            }
            assert_eq!(dtype, Dtype::F32, "{name}");
            let values: Vec<f32> = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let per_channel = values.len() / shape[0];
            let (mut q, mut scales, mut back) = (Vec::new(), Vec::new(), Vec::new());
            for row in values.chunks_exact(per_channel) {
                let peak = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = if peak > 0.0 { peak / 127.0 } else { 1.0 };
                scales.extend_from_slice(&scale.to_le_bytes());
                for v in row {
                    let level = (v / scale).round().clamp(-127.0, 127.0) as i8;
                    q.push(level as u8);
                    back.push(f32::from(level) * scale);
                }
            }
            dequantized.insert(name.clone(), back);
            t.insert(name.clone(), (Dtype::I8, shape.clone(), q));
            t.insert(
                format!("{name}_scale"),
                (Dtype::F32, vec![shape[0]], scales),
            );
        }
    });
    assert!(dequantized.contains_key("fc1.weight"));
    let reference = altered(|t, _| {
        for (name, values) in &dequantized {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            t.get_mut(name).unwrap().2 = bytes;
        }
    });
    for backend in backends().filter(|b| b.name().starts_with("fast")) {
        let int8 = Classifier::from_safetensors(&quantized, backend).unwrap();
        let f32_file = Classifier::from_safetensors(&reference, backend).unwrap();
        assert_eq!(
            int8.logits(pixels).unwrap(),
            f32_file.logits(pixels).unwrap(),
            "{}",
            backend.name()
        );
        let bytes = altered_from(quantized.clone(), |t, _| {
            t.remove("fc1.weight_scale");
        });
        let message = Classifier::from_safetensors(&bytes, backend)
            .expect_err("an int8 weight without its scales must be refused")
            .to_string();
        assert!(message.contains("fc1.weight_scale"), "{message}");
    }
}

/// The real weights with the two rules' thresholds set as given (`None`: the key removed):
/// `unsure_mutual_information` (nats) and `not_a_digit_max_probability` (τ), as text.
fn with_rules(unsure: Option<&str>, not_a_digit: Option<&str>) -> Vec<u8> {
    altered(|_, meta| {
        for (key, value) in [
            ("unsure_mutual_information", unsure),
            ("not_a_digit_max_probability", not_a_digit),
        ] {
            match value {
                Some(text) => meta.insert(key.into(), text.into()),
                None => meta.remove(key),
            };
        }
    })
}

/// The eval-mode probabilities of the first `n` fixture images, `[n, 10]`.
fn eval_probabilities(classifier: &Classifier, fixture: &Fixture, n: usize) -> Vec<f32> {
    classifier
        .probabilities(&fixture.pixels[..n * INPUT_LEN])
        .unwrap()
}

fn largest(row: &[f32]) -> f32 {
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `not_a_digit_max_probability` is read on every backend, and a value that is not a
/// probability in (0, 1] fails the load naming the key.
#[test]
fn the_not_a_digit_threshold_is_read_and_bad_values_are_refused() {
    for backend in backends() {
        let load = |bytes: &[u8]| Classifier::from_safetensors(bytes, backend);
        let classifier = load(&with_rules(Some("0.2"), Some("0.75"))).unwrap();
        assert_eq!(classifier.metadata().not_a_digit_threshold, Some(0.75));
        assert_eq!(classifier.metadata().unsure_threshold, Some(0.2));
        let absent = load(&with_rules(Some("0.2"), None)).unwrap();
        assert_eq!(absent.metadata().not_a_digit_threshold, None);
        assert_eq!(absent.not_a_digit(&[0.1; NUM_CLASSES]), None);
        for bad in ["1.5", "0", "-0.3", "abc", "NaN", ""] {
            let error = load(&with_rules(None, Some(bad))).expect_err(bad);
            assert!(
                matches!(
                    error,
                    LoadError::Metadata {
                        key: "not_a_digit_max_probability",
                        ..
                    }
                ),
                "{bad}: {error}"
            );
            let message = error.to_string();
            assert!(
                message.contains("not_a_digit_max_probability") && message.contains("(0, 1]"),
                "{message}"
            );
        }
    }
}

/// The rule is `max(probabilities) < τ`: with τ the median of the largest probabilities of 64
/// real digits, about half of them fire, and each verdict is the comparison itself.
#[test]
fn not_a_digit_is_the_largest_probability_below_the_threshold() {
    let fixture = fixture();
    let plain = Classifier::from_safetensors(&weights(), backends().next().unwrap()).unwrap();
    let n = 64;
    let mut maxima: Vec<f32> = eval_probabilities(&plain, &fixture, n)
        .chunks(NUM_CLASSES)
        .map(largest)
        .collect();
    maxima.sort_by(f32::total_cmp);
    let tau = maxima[n / 2];
    assert!(
        maxima[0] < tau,
        "the digits' maxima must differ: {maxima:?}"
    );
    for backend in backends() {
        let classifier =
            Classifier::from_safetensors(&with_rules(None, Some(&format!("{tau}"))), backend)
                .unwrap();
        let probabilities = eval_probabilities(&classifier, &fixture, n);
        let verdicts: Vec<bool> = probabilities
            .chunks(NUM_CLASSES)
            .map(|p| classifier.not_a_digit(p).unwrap())
            .collect();
        for (p, &verdict) in probabilities.chunks(NUM_CLASSES).zip(&verdicts) {
            assert_eq!(verdict, largest(p) < tau, "{}: {p:?}", backend.name());
        }
        let fired = verdicts.iter().filter(|&&v| v).count();
        assert!(
            (n / 4..=3 * n / 4).contains(&fired),
            "{}: {fired}",
            backend.name()
        );
    }
    // Made-up probabilities: only the largest matters, and equal is not below.
    let classifier =
        Classifier::from_safetensors(&with_rules(None, Some("0.5")), backends().next().unwrap())
            .unwrap();
    let mut p = [0.05f32; NUM_CLASSES];
    p[9] = 0.55;
    assert_eq!(classifier.not_a_digit(&p), Some(false));
    p[9] = 0.5;
    assert_eq!(classifier.not_a_digit(&p), Some(false));
    p[9] = 0.4999;
    assert_eq!(classifier.not_a_digit(&p), Some(true));
    assert_eq!(classifier.not_a_digit(&[0.1; NUM_CLASSES]), Some(true));
}

#[test]
fn probabilities_from_outside_are_checked() {
    use mnist_model::check_probabilities;
    assert_eq!(check_probabilities(&[0.1; NUM_CLASSES]), Ok(()));
    assert_eq!(
        check_probabilities(&[0.1; 9]),
        Err(InputError::Probabilities { len: 9, bad: None })
    );
    let mut p = [0.1f32; NUM_CLASSES];
    for bad in [f32::NAN, -0.01, 1.01, f32::INFINITY] {
        p[4] = bad;
        let error = check_probabilities(&p).unwrap_err();
        assert!(
            matches!(
                error,
                InputError::Probabilities {
                    len: 10,
                    bad: Some((4, _))
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("probability 4"), "{error}");
    }
    let message = check_probabilities(&[]).unwrap_err().to_string();
    assert!(
        message.contains("10 probabilities") && message.contains("got 0"),
        "{message}"
    );
}

/// MC dropout's `not_a_digit` is the rule on one eval-mode pass of the image, not on the
/// samples' mean: with τ exactly the eval-mode largest probability (each backend's own) of a
/// digit whose mean over the dropout samples is lower, the eval pass does not fire (equal is
/// not below) where the mean would. `unsure` is true when either rule fires, null without both.
#[test]
fn mc_dropout_judges_not_a_digit_on_the_eval_pass_and_unsure_on_either_rule() {
    let fixture = fixture();
    let reference = backends().next().unwrap();
    let plain = Classifier::from_safetensors(&with_rules(None, None), reference).unwrap();
    let n = 32;
    let probabilities = eval_probabilities(&plain, &fixture, n);
    // A digit whose dropout samples agree less than its eval pass: the mean's top is lower.
    let (index, eval_max, mean_max) = (0..n)
        .map(|i| {
            let image = &fixture.pixels[i * INPUT_LEN..(i + 1) * INPUT_LEN];
            let u = plain.uncertainty(image, 20, 0).unwrap();
            assert_eq!(
                (u.not_a_digit, u.unsure),
                (None, None),
                "no rules: no verdicts"
            );
            let eval = largest(&probabilities[i * NUM_CLASSES..(i + 1) * NUM_CLASSES]);
            (i, eval, largest(&u.probabilities))
        })
        .max_by(|a, b| (a.1 - a.2).total_cmp(&(b.1 - b.2)))
        .unwrap();
    assert!(
        mean_max < eval_max - 1e-4,
        "image {index}: mean {mean_max}, eval {eval_max}"
    );
    let image = &fixture.pixels[index * INPUT_LEN..(index + 1) * INPUT_LEN];
    let mi = plain.uncertainty(image, 20, 0).unwrap().mutual_information;
    let below_mi = format!("{:e}", mi * 0.5); // the MI rule fires
    let above_mi = "100"; // the MI rule never fires (MI <= ln 10)
    for backend in backends() {
        // τ from this backend's own eval pass of the image (backends differ in the last bits).
        let own = Classifier::from_safetensors(&with_rules(None, None), backend).unwrap();
        let eval_max = largest(&own.probabilities(image).unwrap());
        let tau = format!("{eval_max:e}"); // exact: Rust prints the shortest text that reads back
        assert_eq!(tau.parse::<f32>().unwrap(), eval_max);
        let judged = |unsure: Option<&str>, not_a_digit: Option<&str>| {
            let classifier =
                Classifier::from_safetensors(&with_rules(unsure, not_a_digit), backend).unwrap();
            let u = classifier.uncertainty(image, 20, 0).unwrap();
            (u.not_a_digit, u.unsure)
        };
        let name = backend.name();
        // τ = the eval pass's largest probability: not below it, so not "not a digit".
        assert_eq!(
            judged(Some(above_mi), Some(&tau)),
            (Some(false), Some(false)),
            "{name}"
        );
        // Just above it: fires, and unsure follows though the MI rule does not fire.
        let just_above = format!("{:e}", eval_max + 2e-4);
        assert_eq!(
            judged(Some(above_mi), Some(&just_above)),
            (Some(true), Some(true)),
            "{name}"
        );
        assert_eq!(
            judged(None, Some(&just_above)),
            (Some(true), Some(true)),
            "{name}"
        );
        assert_eq!(
            judged(None, Some(&tau)),
            (Some(false), Some(false)),
            "{name}"
        );
        // The MI rule alone, and with a not-a-digit rule that does not fire.
        assert_eq!(judged(Some(&below_mi), None), (None, Some(true)), "{name}");
        assert_eq!(judged(Some(above_mi), None), (None, Some(false)), "{name}");
        assert_eq!(
            judged(Some(&below_mi), Some("0.01")),
            (Some(false), Some(true)),
            "{name}"
        );
        assert_eq!(judged(None, None), (None, None), "{name}");
    }
}

/// Teaching changes the probabilities, and the rule judges the taught ones: τ between the
/// trained and the taught model's largest probability flips the verdict, in `not_a_digit` and
/// in MC dropout's alike.
#[test]
fn the_rule_judges_the_taught_probabilities() {
    let fixture = fixture();
    let backend = backends().next().unwrap();
    let examples = 12;
    let pixels = &fixture.pixels[..examples * INPUT_LEN];
    // Taught the wrong digits: the model's answers for these images change a lot.
    let labels: Vec<u32> = fixture.labels[..examples]
        .iter()
        .map(|&l| ((l + 1) % 10) as u32)
        .collect();
    // The probe: the fixture's image whose largest probability teaching changes most (a taught
    // image is read confidently as its taught digit: its largest probability may stay near 1).
    let mut probe = Classifier::from_safetensors(&with_rules(None, None), backend).unwrap();
    let largest_of = |c: &Classifier| -> Vec<f32> {
        let p = c.probabilities(&fixture.pixels).unwrap();
        p.chunks_exact(10).map(largest).collect()
    };
    let trained_all = largest_of(&probe);
    probe.teach(pixels, &labels).unwrap();
    let taught_all = largest_of(&probe);
    let index = (0..trained_all.len())
        .max_by(|&a, &b| {
            let change = |i: usize| (trained_all[i] - taught_all[i]).abs();
            change(a).total_cmp(&change(b))
        })
        .unwrap();
    let image = &fixture.pixels[index * INPUT_LEN..(index + 1) * INPUT_LEN];
    let (trained, taught) = (trained_all[index], taught_all[index]);
    assert!((trained - taught).abs() > 1e-3, "{trained} vs {taught}");
    let tau = format!("{:e}", (trained + taught) / 2.0);
    let mut classifier =
        Classifier::from_safetensors(&with_rules(None, Some(&tau)), backend).unwrap();
    let verdict = |c: &Classifier| {
        let p = c.probabilities(image).unwrap();
        let u = c.uncertainty(image, 20, 0).unwrap();
        assert_eq!(u.not_a_digit, c.not_a_digit(&p));
        c.not_a_digit(&p).unwrap()
    };
    assert_eq!(verdict(&classifier), trained < (trained + taught) / 2.0);
    classifier.teach(pixels, &labels).unwrap();
    assert_eq!(verdict(&classifier), taught < (trained + taught) / 2.0);
    classifier.forget();
    assert_eq!(verdict(&classifier), trained < (trained + taught) / 2.0);
}

/// Run a future that needs no waking to its end: the CPU backends' `*_async` methods resolve
/// on the first poll.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return value;
        }
    }
}

/// The committed capsule network reconstructs on every backend from one forward pass: the
/// digits it drew from are the argmax of its logits, the images are 784 values in 0..=255
/// each and agree across backends; `reconstruct_async` gives the same, one image as in a
/// batch. A model without a decoder refuses, with the reason.
#[test]
fn reconstruction_gives_the_predicted_digits_and_their_images() {
    let path = root().join("models/capsnet.safetensors");
    let capsnet = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixture = fixture();
    let n = 20;
    let pixels = &fixture.pixels[..n * INPUT_LEN];
    let mut first: Option<(Backend, mnist_model::Reconstruction)> = None;
    for backend in backends() {
        let name = backend.name();
        let classifier = Classifier::from_safetensors(&capsnet, backend).expect("capsnet loads");
        let seen = classifier
            .reconstruct(pixels)
            .expect("a capsule network reconstructs");
        let logits = classifier.logits(pixels).unwrap();
        let predicted: Vec<usize> = logits.chunks_exact(NUM_CLASSES).map(argmax).collect();
        assert_eq!(
            seen.digits, predicted,
            "{name}: the digits are the predictions"
        );
        assert_eq!(seen.pixels.len(), n * INPUT_LEN, "{name}");
        assert!(
            seen.pixels.iter().all(|p| (0.0..=255.0).contains(p)),
            "{name}: pixels in 0..=255"
        );
        let correct = (seen.digits.iter().zip(&fixture.labels))
            .filter(|&(&d, &l)| d as i64 == l)
            .count();
        assert!(correct >= n - 1, "{name}: {correct}/{n} digits right");
        assert_eq!(
            block_on(classifier.reconstruct_async(pixels)),
            Ok(seen.clone())
        );
        let one = classifier.reconstruct(&pixels[..INPUT_LEN]).unwrap();
        assert_eq!(one.digits, [seen.digits[0]], "{name}");
        let diff = (one.pixels.iter().zip(&seen.pixels))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= 0.01,
            "{name}: one image vs a batch, max |diff| {diff}"
        );
        match &first {
            None => first = Some((backend, seen)),
            Some((other, theirs)) => {
                assert_eq!(seen.digits, theirs.digits, "{name} vs {}", other.name());
                let diff = (seen.pixels.iter().zip(&theirs.pixels))
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    diff <= 0.1,
                    "{name} vs {}: max |diff| {diff} of 255",
                    other.name()
                );
            }
        }
        let cnn = Classifier::from_safetensors(&weights(), backend).unwrap();
        for refused in [
            cnn.reconstruct(&pixels[..INPUT_LEN]),
            block_on(cnn.reconstruct_async(&pixels[..INPUT_LEN])),
        ] {
            let e = refused.expect_err("the cnn has no decoder");
            assert!(
                matches!(e, mnist_model::ReconstructError::Unsupported(_)),
                "{name}: {e:?}"
            );
            assert_eq!(
                e.to_string(),
                "no reconstruction: the model has no reconstruction decoder"
            );
        }
    }
    assert!(first.is_some(), "no backend ran");
}
