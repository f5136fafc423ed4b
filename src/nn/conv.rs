//! 2-D convolution as candle custom ops built on im2col/col2im and GEMM, with their own
//! backward: the CPU kernels of `cnnc train`.
//!
//! Why not candle's own `conv2d`: on the CPU its backward computes the input gradient
//! with a naive `conv_transpose2d` (46 % of an F34 step at 224×224, 4.9× the time of a
//! GEMM of the same FLOPs), computes it even for the first layer, whose input is the
//! data, and takes one padding, stride and dilation for both axes (../shared/DEPS.md,
//! benches/train_profile.rs).
//!
//! Semantics: those of `torch.nn.functional.conv2d` on an input padded by
//! `pad = [top, bottom, left, right]` zeros. Input (N, C, H, W), weight
//! (Co, C/groups, kh, kw), optional bias (Co); output (N, Co, oh, ow) with
//! `oh = (H + top + bottom − dh·(kh − 1) − 1) / sh + 1` (and `ow` alike).
//!
//! How: the batch is cut into blocks of samples, enough per block that a GEMM has at least
//! 256 columns (one sample per block from 16×16 maps up). Per block and group, `cols`
//! (K × B·P, K = C/groups·kh·kw, P = oh·ow, B samples) gathers the receptive fields
//! (im2col; a one-sample block of a 1×1 conv with stride 1 and no padding reads the input
//! itself). Then
//! - forward: `out = W·cols + b`, with an optional ReLU applied as the block is written
//!   ([`ConvSpec::apply_relu`]);
//! - weight gradient: `dW += dOut·colsᵀ`, bias gradient `db = Σ dOut` (one op, [`ConvParamGrad`]);
//! - input gradient: `dcols = Wᵀ·dOut`, scattered back by col2im ([`ConvInputGrad`]); it is
//!   skipped when the input tracks no gradient (the data).
//!
//! 3×3 stride-1 layers with enough channels and tiles run Winograd F(2×2, 3×3) instead
//! (`winograd.rs`, all three passes); maps of at most 4 pixels run their forward and
//! input gradient as one GEMM per pair of pixels a tap joins (`tiny.rs`).
//!
//! With more than one thread (candle's count: `RAYON_NUM_THREADS`, else the cores) the
//! blocks are split over rayon's threads, each GEMM single-threaded (the weight gradient
//! summed from one accumulator per thread, in a fixed order); fewer blocks than threads
//! run in turn, each GEMM multi-threaded. Scratch buffers stay with their thread between
//! calls; the big ones (Winograd's transformed kernels, the weight-gradient accumulators)
//! come from a process-wide pool (`Pooled`), written over rather than zeroed. Results
//! do not depend on timing: for a given thread count they are bit-for-bit reproducible
//! (the resume test relies on it).
//!
//! [`GradSink`]: the parameter gradients of a [`crate::nn::Model::backward`] bypass
//! candle's accumulation (a tensor of zeros plus the gradient, per parameter).
//!
//! Runs on the CPU in f32 and f64. Other devices use candle's `conv2d` (see
//! [`Conv2d::forward`]).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

mod tiny;
mod winograd;

use winograd::Kept;

/// The geometry of a convolution that does not depend on the input's size.
/// Where the backward of the conv ops built with it leaves their weight and bias
/// gradients, while it is switched on, instead of returning them to candle's autograd,
/// which would add each to a new tensor of zeros (`GradStore::or_insert`): 84 MB zeroed,
/// read and written again per F34 step, 9 ms, on one thread. [`crate::nn::Model::backward`]
/// switches it on around `loss.backward()` and puts the gradients into the store; a plain
/// `loss.backward()` leaves it off, and the ops return their gradients as usual.
#[derive(Clone, Debug, Default)]
pub struct GradSink(std::sync::Arc<SinkState>);

#[derive(Debug, Default)]
struct SinkState {
    on: std::sync::atomic::AtomicBool,
    grads: std::sync::Mutex<Vec<(Tensor, Tensor)>>,
}

impl GradSink {
    /// Switches the sink on until the guard is dropped.
    pub fn on(&self) -> impl Drop + '_ {
        struct Off<'a>(&'a GradSink);
        impl Drop for Off<'_> {
            fn drop(&mut self) {
                self.0 .0.on.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.0.on.store(true, std::sync::atomic::Ordering::SeqCst);
        Off(self)
    }

    fn is_on(&self) -> bool {
        self.0.on.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The gradients left since the last call, as (parameter, gradient), in the order left.
    pub fn take(&self) -> Vec<(Tensor, Tensor)> {
        std::mem::take(&mut *self.0.grads.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Keeps the gradients of `w` and `b` if the sink is on (and returns none of them),
    /// else returns them.
    fn keep(&self, w: &Tensor, b: Option<&Tensor>, dw: Option<Tensor>, db: Option<Tensor>) -> (Option<Tensor>, Option<Tensor>) {
        if !self.is_on() {
            return (dw, db);
        }
        let mut grads = self.0.grads.lock().unwrap_or_else(|e| e.into_inner());
        grads.extend(dw.map(|g| (w.clone(), g)));
        grads.extend(b.zip(db).map(|(b, g)| (b.clone(), g)));
        (None, None)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// [vertical, horizontal].
    pub stride: [usize; 2],
    /// [vertical, horizontal].
    pub dilation: [usize; 2],
    /// Zero padding [top, bottom, left, right].
    pub pad: [usize; 4],
    pub groups: usize,
}

/// A convolution with its parameters: what a model holds for one conv layer.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub spec: ConvSpec,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, spec: ConvSpec) -> Conv2d {
        Conv2d { weight, bias, spec }
    }

    /// The convolution of `x` (N, C, H, W), bias included, differentiable.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.spec.apply(x, &self.weight, self.bias.as_ref())
    }
}

