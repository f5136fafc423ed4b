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
//!
//! [`BatchNormTrain`] is the whole training BatchNorm, [`Standardize`] then [`ChannelAffine`]
//! (and a ReLU), as one op with the same values; the graph model runs it.

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

/// BatchNorm in training as one op (CPU): [`Standardize`] then [`ChannelAffine`], and a
/// ReLU after them when `relu`, on an (N, C, …) tensor: `y = x̂·γ_c + β_c` (then
/// `max(y, 0)`), x̂ rounded to the tensor's dtype first, exactly as the three ops give it.
///
/// Why: as separate ops each is a node of candle's autograd, and every node costs a
/// zeroed buffer and an add of its gradient into it (`GradStore::or_insert`), besides the
/// reshapes between them (each a node too): six full-size passes per BatchNorm
/// that do nothing. The backward takes the forward's statistics instead of computing them
/// again, and gives dx, dγ and dβ in two passes over (x, dy).
///
/// The same values and gradients as the unfused ops, bit for bit: the same roundings, the
/// same f64 sums in the same order (`fused_batch_norm_is_the_three_ops` checks it).
#[derive(Clone, Debug)]
pub struct BatchNormTrain {
    pub eps: f64,
    pub relu: bool,
    stats: Arc<Mutex<Vec<(f64, f64)>>>,
}

impl BatchNormTrain {
    pub fn new(eps: f64, relu: bool) -> BatchNormTrain {
        BatchNormTrain { eps, relu, stats: Arc::default() }
    }

    /// The (mean, biased variance) of each channel at the last forward.
    pub fn stats(&self) -> Vec<(f64, f64)> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The normalization of `x` (N, C, …), `gamma` and `beta` (C): differentiable in all three.
    pub fn apply(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, self.clone())
    }
}

/// (N, C, P) of an (N, C, …) layout, P the product of the rest (1 for (N, C)).
fn dims_nc(layout: &Layout, what: &str) -> candle_core::Result<(usize, usize, usize)> {
    match layout.shape().dims() {
        &[n, c, ref rest @ ..] => Ok((n, c, rest.iter().product())),
        d => candle_core::bail!("{what} takes (N, C, …), got {d:?}"),
    }
}

/// The output of a normalized value `xh` of channel `ch`: `xh·γ + β`, and the ReLU.
#[inline(always)]
fn affine_relu<T: WithDType>(xh: T, gc: T, bc: T, relu: bool) -> T {
    let y = xh * gc + bc;
    let zero = T::from_f64(0.0);
    if !relu || y > zero {
        y
    } else {
        zero
    }
}

fn bn_forward<T: WithDType>(
    x: &[T],
    g: &[T],
    b: &[T],
    (n, c, p): (usize, usize, usize),
    eps: f64,
    relu: bool,
) -> (Vec<T>, Vec<(f64, f64)>) {
    let stats: Vec<(f64, f64)> = (0..c).into_par_iter().map(|ch| channel_stats(x, n, c, p, ch)).collect();
    let out = super::par_filled(x.len(), p, |row, o| {
        let ch = row % c;
        let (mean, var) = stats[ch];
        let inv = 1.0 / (var + eps).sqrt();
        for (o, v) in o.iter_mut().zip(&x[row * p..][..p]) {
            o.write(affine_relu(T::from_f64((v.to_f64() - mean) * inv), g[ch], b[ch], relu));
        }
    });
    (out, stats)
}

/// (dx, then dγ and dβ of the C channels) from `x`, the output gradient `dy` and the
/// forward's statistics: [`ReluGrad`](super::relu), [`ChannelAffine`]'s backward and
/// [`Standardize`]'s, fused.
#[allow(clippy::too_many_arguments)]
fn bn_backward<T: WithDType>(
    x: &[T],
    dy: &[T],
    g: &[T],
    b: &[T],
    stats: &[(f64, f64)],
    (n, c, p): (usize, usize, usize),
    eps: f64,
    relu: bool,
) -> Vec<T> {
    let count = (n * p) as f64;
    let zero = T::from_f64(0.0);
    // The gradient of x̂ at one element: dy through the ReLU's mask, times γ (ChannelAffine's
    // dx: its forward with β = 0, so `d·γ + 0`).
    let dxh = |v: T, d: T, mean: f64, inv: f64, ch: usize| -> (T, T) {
        let xh = T::from_f64((v.to_f64() - mean) * inv);
        let d = if !relu || affine_relu(xh, g[ch], b[ch], false) > zero { d } else { zero };
        (xh, d)
    };
    // Per channel: 1/√(σ² + ε), mean(dx̂), mean(dx̂·x̂), dγ, dβ.
    let per: Vec<(f64, f64, f64, f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, var) = stats[ch];
            let inv = 1.0 / (var + eps).sqrt();
            let (mut sg, mut sgx, mut dgamma, mut dbeta) = (0.0, 0.0, 0.0, 0.0);
            for s in 0..n {
                let at = (s * c + ch) * p;
                for (&v, &d) in x[at..][..p].iter().zip(&dy[at..][..p]) {
                    let (xh, d) = dxh(v, d, mean, inv, ch);
                    let d64 = d.to_f64();
                    dbeta += d64;
                    dgamma += d64 * xh.to_f64();
                    let e = (d * g[ch] + zero).to_f64();
                    sg += e;
                    sgx += e * (v.to_f64() - mean) * inv;
                }
            }
            (inv, sg / count, sgx / count, dgamma, dbeta)
        })
        .collect();
    let len = x.len();
    let mut out = Vec::with_capacity(len + 2 * c);
    super::par_fill_onto(&mut out, len, p, |row, o| {
        let ch = row % c;
        let mean = stats[ch].0;
        let (inv, mg, mgx, _, _) = per[ch];
        let at = row * p;
        for ((o, &v), &d) in o.iter_mut().zip(&x[at..][..p]).zip(&dy[at..][..p]) {
            let (_, d) = dxh(v, d, mean, inv, ch);
            let e = (d * g[ch] + zero).to_f64();
            let xh = (v.to_f64() - mean) * inv;
            o.write(T::from_f64((e - mg - xh * mgx) * inv));
        }
    });
    out.extend(per.iter().map(|q| T::from_f64(q.3)));
    out.extend(per.iter().map(|q| T::from_f64(q.4)));
    out
}

