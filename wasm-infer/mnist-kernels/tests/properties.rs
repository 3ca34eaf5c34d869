//! The kernels' property tests on every instruction set this CPU runs (the scalar fallback,
//! SSE2, AVX2 + FMA where the CPU has both: `--features std` detects it at run time; without
//! `std` only when the build targets it), against the f64 reference in `property/mod.rs`,
//! which states the tolerances.
//!
//! `MNIST_KERNELS_SEED=<u64>` draws other cases (the default seed is fixed, so that a run is
//! reproducible); `MNIST_KERNELS_CASES=<n>` runs `n` cases per property and instruction set.

mod property;

use mnist_kernels::{Activation, Conv, Isa, Layer, Linear, Network, Routing};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// Every case of property `name` on every instruction set available here; fails with each
/// failing case described (up to 10 per instruction set).
fn check(name: &str, cases: u64) {
    let seed = env_or("MNIST_KERNELS_SEED", 2026);
    let cases = env_or("MNIST_KERNELS_CASES", cases) as usize;
    let property = property::property(name);
    let mut report = Vec::new();
    let mut failed = 0;
    for &isa in Isa::ALL.iter().filter(|isa| isa.available()) {
        let failures = property::run(property, isa, seed, cases);
        report.push(format!(
            "{name} on {}: {cases} cases, {} failed",
            isa.name(),
            failures.len()
        ));
        failed += failures.len();
        report.extend(failures.into_iter().take(10));
    }
    let report = report.join("\n");
    assert!(failed == 0, "seed {seed}:\n{report}");
    eprintln!("seed {seed}:\n{report}");
}

#[test]
fn gelu_matches_the_exact_gelu() {
    check("gelu", 300);
}

#[test]
fn linear_layers_match_the_reference_gemm() {
    check("gemm", 300);
}

#[test]
fn convolutions_match_the_reference() {
    check("convolution", 200);
}

#[test]
fn convolutions_with_a_fused_pool_match_the_reference() {
    check("fused pool", 200);
}

#[test]
fn strided_convolutions_match_the_reference() {
    check("strided convolution", 200);
}

#[test]
fn primary_capsules_match_the_reference() {
    check("primary capsules", 200);
}

#[test]
fn routing_by_agreement_and_the_decoder_match_the_reference() {
    check("routing", 150);
}

#[test]
fn max_and_average_pools_match_the_reference() {
    check("pools", 200);
}

#[test]
fn random_networks_match_the_reference_with_and_without_dropout() {
    check("network", 100);
}

