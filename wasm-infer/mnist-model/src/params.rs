//! A layer plan with its parameters: read from the safetensors file (or the burn `cnn`),
//! checked against the plan and against each other, BatchNorm folded in. Both ways this crate
//! runs a plan without a burn `Module` start here: the fast kernels (`crate::fast`, which pack
//! the weights) and burn's tensor operations (`crate::layers`, every plan on the burn
//! backends).
//!
//! Folding (eval mode: running statistics), per output channel, in f64:
//! `s = γ / √(var + ε)`, `w' = w · s`, `b' = (b - mean) · s + β`.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

#[cfg(feature = "fast")]
use burn::module::Param;
#[cfg(feature = "fast")]
use burn::nn::PaddingConfig2d;
#[cfg(feature = "fast")]
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::model;
#[cfg(feature = "fast")]
use crate::model::{ConvBlock, Model};
use crate::plan::{Act, Layer};

/// The shape of one image's values entering or leaving a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `[height, width, channels]`.
    Image([usize; 3]),
    /// Features.
    Flat(usize),
    /// `[capsules, values per capsule]`.
    Capsules([usize; 2]),
}

impl Shape {
    /// Values per image.
    pub fn len(self) -> usize {
        match self {
            Shape::Image([h, w, c]) => h * w * c,
            Shape::Flat(n) => n,
            Shape::Capsules([n, d]) => n * d,
        }
    }
}

/// One convolution's parameters in PyTorch's layouts, as f32.
pub(crate) struct ConvParams {
    /// `[c_out, c_in, kh, kw]`, row-major.
    weight: Vec<f32>,
    shape: [usize; 4],
    /// `[c_out]`, or none for a convolution without bias.
    bias: Option<Vec<f32>>,
    /// The BatchNorm that follows, if any.
    norm: Option<NormParams>,
}

/// BatchNorm's `γ`, `β`, running mean and running variance, each `[c_out]`, and its ε.
pub(crate) struct NormParams {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    epsilon: f64,
}

/// One linear layer's parameters in PyTorch's layout, as f32.
pub(crate) struct LinearParams {
    /// `[out_features, in_features]`, row-major (PyTorch's `nn.Linear.weight`).
    weight: Vec<f32>,
    shape: [usize; 2],
    /// `[out_features]`, or none.
    bias: Option<Vec<f32>>,
}

/// Where a plan's parameters come from: the file, or a loaded burn model.
pub(crate) trait Source {
    /// The convolution `PREFIX.conv` and, with `norm`, its BatchNorm `PREFIX.norm`.
    fn conv(&mut self, prefix: &str, norm: bool) -> Result<ConvParams, String>;
    /// The linear layer `PREFIX`.
    fn linear(&mut self, prefix: &str) -> Result<LinearParams, String>;
    /// The tensor `name` of `rank` dimensions, with its shape (the digit capsules' matrices).
    fn tensor(&mut self, name: &str, rank: usize) -> Result<(Vec<f32>, Vec<usize>), String>;
}

/// Why a model cannot run here (a layer configuration this crate does not implement).
pub(crate) fn unsupported(what: String) -> String {
    format!("this crate does not implement {what}")
}

/// The convolution geometry the kernels implement: stride 1, no dilation, no groups; the
/// padding is returned.
#[cfg(feature = "fast")]
fn check_conv(
    name: &str,
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    padding: &PaddingConfig2d,
) -> Result<usize, String> {
    if stride != [1, 1] || dilation != [1, 1] || groups != 1 {
        return Err(unsupported(format!(
            "{name}: stride {stride:?}, dilation {dilation:?}, groups {groups} (only 1, 1, 1)"
        )));
    }
    match padding {
        PaddingConfig2d::Valid => Ok(0),
        PaddingConfig2d::Explicit(a, b, c, d) if a == b && b == c && c == d => Ok(*a),
        other => Err(unsupported(format!("{name}: padding {other:?}"))),
    }
}

