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
//! `pad = [top, left, bottom, right]` zeros (ONNX's order, and the plan's). Input (N, C, H, W), weight
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
//! 3×3 stride-1 layers with enough channels and tiles run Winograd's minimal filtering
//! instead, all three passes: F(4×4, 3×3) where a sample has four 4×4 tiles or more and
//! they pay (`winograd4.rs`: 7×7, 8×8, 16×16, 28×28, 56×56 maps; not 14×14), else
//! F(2×2, 3×3) (`winograd.rs`); maps of at most 4 pixels run their forward and input
//! gradient as one GEMM per pair of pixels a tap joins (`tiny.rs`).
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
//! The files: this one the ops and their plumbing; `passes.rs` the three passes over the
//! blocks; `im2col.rs` the geometry and gather/scatter; `matmul.rs` the GEMM call;
//! `buffers.rs` the scratch buffers and the pool; `threads.rs` the thread policy;
//! `winograd.rs`, `winograd4.rs` and `tiny.rs` the special cases. [`widest!`] compiles a
//! loop for the CPU's vector width, chosen at run time (the kernels' Winograd transforms).
//!
//! Runs on the CPU in f32 and f64. Other devices use candle's `conv2d` (see
//! [`Conv2d::forward`]).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// `fn name<T: Elem>(args) body`, compiled for AVX-512F, for AVX2 + FMA and for the
/// build's baseline (x86-64: SSE2), and run in the widest that the CPU has (std caches the
/// CPUID check). The results are the same bit for bit: no fused multiply-adds are formed,
/// and no operation is reordered.
macro_rules! widest {
    ($(#[$m:meta])* fn $name:ident<T: Elem>($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name<T: Elem>($($a: $t),*) {
            #[inline(always)]
            fn body<T: Elem>($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512<T: Elem>($($a: $t),*) {
                    body($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2<T: Elem>($($a: $t),*) {
                    body($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}

mod buffers;
mod im2col;
mod matmul;
mod passes;
mod threads;
mod tiny;
mod winograd;
mod winograd4;

use buffers::{grow, zeros, Block, Pooled};
use im2col::Geom;
use matmul::{matmul, Mat};
use passes::{forward, input_grad, param_grad, sum};
use threads::{block_len, parallelism, threads, CHUNK};

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
    /// Zero padding [top, left, bottom, right] (ONNX's `pads` order, and the plan's `padding`).
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

    /// [`Conv2d::forward`], then a ReLU if `relu`, in one op whose backward leaves the
    /// weight and bias gradients in `sink` ([`ConvSpec::apply_with_sink`]): what
    /// [`GraphModel`](crate::nn::GraphModel) runs for a conv node.
    pub fn forward_with_sink(&self, x: &Tensor, relu: bool, sink: &GradSink) -> candle_core::Result<Tensor> {
        self.spec.apply_with_sink(x, &self.weight, self.bias.as_ref(), relu, sink)
    }
}

impl candle_core::Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Conv2d::forward(self, xs)
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
    /// `v` rounded to this type (the transforms' constants).
    fn of(v: f64) -> Self;
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
            fn of(v: f64) -> $t {
                v as $t
            }
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
            return if relu { crate::nn::relu::relu(&u) } else { Ok(u) };
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

    /// The same convolution with candle's `conv2d` (any device). Kept for devices other
    /// than the CPU and for comparisons. candle takes one stride and one dilation for both
    /// axes; where the axes differ, a dilation is written into the kernel (zeros between
    /// its taps, dilation 1), and a stride is the greatest common divisor of both, the
    /// rows or columns of the larger then picked from the result (`index_select`).
    ///
    /// candle's backward sizes the input gradient of both axes by the rows' remainder (the
    /// padded rows past the last window); where the columns' differs, it fails on a shape
    /// mismatch. Then the input is padded here and the rows and columns that no window
    /// reads are cut off (their gradient is zero either way).
    pub fn apply_candle(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let s = self;
        let (w, dilation) = match s.dilation {
            [dh, dw] if dh == dw => (w.clone(), dh),
            [dh, dw] => (dilate(&dilate(w, 2, dh)?, 3, dw)?, 1),
        };
        let stride = gcd(s.stride[0], s.stride[1]);
        let [t, l, bo, r] = s.pad;
        // Padded positions past the last window, per axis (None: no window fits; candle says so).
        let rest = |n: usize, pad: usize, k: usize| (n + pad).checked_sub((k - 1) * dilation + 1).map(|e| e % stride);
        let (rh, rw) = (rest(x.dim(2)?, t + bo, w.dim(2)?), rest(x.dim(3)?, l + r, w.dim(3)?));
        let (x, padding) = if t == bo && l == r && t == l && rh == rw {
            (x.clone(), t)
        } else {
            let x = x.pad_with_zeros(2, t, bo)?.pad_with_zeros(3, l, r)?;
            match (rh, rw) {
                (Some(rh), Some(rw)) => {
                    let (hp, wp) = (x.dim(2)?, x.dim(3)?);
                    (x.narrow(2, 0, hp - rh)?.narrow(3, 0, wp - rw)?, 0)
                }
                _ => (x, 0),
            }
        };
        let u = x.conv2d(&w, padding, stride, dilation, s.groups)?;
        let u = every_nth(&every_nth(&u, 2, s.stride[0] / stride)?, 3, s.stride[1] / stride)?;
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

/// `w` with `d − 1` zeros between neighbouring taps along `dim` (a kernel dilated by `d`).
fn dilate(w: &Tensor, dim: usize, d: usize) -> candle_core::Result<Tensor> {
    let k = w.dim(dim)?;
    if d <= 1 || k <= 1 {
        return Ok(w.clone());
    }
    // (…, k, 1, …) padded to (…, k, d, …), read as (…, k·d, …), cut to (k − 1)·d + 1.
    let mut shape = w.dims().to_vec();
    shape[dim] = k * d;
    w.unsqueeze(dim + 1)?.pad_with_zeros(dim + 1, 0, d - 1)?.reshape(shape)?.narrow(dim, 0, (k - 1) * d + 1)
}

/// Elements 0, n, 2n, … of `u` along `dim`.
fn every_nth(u: &Tensor, dim: usize, n: usize) -> candle_core::Result<Tensor> {
    if n <= 1 {
        return Ok(u.clone());
    }
    let len = u.dim(dim)?;
    let ids = Tensor::arange_step(0u32, len as u32, n as u32, u.device())?;
    u.index_select(&ids, dim)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
