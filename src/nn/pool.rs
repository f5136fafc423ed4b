//! Max and average pooling with padding, any stride, PyTorch's semantics, as candle
//! custom ops with their own backward.
//!
//! Why not candle's own: `max_pool2d`/`avg_pool2d` take no padding, refuse backward
//! unless kernel = stride, and scale the max-pool gradient wrongly (../shared/DEPS.md).
//!
//! Semantics (those of `torch.nn.MaxPool2d` / `AvgPool2d`): output `(oy, ox)` pools the
//! window of input rows `oy·sh − ph .. oy·sh − ph + kh` (and columns alike). A max pool
//! reads padding as −∞, i.e. takes the max over the real elements of the window; its
//! gradient goes to the first maximum in row-major order, as PyTorch's CPU kernel does.
//! An average pool divides the window's sum by the number of real elements, or, with
//! `count_include_pad`, by the window's area clipped to the padded input
//! (`input + pad_begin + pad_end`), as PyTorch does. Every window must hold at least one
//! real element ([`PoolSpec::check`]).
//!
//! Runs on the CPU, and on CUDA with kernels of its own ([`cuda`], built with the `cuda`
//! feature: the same semantics, the same results). On another device the op moves its
//! input to the CPU and the result back (correct, and differentiable, but slow).

#[cfg(feature = "cuda")]
pub mod cuda;

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Max,
    Avg { count_include_pad: bool },
}

/// One spatial axis: output `o` pools input positions `o·stride − pad_begin ..+ kernel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDim {
    pub input: usize,
    pub output: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad_begin: usize,
    pub pad_end: usize,
}

impl PoolDim {
    /// The window's start in padded coordinates shifted back: may be negative.
    fn start(&self, o: usize) -> isize {
        (o * self.stride) as isize - self.pad_begin as isize
    }
    /// Real input positions of output `o`'s window.
    pub fn window(&self, o: usize) -> std::ops::Range<usize> {
        let s = self.start(o);
        let lo = s.clamp(0, self.input as isize) as usize;
        let hi = (s + self.kernel as isize).clamp(0, self.input as isize) as usize;
        lo..hi.max(lo)
    }
    /// Window length clipped to the padded input (PyTorch's `count_include_pad` divisor).
    fn padded_len(&self, o: usize) -> usize {
        let s = self.start(o);
        let end = (s + self.kernel as isize).min((self.input + self.pad_end) as isize - self.pad_begin as isize);
        (end - s).max(0) as usize
    }
}

/// A 2-D pooling over (N, C, H, W).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub mode: PoolMode,
    pub h: PoolDim,
    pub w: PoolDim,
}

impl PoolSpec {
    /// Whether every window holds at least one real element (else its max is −∞ and its
    /// mean undefined). PyTorch enforces this by requiring `pad ≤ kernel / 2`.
    pub fn check(&self) -> Result<(), String> {
        for d in [self.h, self.w] {
            if d.kernel == 0 || d.stride == 0 {
                return Err("pooling kernel and stride must be at least 1".into());
            }
            if let Some(o) = (0..d.output).find(|&o| d.window(o).is_empty()) {
                return Err(format!(
                    "pooling window {o} holds only padding (kernel {}, stride {}, padding {}+{}, input {})",
                    d.kernel, d.stride, d.pad_begin, d.pad_end, d.input
                ));
            }
        }
        Ok(())
    }

    fn divisor(&self, oy: usize, ox: usize) -> usize {
        match self.mode {
            PoolMode::Avg { count_include_pad: true } => self.h.padded_len(oy) * self.w.padded_len(ox),
            _ => self.h.window(oy).len() * self.w.window(ox).len(),
        }
    }