/// The pool the kernels fuse: 2x2, stride 2, floor mode, no padding or dilation.
#[cfg(feature = "fast")]
fn check_pool(
    name: &str,
    kernel_size: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
    padding: &PaddingConfig2d,
) -> Result<(), String> {
    if kernel_size != [2, 2]
        || stride != [2, 2]
        || dilation != [1, 1]
        || ceil_mode
        || !matches!(padding, PaddingConfig2d::Valid)
    {
        return Err(unsupported(format!(
            "{name}: a max-pool other than 2x2, stride 2, floor mode, no padding"
        )));
    }
    Ok(())
}

/// A convolution ready to run, BatchNorm folded in.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Conv {
    /// `[c_out, c_in, kh, kw]`, row-major (PyTorch's layout), scaled by the folded BatchNorm.
    pub weight: Vec<f32>,
    pub shape: [usize; 4],
    /// `[c_out]`, the folded bias.
    pub bias: Vec<f32>,
    pub padding: usize,
    /// Step between the kernel's positions (1 but in a capsule network).
    pub stride: usize,
    pub activation: Act,
    /// A fused 2x2 max-pool (stride 2, floor) after the activation.
    pub pool: bool,
}

/// A linear layer: `weight` `[out, in]` row-major (PyTorch's layout), `bias` `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Dense {
    pub weight: Vec<f32>,
    pub shape: [usize; 2],
    pub bias: Vec<f32>,
    pub activation: Act,
}

/// One step of a checked plan.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    Conv(Conv),
    /// `relu(b(a(x)) + shortcut(x))`.
    Residual {
        a: Conv,
        b: Conv,
        shortcut: Option<Conv>,
    },
    /// `k` x `k` max-pool, stride `k`, floor mode.
    MaxPool(usize),
    GlobalAvgPool,
    /// PyTorch's `(c, h, w)` flatten of images of this `[h, w, c]`.
    Flatten([usize; 3]),
    Linear(Dense),
    Dropout(f32),
    /// Primary capsules: `conv` (no activation, no pool), its channels cut into `capsules`
    /// types of `dim` values at every position, each squashed (`crate::plan::Layer::PrimaryCaps`).
    PrimaryCaps {
        conv: Conv,
        capsules: usize,
        dim: usize,
    },
    /// Digit capsules with routing by agreement.
    DigitCaps(Routing),
    /// The reconstruction decoder `fc1` (ReLU), `fc2` (ReLU), `fc3` (sigmoid), a side branch:
    /// the capsules go on unchanged.
    Decoder(alloc::boxed::Box<[Dense; 3]>),
    /// Logits `scale * |v_j|` of capsules `[J, D]`.
    CapsuleLength(f32),
}

/// The digit capsules' transformation matrices and routing iterations.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Routing {
    /// `[in_capsules, capsules, dim, in_dim]` row-major: `W_ij` is the `[dim, in_dim]` matrix
    /// at `[i, j]`.
    pub weight: Vec<f32>,
    pub shape: [usize; 4],
    /// Routing iterations, at least 1.
    pub iterations: usize,
}

/// A checked plan: its steps, each with a readable name and the shapes it takes and gives.
pub(crate) struct Checked {
    pub steps: Vec<Step>,
    pub names: Vec<String>,
    /// `shapes[i]` enters `steps[i]`; the last one is the output.
    pub shapes: Vec<Shape>,
}

/// Fold `p`'s BatchNorm (if any) into its weights and bias.
fn fold(p: &ConvParams, padding: usize, stride: usize, activation: Act, pool: bool) -> Conv {
    let [c_out, c_in, kh, kw] = p.shape;
    let bias = |o: usize| p.bias.as_ref().map_or(0.0, |b| b[o] as f64);
    let (scale, folded_bias): (Vec<f64>, Vec<f32>) = (0..c_out)
        .map(|o| match &p.norm {
            Some(n) => {
                let s = n.gamma[o] as f64 / libm::sqrt(n.var[o] as f64 + n.epsilon);
                (
                    s,
                    ((bias(o) - n.mean[o] as f64) * s + n.beta[o] as f64) as f32,
                )
            }
            None => (1.0, bias(o) as f32),
        })
        .unzip();
    let per_output = c_in * kh * kw;
    let weight = p
        .weight
        .iter()
        .enumerate()
        .map(|(i, &w)| (w as f64 * scale[i / per_output]) as f32)
        .collect();
    Conv {
        weight,
        shape: p.shape,
        bias: folded_bias,
        padding,
        stride,
        activation,
        pool,
    }
}

