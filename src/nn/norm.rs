//! BatchNorm's standardization with batch statistics as one candle custom op (CPU), with
//! its own backward: `x̂ = (x − μ_c)/√(σ²_c + ε)` for an (N, C, P) tensor, μ_c and σ²_c
//! (biased) the mean and variance of channel c over the batch and positions.
//!
//! Why: the same computation from candle's ops (mean, subtract, square, mean, add, sqrt,
//! divide, each broadcast, and their backward) passes over the activations some twenty
//! times a training step; this op passes twice forward and three times backward.
//!
//! Backward: `dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / √(σ² + ε)`, the means over the
//! channel's N·P values (the statistics depend on x). The forward also reports each
//! channel's (μ, σ²) for the running statistics ([`Standardize::stats`]).
//!
//! Runs on the CPU in f32 and f64, channels in parallel (rayon); sums in f64.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// The op; `stats` receives each channel's (mean, biased variance) at every forward.
#[derive(Clone, Debug)]
pub struct Standardize {
    pub eps: f64,
    pub stats: Arc<Mutex<Vec<(f64, f64)>>>,
}

impl Standardize {
    pub fn new(eps: f64) -> Standardize {
        Standardize { eps, stats: Arc::default() }
    }

    /// The (mean, biased variance) of each channel at the last forward.
    pub fn stats(&self) -> Vec<(f64, f64)> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `x̂` of `x` (N, C, P), differentiable.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }
}

/// (mean, biased variance) of channel `c` of `x` (N, C, P).
fn channel_stats<T: WithDType>(x: &[T], n: usize, c: usize, p: usize, ch: usize) -> (f64, f64) {
    let count = (n * p) as f64;
    let mut sum = 0.0;
    for s in 0..n {
        sum += x[(s * c + ch) * p..][..p].iter().map(|v| v.to_f64()).sum::<f64>();
    }
    let mean = sum / count;
    let mut sq = 0.0;
    for s in 0..n {
        sq += x[(s * c + ch) * p..][..p].iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>();
    }
    (mean, sq / count)
}

fn dims3(layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    match layout.shape().dims() {
        &[n, c, p] => Ok((n, c, p)),
        d => candle_core::bail!("standardize takes (N, C, P), got {d:?}"),
    }
}

/// `x̂`, written channel by channel; returns the statistics.
fn forward<T: WithDType>(x: &[T], n: usize, c: usize, p: usize, eps: f64) -> (Vec<T>, Vec<(f64, f64)>) {
    let stats: Vec<(f64, f64)> = (0..c).into_par_iter().map(|ch| channel_stats(x, n, c, p, ch)).collect();
    let mut out = vec![T::from_f64(0.0); x.len()];
    out.par_chunks_mut(p).enumerate().for_each(|(row, o)| {
        let (mean, var) = stats[row % c];
        let inv = 1.0 / (var + eps).sqrt();
        for (o, v) in o.iter_mut().zip(&x[row * p..][..p]) {
            *o = T::from_f64((v.to_f64() - mean) * inv);
        }
    });
    (out, stats)
}

/// `dx` from `x` and `dx̂`.
fn backward<T: WithDType>(x: &[T], g: &[T], n: usize, c: usize, p: usize, eps: f64) -> Vec<T> {
    let count = (n * p) as f64;
    // Per channel: (mean, 1/√(σ² + ε), mean(dx̂), mean(dx̂·x̂)).
    let per: Vec<(f64, f64, f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, var) = channel_stats(x, n, c, p, ch);
            let inv = 1.0 / (var + eps).sqrt();
            let (mut sg, mut sgx) = (0.0, 0.0);
            for s in 0..n {
                let at = (s * c + ch) * p;
                for (v, d) in x[at..][..p].iter().zip(&g[at..][..p]) {
                    let d = d.to_f64();
                    sg += d;
                    sgx += d * (v.to_f64() - mean) * inv;
                }
            }
            (mean, inv, sg / count, sgx / count)
        })
        .collect();
    let mut out = vec![T::from_f64(0.0); x.len()];
    out.par_chunks_mut(p).enumerate().for_each(|(row, o)| {
        let (mean, inv, mg, mgx) = per[row % c];
        let at = row * p;
        for ((o, v), d) in o.iter_mut().zip(&x[at..][..p]).zip(&g[at..][..p]) {
            let xh = (v.to_f64() - mean) * inv;
            *o = T::from_f64((d.to_f64() - mg - xh * mgx) * inv);
        }
    });
    out
}

impl CustomOp1 for Standardize {
    fn name(&self) -> &'static str {
        "batchnorm-standardize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, p) = dims3(layout)?;
        let (out, stats) = match storage {
            CpuStorage::F32(v) => {
                let (o, s) = forward(super::contiguous(v, layout, "the input")?, n, c, p, self.eps);
                (CpuStorage::F32(o), s)
            }
            CpuStorage::F64(v) => {
                let (o, s) = forward(super::contiguous(v, layout, "the input")?, n, c, p, self.eps);
                (CpuStorage::F64(o), s)
            }
            other => candle_core::bail!("standardize: dtype {:?} is not supported (f32 or f64)", other.dtype()),
        };
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &StandardizeGrad { eps: self.eps })?))
    }
}

/// The input gradient of [`Standardize`]: (x, dx̂) → dx.
struct StandardizeGrad {
    eps: f64,
}

impl CustomOp2 for StandardizeGrad {
    fn name(&self) -> &'static str {
        "batchnorm-standardize-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, p) = dims3(l1)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("standardize-grad: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(backward(
                super::contiguous(x, l1, "the input")?,
                super::contiguous(g, l2, "the gradient")?,
                n,
                c,
                p,
                self.eps,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(backward(
                super::contiguous(x, l1, "the input")?,
                super::contiguous(g, l2, "the gradient")?,
                n,
                c,
                p,
                self.eps,
            )),
            _ => candle_core::bail!("standardize-grad: dtypes {:?} and {:?}", s1.dtype(), s2.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }
}
