//! Convolution and linear layers as one register-tiled matrix product ("indirect GEMM"),
//! generic over shapes and over the SIMD instruction set.
//!
//! Both layer kinds compute `out[m, n] = act(bias[n] + Σ_k a[m, k] * w[k, n])`:
//!
//! * **Linear**: `m` is the image in the batch, `k` the input feature, `n` the output feature.
//! * **Convolution** (stride `s`, valid padding, NHWC): `m` is an output pixel `(y, x)`, `n` an
//!   output channel, and `k = (ky * kernel_w + kx) * C_in + c` runs over the receptive field,
//!   so `a[m, k] = input[((s*y + ky) * W + (s*x + kx)) * C_in + c]`. No im2col buffer: row `m`
//!   starts at input offset `(s*y * W + s*x) * C_in`, and the field is `kernel_h` *segments*
//!   of `kernel_w * C_in` contiguous values at offsets `ky * W * C_in` from there (a stride
//!   only moves where the rows start).
//!
//! The weights are packed once, at load, into column blocks of `NR = 2 * LANES` output
//! channels: block `b` holds `w[k, b*NR .. b*NR + NR]` for every `k`, contiguous, zero-padded
//! past the last channel. The microkernel keeps an `MR x NR` tile of the output in registers
//! (`MR` = 4 rows: 8 vector accumulators, XNNPACK's 4x8 shape on 4-lane SIMD), and per `k`
//! broadcasts 4 input values, loads 2 weight vectors and does 8 multiply-adds.
//!
//! A convolution followed by a 2x2 max-pool (stride 2, floor) takes its 4 rows from one pool
//! window, so the pool happens in registers: per channel the max over the window. For GELU,
//! which falls then rises (its minimum is at x ≈ -0.75), the max of GELU over the window is
//! `max(gelu(max), gelu(min))`, exactly: 2 GELUs per pooled value instead of 4. Rows of the
//! convolution that the floor-mode pool drops are never computed.

use alloc::vec;
use alloc::vec::Vec;

use super::gelu::gelu;
use super::simd::Simd;

/// Rows of the output tile (pixels or images) computed together.
pub(crate) const MR: usize = 4;

/// Packed weights (f32 values) above which [`Tiles::rows`] goes block-major: 512 KB, half of
/// a common L2 cache.
const BLOCK_MAJOR_WEIGHTS: usize = 1 << 17;

/// The activation after a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// None: the layer's output as it is (e.g. logits).
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// Exact, erf-based GELU (PyTorch's `nn.GELU()`).
    Gelu,
}

/// A layer's weights `w[k, n]` and bias `b[n]`, packed for `nr`-wide column blocks.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Packed {
    /// `[blocks][k][nr]`, zero-padded past column `n`.
    data: Vec<f32>,
    /// `[blocks * nr]`, zero-padded.
    bias: Vec<f32>,
    pub k: usize,
    pub n: usize,
    nr: usize,
}

impl Packed {
    /// Pack `weight(k, n)` (any layout, read through the closure) and `bias`, `bias.len() == n`.
    pub(crate) fn new(
        k: usize,
        n: usize,
        nr: usize,
        weight: impl Fn(usize, usize) -> f32,
        bias: &[f32],
    ) -> Self {
        debug_assert_eq!(bias.len(), n);
        let blocks = n.div_ceil(nr);
        let mut data = vec![0.0; blocks * k * nr];
        for (b, block) in data.chunks_exact_mut(k * nr).enumerate() {
            for (kk, row) in block.chunks_exact_mut(nr).enumerate() {
                for (j, value) in row.iter_mut().enumerate() {
                    let col = b * nr + j;
                    if col < n {
                        *value = weight(kk, col);
                    }
                }
            }
        }
        let mut padded = vec![0.0; blocks * nr];
        padded[..n].copy_from_slice(bias);
        Self {
            data,
            bias: padded,
            k,
            n,
            nr,
        }
    }

    fn blocks(&self) -> usize {
        self.n.div_ceil(self.nr)
    }
}

/// A 2-D convolution (zero `padding` on every side, `stride` in both directions) with its
/// activation and optional 2x2 max-pool of its output, on one NHWC image.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConvLayer {
    /// `k = kernel_h * kernel_w * in_channels`, `n = out_channels`.
    pub weights: Packed,
    pub in_channels: usize,
    pub kernel_size: [usize; 2],
    pub padding: usize,
    /// Step between the kernel's positions, pixels (at least 1).
    pub stride: usize,
    pub activation: Activation,
    pub max_pool_2x2: bool,
}