/// A readable suffix for an activation, e.g. ` + GELU`.
fn act_name(act: Act) -> &'static str {
    match act {
        Act::None => "",
        Act::Relu => " + ReLU",
        Act::Gelu => " + GELU",
    }
}

/// The image shape `[h, w, c]` a layer `name` needs, or why `shape` is not one.
fn image(shape: Shape, name: &str) -> Result<[usize; 3], String> {
    match shape {
        Shape::Image(s) => Ok(s),
        Shape::Flat(n) => Err(format!("{name} needs images, gets {n} flat features")),
        Shape::Capsules([n, d]) => Err(format!("{name} needs images, gets {n} capsules of {d}")),
    }
}

/// The capsules `[count, dim]` a layer `name` needs, or why `shape` is not that.
fn capsules(shape: Shape, name: &str, count: usize, dim: usize) -> Result<(), String> {
    match shape {
        Shape::Capsules(s) if s == [count, dim] => Ok(()),
        Shape::Capsules([n, d]) => Err(format!(
            "{name} takes {count} capsules of {dim}, gets {n} of {d}"
        )),
        _ => Err(format!(
            "{name} needs capsules: primary or digit capsules first"
        )),
    }
}

/// The linear layer `name` from `source`, checked to be `[out_features, in_features]`.
fn dense(
    source: &mut dyn Source,
    name: &str,
    in_features: usize,
    out_features: usize,
    activation: Act,
) -> Result<Dense, String> {
    let p = source.linear(name)?;
    if p.shape != [out_features, in_features] {
        return Err(format!(
            "{name}.weight has shape {:?}, the plan says [{out_features}, {in_features}]",
            p.shape
        ));
    }
    Ok(Dense {
        bias: p.bias.unwrap_or_else(|| alloc::vec![0.0; out_features]),
        weight: p.weight,
        shape: p.shape,
        activation,
    })
}

/// A convolution of `p` on images of `shape`, checked to chain; with its output shape.
fn conv_on(
    shape: Shape,
    name: &str,
    p: &ConvParams,
    padding: usize,
    stride: usize,
    act: Act,
    pool: bool,
) -> Result<(Conv, Shape), String> {
    let [h, w, c] = image(shape, name)?;
    let [c_out, c_in, kh, kw] = p.shape;
    let (ph, pw) = (h + 2 * padding, w + 2 * padding);
    if c_in != c || ph < kh || pw < kw {
        return Err(format!(
            "{name} takes {c_in} channels of at least {:?}, gets {c} of {:?}",
            [kh, kw],
            [ph, pw]
        ));
    }
    let (oh, ow) = ((ph - kh) / stride + 1, (pw - kw) / stride + 1);
    let (oh, ow) = if pool { (oh / 2, ow / 2) } else { (oh, ow) };
    Ok((
        fold(p, padding, stride, act, pool),
        Shape::Image([oh, ow, c_out]),
    ))
}