impl candle_core::Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Conv2d::forward(self, xs)
    }
}

/// The sizes of one call.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    groups: usize,
    spec: ConvSpec,
    /// rayon's threads, which the batch's blocks are spread over.
    threads: usize,
}

impl Geom {
    /// Input channels per group.
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Output channels per group.
    fn cog(&self) -> usize {
        self.co / self.groups
    }
    /// Rows of `cols`: one receptive field's length.
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    /// Output positions.
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    fn in_sample(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_sample(&self) -> usize {
        self.co * self.p()
    }
    /// Whether `cols` is the input itself (1×1, stride 1, no padding).
    fn direct(&self) -> bool {
        let s = &self.spec;
        self.kh == 1 && self.kw == 1 && s.stride == [1, 1] && s.pad == [0; 4]
    }

    fn of(spec: ConvSpec, x: &Shape, w: &Shape) -> candle_core::Result<Geom> {
        let (n, c, h, wd) = x.dims4()?;
        let (co, cg, kh, kw) = w.dims4()?;
        let g = spec.groups;
        if g == 0 || spec.stride.contains(&0) || spec.dilation.contains(&0) {
            candle_core::bail!("conv: groups, stride and dilation must be at least 1 ({spec:?})")
        }
        if c % g != 0 || co % g != 0 || cg != c / g {
            candle_core::bail!("conv: input {x:?} and weight {w:?} do not fit {g} groups")
        }
        let out = |len: usize, before: usize, after: usize, k: usize, d: usize, s: usize| -> candle_core::Result<usize> {
            if k == 0 {
                candle_core::bail!("conv: empty kernel")
            }
            let span = d * (k - 1) + 1;
            let padded = len + before + after;
            if padded < span {
                candle_core::bail!("conv: kernel {k} (dilation {d}) does not fit input {len} padded by {before}+{after}")
            }
            Ok((padded - span) / s + 1)
        };
        let oh = out(h, spec.pad[0], spec.pad[1], kh, spec.dilation[0], spec.stride[0])?;
        let ow = out(wd, spec.pad[2], spec.pad[3], kw, spec.dilation[1], spec.stride[1])?;
        Ok(Geom { n, c, h, w: wd, co, kh, kw, oh, ow, groups: g, spec, threads: threads() })
    }

    /// The output columns `ox` whose input column `ox·sw − left + kx·dw` lies in the
    /// input, as a range (empty when none does).
    fn valid_cols(&self, kx: usize) -> std::ops::Range<usize> {
        let (sw, left, off) = (self.spec.stride[1] as isize, self.spec.pad[2] as isize, (kx * self.spec.dilation[1]) as isize);
        // ix = ox·sw + off − left ∈ [0, w)  ⇔  ox ∈ [ceil((left − off)/sw), ceil((w + left − off)/sw)).
        let ceil_div = |a: isize, b: isize| if a <= 0 { -((-a) / b) } else { (a + b - 1) / b };
        let lo = ceil_div(left - off, sw).clamp(0, self.ow as isize) as usize;
        let hi = ceil_div(self.w as isize + left - off, sw).clamp(0, self.ow as isize) as usize;
        lo..hi.max(lo)
    }

    /// The input row of output row `oy` and kernel row `ky`, if inside the input.
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.spec.stride[0] + ky * self.spec.dilation[0]) as isize - self.spec.pad[0] as isize;
        (iy >= 0 && (iy as usize) < self.h).then_some(iy as usize)
    }

    /// For each kernel column `kx`: the output columns that read inside the input, and
    /// the input column of the first of them.
    fn taps(&self) -> Vec<(std::ops::Range<usize>, usize)> {
        (0..self.kw)
            .map(|kx| {
                let xs = self.valid_cols(kx);
                let ix0 = if xs.is_empty() { 0 } else { xs.start * self.spec.stride[1] + kx * self.spec.dilation[1] - self.spec.pad[2] };
                (xs, ix0)
            })
            .collect()
    }

    /// Gathers group `g`'s receptive fields of one sample `x` (C, H, W) into `cols`: K rows
    /// of P, row `r` at `cols[r·ld..]` (a sample's columns within a block's matrix).
    fn im2col<T: Elem>(&self, x: &[T], g: usize, cols: &mut [T], ld: usize) {
        let (hw, p, ow, sw) = (self.h * self.w, self.p(), self.ow, self.spec.stride[1]);
        let taps = self.taps();
        for ci in 0..self.cg() {
            let plane = &x[(g * self.cg() + ci) * hw..][..hw];
            for ky in 0..self.kh {
                for (kx, (xs, ix0)) in taps.iter().enumerate() {
                    let row = &mut cols[((ci * self.kh + ky) * self.kw + kx) * ld..][..p];
                    for (oy, out) in row.chunks_exact_mut(ow).enumerate() {
                        let Some(iy) = self.in_row(oy, ky).filter(|_| !xs.is_empty()) else {
                            out.fill(T::default());
                            continue;
                        };
                        out[..xs.start].fill(T::default());
                        out[xs.end..].fill(T::default());
                        let src = &plane[iy * self.w..][..self.w];
                        if sw == 1 {
                            out[xs.clone()].copy_from_slice(&src[*ix0..ix0 + xs.len()]);
                        } else if sw == 2 {
                            // Pairs instead of step_by: vectorized (a 7×7/2 stem's gather
                            // was 20 % of its backward).
                            let (dst, last) = (&mut out[xs.clone()], xs.len() - 1);
                            for (o, pair) in dst[..last].iter_mut().zip(src[*ix0..].chunks_exact(2)) {
                                *o = pair[0];
                            }
                            dst[last] = src[ix0 + 2 * last];
                        } else {
                            for (o, &v) in out[xs.clone()].iter_mut().zip(src[*ix0..].iter().step_by(sw)) {
                                *o = v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds `cols` (K rows of P, row `r` at `cols[r·ld..]`) back into group `g` of one
    /// sample's input gradient `dx` (C, H, W): the adjoint of [`Geom::im2col`].
    fn col2im<T: Elem>(&self, cols: &[T], g: usize, dx: &mut [T], ld: usize) {
        let (hw, p, ow, sw) = (self.h * self.w, self.p(), self.ow, self.spec.stride[1]);
        let taps = self.taps();
        for ci in 0..self.cg() {
            let plane = &mut dx[(g * self.cg() + ci) * hw..][..hw];
            for ky in 0..self.kh {
                for (kx, (xs, ix0)) in taps.iter().enumerate() {
                    if xs.is_empty() {
                        continue;
                    }
                    let row = &cols[((ci * self.kh + ky) * self.kw + kx) * ld..][..p];
                    for (oy, src) in row.chunks_exact(ow).enumerate() {
                        let Some(iy) = self.in_row(oy, ky) else { continue };
                        let dst = &mut plane[iy * self.w..][..self.w];
                        let src = &src[xs.clone()];
                        if sw == 1 {
                            for (d, &s) in dst[*ix0..ix0 + xs.len()].iter_mut().zip(src) {
                                *d += s;
                            }
                        } else {
                            for (d, &s) in dst[*ix0..].iter_mut().step_by(sw).zip(src) {
                                *d += s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Samples per block: enough that a block's GEMMs have at least [`MIN_COLUMNS`]
    /// columns (small feature maps, e.g. F34's 7×7 layers, would otherwise run GEMMs of
    /// 49 columns, and the weight gradient would be read and written once per sample).
    /// With several threads, the block count is a multiple of the thread count (no
    /// thread waits on another's last block), and where that leaves fewer blocks than
    /// threads, the batch is split evenly over the threads as long as each block keeps
    /// [`MIN_SPLIT_COLUMNS`] (gather, GEMM and scatter then all run in parallel).
    fn block(&self) -> usize {
        block_len(self.n, self.p(), self.threads)
    }
}

/// [`Geom::block`] for `n` samples of `cols` GEMM columns each, over `threads` threads.
fn block_len(n: usize, cols: usize, threads: usize) -> usize {
    let (n, t, p) = (n.max(1), threads.max(1), cols.max(1));
    let bs = MIN_COLUMNS.div_ceil(p).clamp(1, n);
    if t == 1 {
        return bs;
    }
    let full = n / bs;
    if full >= t {
        n.div_ceil(full - full % t)
    } else if n >= t && n.div_ceil(t) * p >= MIN_SPLIT_COLUMNS {
        n.div_ceil(t)
    } else {
        bs
    }
}

/// Elements per task of the element-wise loops split over threads.
const CHUNK: usize = 1 << 15;

/// See [`Geom::block`].
const MIN_COLUMNS: usize = 256;
/// See [`Geom::block`].
const MIN_SPLIT_COLUMNS: usize = 32;

/// A block of samples `start..start + len`, and its scratch buffers.
struct Block<T: Elem> {
    start: usize,
    len: usize,
    /// K × (len·P): the block's receptive fields, sample j in columns j·P..(j+1)·P.
    cols: Vec<T>,
    /// Co/groups × (len·P): one group's outputs (or output gradients), same columns.
    out: Vec<T>,
}

/// `n` zeros, written by rayon's threads (an activation is megabytes; one thread zeroing
/// it leaves the others idle).
fn zeros<T: Elem>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(T::default(), n).with_min_len(CHUNK));
    v
}

/// Makes `v` at least `n` long (its contents are scratch: every use writes before it reads).
fn grow<T: Elem>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

impl<T: Elem> Block<T> {
    /// A block with this thread's scratch buffers, kept from earlier calls (no
    /// allocation or zeroing per call once the largest layer has run).
    fn new() -> Block<T> {
        let (cols, out) = T::scratch().with(|s| {
            let mut s = s.borrow_mut();
            (s.pop().unwrap_or_default(), s.pop().unwrap_or_default())
        });
        Block { start: 0, len: 0, cols, out }
    }
    fn at(&mut self, g: &Geom, start: usize) -> &mut Block<T> {
        self.start = start;
        self.len = g.block().min(g.n - start);
        self
    }
    /// The block's columns.
    fn nc(&self, g: &Geom) -> usize {
        self.len * g.p()
    }
    /// Fills `cols` with group `grp`'s receptive fields of the block's samples of `x`.
    fn gather_cols(&mut self, g: &Geom, x: &[T], grp: usize) {
        self.gather_cols_ld(g, x, grp, self.nc(g));
    }
    /// [`Block::gather_cols`] with rows `ld` apart.
    fn gather_cols_ld(&mut self, g: &Geom, x: &[T], grp: usize, ld: usize) {
        let p = g.p();
        grow(&mut self.cols, g.k() * ld);
        for j in 0..self.len {
            let xs = &x[(self.start + j) * g.in_sample()..][..g.in_sample()];
            g.im2col(xs, grp, &mut self.cols[j * p..], ld);
        }
    }
    /// Fills `out` with group `grp`'s rows of the block's samples of `d` (N, Co, P).
    fn gather_out(&mut self, g: &Geom, d: &[T], grp: usize) {
        let (nc, p, cog) = (self.nc(g), g.p(), g.cog());
        grow(&mut self.out, cog * nc);
        for j in 0..self.len {
            let ds = &d[(self.start + j) * g.out_sample() + grp * cog * p..][..cog * p];
            for (co, row) in ds.chunks_exact(p).enumerate() {
                self.out[co * nc + j * p..][..p].copy_from_slice(row);
            }
        }
    }
}

impl<T: Elem> Drop for Block<T> {
    fn drop(&mut self) {
        let (cols, out) = (std::mem::take(&mut self.cols), std::mem::take(&mut self.out));
        T::scratch().with(|s| {
            let mut s = s.borrow_mut();
            // Two per thread at most: a rayon job's blocks run one at a time.
            if s.len() < 2 {
                s.push(out);
                s.push(cols);
            }
        });
    }
}

/// Forward of one block into `out` (the block's samples of the output, N×Co×P layout).
fn forward_block<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, out: &mut [T], blk: &mut Block<T>, par: Parallelism) {
    let (k, p, cog, nc) = (g.k(), g.p(), g.cog(), blk.nc(g));
    for grp in 0..g.groups {
        let wg = &w[grp * cog * k..][..cog * k];
        let bg = b.map(|b| &b[grp * cog..][..cog]);
        if blk.len == 1 {
            // One sample: the GEMM writes the output in place.
            let dst = &mut out[grp * cog * p..][..cog * p];
            if let Some(bg) = bg {
                for (row, &bv) in dst.chunks_exact_mut(p).zip(bg) {
                    row.fill(bv);
                }
            }
            if g.direct() {
                let xs = &x[blk.start * g.in_sample() + grp * k * p..][..k * p];
                matmul(dst, bg.is_some(), cog, p, k, Mat::rows(wg, k), Mat::rows(xs, p), par);
            } else {
                blk.gather_cols(g, x, grp);
                matmul(dst, bg.is_some(), cog, p, k, Mat::rows(wg, k), Mat::rows(&blk.cols, p), par);
            }
            continue;
        }
        blk.gather_cols(g, x, grp);
        grow(&mut blk.out, cog * nc);
        if let Some(bg) = bg {
            for (row, &bv) in blk.out[..cog * nc].chunks_exact_mut(nc).zip(bg) {
                row.fill(bv);
            }
        }
        matmul(&mut blk.out, bg.is_some(), cog, nc, k, Mat::rows(wg, k), Mat::rows(&blk.cols, nc), par);
        for j in 0..blk.len {
            let dst = &mut out[j * g.out_sample() + grp * cog * p..][..cog * p];
            for (co, row) in dst.chunks_exact_mut(p).enumerate() {
                row.copy_from_slice(&blk.out[co * nc + j * p..][..p]);
            }
        }
    }
}

/// Runs `f(block, the block's part of dst)` over the batch's blocks: in parallel over
/// rayon's threads (single-threaded GEMMs) when there are enough blocks, else in turn
/// with multi-threaded GEMMs.
fn over_blocks<T: Elem>(g: &Geom, dst: &mut [T], per_sample: usize, f: impl Fn(&mut Block<T>, &mut [T], Parallelism) + Sync) {
    let t = g.threads;
    let bs = g.block();
    let chunk = bs * per_sample;
    if t > 1 && g.n.div_ceil(bs) >= t {
        dst.par_chunks_mut(chunk).enumerate().for_each_init(Block::new, |blk, (i, d)| f(blk.at(g, i * bs), d, Parallelism::None));
    } else {
        let mut blk = Block::new();
        for (i, d) in dst.chunks_mut(chunk).enumerate() {
            f(blk.at(g, i * bs), d, parallelism(t));
        }
    }
}

fn forward<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, relu: bool, keep: Option<&Kept>) -> Vec<T> {
    if winograd::fits(g) {
        return winograd::forward(g, x, w, b, relu, keep);
    }
    if tiny::fits(g) {
        return tiny::forward(g, x, w, b, relu);
    }
    let mut out = zeros(g.n * g.out_sample());
    over_blocks(g, &mut out, g.out_sample(), |blk, o, par| {
        forward_block(g, x, w, b, o, blk, par);
        if relu {
            // While the block's output is still in cache.
            for v in o.iter_mut() {
                *v = v.relu();
            }
        }
    });
    out
}

/// Input gradient of one block's samples (`dx`, N×C×H×W layout) from the output gradient.
fn input_grad_block<T: Elem>(g: &Geom, dout: &[T], w: &[T], dx: &mut [T], blk: &mut Block<T>, par: Parallelism) {
    let (k, p, cog, nc) = (g.k(), g.p(), g.cog(), blk.nc(g));
    for grp in 0..g.groups {
        let wg = &w[grp * cog * k..][..cog * k];
        if blk.len == 1 {
            let dg = &dout[blk.start * g.out_sample() + grp * cog * p..][..cog * p];
            if g.direct() {
                let dst = &mut dx[grp * k * p..][..k * p];
                matmul(dst, false, k, p, cog, Mat::transposed(wg, k), Mat::rows(dg, p), par);
            } else {
                grow(&mut blk.cols, k * p);
                matmul(&mut blk.cols, false, k, p, cog, Mat::transposed(wg, k), Mat::rows(dg, p), par);
                g.col2im(&blk.cols, grp, dx, p);
            }
            continue;
        }
        blk.gather_out(g, dout, grp);
        grow(&mut blk.cols, k * nc);
        matmul(&mut blk.cols, false, k, nc, cog, Mat::transposed(wg, k), Mat::rows(&blk.out, nc), par);
        for j in 0..blk.len {
            g.col2im(&blk.cols[j * p..], grp, &mut dx[j * g.in_sample()..][..g.in_sample()], nc);
        }
    }
}

fn input_grad<T: Elem>(g: &Geom, dout: &[T], w: &[T], kept: Option<&Kept>) -> Vec<T> {
    if winograd::fits(g) {
        return winograd::input_grad(g, dout, w, kept);
    }
    if tiny::fits(g) {
        return tiny::input_grad(g, dout, w);
    }
    let mut dx = zeros(g.n * g.in_sample());
    over_blocks(g, &mut dx, g.in_sample(), |blk, d, par| input_grad_block(g, dout, w, d, blk, par));
    dx
}

/// Adds one block's weight and bias gradients into `acc` = [dW (Co × K), db (Co)].
fn param_grad_block<T: Elem>(g: &Geom, x: &[T], dout: &[T], acc: &mut [T], accumulate: bool, blk: &mut Block<T>, par: Parallelism) {
    let (k, p, cog, nc) = (g.k(), g.p(), g.cog(), blk.nc(g));
    let (dw, db) = acc.split_at_mut(g.co * k);
    for grp in 0..g.groups {
        let dst = &mut dw[grp * cog * k..][..cog * k];
        if blk.len == 1 {
            let dg = &dout[blk.start * g.out_sample() + grp * cog * p..][..cog * p];
            if g.direct() {
                let xs = &x[blk.start * g.in_sample() + grp * k * p..][..k * p];
                matmul(dst, accumulate, cog, k, p, Mat::rows(dg, p), Mat::transposed(xs, p), par);
            } else {
                let ld = winograd::skew(p);
                blk.gather_cols_ld(g, x, grp, ld);
                matmul(dst, accumulate, cog, k, p, Mat::rows(dg, p), Mat::transposed(&blk.cols, ld), par);
            }
        } else {
            blk.gather_out(g, dout, grp);
            let ld = winograd::skew(nc);
            blk.gather_cols_ld(g, x, grp, ld);
            matmul(dst, accumulate, cog, k, nc, Mat::rows(&blk.out, nc), Mat::transposed(&blk.cols, ld), par);
        }
    }
    let samples = &dout[blk.start * g.out_sample()..][..blk.len * g.out_sample()];
    for (o, d) in db.iter_mut().enumerate() {
        let s = samples.chunks_exact(g.out_sample()).fold(T::default(), |s, sample| s + sum(&sample[o * p..][..p]));
        *d = if accumulate { *d + s } else { s };
    }
}

/// A sum in eight interleaved partial sums (vectorizable).
fn sum<T: Elem>(v: &[T]) -> T {
    let mut acc = [T::default(); 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut s = chunks.remainder().iter().fold(T::default(), |s, &x| s + x);
    for a in acc {
        s += a;
    }
    s
}

fn param_grad<T: Elem>(g: &Geom, x: &[T], dout: &[T]) -> Vec<T> {
    if winograd::fits(g) {
        return winograd::param_grad(g, x, dout);
    }
    let len = g.co * g.k() + g.co;
    let t = g.threads;
    let bs = g.block();
    let blocks = g.n.div_ceil(bs);
    if t > 1 && blocks >= t {
        // One accumulator per job (a fixed split of the blocks), summed in job order.
        let per = blocks.div_ceil(t);
        // Pooled (not zeroed: each job's first block writes over it).
        let parts: Vec<Pooled<T>> = (0..blocks.div_ceil(per))
            .into_par_iter()
            .map(|j| {
                let mut acc = Pooled::take(len);
                let mut blk = Block::new();
                for i in j * per..((j + 1) * per).min(blocks) {
                    param_grad_block(g, x, dout, &mut acc, i > j * per, blk.at(g, i * bs), Parallelism::None);
                }
                acc
            })
            .collect();
        // Summed in job order, in parallel (9.4 MiB for a 512-channel 3×3 layer).
        let (first, rest) = parts.split_first().expect("two blocks or more");
        let mut acc: Vec<T> = first.par_iter().with_min_len(CHUNK).copied().collect();
        acc.par_chunks_mut(CHUNK).enumerate().for_each(|(i, a)| {
            for part in rest {
                for (a, &b) in a.iter_mut().zip(&part[i * CHUNK..]) {
                    *a += b;
                }
            }
        });
        acc
    } else {
        let mut acc = vec![T::default(); len];
        let mut blk = Block::new();
        for i in 0..blocks {
            param_grad_block(g, x, dout, &mut acc, i > 0, blk.at(g, i * bs), parallelism(t));
        }
        acc
    }
}

/// The floats the kernels run on.
trait Elem:
    Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    const ONE: Self;
    const HALF: Self;
    /// `max(v, 0)`, NaN kept (PyTorch's `relu`; candle's maps NaN to 0).
    fn relu(self) -> Self {
        if self < Self::default() {
            Self::default()
        } else {
            self
        }
    }
    /// This thread's spare scratch buffers.
    fn scratch() -> &'static std::thread::LocalKey<std::cell::RefCell<Vec<Vec<Self>>>>;
    /// The spare buffers of [`Pooled`].
    fn pool() -> &'static std::sync::Mutex<Vec<Vec<Self>>>;
}

thread_local! {
    static SCRATCH_F32: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_F64: std::cell::RefCell<Vec<Vec<f64>>> = const { std::cell::RefCell::new(Vec::new()) };
}

static POOL_F32: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
static POOL_F64: std::sync::Mutex<Vec<Vec<f64>>> = std::sync::Mutex::new(Vec::new());

macro_rules! elem {
    ($t:ty, $scratch:ident, $pool:ident) => {
        impl Elem for $t {
            const ONE: $t = 1.0;
            const HALF: $t = 0.5;
            fn scratch() -> &'static std::thread::LocalKey<std::cell::RefCell<Vec<Vec<$t>>>> {
                &$scratch
            }
            fn pool() -> &'static std::sync::Mutex<Vec<Vec<$t>>> {
                &$pool
            }
        }
    };
}

elem!(f32, SCRATCH_F32, POOL_F32);
elem!(f64, SCRATCH_F64, POOL_F64);

/// A scratch vector from a process-wide pool, given back when dropped: for buffers too
/// big to zero on every call (Winograd's transformed kernels, kept from a forward to its
/// backward, and its weight-gradient accumulators: 4 MiB each for a 256→256 layer, where
/// zeroing them took 15 % of the layer's training step). Its contents are arbitrary:
/// every use writes before it reads.
struct Pooled<T: Elem> {
    buf: Vec<T>,
    len: usize,
}

/// The most bytes the pool keeps: past it, given-back buffers are freed.
const POOL_BYTES: usize = 512 << 20;

impl<T: Elem> Pooled<T> {
    /// `len` elements: the smallest spare buffer that holds them, else the largest one
    /// grown (zeros only where it grows), else a new one.
    fn take(len: usize) -> Pooled<T> {
        let spare = {
            let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
            let fit = (0..pool.len()).filter(|&i| pool[i].len() >= len).min_by_key(|&i| pool[i].len());
            let pick = fit.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
            pick.map(|i| pool.swap_remove(i))
        };
        let mut buf = spare.unwrap_or_default();
        grow(&mut buf, len);
        Pooled { buf, len }
    }
}

impl<T: Elem> Drop for Pooled<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let bytes = |b: &Vec<T>| b.len() * std::mem::size_of::<T>();
        let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
        if pool.iter().map(bytes).sum::<usize>() + bytes(&buf) <= POOL_BYTES {
            pool.push(buf);
        }
    }
}

impl<T: Elem> std::ops::Deref for Pooled<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T: Elem> std::ops::DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

/// A row-major matrix view: element (i, j) at `ptr[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<T> {
    ptr: *const T,
    rs: isize,
    cs: isize,
}

// SAFETY: a view is only read, and only while the slice it was made from is borrowed by
// the caller of `matmul` (which waits for every band before it returns).
unsafe impl<T: Sync> Send for Mat<T> {}
unsafe impl<T: Sync> Sync for Mat<T> {}

/// Row bands of a parallel [`matmul`] start at multiples of this (gemm's micro-kernels
/// are 16 or 24 rows × 4 or 6 columns for f32 at AVX2 width).
const ROW_ALIGN: usize = 16;

impl<T> Mat<T> {
    /// `rows × cols` stored row by row.
    fn rows(s: &[T], cols: usize) -> Mat<T> {
        Mat { ptr: s.as_ptr(), rs: cols as isize, cs: 1 }
    }
    /// The view from row `r` on.
    ///
    /// # Safety
    /// Row `r` must lie inside the view's matrix.
    unsafe fn skip_rows(self, r: usize) -> Mat<T> {
        Mat { ptr: unsafe { self.ptr.offset(r as isize * self.rs) }, ..self }
    }
    /// The transpose of `cols × rows` stored row by row.
    fn transposed(s: &[T], rows: usize) -> Mat<T> {
        Mat { ptr: s.as_ptr(), rs: 1, cs: rows as isize }
    }
}

/// `dst (m × n, row-major) (+)= a (m × k) · b (k × n)`.
///
/// The caller guarantees that `a` and `b` address m×k and k×n elements within their
/// slices and `dst` holds m·n elements.
#[allow(clippy::too_many_arguments)]
fn matmul<T: Elem>(dst: &mut [T], accumulate: bool, m: usize, n: usize, k: usize, a: Mat<T>, b: Mat<T>, par: Parallelism) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if let Parallelism::Rayon(t) = par {
        // Bands of rows, one per thread, each a single-threaded GEMM: gemm's own split
        // scales poorly on the skinny products of small feature maps (F34's 4×4 layers:
        // 136 GFLOP/s at 2 threads against 185 for two independent GEMMs).
        let band = m.div_ceil(t).next_multiple_of(ROW_ALIGN);
        if t > 1 && band < m {
            dst[..m * n].par_chunks_mut(band * n).enumerate().for_each(|(i, d)| {
                // SAFETY: rows i·band.. of `a` lie inside the view of m rows.
                let a = unsafe { a.skip_rows(i * band) };
                matmul(d, accumulate, d.len() / n, n, k, a, b, Parallelism::None)
            });
            return;
        }
    }
    // SAFETY: the views address elements inside slices that live through the call (the
    // callers build them from slices of the sizes the shapes give), `dst` is m×n and
    // does not alias `a` or `b` (it is a distinct &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

fn parallelism(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// The threads of the rayon pool the op runs in (the global one: `RAYON_NUM_THREADS`, or
/// one per logical CPU).
fn threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `$f::<T>` on the f32 or f64 slices of the storages, wrapping the result.
macro_rules! dispatch {
    ($what:literal, [$($s:expr => $l:expr),+], |$($v:ident),+| $body:expr) => {{
        match ($($s,)+) {
            ($(CpuStorage::F32($v),)+) => { $(let $v = super::contiguous($v, $l, $what)?;)+ CpuStorage::F32($body) }
            ($(CpuStorage::F64($v),)+) => { $(let $v = super::contiguous($v, $l, $what)?;)+ CpuStorage::F64($body) }
            _ => candle_core::bail!("conv: {} takes f32 or f64 tensors of one dtype", $what),
        }
    }};
}

impl ConvSpec {
    /// The convolution of `x` (N, C, H, W) by `w` (Co, C/groups, kh, kw), plus `b` (Co),
    /// differentiable. On a non-CPU device, candle's `conv2d` (after an explicit pad when
    /// the padding is asymmetric), which takes one stride and dilation for both axes.
    pub fn apply(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.run(x, w, b, false, None)
    }

    /// `relu(conv(x) + b)` in one op: the ReLU is applied as the output is written, and
    /// the backward masks the gradient in one pass (no separate ReLU nodes, forward or
    /// backward). Same values as [`ConvSpec::apply`] followed by `relu`.
    pub fn apply_relu(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.run(x, w, b, true, None)
    }

    /// [`ConvSpec::apply`] (`relu` false) or [`ConvSpec::apply_relu`], whose backward
    /// leaves the weight and bias gradients in `sink` while it is on.
    pub fn apply_with_sink(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, relu: bool, sink: &GradSink) -> candle_core::Result<Tensor> {
        self.run(x, w, b, relu, Some(sink))
    }

    fn run(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, relu: bool, sink: Option<&GradSink>) -> candle_core::Result<Tensor> {
        if !x.device().is_cpu() {
            let u = self.apply_candle(x, w, b)?;
            return if relu { u.relu() } else { Ok(u) };
        }
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        // What the forward can keep for the input gradient, if there will be one.
        let kept = x.track_op().then(Kept::default);
        let op = ConvOp { spec: *self, relu, kept, sink: sink.cloned() };
        match b {
            Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
            None => x.apply_op2(&w, op),
        }
    }

    /// The same convolution with candle's `conv2d` (any device; one stride and dilation
    /// for both axes). Kept for devices other than the CPU and for comparisons.
    pub fn apply_candle(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let s = self;
        if s.stride[0] != s.stride[1] || s.dilation[0] != s.dilation[1] {
            candle_core::bail!(
                "candle's conv2d takes one stride and dilation for both axes, not {}×{} and {}×{}",
                s.stride[0],
                s.stride[1],
                s.dilation[0],
                s.dilation[1]
            )
        }
        let [t, bo, l, r] = s.pad;
        let (x, padding) =
            if t == bo && l == r && t == l { (x.clone(), t) } else { (x.pad_with_zeros(2, t, bo)?.pad_with_zeros(3, l, r)?, 0) };
        let u = x.conv2d(w, padding, s.stride[0], s.dilation[0], s.groups)?;
        match b {
            Some(b) => u.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(u),
        }
    }

    /// The gradients of x, w and b; with a fused ReLU, `grad` is first masked where the
    /// result `res` is not positive.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
        relu: bool,
        want_bias: bool,
        kept: Option<&Kept>,
    ) -> candle_core::Result<[Option<Tensor>; 3]> {
        let grad = grad.contiguous()?;
        let grad = if relu { grad.apply_op2_no_bwd(&res.contiguous()?, &ReluMask)? } else { grad };
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &ConvInputGrad { spec: *self, input: x.shape().clone(), kept: kept.cloned() })?)
        } else {
            None
        };
        let (dw, db) = if w.track_op() || want_bias {
            let both = x.apply_op2_no_bwd(&grad, &ConvParamGrad { spec: *self, weight: w.shape().clone() })?;
            let wn = w.elem_count();
            let dw = both.narrow(0, 0, wn)?.reshape(w.shape())?;
            let db = both.narrow(0, wn, both.elem_count() - wn)?;
            (Some(dw), want_bias.then_some(db))
        } else {
            (None, None)
        };
        Ok([dx, dw, db])
    }
}

/// The forward op: (x, w[, b]) → out, or relu(out).
struct ConvOp {
    spec: ConvSpec,
    relu: bool,
    /// Set when the input tracks a gradient: what the forward leaves for it.
    kept: Option<Kept>,
    sink: Option<GradSink>,
}

impl ConvOp {
    fn run(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        b: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::of(self.spec, lx.shape(), lw.shape())?;
        let shape = Shape::from((g.n, g.co, g.oh, g.ow));
        let (relu, keep) = (self.relu, self.kept.as_ref());
        let out = match b {
            None => dispatch!("conv input and weight", [sx => lx, sw => lw], |x, w| forward(&g, x, w, None, relu, keep)),
            Some((sb, lb)) => {
                if lb.shape().dims() != [g.co] {
                    candle_core::bail!("conv: bias {:?} does not fit {} output channels", lb.shape(), g.co)
                }
                dispatch!("conv input, weight and bias", [sx => lx, sw => lw, sb => lb], |x, w, b| forward(&g, x, w, Some(b), relu, keep))
            }
        };
        Ok((out, shape))
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "cnnc-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = self.spec.backward(x, w, res, grad, self.relu, false, self.kept.as_ref())?;
        let (dw, _) = match &self.sink {
            Some(sink) => sink.keep(w, None, dw, None),
            None => (dw, None),
        };
        Ok((dx, dw))
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "cnnc-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = self.spec.backward(x, w, res, grad, self.relu, b.track_op(), self.kept.as_ref())?;
        let (dw, db) = match &self.sink {
            Some(sink) => sink.keep(w, Some(b), dw, db),
            None => (dw, db),
        };
        Ok((dx, dw, db))
    }
}

/// (output gradient, w) → input gradient.
struct ConvInputGrad {
    spec: ConvSpec,
    input: Shape,
    kept: Option<Kept>,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "cnnc-conv2d-input-grad"
    }

    fn cpu_fwd(&self, sg: &CpuStorage, lg: &Layout, sw: &CpuStorage, lw: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::of(self.spec, &self.input, lw.shape())?;
        if lg.shape().dims() != [g.n, g.co, g.oh, g.ow] {
            candle_core::bail!("conv backward: gradient {:?} does not fit the output of {:?}", lg.shape(), self.input)
        }
        let dx = dispatch!("conv gradient and weight", [sg => lg, sw => lw], |d, w| input_grad(&g, d, w, self.kept.as_ref()));
        Ok((dx, self.input.clone()))
    }
}

