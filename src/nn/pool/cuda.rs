//! The pooling ops on CUDA: the kernels of [`super::PoolSpec`]'s forward and backward,
//! compiled once per process with NVRTC (through cudarc, which candle re-exports) and
//! loaded once per device; the build needs no CUDA compiler of its own.
//!
//! Same semantics as the CPU ops, and the same arithmetic in the same order, so results
//! match the CPU's bit for bit: a max reads padding as −∞ (the max over the window's real
//! elements; NaN propagates), an average sums its window row by row and divides by
//! [`super::PoolSpec::divisor`]'s count. Backward is a gather, one thread per input
//! element, where the CPU scatters output by output: each input adds the contributions of
//! the outputs whose windows hold it in output order, which is the order in which the
//! CPU's scatter adds them. A max pool's gradient goes to the first maximum in row-major
//! order (found by one thread per output, as the CPU does), an average's share is
//! `grad / divisor`, as on the CPU.

use super::{PoolDim, PoolMode, PoolSpec};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};
use std::sync::OnceLock;

/// The module's name in candle's per-device cache of custom modules.
const MODULE: &str = "cnnc_pool2d";

/// The kernels. `T` is float or double; sizes are 32-bit per axis (lowering bounds
/// them), element indices 64-bit. Each kernel runs a grid-stride loop over its elements.
const SOURCE: &str = include_str!("kernels.cu");
/// One axis as the kernels take it (`struct Dim`, passed by value).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Dim {
    input: i32,
    output: i32,
    kernel: i32,
    stride: i32,
    pad_begin: i32,
    pad_end: i32,
}

// SAFETY: plain data of six i32, laid out as the kernels' `struct Dim`.
unsafe impl DeviceRepr for Dim {}

impl Dim {
    fn of(d: &PoolDim) -> Result<Dim> {
        let i =
            |v: usize| i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("pooling size {v} is too large for the CUDA kernels")));
        Ok(Dim {
            input: i(d.input)?,
            output: i(d.output)?,
            kernel: i(d.kernel)?,
            stride: i(d.stride)?,
            pad_begin: i(d.pad_begin)?,
            pad_end: i(d.pad_end)?,
        })
    }
}

/// The kernels' PTX, compiled on first use (NVRTC), or why it could not be.
pub fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let r =
        PTX.get_or_init(|| candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE).map(|p| p.to_src()).map_err(|e| format!("{e:?}")));
    match r {
        Ok(s) => Ok(s),
        Err(e) => candle_core::bail!("compiling cnnc's CUDA pooling kernels with NVRTC failed: {e}"),
    }
}

/// A grid-stride launch over `n` elements (n ≥ 1).
fn config(n: usize) -> LaunchConfig {
    const BLOCK: usize = 256;
    let blocks = n.div_ceil(BLOCK).min(1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK as u32, 1, 1), shared_mem_bytes: 0 }
}

/// The contiguous elements of `s` under `layout`, as type `T`.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, layout: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let slice: &CudaSlice<T> = s.as_cuda_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => candle_core::bail!("{what} is not contiguous"),
    }
}

/// The float types the kernels are instantiated for.
trait Kernel: CudaDType + DeviceRepr + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits {
    const SUFFIX: &'static str;
}
impl Kernel for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Kernel for f64 {
    const SUFFIX: &'static str = "f64";
}

impl PoolSpec {
    fn cuda_args(&self) -> Result<(Dim, Dim, i32, i32)> {
        let (mode, include_pad) = match self.mode {
            PoolMode::Max => (0, 0),
            PoolMode::Avg { count_include_pad } => (1, count_include_pad as i32),
        };
        Ok((Dim::of(&self.h)?, Dim::of(&self.w)?, mode, include_pad))
    }