/// Check `plan` with parameters from `source` for an `input` of `[channels, height, width]`.
///
/// # Errors
/// A message naming the layer when the shapes do not chain, when its tensors disagree with
/// the plan, or when its configuration is one this crate does not implement; or naming a
/// tensor the source lacks.
pub(crate) fn check(
    plan: &[Layer],
    source: &mut dyn Source,
    input: [usize; 3],
) -> Result<Checked, String> {
    let mut shape = Shape::Image([input[1], input[2], input[0]]);
    let mut out = Checked {
        steps: Vec::new(),
        names: Vec::new(),
        shapes: alloc::vec![shape],
    };
    let push = |out: &mut Checked, step: Step, name: String, next: Shape| {
        out.steps.push(step);
        out.names.push(name);
        out.shapes.push(next);
    };
    for layer in plan {
        match layer {
            Layer::Conv {
                name,
                in_channels,
                out_channels,
                kernel_size,
                padding,
                norm,
                activation,
                pool,
                stride,
            } => {
                if !matches!(pool, 0 | 2) {
                    return Err(unsupported(format!("{name}: a fused {pool}x{pool} pool")));
                }
                let p = source.conv(name, *norm)?;
                check_spec(name, &p, *in_channels, *out_channels, *kernel_size)?;
                let (conv, next) =
                    conv_on(shape, name, &p, *padding, *stride, *activation, *pool == 2)?;
                let label = format!(
                    "{name}{} + bias{}{}{} (fused)",
                    if *stride > 1 {
                        format!(" (stride {stride})")
                    } else {
                        String::new()
                    },
                    if *norm { " + BatchNorm" } else { "" },
                    act_name(*activation),
                    if *pool == 2 { " + 2x2 max-pool" } else { "" }
                );
                push(&mut out, Step::Conv(conv), label, next);
                shape = next;
            }
            Layer::Residual {
                name,
                in_channels,
                out_channels,
                kernel_size: k,
            } => {
                if k % 2 == 0 {
                    return Err(unsupported(format!(
                        "{name}: a residual block of even {k}x{k} kernels"
                    )));
                }
                let pad = k / 2;
                let pa = source.conv(&format!("{name}.a"), true)?;
                check_spec(name, &pa, *in_channels, *out_channels, *k)?;
                let (a, inner) =
                    conv_on(shape, &format!("{name}.a"), &pa, pad, 1, Act::Relu, false)?;
                let pb = source.conv(&format!("{name}.b"), true)?;
                check_spec(name, &pb, *out_channels, *out_channels, *k)?;
                let (b, next) =
                    conv_on(inner, &format!("{name}.b"), &pb, pad, 1, Act::None, false)?;
                let shortcut = if in_channels != out_channels {
                    let shortcut = format!("{name}.shortcut");
                    let ps = source.conv(&shortcut, true)?;
                    check_spec(name, &ps, *in_channels, *out_channels, 1)?;
                    Some(conv_on(shape, &shortcut, &ps, 0, 1, Act::None, false)?.0)
                } else {
                    None
                };
                let label = format!("{name}: residual block ({k}x{k} convs, BatchNorm, ReLU)");
                push(&mut out, Step::Residual { a, b, shortcut }, label, next);
                shape = next;
            }
            Layer::MaxPool { kernel_size: k } => {
                let [h, w, c] = image(shape, "max_pool")?;
                if *k == 0 || h < *k || w < *k {
                    return Err(format!("a {k}x{k} max-pool of a {h}x{w} image"));
                }
                let next = Shape::Image([h / k, w / k, c]);
                push(
                    &mut out,
                    Step::MaxPool(*k),
                    format!("{k}x{k} max-pool"),
                    next,
                );
                shape = next;
            }
            Layer::GlobalAvgPool => {
                let [_, _, c] = image(shape, "global_avg_pool")?;
                let next = Shape::Flat(c);
                push(
                    &mut out,
                    Step::GlobalAvgPool,
                    String::from("global average pool"),
                    next,
                );
                shape = next;
            }
            Layer::Flatten => {
                let dims = image(shape, "flatten")?;
                let next = Shape::Flat(shape.len());
                push(&mut out, Step::Flatten(dims), String::from("flatten"), next);
                shape = next;
            }
            Layer::Linear {
                name,
                in_features,
                out_features,
                activation,
            } => {
                let Shape::Flat(features) = shape else {
                    return Err(format!("{name} needs flat features: flatten or pool first"));
                };
                let dense = dense(source, name, *in_features, *out_features, *activation)?;
                if *in_features != features {
                    return Err(format!(
                        "{name} takes {in_features} features, gets {features}"
                    ));
                }
                let label = format!("{name} + bias{}", act_name(*activation));
                push(
                    &mut out,
                    Step::Linear(dense),
                    label,
                    Shape::Flat(*out_features),
                );
                shape = Shape::Flat(*out_features);
            }
            Layer::Dropout { p } => {
                if !matches!(shape, Shape::Flat(_)) {
                    return Err(unsupported(String::from(
                        "dropout on feature maps or capsules (only on features: after a flatten, a pool or a linear layer)",
                    )));
                }
                push(&mut out, Step::Dropout(*p), format!("dropout {p}"), shape);
            }
            Layer::PrimaryCaps {
                name,
                in_channels,
                capsules,
                dim,
                kernel_size,
                stride,
            } => {
                let p = source.conv(name, false)?;
                check_spec(name, &p, *in_channels, capsules * dim, *kernel_size)?;
                let (conv, grid) = conv_on(shape, name, &p, 0, *stride, Act::None, false)?;
                let [h, w, _] = image(grid, name)?;
                let next = Shape::Capsules([capsules * h * w, *dim]);
                let label = format!(
                    "{name}: primary capsules ({kernel_size}x{kernel_size} conv, stride {stride}, {capsules} x {h}x{w} capsules of {dim}, squash)"
                );
                let step = Step::PrimaryCaps {
                    conv,
                    capsules: *capsules,
                    dim: *dim,
                };
                push(&mut out, step, label, next);
                shape = next;
            }
            Layer::DigitCaps {
                name,
                in_capsules,
                in_dim,
                capsules: count,
                dim,
                routing,
            } => {
                capsules(shape, name, *in_capsules, *in_dim)?;
                let (weight, s) = source.tensor(&format!("{name}.weight"), 4)?;
                let expected = [*in_capsules, *count, *dim, *in_dim];
                if s != expected {
                    return Err(format!(
                        "{name}.weight has shape {s:?}, the plan says {expected:?}"
                    ));
                }
                let next = Shape::Capsules([*count, *dim]);
                let label = format!(
                    "{name}: digit capsules ({count} of {dim}, {routing} routing iterations)"
                );
                let step = Step::DigitCaps(Routing {
                    weight,
                    shape: expected,
                    iterations: *routing,
                });
                push(&mut out, step, label, next);
                shape = next;
            }
            Layer::Decoder {
                name,
                capsules: count,
                dim,
                hidden1,
                hidden2,
                out_features,
            } => {
                capsules(shape, name, *count, *dim)?;
                let pixels = out.shapes[0].len();
                if *out_features != pixels {
                    return Err(format!(
                        "{name} reconstructs {out_features} pixels, the input has {pixels}"
                    ));
                }
                let layers = [
                    dense(
                        source,
                        &format!("{name}.fc1"),
                        count * dim,
                        *hidden1,
                        Act::Relu,
                    )?,
                    dense(
                        source,
                        &format!("{name}.fc2"),
                        *hidden1,
                        *hidden2,
                        Act::Relu,
                    )?,
                    // fc3's sigmoid is the decoder's own: `crate::layers` applies it.
                    dense(
                        source,
                        &format!("{name}.fc3"),
                        *hidden2,
                        *out_features,
                        Act::None,
                    )?,
                ];
                let label = format!(
                    "{name}: reconstruction decoder ({} -> {hidden1} -> {hidden2} -> {out_features})",
                    count * dim
                );
                push(
                    &mut out,
                    Step::Decoder(alloc::boxed::Box::new(layers)),
                    label,
                    shape,
                );
            }
            Layer::CapsuleLength { scale } => {
                let Shape::Capsules([count, _]) = shape else {
                    return Err(String::from("capsule_length needs capsules"));
                };
                let next = Shape::Flat(count);
                let label = format!("capsule lengths x {scale}");
                push(&mut out, Step::CapsuleLength(*scale), label, next);
                shape = next;
            }
        }
    }
    Ok(out)
}