impl ConvLayer {
    /// Output `[height, width]` for an input of `[height, width]` (after the pool, if any);
    /// the input must be at least the kernel's size once padded.
    pub(crate) fn output_size(&self, input: [usize; 2]) -> [usize; 2] {
        let (p, s) = (2 * self.padding, self.stride);
        let conv = [
            (input[0] + p - self.kernel_size[0]) / s + 1,
            (input[1] + p - self.kernel_size[1]) / s + 1,
        ];
        if self.max_pool_2x2 {
            [conv[0] / 2, conv[1] / 2]
        } else {
            conv
        }
    }

    /// `input`: one image `[height, width, in_channels]`; `out`: `[oh, ow, out_channels]` of
    /// `output_size([height, width])`.
    #[inline(always)]
    pub(crate) fn run<S: Simd>(&self, input: &[f32], size: [usize; 2], out: &mut [f32]) {
        // A zero border, then the valid convolution of the padded image (one call of it:
        // each inlined copy of the kernel costs code size).
        let padded;
        let (input, size) = if self.padding > 0 {
            let (p, c) = (self.padding, self.in_channels);
            let [h, w] = size;
            let pw = w + 2 * p;
            let mut buffer = vec![0.0; (h + 2 * p) * pw * c];
            for (y, row) in input.chunks_exact(w * c).enumerate() {
                buffer[((y + p) * pw + p) * c..][..w * c].copy_from_slice(row);
            }
            padded = buffer;
            (&padded[..], [h + 2 * p, pw])
        } else {
            (input, size)
        };
        self.valid::<S>(input, size, out)
    }

    /// [`ConvLayer::run`] on an input that is already padded.
    #[inline(always)]
    fn valid<S: Simd>(&self, input: &[f32], size: [usize; 2], out: &mut [f32]) {
        let [h, w] = size;
        let c_in = self.in_channels;
        let c_out = self.weights.n;
        let [kh, kw] = self.kernel_size;
        assert!(
            h >= kh && w >= kw && input.len() == h * w * c_in && self.weights.k == kh * kw * c_in
        );
        let stride = self.stride;
        let conv = [(h - kh) / stride + 1, (w - kw) / stride + 1];
        let [oh, ow] = if self.max_pool_2x2 {
            [conv[0] / 2, conv[1] / 2]
        } else {
            conv
        };
        assert_eq!(out.len(), oh * ow * c_out);
        // One segment per kernel row: its `kw` pixels of `c_in` channels are contiguous in
        // NHWC, in the packed weights' k order ((ky * kw + kx) * c_in + c). Fewer, longer
        // segments matter most for a thin input (conv1, c_in = 1: 3 segments of 3, not 9 of 1).
        let segments: Vec<usize> = (0..kh).map(|ky| ky * w * c_in).collect();
        // Where the receptive field of the convolution's output pixel (y, x) starts.
        let offset = |y: usize, x: usize| (stride * y * w + stride * x) * c_in;
        let tiles = Tiles {
            input,
            segments: &segments,
            segment_len: kw * c_in,
            weights: &self.weights,
        };
        if self.max_pool_2x2 {
            for y in 0..oh {
                for x in 0..ow {
                    let rows = [
                        offset(2 * y, 2 * x),
                        offset(2 * y, 2 * x + 1),
                        offset(2 * y + 1, 2 * x),
                        offset(2 * y + 1, 2 * x + 1),
                    ];
                    let dst = &mut out[(y * ow + x) * c_out..][..c_out];
                    tiles.pooled::<S>(rows, self.activation, dst);
                }
            }
        } else {
            let rows: Vec<usize> = (0..oh)
                .flat_map(|y| (0..ow).map(move |x| offset(y, x)))
                .collect();
            tiles.rows::<S>(&rows, self.activation, out);
        }
    }
}

/// A fully connected layer `out = act(x · w + b)`, `w` of shape `[in_features, out_features]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LinearLayer {
    pub weights: Packed,
    pub activation: Activation,
}

impl LinearLayer {
    /// The rows of `[batch, in_features]` inputs: `0, k, 2k, ...` (`k` = in_features).
    pub(crate) fn batch_rows(&self, input_len: usize) -> Vec<usize> {
        let k = self.weights.k;
        assert!(input_len.is_multiple_of(k), "a batch of {k}-feature rows");
        (0..input_len / k).map(|i| i * k).collect()
    }