/// (x, output gradient) → [weight gradient (flattened), bias gradient].
struct ConvParamGrad {
    spec: ConvSpec,
    weight: Shape,
}

impl CustomOp2 for ConvParamGrad {
    fn name(&self) -> &'static str {
        "cnnc-conv2d-param-grad"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sg: &CpuStorage, lg: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::of(self.spec, lx.shape(), &self.weight)?;
        if lg.shape().dims() != [g.n, g.co, g.oh, g.ow] {
            candle_core::bail!("conv backward: gradient {:?} does not fit the output", lg.shape())
        }
        let out = dispatch!("conv input and gradient", [sx => lx, sg => lg], |x, d| param_grad(&g, x, d));
        Ok((out, Shape::from(g.co * g.k() + g.co)))
    }
}

/// (gradient, relu result) → the gradient where the result is positive, else 0: the
/// backward of a fused ReLU, PyTorch's (0 at an input of exactly 0, where candle's own
/// ReLU backward passes the gradient).
struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "cnnc-relu-mask"
    }

    fn cpu_fwd(&self, sg: &CpuStorage, lg: &Layout, sr: &CpuStorage, lr: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if lg.shape() != lr.shape() {
            candle_core::bail!("relu backward: gradient {:?} and result {:?} differ in shape", lg.shape(), lr.shape())
        }
        fn mask<T: Elem>(g: &[T], r: &[T]) -> Vec<T> {
            g.par_iter().zip(r).with_min_len(CHUNK).map(|(&g, &r)| if r > T::default() { g } else { T::default() }).collect()
        }
        let out = dispatch!("relu gradient and result", [sg => lg, sr => lr], |g, r| mask(g, r));
        Ok((out, lg.shape().clone()))
    }
}

/// The dtypes the conv ops accept.
pub fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}