/// [`check`] with the tensors of a safetensors `file`, by the names of `trainer/model.py`'s
/// state_dict; also refuses tensors the plan does not use (`num_batches_tracked` aside).
pub(crate) fn check_file(
    plan: &[Layer],
    file: &SafeTensors,
    input: [usize; 3],
) -> Result<Checked, String> {
    let mut source = FileSource {
        file,
        used: BTreeSet::new(),
    };
    let checked = check(plan, &mut source, input)?;
    let unused: Vec<&str> = file
        .names()
        .into_iter()
        .filter(|name| !source.used.contains(*name) && !name.ends_with("num_batches_tracked"))
        .collect();
    if !unused.is_empty() {
        return Err(format!(
            "tensors in the file that the model does not use: {unused:?}"
        ));
    }
    Ok(checked)
}

/// [`check`] of the `cnn` plan with the parameters of the burn `model` (loaded by burn-store).
#[cfg(feature = "fast")]
pub(crate) fn check_model(model: &Model, input: [usize; 3]) -> Result<Checked, String> {
    check(&crate::plan::cnn(), &mut ModelSource(model), input)
}

/// The plan's last layer, read from `file` as a [`Dense`], when it is a linear layer without
/// activation: the head that `crate::adapt` re-fits to taught examples (every plan of
/// `trainer/model.py` ends with one). Read after the model itself loaded, so its shape has been
/// checked.
///
/// # Errors
/// A message when the plan ends otherwise or the tensors cannot be read.
pub(crate) fn read_head(plan: &[Layer], file: &SafeTensors) -> Result<Dense, String> {
    match plan.last() {
        Some(Layer::Linear {
            name,
            activation: Act::None,
            ..
        }) => {
            let p = FileSource {
                file,
                used: BTreeSet::new(),
            }
            .linear(name)?;
            Ok(Dense {
                bias: p.bias.unwrap_or_else(|| alloc::vec![0.0; p.shape[0]]),
                weight: p.weight,
                shape: p.shape,
                activation: Act::None,
            })
        }
        _ => Err(String::from(
            "the model does not end with a linear layer without activation, the layer teaching re-fits",
        )),
    }
}

