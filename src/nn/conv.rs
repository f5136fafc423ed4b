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
//! How: per sample and group, `cols` (K × P, K = C/groups·kh·kw, P = oh·ow) gathers the
//! receptive fields (im2col; a 1×1 conv with stride 1 and no padding reads the input
//! itself). Then
//! - forward: `out = W·cols + b`;
//! - weight gradient: `dW += dOut·colsᵀ`, bias gradient `db = Σ dOut` (one op, [`ConvParamGrad`]);
//! - input gradient: `dcols = Wᵀ·dOut`, scattered back by col2im ([`ConvInputGrad`]); it is
//!   skipped when the input tracks no gradient (the data).
//!
//! With more than one thread (candle's count: `RAYON_NUM_THREADS`, else the cores) the
//! samples of a batch are split over rayon's threads, each GEMM single-threaded; a batch
//! smaller than the thread count runs its samples in turn, each GEMM multi-threaded.
//!
//! Runs on the CPU in f32 and f64. Other devices use candle's `conv2d` (see
//! [`Conv2d::forward`]).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// The geometry of a convolution that does not depend on the input's size.
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
            let span = d * (k - 1) + 1;
            let padded = len + before + after;
            if k == 0 || padded < span {
                candle_core::bail!("conv: kernel {k} (dilation {d}) does not fit input {len} padded by {before}+{after}")
            }
            Ok((padded - span) / s + 1)
        };
        let oh = out(h, spec.pad[0], spec.pad[1], kh, spec.dilation[0], spec.stride[0])?;
        let ow = out(wd, spec.pad[2], spec.pad[3], kw, spec.dilation[1], spec.stride[1])?;
        Ok(Geom { n, c, h, w: wd, co, kh, kw, oh, ow, groups: g, spec })
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

    /// Gathers group `g`'s receptive fields of one sample `x` (C, H, W) into `cols` (K × P).
    fn im2col<T: Elem>(&self, x: &[T], g: usize, cols: &mut [T]) {
        let (hw, p, ow, sw) = (self.h * self.w, self.p(), self.ow, self.spec.stride[1]);
        for ci in 0..self.cg() {
            let plane = &x[(g * self.cg() + ci) * hw..][..hw];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = &mut cols[((ci * self.kh + ky) * self.kw + kx) * p..][..p];
                    let xs = self.valid_cols(kx);
                    for oy in 0..self.oh {
                        let out = &mut row[oy * ow..][..ow];
                        match self.in_row(oy, ky) {
                            None => out.fill(T::default()),
                            Some(iy) => {
                                out[..xs.start].fill(T::default());
                                out[xs.end..].fill(T::default());
                                if xs.is_empty() {
                                    continue;
                                }
                                let ix0 = xs.start * sw + kx * self.spec.dilation[1] - self.spec.pad[2];
                                let src = &plane[iy * self.w..][..self.w];
                                if sw == 1 {
                                    out[xs.clone()].copy_from_slice(&src[ix0..ix0 + xs.len()]);
                                } else {
                                    for (o, ox) in out[xs.clone()].iter_mut().zip(0..) {
                                        *o = src[ix0 + ox * sw];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds `cols` (K × P) back into group `g` of one sample's input gradient `dx` (C, H, W):
    /// the adjoint of [`Geom::im2col`].
    fn col2im<T: Elem>(&self, cols: &[T], g: usize, dx: &mut [T]) {
        let (hw, p, ow, sw) = (self.h * self.w, self.p(), self.ow, self.spec.stride[1]);
        for ci in 0..self.cg() {
            let plane = &mut dx[(g * self.cg() + ci) * hw..][..hw];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = &cols[((ci * self.kh + ky) * self.kw + kx) * p..][..p];
                    let xs = self.valid_cols(kx);
                    if xs.is_empty() {
                        continue;
                    }
                    for oy in 0..self.oh {
                        let Some(iy) = self.in_row(oy, ky) else { continue };
                        let ix0 = xs.start * sw + kx * self.spec.dilation[1] - self.spec.pad[2];
                        let dst = &mut plane[iy * self.w..][..self.w];
                        let src = &row[oy * ow..][xs.clone()];
                        if sw == 1 {
                            for (d, &s) in dst[ix0..ix0 + xs.len()].iter_mut().zip(src) {
                                *d += s;
                            }
                        } else {
                            for (ox, &s) in src.iter().enumerate() {
                                dst[ix0 + ox * sw] += s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// How to spread a batch over `threads`: by samples (each GEMM single-threaded), or
    /// sample after sample with multi-threaded GEMMs.
    fn by_samples(&self, threads: usize) -> bool {
        threads > 1 && self.n >= threads
    }
}

/// The floats the kernels run on.
pub trait Elem: Copy + Default + Send + Sync + std::ops::AddAssign + std::ops::Add<Output = Self> + 'static {
    const ONE: Self;
}

impl Elem for f32 {
    const ONE: f32 = 1.0;
}

impl Elem for f64 {
    const ONE: f64 = 1.0;
}

/// A row-major matrix view: element (i, j) at `ptr[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<T> {
    ptr: *const T,
    rs: isize,
    cs: isize,
}

impl<T> Mat<T> {
    /// `rows × cols` stored row by row.
    fn rows(s: &[T], cols: usize) -> Mat<T> {
        Mat { ptr: s.as_ptr(), rs: cols as isize, cs: 1 }
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
fn matmul<T: Elem>(dst: &mut [T], accumulate: bool, m: usize, n: usize, k: usize, a: Mat<T>, b: Mat<T>, par: Parallelism) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
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

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Forward: one sample's output (Co × P) from its input.
fn forward_sample<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, out: &mut [T], cols: &mut Vec<T>, par: Parallelism) {
    let (k, p, cog) = (g.k(), g.p(), g.cog());
    let accumulate = match b {
        Some(b) => {
            for (row, &bv) in out.chunks_exact_mut(p).zip(b) {
                row.fill(bv);
            }
            true
        }
        None => false,
    };
    for grp in 0..g.groups {
        let wg = &w[grp * cog * k..][..cog * k];
        let dst = &mut out[grp * cog * p..][..cog * p];
        if g.direct() {
            let xg = &x[grp * k * p..][..k * p];
            matmul(dst, accumulate, cog, p, k, Mat::rows(wg, k), Mat::rows(xg, p), par);
        } else {
            cols.resize(k * p, T::default());
            g.im2col(x, grp, cols);
            matmul(dst, accumulate, cog, p, k, Mat::rows(wg, k), Mat::rows(cols, p), par);
        }
    }
}

fn forward<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
    let mut out = vec![T::default(); g.n * g.out_sample()];
    let t = threads();
    if g.by_samples(t) {
        out.par_chunks_mut(g.out_sample())
            .zip(x.par_chunks(g.in_sample()))
            .for_each_init(Vec::new, |cols, (o, xs)| forward_sample(g, xs, w, b, o, cols, Parallelism::None));
    } else {
        let mut cols = Vec::new();
        for (o, xs) in out.chunks_mut(g.out_sample()).zip(x.chunks(g.in_sample())) {
            forward_sample(g, xs, w, b, o, &mut cols, parallelism(t));
        }
    }
    out
}

/// Input gradient of one sample (C, H, W) from its output gradient (Co × P).
fn input_grad_sample<T: Elem>(g: &Geom, dout: &[T], w: &[T], dx: &mut [T], cols: &mut Vec<T>, par: Parallelism) {
    let (k, p, cog) = (g.k(), g.p(), g.cog());
    for grp in 0..g.groups {
        let wg = &w[grp * cog * k..][..cog * k];
        let dg = &dout[grp * cog * p..][..cog * p];
        if g.direct() {
            let dst = &mut dx[grp * k * p..][..k * p];
            matmul(dst, false, k, p, cog, Mat::transposed(wg, k), Mat::rows(dg, p), par);
        } else {
            cols.resize(k * p, T::default());
            matmul(cols, false, k, p, cog, Mat::transposed(wg, k), Mat::rows(dg, p), par);
            g.col2im(cols, grp, dx);
        }
    }
}

fn input_grad<T: Elem>(g: &Geom, dout: &[T], w: &[T]) -> Vec<T> {
    let mut dx = vec![T::default(); g.n * g.in_sample()];
    let t = threads();
    if g.by_samples(t) {
        dx.par_chunks_mut(g.in_sample())
            .zip(dout.par_chunks(g.out_sample()))
            .for_each_init(Vec::new, |cols, (d, o)| input_grad_sample(g, o, w, d, cols, Parallelism::None));
    } else {
        let mut cols = Vec::new();
        for (d, o) in dx.chunks_mut(g.in_sample()).zip(dout.chunks(g.out_sample())) {
            input_grad_sample(g, o, w, d, &mut cols, parallelism(t));
        }
    }
    dx
}

/// Adds one sample's weight and bias gradients into `acc` = [dW (Co × K), db (Co)].
fn param_grad_sample<T: Elem>(g: &Geom, x: &[T], dout: &[T], acc: &mut [T], cols: &mut Vec<T>, par: Parallelism) {
    let (k, p, cog) = (g.k(), g.p(), g.cog());
    let (dw, db) = acc.split_at_mut(g.co * k);
    for grp in 0..g.groups {
        let dg = &dout[grp * cog * p..][..cog * p];
        let dst = &mut dw[grp * cog * k..][..cog * k];
        if g.direct() {
            let xg = &x[grp * k * p..][..k * p];
            matmul(dst, true, cog, k, p, Mat::rows(dg, p), Mat::transposed(xg, p), par);
        } else {
            cols.resize(k * p, T::default());
            g.im2col(x, grp, cols);
            matmul(dst, true, cog, k, p, Mat::rows(dg, p), Mat::transposed(cols, p), par);
        }
    }
    for (d, row) in db.iter_mut().zip(dout.chunks_exact(p)) {
        *d += row.iter().fold(T::default(), |s, &v| s + v);
    }
}

fn param_grad<T: Elem>(g: &Geom, x: &[T], dout: &[T]) -> Vec<T> {
    let len = g.co * g.k() + g.co;
    let t = threads();
    if g.by_samples(t) {
        // One accumulator per rayon job; their sum in a fixed order per job split.
        let per = g.n.div_ceil(t);
        let parts: Vec<Vec<T>> = (0..g.n.div_ceil(per))
            .into_par_iter()
            .map(|j| {
                let mut acc = vec![T::default(); len];
                let mut cols = Vec::new();
                for s in j * per..((j + 1) * per).min(g.n) {
                    let xs = &x[s * g.in_sample()..][..g.in_sample()];
                    let ds = &dout[s * g.out_sample()..][..g.out_sample()];
                    param_grad_sample(g, xs, ds, &mut acc, &mut cols, Parallelism::None);
                }
                acc
            })
            .collect();
        let mut parts = parts.into_iter();
        let mut acc = parts.next().unwrap_or_else(|| vec![T::default(); len]);
        for part in parts {
            for (a, b) in acc.iter_mut().zip(part) {
                *a += b;
            }
        }
        acc
    } else {
        let mut acc = vec![T::default(); len];
        let mut cols = Vec::new();
        for (xs, ds) in x.chunks(g.in_sample()).zip(dout.chunks(g.out_sample())) {
            param_grad_sample(g, xs, ds, &mut acc, &mut cols, parallelism(t));
        }
        acc
    }
}

fn slice<'a, T>(v: &'a [T], layout: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("conv: the {what} is not contiguous"),
    }
}

/// Runs `$f::<T>` on the f32 or f64 slices of the storages, wrapping the result.
macro_rules! dispatch {
    ($what:literal, [$($s:expr => $l:expr),+], |$($v:ident),+| $body:expr) => {{
        match ($($s,)+) {
            ($(CpuStorage::F32($v),)+) => { $(let $v = slice($v, $l, $what)?;)+ CpuStorage::F32($body) }
            ($(CpuStorage::F64($v),)+) => { $(let $v = slice($v, $l, $what)?;)+ CpuStorage::F64($body) }
            _ => candle_core::bail!("conv: {} takes f32 or f64 tensors of one dtype", $what),
        }
    }};
}

impl ConvSpec {
    /// The convolution of `x` (N, C, H, W) by `w` (Co, C/groups, kh, kw), plus `b` (Co),
    /// differentiable. On a non-CPU device, candle's `conv2d` (after an explicit pad when
    /// the padding is asymmetric), which takes one stride and dilation for both axes.
    pub fn apply(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
        if !x.device().is_cpu() {
            return self.apply_candle(x, w, b);
        }
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        match b {
            Some(b) => x.apply_op3(&w, &b.contiguous()?, ConvOp(*self)),
            None => x.apply_op2(&w, ConvOp(*self)),
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

    fn backward(&self, x: &Tensor, w: &Tensor, grad: &Tensor, want_bias: bool) -> candle_core::Result<[Option<Tensor>; 3]> {
        let grad = grad.contiguous()?;
        let dx =
            if x.track_op() { Some(grad.apply_op2_no_bwd(w, &ConvInputGrad { spec: *self, input: x.shape().clone() })?) } else { None };
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

/// The forward op: (x, w[, b]) → out.
struct ConvOp(ConvSpec);

impl ConvOp {
    fn run(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        b: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::of(self.0, lx.shape(), lw.shape())?;
        let shape = Shape::from((g.n, g.co, g.oh, g.ow));
        let out = match b {
            None => dispatch!("conv input and weight", [sx => lx, sw => lw], |x, w| forward(&g, x, w, None)),
            Some((sb, lb)) => {
                if lb.shape().dims() != [g.co] {
                    candle_core::bail!("conv: bias {:?} does not fit {} output channels", lb.shape(), g.co)
                }
                dispatch!("conv input, weight and bias", [sx => lx, sw => lw, sb => lb], |x, w, b| forward(&g, x, w, Some(b)))
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

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = self.0.backward(x, w, grad, false)?;
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
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = self.0.backward(x, w, grad, b.track_op())?;
        Ok((dx, dw, db))
    }
}

/// (output gradient, w) → input gradient.
struct ConvInputGrad {
    spec: ConvSpec,
    input: Shape,
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
        let dx = dispatch!("conv gradient and weight", [sg => lg, sw => lw], |d, w| input_grad(&g, d, w));
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

/// The dtypes the conv ops accept.
pub fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}