impl candle_core::CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batchnorm-train"
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
        let (n, c, p) = dims_nc(l1, "batchnorm-train")?;
        if l2.shape().dims() != [c] || l3.shape().dims() != [c] {
            candle_core::bail!("batchnorm-train: γ {:?} and β {:?} for {c} channels", l2.shape(), l3.shape());
        }
        let (out, stats) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                let (x, g, b) = (super::contiguous(x, l1, "the input")?, super::contiguous(g, l2, "γ")?, super::contiguous(b, l3, "β")?);
                let (o, s) = bn_forward(x, g, b, (n, c, p), self.eps, self.relu);
                (CpuStorage::F32(o), s)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                let (x, g, b) = (super::contiguous(x, l1, "the input")?, super::contiguous(g, l2, "γ")?, super::contiguous(b, l3, "β")?);
                let (o, s) = bn_forward(x, g, b, (n, c, p), self.eps, self.relu);
                (CpuStorage::F64(o), s)
            }
            _ => candle_core::bail!("batchnorm-train: dtypes {:?}, {:?}, {:?} (f32 or f64, all alike)", s1.dtype(), s2.dtype(), s3.dtype()),
        };
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_op = BatchNormTrainGrad { eps: self.eps, relu: self.relu, stats: self.stats() };
        let params = Tensor::cat(&[gamma, beta], 0)?;
        let all = x.apply_op3_no_bwd(&grad.contiguous()?, &params, &grad_op)?;
        let (len, c) = (x.elem_count(), gamma.elem_count());
        let dx = all.narrow(0, 0, len)?.reshape(x.shape())?;
        Ok((Some(dx), Some(all.narrow(0, len, c)?), Some(all.narrow(0, len + c, c)?)))
    }
}

/// (x, dy, [γ, β]) → [dx (flattened), dγ, dβ] of [`BatchNormTrain`].
struct BatchNormTrainGrad {
    eps: f64,
    relu: bool,
    stats: Vec<(f64, f64)>,
}