/// A layer's tensors agree with what the plan says about it.
fn check_spec(
    name: &str,
    p: &ConvParams,
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
) -> Result<(), String> {
    let expected = [out_channels, in_channels, kernel_size, kernel_size];
    if p.shape != expected {
        return Err(format!(
            "{name}: convolution weight of shape {:?}, the plan says {expected:?}",
            p.shape
        ));
    }
    Ok(())
}

/// Parameters read from the safetensors file; `used` collects the names read.
struct FileSource<'a> {
    file: &'a SafeTensors<'a>,
    used: BTreeSet<String>,
}

impl Source for FileSource<'_> {
    fn conv(&mut self, prefix: &str, norm: bool) -> Result<ConvParams, String> {
        let (file, used) = (self.file, &mut self.used);
        let (weight, s) = read(file, used, format!("{prefix}.conv.weight"), 4)?;
        let c_out = s[0];
        let mut vector =
            |suffix: &str| read_vector(file, used, format!("{prefix}.{suffix}"), c_out);
        let bias = Some(vector("conv.bias")?);
        let norm = if norm {
            Some(NormParams {
                gamma: vector("norm.weight")?,
                beta: vector("norm.bias")?,
                mean: vector("norm.running_mean")?,
                var: vector("norm.running_var")?,
                epsilon: model::norm_config(c_out).epsilon,
            })
        } else {
            None
        };
        Ok(ConvParams {
            weight,
            shape: [s[0], s[1], s[2], s[3]],
            bias,
            norm,
        })
    }

    fn tensor(&mut self, name: &str, rank: usize) -> Result<(Vec<f32>, Vec<usize>), String> {
        read(self.file, &mut self.used, name.to_string(), rank)
    }

    fn linear(&mut self, prefix: &str) -> Result<LinearParams, String> {
        let (weight, s) = read(self.file, &mut self.used, format!("{prefix}.weight"), 2)?;
        let bias = read_vector(self.file, &mut self.used, format!("{prefix}.bias"), s[0])?;
        Ok(LinearParams {
            weight,
            shape: [s[0], s[1]],
            bias: Some(bias),
        })
    }
}