    fn cuda_forward_t<T: Kernel>(&self, dev: &CudaDevice, s: &CudaStorage, layout: &Layout, planes: usize) -> Result<CudaStorage> {
        let x = view::<T>(s, layout, "the pooling input")?;
        let n = planes * self.h.output * self.w.output;
        let out = dev.alloc_zeros::<T>(n)?;
        if n > 0 {
            let (h, w, mode, include_pad) = self.cuda_args()?;
            let f = dev.get_or_load_custom_func(&format!("pool_fwd_{}", T::SUFFIX), MODULE, ptx()?)?;
            let n64 = n as i64;
            let mut b = f.builder();
            b.arg(&x).arg(&out).arg(&n64).arg(&h).arg(&w).arg(&mode).arg(&include_pad);
            // SAFETY: the arguments match the kernel's parameters; `x` holds
            // planes·ih·iw elements (checked by `dims`), `out` n.
            unsafe { b.launch(config(n)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    fn cuda_backward_t<T: Kernel>(
        &self,
        dev: &CudaDevice,
        sx: &CudaStorage,
        lx: &Layout,
        sg: &CudaStorage,
        lg: &Layout,
        planes: usize,
    ) -> Result<CudaStorage> {
        let x = view::<T>(sx, lx, "the pooling input")?;
        let g = view::<T>(sg, lg, "the pooling gradient")?;
        let outputs = planes * self.h.output * self.w.output;
        let n = planes * self.h.input * self.w.input;
        let dx = dev.alloc_zeros::<T>(n)?;
        if n == 0 || outputs == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()));
        }
        let (h, w, mode, include_pad) = self.cuda_args()?;
        // An average's backward reads no argmax: a one-element placeholder.
        let arg = dev.alloc_zeros::<i32>(if mode == 0 { outputs } else { 1 })?;
        if mode == 0 {
            let f = dev.get_or_load_custom_func(&format!("pool_argmax_{}", T::SUFFIX), MODULE, ptx()?)?;
            let o64 = outputs as i64;
            let mut b = f.builder();
            b.arg(&x).arg(&arg).arg(&o64).arg(&h).arg(&w);
            // SAFETY: as in the forward; `arg` holds one index per output.
            unsafe { b.launch(config(outputs)) }.w()?;
        }
        let f = dev.get_or_load_custom_func(&format!("pool_bwd_{}", T::SUFFIX), MODULE, ptx()?)?;
        let n64 = n as i64;
        let mut b = f.builder();
        b.arg(&g).arg(&arg).arg(&dx).arg(&n64).arg(&h).arg(&w).arg(&mode).arg(&include_pad);
        // SAFETY: `g` and `arg` hold one element per output (the gradient's shape is
        // checked by the caller), `dx` one per input.
        unsafe { b.launch(config(n)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
    }

    /// The forward op on CUDA: `Pool2d::cuda_fwd`.
    pub(super) fn cuda_forward(&self, s: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let (planes, _) = self.dims(layout)?;
        let dev = s.device();
        let out = match s.dtype() {
            candle_core::DType::F32 => self.cuda_forward_t::<f32>(dev, s, layout, planes)?,
            candle_core::DType::F64 => self.cuda_forward_t::<f64>(dev, s, layout, planes)?,
            d => candle_core::bail!("pooling supports f32 and f64, not {d:?}"),
        };
        Ok((out, self.out_shape(layout)?))
    }

    /// The backward op on CUDA: `Pool2dBackward::cuda_fwd`.
    pub(super) fn cuda_backward(&self, sx: &CudaStorage, lx: &Layout, sg: &CudaStorage, lg: &Layout) -> Result<(CudaStorage, Shape)> {
        let (planes, _) = self.dims(lx)?;
        if lg.shape() != &self.out_shape(lx)? {
            candle_core::bail!("pooling backward: gradient shape {:?} does not match the output", lg.shape())
        }
        let dev = sx.device();
        let dx = match (sx.dtype(), sg.dtype()) {
            (candle_core::DType::F32, candle_core::DType::F32) => self.cuda_backward_t::<f32>(dev, sx, lx, sg, lg, planes)?,
            (candle_core::DType::F64, candle_core::DType::F64) => self.cuda_backward_t::<f64>(dev, sx, lx, sg, lg, planes)?,
            (a, b) => candle_core::bail!("pooling backward supports f32 and f64 of one type, not {a:?} and {b:?}"),
        };
        Ok((dx, lx.shape().clone()))
    }
}