impl candle_core::CustomOp3 for BatchNormTrainGrad {
    fn name(&self) -> &'static str {
        "batchnorm-train-grad"
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
        let (n, c, p) = dims_nc(l1, "batchnorm-train-grad")?;
        if l1.shape() != l2.shape() || l3.shape().dims() != [2 * c] || self.stats.len() != c {
            candle_core::bail!(
                "batchnorm-train-grad: x {:?}, dy {:?}, γβ {:?}, {} statistics",
                l1.shape(),
                l2.shape(),
                l3.shape(),
                self.stats.len()
            );
        }
        let dims = (n, c, p);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(d), CpuStorage::F32(gb)) => {
                let (x, d, gb) =
                    (super::contiguous(x, l1, "the input")?, super::contiguous(d, l2, "the gradient")?, super::contiguous(gb, l3, "γβ")?);
                CpuStorage::F32(bn_backward(x, d, &gb[..c], &gb[c..], &self.stats, dims, self.eps, self.relu))
            }
            (CpuStorage::F64(x), CpuStorage::F64(d), CpuStorage::F64(gb)) => {
                let (x, d, gb) =
                    (super::contiguous(x, l1, "the input")?, super::contiguous(d, l2, "the gradient")?, super::contiguous(gb, l3, "γβ")?);
                CpuStorage::F64(bn_backward(x, d, &gb[..c], &gb[c..], &self.stats, dims, self.eps, self.relu))
            }
            _ => candle_core::bail!("batchnorm-train-grad: dtypes {:?}, {:?}, {:?}", s1.dtype(), s2.dtype(), s3.dtype()),
        };
        Ok((out, Shape::from(n * c * p + 2 * c)))
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

    /// The fused op against [`Standardize`], [`ChannelAffine`] and the ReLU one after the
    /// other (with the reshapes between them): the same output and the same gradients of
    /// x, γ and β, bit for bit, with and without the ReLU, at several ranks.
    #[test]
    fn fused_batch_norm_is_the_three_ops() {
        let dev = Device::Cpu;
        for (dims, relu) in [(vec![3usize, 5, 4, 6], true), (vec![3, 5, 4, 6], false), (vec![4, 3], true), (vec![2, 4, 7], false)] {
            let (n, c) = (dims[0], dims[1]);
            let x = Var::from_tensor(&(Tensor::randn(0f32, 1.0, dims.clone(), &dev).unwrap() + 0.3).unwrap()).unwrap();
            let g = Var::from_tensor(&Tensor::randn(1f32, 0.5, c, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, c, &dev).unwrap()).unwrap();
            let w = Tensor::randn(0f32, 1.0, dims.clone(), &dev).unwrap();
            let op = BatchNormTrain::new(1e-5, relu);
            let ours = op.apply(x.as_tensor(), g.as_tensor(), b.as_tensor()).unwrap();
            let std = Standardize::new(1e-5);
            let xh = std.apply(&x.as_tensor().reshape((n, c, ())).unwrap()).unwrap();
            let y = ChannelAffine::apply(&xh, g.as_tensor(), b.as_tensor()).unwrap().reshape(dims.clone()).unwrap();
            let theirs = if relu { crate::nn::relu::relu(&y).unwrap() } else { y };
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&ours), bits(&theirs), "{dims:?} relu {relu}");
            assert_eq!(op.stats(), std.stats());
            let go = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (&theirs * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &g, &b] {
                let (a, t) = (go.get(v.as_tensor()).unwrap(), gt.get(v.as_tensor()).unwrap());
                assert_eq!(a.dims(), t.dims());
                // Zeros may differ in sign only (candle adds each gradient to +0).
                let plus = |t: &Tensor| (t + 0.0).unwrap();
                assert_eq!(bits(&plus(a)), bits(&plus(t)), "{dims:?} relu {relu}");
            }
        }
    }

    /// The fused op's gradients against central finite differences in f64 (no ReLU: its
    /// kink is no place for differences).
    #[test]
    fn fused_batch_norm_gradients_are_finite_differences() {
        let dev = Device::Cpu;
        let (n, c, p) = (3usize, 2usize, 5usize);
        let x0: Vec<f64> = Tensor::randn(0f64, 1.0, n * c * p, &dev).unwrap().to_vec1().unwrap();
        let (g0, b0) = (vec![1.3, -0.7], vec![0.2, -0.4]);
        let w: Vec<f64> = Tensor::randn(0f64, 1.0, n * c * p, &dev).unwrap().to_vec1().unwrap();
        let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
            let t = |v: &[f64], s: &[usize]| Tensor::from_slice(v, s, &dev).unwrap();
            let y = BatchNormTrain::new(1e-5, false).apply(&t(x, &[n, c, p]), &t(g, &[c]), &t(b, &[c])).unwrap();
            y.flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().zip(&w).map(|(y, w)| y * w).sum()
        };
        let x = Var::from_slice(&x0, (n, c, p), &dev).unwrap();
        let g = Var::from_slice(&g0, c, &dev).unwrap();
        let b = Var::from_slice(&b0, c, &dev).unwrap();
        let y = BatchNormTrain::new(1e-5, false).apply(x.as_tensor(), g.as_tensor(), b.as_tensor()).unwrap();
        let grads = (y * Tensor::from_slice(&w, (n, c, p), &dev).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |v: &Var| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-6;
        let bump = |v: &[f64], i: usize, d: f64| {
            let mut v = v.to_vec();
            v[i] += d;
            v
        };
        for (i, a) in flat(&x).iter().enumerate() {
            let fd = (loss(&bump(&x0, i, h), &g0, &b0) - loss(&bump(&x0, i, -h), &g0, &b0)) / (2.0 * h);
            assert!((a - fd).abs() < 1e-6 * (1.0 + fd.abs()), "dx[{i}] {a} vs {fd}");
        }
        for (i, (ag, ab)) in flat(&g).iter().zip(flat(&b)).enumerate() {
            let fg = (loss(&x0, &bump(&g0, i, h), &b0) - loss(&x0, &bump(&g0, i, -h), &b0)) / (2.0 * h);
            let fb = (loss(&x0, &g0, &bump(&b0, i, h)) - loss(&x0, &g0, &bump(&b0, i, -h))) / (2.0 * h);
            assert!((ag - fg).abs() < 1e-6 * (1.0 + fg.abs()), "dγ[{i}] {ag} vs {fg}");
            assert!((ab - fb).abs() < 1e-6 * (1.0 + fb.abs()), "dβ[{i}] {ab} vs {fb}");
        }
    }
}
