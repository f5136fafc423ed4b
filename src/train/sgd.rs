//! SGD with momentum and weight decay, exactly `torch.optim.SGD` (no dampening, no
//! Nesterov): for each parameter p with gradient g,
//! `d = g + wd·p`; `buf = d` at its first step, else `buf = momentum·buf + d`; `p −= lr·buf`.
//! A parameter without a gradient is left alone (its buffer too), as in PyTorch.
//!
//! On the CPU a step is two fused in-place passes per parameter (the buffer update, then
//! the parameter update) with the same arithmetic, operation by operation, as the
//! tensor expression used elsewhere; no 84 MB temporaries for F34.

use crate::nn::{contiguous, contiguous_mut};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};
use rayon::prelude::*;

pub struct Sgd {
    params: Vec<(String, Var)>,
    /// Momentum buffers, by parameter; `None` until the parameter's first step.
    buffers: Vec<Option<Tensor>>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Sgd {
    pub fn new(params: Vec<(String, Var)>, lr: f64, momentum: f64, weight_decay: f64) -> Sgd {
        let buffers = vec![None; params.len()];
        Sgd { params, buffers, lr, momentum, weight_decay }
    }

    /// One update from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for ((_, p), buf) in self.params.iter().zip(&mut self.buffers) {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            let fused = p.device().is_cpu() && matches!(p.dtype(), DType::F32 | DType::F64) && self.momentum != 0.0;
            if let (true, Some(b)) = (fused, buf.as_ref()) {
                let g = g.contiguous()?;
                b.inplace_op3(&g, p.as_tensor(), &MomentumUpdate { momentum: self.momentum, weight_decay: self.weight_decay })?;
                p.as_tensor().inplace_op2(b, &Descend { lr: self.lr })?;
                continue;
            }
            let mut d = g.clone();
            if self.weight_decay != 0.0 {
                d = (d + p.as_tensor().affine(self.weight_decay, 0.0)?)?;
            }
            if self.momentum != 0.0 {
                let b = match buf.take() {
                    None => d,
                    Some(b) => (b.affine(self.momentum, 0.0)? + d)?,
                };
                // A copy: the fused step updates the buffer in place, and `b` may share
                // the gradient's storage.
                *buf = Some(b.detach().copy()?);
                d = b;
            }
            p.set(&(p.as_tensor() - d.affine(self.lr, 0.0)?)?.detach())?;
        }
        Ok(())
    }

    /// The momentum buffers that exist, by parameter name (for checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params.iter().zip(&self.buffers).filter_map(|((n, _), b)| b.as_ref().map(|b| (n.clone(), b.clone()))).collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; unknown names are an error.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> std::result::Result<(), String> {
        for (name, t) in state {
            let Some(k) = self.params.iter().position(|(n, _)| *n == name) else {
                return Err(format!("the checkpoint has a momentum buffer for `{name}`, which the model does not have"));
            };
            if t.dims() != self.params[k].1.as_tensor().dims() {
                return Err(format!(
                    "momentum buffer `{name}` has shape {:?}, the parameter {:?}",
                    t.dims(),
                    self.params[k].1.as_tensor().dims()
                ));
            }
            self.buffers[k] = Some(t);
        }
        Ok(())
    }
}

/// Elements per rayon job of the fused step (elementwise: the split changes no value).
const CHUNK: usize = 1 << 16;

/// `buf = momentum·buf + (g + wd·p)`, in place on `buf`.
struct MomentumUpdate {
    momentum: f64,
    weight_decay: f64,
}

impl InplaceOp3 for MomentumUpdate {
    fn name(&self) -> &'static str {
        "cnnc-sgd-momentum"
    }

    fn cpu_fwd(&self, b: &mut CpuStorage, lb: &Layout, g: &CpuStorage, lg: &Layout, p: &CpuStorage, lp: &Layout) -> Result<()> {
        if lb.shape() != lg.shape() || lb.shape() != lp.shape() {
            candle_core::bail!("sgd: buffer {:?}, gradient {:?} and parameter {:?} differ in shape", lb.shape(), lg.shape(), lp.shape())
        }
        macro_rules! run {
            ($b:expr, $g:expr, $p:expr, $t:ty) => {{
                let (m, wd) = (self.momentum as $t, self.weight_decay as $t);
                let (g, p) = (contiguous($g, lg, "the gradient")?, contiguous($p, lp, "the parameter")?);
                let b = contiguous_mut($b, lb, "the momentum buffer")?;
                b.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(p.par_chunks(CHUNK)).for_each(|((b, g), p)| {
                    for ((b, &g), &p) in b.iter_mut().zip(g).zip(p) {
                        // Candle's `g + p.affine(wd, 0)` and `b.affine(m, 0) + d`, in order.
                        let d = g + (p * wd + 0.0);
                        *b = (*b * m + 0.0) + d;
                    }
                });
            }};
        }
        match (b, g, p) {
            (CpuStorage::F32(b), CpuStorage::F32(g), CpuStorage::F32(p)) => run!(b, g, p, f32),
            (CpuStorage::F64(b), CpuStorage::F64(g), CpuStorage::F64(p)) => run!(b, g, p, f64),
            _ => candle_core::bail!("sgd: the fused step takes f32 or f64 tensors of one dtype"),
        }
        Ok(())
    }
}

/// `p = p − lr·buf`, in place on `p`.
struct Descend {
    lr: f64,
}

impl InplaceOp2 for Descend {
    fn name(&self) -> &'static str {
        "cnnc-sgd-descend"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, lp: &Layout, b: &CpuStorage, lb: &Layout) -> Result<()> {
        if lp.shape() != lb.shape() {
            candle_core::bail!("sgd: parameter {:?} and buffer {:?} differ in shape", lp.shape(), lb.shape())
        }
        macro_rules! run {
            ($p:expr, $b:expr, $t:ty) => {{
                let lr = self.lr as $t;
                let (p, b) = (contiguous_mut($p, lp, "the parameter")?, contiguous($b, lb, "the momentum buffer")?);
                p.par_chunks_mut(CHUNK).zip(b.par_chunks(CHUNK)).for_each(|(p, b)| {
                    for (p, &b) in p.iter_mut().zip(b) {
                        *p = *p - (b * lr + 0.0);
                    }
                });
            }};
        }
        match (p, b) {
            (CpuStorage::F32(p), CpuStorage::F32(b)) => run!(p, b, f32),
            (CpuStorage::F64(p), CpuStorage::F64(b)) => run!(p, b, f64),
            _ => candle_core::bail!("sgd: the fused step takes f32 or f64 tensors of one dtype"),
        }
        Ok(())
    }
}