    /// Applies the pooling to `x` (N, C, H, W), with a backward pass.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dev = x.device().clone();
        if runs_on(&dev) {
            x.contiguous()?.apply_op1(Pool2d(*self))
        } else {
            x.to_device(&Device::Cpu)?.contiguous()?.apply_op1(Pool2d(*self))?.to_device(&dev)
        }
    }

    /// The pooling of a unified layer, checked ([`PoolSpec::check`]).
    pub fn of(p: &crate::unify::Pooling) -> Result<PoolSpec, String> {
        let g = &p.geometry;
        let (pad_end, count_include_pad) = match &p.pool {
            Some(q) => ([q.pad[0].end, q.pad[1].end], q.count_include_pad),
            None => ([0, 0], false),
        };
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let dim = |a: &crate::index::PoolAxis, end: u64| PoolDim {
            input: size(a.input),
            output: size(a.output),
            kernel: size(a.kernel),
            stride: size(a.stride),
            pad_begin: size(a.pad_begin),
            pad_end: size(end),
        };
        let mode = match p.kind {
            crate::ir::PoolKind::Max => PoolMode::Max,
            crate::ir::PoolKind::Avg => PoolMode::Avg { count_include_pad },
        };
        let spec = PoolSpec { mode, h: dim(&g.h, pad_end[0]), w: dim(&g.w, pad_end[1]) };
        spec.check()?;
        Ok(spec)
    }

    /// The gradient of the input `x` (N, C, H, W) given the output's gradient `grad`:
    /// what the backward pass of [`PoolSpec::apply`] computes, here without a graph (for
    /// profiling and tests).
    pub fn grad_input(&self, x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        let dev = x.device().clone();
        if runs_on(&dev) {
            return x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &Pool2dBackward(*self));
        }
        let cpu = |t: &Tensor| -> candle_core::Result<Tensor> { t.to_device(&Device::Cpu)?.contiguous() };
        let dx = cpu(x)?.apply_op2_no_bwd(&cpu(grad)?, &Pool2dBackward(*self))?;
        dx.to_device(&dev)
    }

    fn dims(&self, layout: &Layout) -> candle_core::Result<(usize, usize)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        if h != self.h.input || w != self.w.input {
            candle_core::bail!("pooling expects {}×{} inputs, got {h}×{w}", self.h.input, self.w.input)
        }
        Ok((n * c, h * w))
    }

    fn forward<T: Float>(&self, x: &[T], planes: usize) -> Vec<T> {
        let (ih, iw, oh, ow) = (self.h.input, self.w.input, self.h.output, self.w.output);
        super::par_filled(planes * oh * ow, oh * ow, |p, out| {
            let plane = &x[p * ih * iw..(p + 1) * ih * iw];
            let mut k = 0;
            for oy in 0..oh {
                let ys = self.h.window(oy);
                for ox in 0..ow {
                    let xs = self.w.window(ox);
                    out[k].write(match self.mode {
                        PoolMode::Max => {
                            let mut m = T::NEG_INFINITY;
                            for y in ys.clone() {
                                for &v in &plane[y * iw + xs.start..y * iw + xs.end] {
                                    // NaN propagates, as in PyTorch. Without branches:
                                    // which value wins is data, and mispredicted jumps
                                    // made this pool 10× slower than PyTorch's.
                                    let take = (v > m) | v.is_nan();
                                    m = if take { v } else { m };
                                }
                            }
                            m
                        }
                        PoolMode::Avg { .. } => {
                            let mut s = T::ZERO;
                            for y in ys.clone() {
                                for &v in &plane[y * iw + xs.start..y * iw + xs.end] {
                                    s = s + v;
                                }
                            }
                            s / T::from_usize(self.divisor(oy, ox))
                        }
                    });
                    k += 1;
                }
            }
        })
    }

    /// Gradient of the input from the output's gradient `g` (and, for a max pool, the input `x`).
    fn backward<T: Float>(&self, x: &[T], g: &[T], planes: usize) -> Vec<T> {
        let (ih, iw, oh, ow) = (self.h.input, self.w.input, self.h.output, self.w.output);
        super::par_filled(planes * ih * iw, ih * iw, |p, dplane| {
            for d in dplane.iter_mut() {
                d.write(T::ZERO);
            }
            // SAFETY: every element was just written; `MaybeUninit<T>` has `T`'s layout.
            let dplane = unsafe { &mut *(dplane as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
            for oy in 0..oh {
                let ys = self.h.window(oy);
                for ox in 0..ow {
                    let xs = self.w.window(ox);
                    let go = g[(p * oh + oy) * ow + ox];
                    match self.mode {
                        PoolMode::Max => {
                            let plane = &x[p * ih * iw..(p + 1) * ih * iw];
                            let mut best = None;
                            let mut m = T::NEG_INFINITY;
                            for y in ys.clone() {
                                for xx in xs.clone() {
                                    let v = plane[y * iw + xx];
                                    if best.is_none() || v > m || (v.is_nan() && !m.is_nan()) {
                                        m = v;
                                        best = Some(y * iw + xx);
                                    }
                                }
                            }
                            if let Some(i) = best {
                                dplane[i] = dplane[i] + go;
                            }
                        }
                        PoolMode::Avg { .. } => {
                            let share = go / T::from_usize(self.divisor(oy, ox));
                            for y in ys.clone() {
                                for xx in xs.clone() {
                                    dplane[y * iw + xx] = dplane[y * iw + xx] + share;
                                }
                            }
                        }
                    }
                }
            }
        })
    }

    fn out_shape(&self, layout: &Layout) -> candle_core::Result<Shape> {
        let (n, c, _, _) = layout.shape().dims4()?;
        Ok(Shape::from((n, c, self.h.output, self.w.output)))
    }
}

/// Whether the ops run on `dev` where the tensors are (else on the CPU, copied there and back).
fn runs_on(dev: &Device) -> bool {
    dev.is_cpu() || (cfg!(feature = "cuda") && dev.is_cuda())
}

/// The floats the ops run on.
trait Float: Copy + Send + Sync + PartialOrd + std::ops::Add<Output = Self> + std::ops::Div<Output = Self> {
    const ZERO: Self;
    const NEG_INFINITY: Self;
    fn from_usize(n: usize) -> Self;
    fn is_nan(self) -> bool;
}

impl Float for f32 {
    const ZERO: f32 = 0.0;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    fn from_usize(n: usize) -> f32 {
        n as f32
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Float for f64 {
    const ZERO: f64 = 0.0;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    fn from_usize(n: usize) -> f64 {
        n as f64
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// The forward op: input (N, C, H, W) → pooled (N, C, H', W').
struct Pool2d(PoolSpec);

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        "cnnc-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (planes, _) = self.0.dims(layout)?;
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.0.forward(super::contiguous(v, layout, "the pooling input")?, planes)),
            CpuStorage::F64(v) => CpuStorage::F64(self.0.forward(super::contiguous(v, layout, "the pooling input")?, planes)),
            s => candle_core::bail!("pooling supports f32 and f64, not {:?}", s.dtype()),
        };
        Ok((out, self.0.out_shape(layout)?))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.0.cuda_forward(storage, layout)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.grad_input(arg, grad_res)?))
    }
}

/// The backward op: (input x, output gradient) → input gradient.
struct Pool2dBackward(PoolSpec);

impl CustomOp2 for Pool2dBackward {
    fn name(&self) -> &'static str {
        "cnnc-pool2d-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (planes, _) = self.0.dims(l1)?;
        if l2.shape() != &self.0.out_shape(l1)? {
            candle_core::bail!("pooling backward: gradient shape {:?} does not match the output", l2.shape())
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(self.0.backward(
                super::contiguous(x, l1, "the pooling input")?,
                super::contiguous(g, l2, "the pooling gradient")?,
                planes,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(self.0.backward(
                super::contiguous(x, l1, "the pooling input")?,
                super::contiguous(g, l2, "the pooling gradient")?,
                planes,
            )),
            _ => candle_core::bail!("pooling backward supports f32 and f64 of one type, not {:?} and {:?}", s1.dtype(), s2.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.0.cuda_backward(s1, l1, s2, l2)
    }
}

/// The dtypes the pooling ops accept.
pub fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}