    /// One output row per entry of `rows`: the `in_features` values of `input` starting at
    /// that offset, to `out[i * out_features ..][..out_features]` (`[batch, in_features]`
    /// inputs: [`LinearLayer::batch_rows`]).
    #[inline(always)]
    pub(crate) fn run<S: Simd>(&self, input: &[f32], rows: &[usize], out: &mut [f32]) {
        let (k, n) = (self.weights.k, self.weights.n);
        assert!(out.len() == rows.len() * n && rows.iter().all(|&r| r + k <= input.len()));
        let tiles = Tiles {
            input,
            segments: &[0],
            segment_len: k,
            weights: &self.weights,
        };
        tiles.rows::<S>(rows, self.activation, out);
    }
}

/// One layer's product over `input`: row `m` reads `input[row + segment + i]` for each
/// segment and `i < segment_len`, in the packed weights' `k` order.
struct Tiles<'a> {
    input: &'a [f32],
    segments: &'a [usize],
    segment_len: usize,
    weights: &'a Packed,
}

impl Tiles<'_> {
    /// Largest input offset a row starting at `row` reads, plus one.
    fn end(&self, row: usize) -> usize {
        row + self.segments.iter().max().copied().unwrap_or(0) + self.segment_len
    }

    /// `MR` rows from one pool window, max-pooled: `dst[n]` for every output channel.
    #[inline(always)]
    fn pooled<S: Simd>(&self, rows: [usize; MR], activation: Activation, dst: &mut [f32]) {
        assert!(rows.iter().all(|&r| self.end(r) <= self.input.len()));
        for block in 0..self.weights.blocks() {
            // SAFETY: every row's reads end inside `input` (checked above); the block is in range.
            let acc = unsafe { self.tile::<S, MR>(rows, block) };
            let mut out = [S::splat(0.0); 2];
            for j in 0..2 {
                let (mut hi, mut lo) = (acc[0][j], acc[0][j]);
                for row in &acc[1..] {
                    hi = S::max(hi, row[j]);
                    lo = S::min(lo, row[j]);
                }
                out[j] = match activation {
                    Activation::Identity => hi,
                    Activation::Relu => S::max(hi, S::splat(0.0)),
                    Activation::Gelu => S::max(gelu::<S>(hi), gelu::<S>(lo)),
                };
            }
            store::<S>(out, block * self.weights.nr, dst);
        }
    }

    /// Every row in `rows`, each to `out[i * n ..][..n]`.
    #[inline(always)]
    fn rows<S: Simd>(&self, rows: &[usize], activation: Activation, out: &mut [f32]) {
        let n = self.weights.n;
        assert!(
            rows.iter().all(|&r| self.end(r) <= self.input.len()) && out.len() >= rows.len() * n
        );
        let (chunks, blocks) = (rows.len().div_ceil(MR), self.weights.blocks());
        // Row-major (each chunk of rows against every column block, its inputs reused), unless
        // the weights outgrow the cache: then block-major, each block's `k x nr` weights reused
        // by every chunk before the next block's are read (the capsule network's primary
        // capsules, 2.6 MB of weights for 36 pixels: 9 passes over them from L3 otherwise).
        let block_major = self.weights.data.len() > BLOCK_MAJOR_WEIGHTS;
        for step in 0..chunks * blocks {
            let (c, block) = if block_major {
                (step % chunks, step / chunks)
            } else {
                (step / blocks, step % blocks)
            };
            let (first, col) = (c * MR, block * self.weights.nr);
            let chunk = &rows[first..(first + MR).min(rows.len())];
            // SAFETY: as in `pooled`.
            if let Ok(tile) = <[usize; MR]>::try_from(chunk) {
                let acc = unsafe { self.tile::<S, MR>(tile, block) };
                for (r, acc) in acc.iter().enumerate() {
                    store::<S>(
                        activate::<S>(*acc, activation),
                        col,
                        &mut out[(first + r) * n..][..n],
                    );
                }
            } else {
                for (r, &row) in chunk.iter().enumerate() {
                    let acc = unsafe { self.single::<S>(row, block) };
                    store::<S>(
                        activate::<S>(acc, activation),
                        col,
                        &mut out[(first + r) * n..][..n],
                    );
                }
            }
        }
    }

    /// The `R x NR` tile of rows `rows` and column block `block`, bias included.
    ///
    /// # Safety
    /// `self.end(row) <= self.input.len()` for every row, and `block < self.weights.blocks()`.
    #[inline(always)]
    unsafe fn tile<S: Simd, const R: usize>(
        &self,
        rows: [usize; R],
        block: usize,
    ) -> [[S::V; 2]; R] {
        let nr = self.weights.nr;
        debug_assert_eq!(nr, 2 * S::LANES);
        let bias = unsafe {
            [
                S::load(self.weights.bias.as_ptr().add(block * nr)),
                S::load(self.weights.bias.as_ptr().add(block * nr + S::LANES)),
            ]
        };
        let mut acc = [bias; R];
        let mut w = unsafe { self.weights.data.as_ptr().add(block * self.weights.k * nr) };
        let x = self.input.as_ptr();
        for &segment in self.segments {
            let a: [*const f32; R] = core::array::from_fn(|r| unsafe { x.add(rows[r] + segment) });
            for i in 0..self.segment_len {
                let (b0, b1) = unsafe { (S::load(w), S::load(w.add(S::LANES))) };
                w = unsafe { w.add(nr) };
                for r in 0..R {
                    let a = S::splat(unsafe { *a[r].add(i) });
                    acc[r][0] = S::mul_add(a, b0, acc[r][0]);
                    acc[r][1] = S::mul_add(a, b1, acc[r][1]);
                }
            }
        }
        acc
    }

    /// One row (a batch of one in a linear layer): four independent pairs of accumulators
    /// over `k`, so the multiply-adds do not wait on each other, summed at the end.
    ///
    /// # Safety
    /// As [`Tiles::tile`].
    #[inline(always)]
    unsafe fn single<S: Simd>(&self, row: usize, block: usize) -> [S::V; 2] {
        const U: usize = 4;
        let nr = self.weights.nr;
        let zero = S::splat(0.0);
        let mut acc = [[zero; 2]; U];
        let mut w = unsafe { self.weights.data.as_ptr().add(block * self.weights.k * nr) };
        for &segment in self.segments {
            let a = unsafe { self.input.as_ptr().add(row + segment) };
            let mut i = 0;
            while i + U <= self.segment_len {
                for (u, acc) in acc.iter_mut().enumerate() {
                    let (b0, b1) =
                        unsafe { (S::load(w.add(u * nr)), S::load(w.add(u * nr + S::LANES))) };
                    let a = S::splat(unsafe { *a.add(i + u) });
                    acc[0] = S::mul_add(a, b0, acc[0]);
                    acc[1] = S::mul_add(a, b1, acc[1]);
                }
                w = unsafe { w.add(U * nr) };
                i += U;
            }
            for i in i..self.segment_len {
                let (b0, b1) = unsafe { (S::load(w), S::load(w.add(S::LANES))) };
                let a = S::splat(unsafe { *a.add(i) });
                acc[0][0] = S::mul_add(a, b0, acc[0][0]);
                acc[0][1] = S::mul_add(a, b1, acc[0][1]);
                w = unsafe { w.add(nr) };
            }
        }
        let bias = unsafe {
            [
                S::load(self.weights.bias.as_ptr().add(block * nr)),
                S::load(self.weights.bias.as_ptr().add(block * nr + S::LANES)),
            ]
        };
        core::array::from_fn(|j| {
            S::add(
                S::add(S::add(acc[0][j], acc[1][j]), S::add(acc[2][j], acc[3][j])),
                bias[j],
            )
        })
    }
}