/// Parameters of the burn `cnn` model, by its field names.
#[cfg(feature = "fast")]
struct ModelSource<'a>(&'a Model);

#[cfg(feature = "fast")]
impl Source for ModelSource<'_> {
    fn conv(&mut self, prefix: &str, _norm: bool) -> Result<ConvParams, String> {
        match prefix {
            "conv1" => conv_params(&self.0.conv1, prefix),
            "conv2" => conv_params(&self.0.conv2, prefix),
            other => Err(format!("the burn model has no convolution {other}")),
        }
    }

    fn linear(&mut self, prefix: &str) -> Result<LinearParams, String> {
        match prefix {
            "fc1" => linear_params(&self.0.fc1),
            "fc2" => linear_params(&self.0.fc2),
            "fc3" => linear_params(&self.0.fc3),
            other => Err(format!("the burn model has no linear layer {other}")),
        }
    }

    fn tensor(&mut self, name: &str, _rank: usize) -> Result<(Vec<f32>, Vec<usize>), String> {
        Err(format!("the burn model has no tensor {name}"))
    }
}

/// Tensor `name` of the file as f32 values, with its shape, checked to have `rank`
/// dimensions; its name goes into `used`.
fn read(
    file: &SafeTensors,
    used: &mut BTreeSet<String>,
    name: String,
    rank: usize,
) -> Result<(Vec<f32>, Vec<usize>), String> {
    let view = file
        .tensor(&name)
        .map_err(|_| format!("tensor {name} is missing from the file"))?;
    let shape = view.shape().to_vec();
    if shape.len() != rank {
        return Err(format!(
            "{name} has shape {shape:?}, expected {rank} dimensions"
        ));
    }
    let values = if view.dtype() == Dtype::I8 {
        dequantize(file, used, &name, &shape, view.data())?
    } else {
        widen(view.dtype(), view.data()).map_err(|e| format!("{name}: {e}"))?
    };
    used.insert(name);
    Ok((values, shape))
}

/// Suffix of an int8 weight's scales (`mnist_common.weights.SCALE_SUFFIX`): `fc1.weight` in
/// int8 is `fc1.weight_scale` (f32 or f16, one value per output channel) times its values.
pub const SCALE_SUFFIX: &str = "_scale";

/// The f32 values of the int8 tensor `name` (`bytes`, of `shape` `[out, ...]`): each output
/// channel's values times its scale in `<name>_scale` (symmetric per-channel quantization,
/// `invoke build-wasm --weights-dtype int8`). Errors name a missing or mis-shaped scale.
fn dequantize(
    file: &SafeTensors,
    used: &mut BTreeSet<String>,
    name: &str,
    shape: &[usize],
    bytes: &[u8],
) -> Result<Vec<f32>, String> {
    let channels = shape.first().copied().unwrap_or(0);
    let scale_name = format!("{name}{SCALE_SUFFIX}");
    let scale = file
        .tensor(&scale_name)
        .map_err(|_| format!("{name} is int8 but {scale_name} is missing from the file"))?;
    if scale.shape() != [channels] {
        return Err(format!(
            "{scale_name} has shape {:?}, expected [{channels}] (one scale per output channel of {name})",
            scale.shape()
        ));
    }
    let scales = widen(scale.dtype(), scale.data()).map_err(|e| format!("{scale_name}: {e}"))?;
    used.insert(scale_name);
    let per_channel = bytes.len() / channels.max(1);
    Ok(bytes
        .iter()
        .enumerate()
        .map(|(i, &q)| f32::from(q as i8) * scales[i / per_channel])
        .collect())
}