/// `Network::new` refuses layers that do not chain, naming the layer, instead of building a
/// network whose kernels would read or write out of bounds.
#[test]
fn networks_that_do_not_chain_are_refused() {
    let weight = [0.5f32; 100];
    let bias = [0.0f32; 2];
    let conv = |c_in: usize, padding: usize, pool: bool| Conv {
        weight: &weight[..2 * c_in * 9],
        shape: [2, c_in, 3, 3],
        bias: &bias,
        padding,
        stride: 1,
        activation: Activation::Gelu,
        pool,
    };
    let linear = |k: usize| Linear {
        weight: &weight[..2 * k],
        shape: [2, k],
        bias: &bias,
        activation: Activation::Identity,
    };
    let build = |input: [usize; 3], layers: Vec<Layer>| {
        let named = layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| (format!("layer{i}"), l));
        Network::new(Isa::Scalar, input, named)
    };
    let refused = |input: [usize; 3], layers: Vec<Layer>, why: &str| {
        let error = build(input, layers).expect_err(why);
        assert!(error.contains(why), "{error:?} does not say {why:?}");
    };
    refused(
        [2, 5, 5],
        vec![Layer::Conv(conv(3, 0, false))],
        "layer0 takes 3 channels",
    );
    refused(
        [3, 2, 2],
        vec![Layer::Conv(conv(3, 0, false))],
        "layer0 takes 3 channels",
    );
    refused(
        [3, 3, 3],
        vec![Layer::Conv(conv(3, 0, true))],
        "layer0 gives an empty image",
    );
    refused(
        [3, 4, 4],
        vec![Layer::Linear(linear(48))],
        "layer0 needs flat features",
    );
    refused([3, 4, 4], vec![Layer::Flatten], "layer0 ends the network");
    refused(
        [3, 4, 4],
        vec![Layer::Dropout(0.5)],
        "layer0: dropout on images",
    );
    refused(
        [3, 1, 1],
        vec![Layer::Flatten, Layer::Linear(linear(2))],
        "layer1 takes 2 features, gets 3",
    );
    refused(
        [3, 1, 1],
        vec![Layer::GlobalAvgPool, Layer::Dropout(1.0)],
        "not in [0, 1)",
    );
    refused(
        [3, 4, 4],
        vec![Layer::MaxPool(5)],
        "a 5x5 max-pool of a 4x4 image",
    );
    refused(
        [3, 4, 4],
        vec![Layer::Residual {
            a: conv(3, 1, false),
            b: conv(2, 1, false),
            shortcut: None,
        }],
        "an identity shortcut",
    );
    let mut short = conv(3, 1, false);
    short.weight = &weight[..5];
    refused(
        [3, 4, 4],
        vec![Layer::Conv(short)],
        "5 weights and 2 biases",
    );
    let mut strided = conv(3, 0, false);
    strided.stride = 0;
    refused([3, 4, 4], vec![Layer::Conv(strided)], "layer0: stride 0");
    // Capsules: primary capsules (2 channels: 1 type of 2 values, or 2 of 1) on a 2x2 grid,
    // digit capsules with 3 x 4 matrices per input capsule, capsule lengths.
    let primary = |capsules: usize, dim: usize| Layer::PrimaryCaps {
        conv: conv(3, 0, false),
        capsules,
        dim,
    };
    let routing = [0.25f32; 4 * 3 * 4 * 2];
    let digits = |inputs: usize, in_dim: usize, iterations: usize| {
        Layer::DigitCaps(Routing {
            weight: &routing[..inputs * 3 * 4 * in_dim],
            shape: [inputs, 3, 4, in_dim],
            iterations,
        })
    };
    let decoder_weight = [0.5f32; 12 * 784];
    let decoder_bias = [0.0f32; 784];
    let fc = |n: usize, k: usize| Linear {
        weight: &decoder_weight[..n * k],
        shape: [n, k],
        bias: &decoder_bias[..n],
        activation: Activation::Relu,
    };
    let decoder = Layer::Decoder([fc(5, 12), fc(6, 5), fc(7, 6)]);
    refused(
        [3, 4, 4],
        vec![primary(3, 1)],
        "layer0: 2 channels are not 3 capsule types of 1 values",
    );
    refused(
        [3, 4, 4],
        vec![Layer::Conv(conv(3, 0, false)), digits(4, 2, 3)],
        "layer1 needs capsules (primary capsules first), gets 2x2x2 image",
    );
    refused(
        [3, 4, 4],
        vec![primary(2, 1), digits(4, 2, 3)],
        "layer1 takes 4 capsules of 2, gets 8 capsules of 1",
    );
    refused(
        [3, 4, 4],
        vec![primary(1, 2), digits(4, 2, 0)],
        "layer1: no routing iteration",
    );
    refused(
        [3, 4, 4],
        vec![primary(1, 2), Layer::Dropout(0.5)],
        "layer1: dropout on images or capsules",
    );
    refused(
        [3, 4, 4],
        vec![primary(1, 2), Layer::Flatten],
        "layer1 needs images",
    );
    refused(
        [3, 4, 4],
        vec![Layer::Conv(conv(3, 0, false)), Layer::CapsuleLength(1.0)],
        "layer1 needs capsules, gets 2x2x2 image",
    );
    refused(
        [3, 4, 4],
        vec![primary(1, 2), digits(4, 2, 3), decoder, decoder],
        "layer3: a second decoder",
    );
    refused(
        [3, 4, 4],
        vec![
            primary(1, 2),
            digits(4, 2, 3),
            Layer::Decoder([fc(5, 12), fc(6, 4), fc(7, 6)]),
        ],
        "layer2.fc2 takes 4 features, gets 5",
    );
    let capsnet = build(
        [3, 4, 4],
        vec![
            primary(1, 2),
            digits(4, 2, 3),
            decoder,
            Layer::CapsuleLength(10.0),
        ],
    )
    .unwrap();
    assert_eq!(capsnet.output_len(), 3);
    assert_eq!(capsnet.stages().len(), 3, "the decoder is no stage");
    let x = [0.5f32; 2 * 3 * 4 * 4];
    assert_eq!(capsnet.features(&x).len(), 2 * 3 * 4, "the digit capsules");
    let (kept, reconstruction) = capsnet.reconstruct(&x).unwrap();
    assert_eq!(reconstruction.len(), 2 * 7);
    assert!(reconstruction.iter().all(|&p| p > 0.0 && p < 1.0));
    assert_eq!(kept.len(), 2, "one capsule kept per image");
    assert!(kept.iter().all(|&j| j < 3));
    // And what does chain builds: padding keeps 4x4, the pool halves it, flatten + linear.
    let network = build(
        [3, 4, 4],
        vec![
            Layer::Conv(conv(3, 1, true)),
            Layer::Flatten,
            Layer::Linear(linear(8)),
        ],
    )
    .unwrap();
    assert_eq!(network.output_len(), 2);
    assert_eq!(network.stages().len(), 2, "the flatten is no stage");
    assert_eq!(network.reconstruct(&[0.0; 48]), None, "no decoder");
}
