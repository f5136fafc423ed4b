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
    let out = super::par_filled(x.len(), p, |row, o| {
        let (mean, var) = stats[row % c];
        let inv = 1.0 / (var + eps).sqrt();
        for (o, v) in o.iter_mut().zip(&x[row * p..][..p]) {
            o.write(T::from_f64((v.to_f64() - mean) * inv));
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
    super::par_filled(x.len(), p, |row, o| {
        let (mean, inv, mg, mgx) = per[row % c];
        let at = row * p;
        for ((o, v), d) in o.iter_mut().zip(&x[at..][..p]).zip(&g[at..][..p]) {
            let xh = (v.to_f64() - mean) * inv;
            o.write(T::from_f64((d.to_f64() - mg - xh * mgx) * inv));
        }
    })
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

/// A normalization's per-channel scale and shift, y = x·γ_c + β_c for an (N, C, P) tensor,
/// as one custom op (CPU) with its own backward.
///
/// Why: as candle's `broadcast_mul` and `broadcast_add` the forward gives the same values
/// (the same two roundings, no fused multiply-add), but the backward of each reduces a
/// full-size tensor over the batch and position axes with candle's strided reduction —
/// 15–20 % of a ResNet-18 training step. Here dγ_c = Σ g·x and dβ_c = Σ g are one pass per
/// channel over contiguous rows (sums in f64), dx = g·γ_c one more.
#[derive(Clone, Copy, Debug)]
pub struct ChannelAffine;

impl ChannelAffine {
    /// `x` (N, C, P), `gamma` and `beta` (C): differentiable in all three.
    pub fn apply(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, ChannelAffine)
    }
}

fn affine_forward<T: WithDType>(x: &[T], g: &[T], b: &[T], c: usize, p: usize) -> Vec<T> {
    super::par_filled(x.len(), p, |row, o| {
        let (gc, bc) = (g[row % c], b[row % c]);
        for (o, &v) in o.iter_mut().zip(&x[row * p..][..p]) {
            o.write(v * gc + bc);
        }
    })
}

/// (dγ, dβ) of channel `ch` from `x` and the output gradient `d`.
fn affine_param_grads<T: WithDType>(x: &[T], d: &[T], n: usize, c: usize, p: usize, ch: usize) -> (f64, f64) {
    let (mut sg, mut sb) = (0.0, 0.0);
    for s in 0..n {
        let at = (s * c + ch) * p;
        for (v, g) in x[at..][..p].iter().zip(&d[at..][..p]) {
            let g = g.to_f64();
            sb += g;
            sg += g * v.to_f64();
        }
    }
    (sg, sb)
}

fn dims_affine(l1: &Layout, l2: &Layout, l3: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (n, c, p) = match l1.shape().dims() {
        &[n, c, p] => (n, c, p),
        d => candle_core::bail!("channel-affine takes (N, C, P), got {d:?}"),
    };
    if l2.shape().dims() != [c] || l3.shape().dims() != [c] {
        candle_core::bail!("channel-affine: γ {:?} and β {:?} for {c} channels", l2.shape(), l3.shape());
    }
    Ok((n, c, p))
}

impl candle_core::CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-affine"
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
        let (_, c, p) = dims_affine(l1, l2, l3)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => CpuStorage::F32(affine_forward(
                super::contiguous(x, l1, "the input")?,
                super::contiguous(g, l2, "γ")?,
                super::contiguous(b, l3, "β")?,
                c,
                p,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => CpuStorage::F64(affine_forward(
                super::contiguous(x, l1, "the input")?,
                super::contiguous(g, l2, "γ")?,
                super::contiguous(b, l3, "β")?,
                c,
                p,
            )),
            _ => candle_core::bail!("channel-affine: dtypes {:?}, {:?}, {:?} (f32 or f64, all alike)", s1.dtype(), s2.dtype(), s3.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // dx = g·γ_c: the forward with β = 0 (the same single rounding as candle's).
        let zero = gamma.zeros_like()?;
        let dx = grad.apply_op3_no_bwd(gamma, &zero, &ChannelAffine)?;
        let both = x.apply_op2_no_bwd(&grad, &AffineParamGrads)?;
        Ok((Some(dx), Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// (x, g) → (2, C): each channel's Σ g·x and Σ g (the gradients of γ and β).
struct AffineParamGrads;

impl CustomOp2 for AffineParamGrads {
    fn name(&self) -> &'static str {
        "channel-affine-param-grads"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, p) = dims3(l1)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("channel-affine-grads: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        fn run<T: WithDType>(x: &[T], d: &[T], n: usize, c: usize, p: usize) -> Vec<T> {
            let per: Vec<(f64, f64)> = (0..c).into_par_iter().map(|ch| affine_param_grads(x, d, n, c, p, ch)).collect();
            per.iter().map(|s| T::from_f64(s.0)).chain(per.iter().map(|s| T::from_f64(s.1))).collect()
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                CpuStorage::F32(run(super::contiguous(x, l1, "the input")?, super::contiguous(g, l2, "the gradient")?, n, c, p))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                CpuStorage::F64(run(super::contiguous(x, l1, "the input")?, super::contiguous(g, l2, "the gradient")?, n, c, p))
            }
            _ => candle_core::bail!("channel-affine-grads: dtypes {:?} and {:?}", s1.dtype(), s2.dtype()),
        };
        Ok((out, Shape::from((2, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The op against candle's broadcast multiply and add: the same values bit for bit
    /// (f32), the same gradients of x, γ and β (to the f64 sums' rounding).
    #[test]
    fn channel_affine_is_candles_broadcast_multiply_and_add() {
        let dev = Device::Cpu;
        let (n, c, p) = (3usize, 5usize, 7usize);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, p), &dev).unwrap()).unwrap();
        let g = Var::from_tensor(&Tensor::randn(1f32, 0.5, c, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, c, &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, c, p), &dev).unwrap();
        let ours = ChannelAffine::apply(x.as_tensor(), g.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .broadcast_mul(&g.as_tensor().reshape((1, c, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b.as_tensor().reshape((1, c, 1)).unwrap())
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours), flat(&theirs));
        let go = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = (&theirs * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &g, &b] {
            let (a, t) = (flat(go.get(v.as_tensor()).unwrap()), flat(gt.get(v.as_tensor()).unwrap()));
            assert_eq!(a.len(), t.len());
            for (a, t) in a.iter().zip(&t) {
                assert!((a - t).abs() <= 1e-5 * (1.0 + t.abs()), "{a} vs {t}");
            }
        }
    }
}