/// The activation of both vectors of a tile row (written out, not `map`ped: a closure is a
/// function of its own, which LLVM may leave uninlined and so compiled without the entry
/// point's target features).
#[inline(always)]
fn activate<S: Simd>(v: [S::V; 2], activation: Activation) -> [S::V; 2] {
    [
        activate_one::<S>(v[0], activation),
        activate_one::<S>(v[1], activation),
    ]
}

#[inline(always)]
fn activate_one<S: Simd>(v: S::V, activation: Activation) -> S::V {
    match activation {
        Activation::Identity => v,
        Activation::Relu => S::max(v, S::splat(0.0)),
        Activation::Gelu => gelu::<S>(v),
    }
}

/// Write the `2 * LANES` columns starting at `col` to `dst[col..]`, those that exist.
#[inline(always)]
fn store<S: Simd>(v: [S::V; 2], col: usize, dst: &mut [f32]) {
    let width = 2 * S::LANES;
    if col + width <= dst.len() {
        // SAFETY: `dst[col..col + width]` is in bounds.
        unsafe {
            S::store(dst.as_mut_ptr().add(col), v[0]);
            S::store(dst.as_mut_ptr().add(col + S::LANES), v[1]);
        }
    } else {
        let mut spill = [0.0f32; 32];
        // SAFETY: `spill` holds 2 * LANES <= 32 values.
        unsafe {
            S::store(spill.as_mut_ptr(), v[0]);
            S::store(spill.as_mut_ptr().add(S::LANES), v[1]);
        }
        let valid = dst.len() - col;
        dst[col..].copy_from_slice(&spill[..valid]);
    }
}