/// [`read`] of a 1-D tensor that must hold `len` values (a bias, a BatchNorm vector).
fn read_vector(
    file: &SafeTensors,
    used: &mut BTreeSet<String>,
    name: String,
    len: usize,
) -> Result<Vec<f32>, String> {
    let (values, _) = read(file, used, name.clone(), 1)?;
    if values.len() != len {
        return Err(format!(
            "{name} has {} values, expected {len}",
            values.len()
        ));
    }
    Ok(values)
}

/// Little-endian f32 or f16 values as f32.
fn widen(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    match dtype {
        Dtype::F32 => Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::F16 => Ok(bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        other => Err(format!(
            "dtype {other:?} (this crate reads F32, F16, and I8 with per-channel scales)"
        )),
    }
}

/// A burn tensor's f32 values, with its shape. The model is built in f32 and burn-store
/// converts what it loads to the parameters' dtype, so no conversion happens here (a generic
/// one would link burn's conversions between every pair of dtypes).
#[cfg(feature = "fast")]
fn values<const D: usize>(tensor: Tensor<D>) -> Result<(Vec<f32>, [usize; D]), String> {
    let shape: [usize; D] = tensor.dims();
    let data = tensor.into_data();
    let values = data
        .as_slice::<f32>()
        .map_err(|e| unsupported(format!("a parameter of dtype {:?} ({e:?})", data.dtype())))?;
    Ok((values.to_vec(), shape))
}

/// An optional bias's values (none for a layer built without bias).
#[cfg(feature = "fast")]
fn bias_values(bias: &Option<Param<Tensor<1>>>) -> Result<Option<Vec<f32>>, String> {
    Ok(match bias {
        Some(b) => Some(values(b.val())?.0),
        None => None,
    })
}

#[cfg(feature = "fast")]
fn conv_params(block: &ConvBlock, name: &str) -> Result<ConvParams, String> {
    let conv = &block.conv;
    let padding = check_conv(name, conv.stride, conv.dilation, conv.groups, &conv.padding)?;
    if padding != 0 {
        return Err(unsupported(format!(
            "{name}: a padded convolution in the burn model"
        )));
    }
    let pool = &block.pool;
    check_pool(
        name,
        pool.kernel_size,
        pool.stride,
        pool.dilation,
        pool.ceil_mode,
        &pool.padding,
    )?;
    let (weight, shape) = values(conv.weight.val())?;
    let norm = &block.norm;
    Ok(ConvParams {
        weight,
        shape,
        bias: bias_values(&conv.bias)?,
        norm: Some(NormParams {
            gamma: values(norm.gamma.val())?.0,
            beta: values(norm.beta.val())?.0,
            mean: values(norm.running_mean.value())?.0,
            var: values(norm.running_var.value())?.0,
            epsilon: norm.epsilon,
        }),
    })
}

/// burn's `Linear` holds its weight as `[in, out]`: transposed back to PyTorch's `[out, in]`.
#[cfg(feature = "fast")]
fn linear_params(layer: &burn::nn::Linear) -> Result<LinearParams, String> {
    let (weight, [k, n]) = values(layer.weight.val())?;
    let transposed = (0..n * k).map(|i| weight[(i % k) * n + i / k]).collect();
    Ok(LinearParams {
        weight: transposed,
        shape: [n, k],
        bias: bias_values(&layer.bias)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_values_widen_exactly_and_other_dtypes_are_named() {
        let halves = [1.0f32, -2.5, 0.000_061_035_156, 65504.0];
        let bytes: Vec<u8> = halves
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(widen(Dtype::F16, &bytes).unwrap(), halves);
        let message = widen(Dtype::F64, &[0; 8]).unwrap_err();
        assert!(message.contains("F64"), "{message}");
    }
}
