//! The candle back end: a runnable model built from the unified layers, initialized
//! from a plan.
//!
//! In: a [`Network`] (its layers, shapes and geometry) and a [`Plan`] for the same
//! network (the std of every weight). Out: a [`Model`] whose parameters are candle
//! [`Var`]s named as in the plan (PyTorch's `state_dict` names), in layer order.
//!
//! Invariants: weights are drawn from N(0, std²) with one seeded generator, one stream
//! over the layers in order (weight by weight, PyTorch's memory layout); biases are zero.
//! The forward pass is `z^(ℓ) = pool(f(conv(z^(ℓ-1))))` for ℓ = 1..L, exactly the
//! unified layers. On the CPU convolutions are cnnc's im2col + GEMM ops ([`conv`]: any
//! padding, per-axis stride and dilation, groups); elsewhere, or with [`Kernels::Candle`],
//! candle's `conv2d` (asymmetric padding by an explicit zero pad, per-axis stride and
//! dilation by [`conv::ConvSpec::apply_candle`]). Pooling is [`pool::PoolSpec`] (candle's
//! own is unusable), on the CPU and on CUDA.

pub mod conv;
pub mod graph;
pub mod norm;
pub mod pool;
pub mod relu;

pub use graph::GraphModel;

use crate::ir::{Activation, Shape};
use crate::plan::Plan;
use crate::unify::{Layer, Network, WeightKind};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use conv::ConvSpec;
use pool::PoolSpec;
use rand::SeedableRng;
use rand_distr::Distribution;

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("layer {layer} (`{module}`): {message}")]
    Layer { layer: usize, module: String, message: String },
    #[error("node {node} `{name}` ({op}): {message}")]
    Node { node: usize, name: String, op: &'static str, message: String },
    #[error("the plan does not fit the network: {0}")]
    PlanMismatch(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// How one unified layer's weight operation runs in candle.
#[derive(Clone, Debug)]
enum WeightOp {
    Conv(ConvSpec),
    Linear,
}

/// Which convolution kernels a model runs on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// cnnc's im2col + GEMM ops ([`conv`]), with their own backward: the default.
    #[default]
    Cnnc,
    /// candle's `conv2d` (and its backward): for comparisons. Also what other devices run.
    Candle,
}

/// One unified layer, runnable.
#[derive(Clone, Debug)]
pub struct ModelLayer {
    pub module: String,
    pub weight_name: String,
    pub bias_name: Option<String>,
    pub weight: Var,
    pub bias: Option<Var>,
    op: WeightOp,
    pub kernels: Kernels,
    activation: Activation,
    pool: Option<PoolSpec>,
    /// One sample's input shape (a conv reshapes to it, a linear flattens it).
    input: Shape,
    /// Shape of `u` and `v` (a pooling sees it as C×H×W).
    conv_output: Shape,
    output: Shape,
    /// The model's (shared by its layers): see [`Model::backward`].
    sink: conv::GradSink,
}

/// A network ready to run: layers in order.
#[derive(Clone, Debug)]
pub struct Model {
    pub layers: Vec<ModelLayer>,
    pub input: Shape,
    pub device: Device,
    pub dtype: DType,
    sink: conv::GradSink,
}

/// Sets up the process for CPU training; call once, first thing in `main`, before any
/// thread starts. Two things, measured on the 2-core CI machine with
/// `cargo bench --features train --bench kernels` (batch 16):
///
/// - One thread pool: candle 0.11 runs its elementwise ops on a pool of its own
///   (`CANDLE_NUM_THREADS`, else as many threads as rayon's), beside rayon's, which the
///   GEMMs and cnnc's conv ops use; with both pools spinning on the same cores an F34
///   training step at 64×64 took 356 ms at 2 threads, with candle's pool at one thread
///   (its ops then run on the calling thread) 296 ms. So `CANDLE_NUM_THREADS` is set to 1
///   unless the user set it.
/// - Freed memory stays in the process, in one arena (glibc's `malloc`; elsewhere a
///   no-op). glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh `mmap`s and unmaps them
///   when freed, and trims the heap top; a training step frees and reallocates the same
///   activation-sized blocks every step, so every page was faulted in and zeroed again,
///   and with two threads each unmap interrupted the other core to flush its TLB: a 3×3
///   conv's forward + backward, 64→64, 56×56, 2 threads, took 164 ms, now 61 ms. The cost:
///   the process keeps its peak heap. And one arena: the training loop runs on a rayon
///   worker ([`on_pool`]), and a thread other than the main one allocates from an arena
///   of 64 MiB heaps, which cannot hold two ResNet-18 activations at 224×224 and are
///   unmapped when they empty: with the main arena only, a step faults no pages in once
///   the first has run (ResNet-18, 224×224, batch 16, one thread: 24 000 page faults a
///   step before).
pub fn tune_cpu() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters (and is thread-safe in glibc).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs `f` on a worker of a rayon pool of its own, with as many threads as the global
/// pool would have (`RAYON_NUM_THREADS`, else one per logical CPU): the way to run a
/// training loop. Called from outside a pool, every parallel op hands its work to the
/// pool's threads and waits, asleep, for it: two thread wake-ups per op, hundreds per
/// F34 step. From a worker, the calling thread takes its share itself. Measured: F34
/// 64×64 training, 2 threads, context switches 17 000 → 3 000 a run, the step 1–3 %
/// faster (`cargo bench --features train --bench kernels`, three interleaved runs). Results do not change:
/// the ops split their work by the thread count, which is the same.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new().build() {
        Ok(pool) => pool.install(f),
        // No threads to be had: run here (the global pool, or none, does the work).
        Err(_) => f(),
    }
}

/// The elements of a contiguous CPU tensor's storage `v` under `layout`; `what` names the
/// tensor in the error (the custom ops make their inputs contiguous first).
pub(crate) fn contiguous<'a, T>(v: &'a [T], layout: &candle_core::Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what} is not contiguous"),
    }
}

/// A vector of `len` elements written in chunks of `chunk` on rayon's threads, not zeroed
/// first: `fill(i, out)` must write every element of `out`, elements `i·chunk..` of the
/// vector (the last chunk may be shorter).
///
/// Why: `vec![0; len]` zeroes an activation-sized buffer on the calling thread (`memset`,
/// 6 % of a ResNet-18 training step at two threads) only for every element to be written.
pub(crate) fn par_filled<T: Send + Sync>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    par_fill_onto(&mut v, len, chunk, fill);
    v
}

/// [`par_filled`] onto the end of `v`: `len` more elements (chunk `i` starts at the old
/// length + `i·chunk`).
pub(crate) fn par_fill_onto<T: Send + Sync>(
    v: &mut Vec<T>,
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync + Send,
) {
    use rayon::prelude::*;
    v.reserve(len);
    let at = v.len();
    let chunk = chunk.max(1);
    // Small chunks (a BatchNorm's rows at 2×2) go to a thread a few thousand elements at a time.
    let per_task = (4096 / chunk).max(1);
    v.spare_capacity_mut()[..len].par_chunks_mut(chunk).enumerate().with_min_len(per_task).for_each(|(i, out)| fill(i, out));
    // SAFETY: `reserve` made room for `len` more, and `fill` initialized every one of them
    // (its contract).
    unsafe { v.set_len(at + len) };
}

/// [`contiguous`], mutable (in-place ops).
pub(crate) fn contiguous_mut<'a, T>(v: &'a mut [T], layout: &candle_core::Layout, what: &str) -> candle_core::Result<&'a mut [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => candle_core::bail!("{what} is not contiguous"),
    }
}

fn usize_of(v: u64) -> usize {
    // Lowering bounds every size by `lower::MAX_SIZE`, far below usize::MAX.
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn layer_err(l: &Layer, message: impl Into<String>) -> NnError {
    NnError::Layer { layer: l.index, module: l.weight.module.clone(), message: message.into() }
}

fn weight_op(l: &Layer) -> Result<WeightOp, NnError> {
    match (l.weight.kind, &l.weight.conv) {
        (WeightKind::Linear, _) => Ok(WeightOp::Linear),
        (WeightKind::Conv, Some(c)) => {
            let p = c.pad;
            Ok(WeightOp::Conv(ConvSpec {
                stride: c.stride.map(usize_of),
                dilation: c.dilation.map(usize_of),
                pad: [p[0].begin, p[1].begin, p[0].end, p[1].end].map(usize_of),
                groups: usize_of(c.groups),
            }))
        }
        (WeightKind::Conv, None) => Err(layer_err(l, "a conv layer without its options")),
    }
}

fn pool_spec(l: &Layer) -> Result<Option<PoolSpec>, NnError> {
    l.pooling.as_ref().map(|p| PoolSpec::of(p).map_err(|m| layer_err(l, m))).transpose()
}

/// Draws N(0, std²) samples, f64 then rounded to the model's dtype.
fn normal(rng: &mut rand::rngs::StdRng, n: usize, std: f64) -> Result<Vec<f64>, NnError> {
    if std == 0.0 {
        return Ok(vec![0.0; n]);
    }
    let d = rand_distr::Normal::new(0.0, std).map_err(|e| NnError::PlanMismatch(format!("std {std}: {e}")))?;
    Ok((0..n).map(|_| d.sample(rng)).collect())
}

impl Model {
    /// Builds the model of `net` with weights drawn from `plan` (seeded by `seed`) and
    /// zero biases, on `device` in `dtype` (f32 or f64).
    pub fn new(net: &Network, plan: &Plan, seed: u64, device: &Device, dtype: DType) -> Result<Model, NnError> {
        if !pool::supported(dtype) {
            return Err(NnError::PlanMismatch(format!("dtype {dtype:?} is not supported (f32 or f64)")));
        }
        if plan.format != crate::plan::FORMAT {
            return Err(NnError::PlanMismatch(format!(
                "the plan is {}; the candle model takes plans of chains ({})",
                plan.format,
                crate::plan::FORMAT
            )));
        }
        if plan.layers.len() != net.layers.len() {
            return Err(NnError::PlanMismatch(format!("the plan has {} layers, the network {}", plan.layers.len(), net.layers.len())));
        }
        if plan.input_shape != net.input.dims() {
            return Err(NnError::PlanMismatch(format!("the plan is for input {:?}, the network takes {}", plan.input_shape, net.input)));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(net.layers.len());
        let sink = conv::GradSink::default();
        for (l, p) in net.layers.iter().zip(&plan.layers) {
            let w = &l.weight;
            if p.weight.name != w.weight_param || p.weight.shape != w.weight_shape {
                return Err(NnError::PlanMismatch(format!(
                    "layer {}: the plan has `{}` {:?}, the network `{}` {:?}",
                    l.index, p.weight.name, p.weight.shape, w.weight_param, w.weight_shape
                )));
            }
            if !(p.weight.std.is_finite() && p.weight.std >= 0.0) {
                return Err(NnError::PlanMismatch(format!(
                    "layer {} (`{}`): std {} is not a finite non-negative number",
                    l.index, w.module, p.weight.std
                )));
            }
            let shape: Vec<usize> = w.weight_shape.iter().map(|&d| usize_of(d)).collect();
            let numel: usize = shape.iter().product();
            let values = normal(&mut rng, numel, p.weight.std)?;
            let weight = Var::from_tensor(&Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)?;
            let bias = match &w.bias_param {
                Some(_) => Some(Var::zeros(usize_of(w.geometry.out_channels), dtype, device)?),
                None => None,
            };
            layers.push(ModelLayer {
                module: w.module.clone(),
                weight_name: w.weight_param.clone(),
                bias_name: w.bias_param.clone(),
                weight,
                bias,
                op: weight_op(l)?,
                kernels: Kernels::default(),
                activation: l.activation,
                pool: pool_spec(l)?,
                input: l.input,
                conv_output: l.conv_output,
                output: l.output,
                sink: sink.clone(),
            });
        }
        Ok(Model { layers, input: net.input, device: device.clone(), dtype, sink })
    }

    /// The gradients of `loss` (computed from this model's outputs): `loss.backward()`,
    /// faster. The conv layers (cnnc's kernels) hand their weight and bias gradients over
    /// directly ([`conv::GradSink`]) instead of through candle's autograd, which adds
    /// every gradient to a new tensor of zeros; the store holds the same values either
    /// way. Not for concurrent backward passes through one model.
    pub fn backward(&self, loss: &Tensor) -> candle_core::Result<GradStore> {
        backward_with_sink(&self.sink, loss)
    }

    /// The parameters, named as in the plan, in layer order (weight, then bias).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.push((l.weight_name.clone(), l.weight.clone()));
            if let (Some(n), Some(b)) = (&l.bias_name, &l.bias) {
                out.push((n.clone(), b.clone()));
            }
        }
        out
    }

    /// Chooses the convolution kernels of every layer (on the CPU; see [`Kernels`]).
    pub fn with_kernels(mut self, kernels: Kernels) -> Model {
        for l in &mut self.layers {
            l.kernels = kernels;
        }
        self
    }

    /// Runs the network on a batch `x` of shape (N, input dims…); returns (N, output dims…).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
        let mut x = x.clone();
        for (k, l) in self.layers.iter().enumerate() {
            x = l.forward(&x).map_err(|e| NnError::Layer { layer: k + 1, module: l.module.clone(), message: e.to_string() })?;
        }
        Ok(x)
    }
}

/// `loss.backward()` with `sink` on: the conv ops built with it leave their parameter
/// gradients there, and they are put into the store afterwards (added to any that candle's
/// autograd computed for the same parameter).
pub fn backward_with_sink(sink: &conv::GradSink, loss: &Tensor) -> candle_core::Result<GradStore> {
    sink.take();
    let mut grads = {
        let _on = sink.on();
        loss.backward()?
    };
    for (param, g) in sink.take() {
        let g = match grads.remove(&param) {
            Some(earlier) => (earlier + g)?,
            None => g,
        };
        grads.insert(&param, g);
    }
    Ok(grads)
}

/// `f(u)` for a batch: the activations of the unified layers and of graph nodes.
pub fn activate(a: Activation, u: &Tensor) -> candle_core::Result<Tensor> {
    match a {
        Activation::Identity => Ok(u.clone()),
        Activation::Relu => relu::relu(u),
        Activation::LeakyRelu { slope } => candle_nn::ops::leaky_relu(u, slope),
        Activation::Tanh => u.tanh(),
        Activation::Sigmoid => candle_nn::ops::sigmoid(u),
        Activation::Gelu => u.gelu_erf(),
        Activation::Silu => u.silu(),
    }
}

fn batch_shape(n: usize, s: Shape) -> Vec<usize> {
    let mut v = vec![n];
    v.extend(s.dims().into_iter().map(usize_of));
    v
}

impl ModelLayer {
    /// `z^(ℓ) = pool(f(conv(z^(ℓ-1))))` for a batch.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let (WeightOp::Conv(spec), Activation::Relu, Kernels::Cnnc) = (&self.op, self.activation, self.kernels) {
            // Conv + bias + ReLU as one op (see `ConvSpec::apply_relu`).
            let n = x.dim(0)?;
            let (c, h, w) = self.input.chw();
            let x = x.reshape((n, usize_of(c), usize_of(h), usize_of(w)))?;
            let v = spec.apply_with_sink(&x, self.weight.as_tensor(), self.bias.as_ref().map(|b| b.as_tensor()), true, &self.sink)?;
            return self.pool(&v);
        }
        let u = self.conv(x)?;
        self.activate_and_pool(&u)
    }

    /// `u^(ℓ) = conv(z^(ℓ-1))` (bias included) for a batch, shaped (N, C, H, W) for a
    /// conv or (N, out) for a linear layer.
    pub fn conv(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let (c, h, w) = self.input.chw();
        let u = match &self.op {
            WeightOp::Conv(spec) => {
                let x = x.reshape((n, usize_of(c), usize_of(h), usize_of(w)))?;
                let (w, b) = (self.weight.as_tensor(), self.bias.as_ref().map(|b| b.as_tensor()));
                match self.kernels {
                    Kernels::Cnnc => spec.apply_with_sink(&x, w, b, false, &self.sink)?,
                    Kernels::Candle => spec.apply_candle(&x, w, b)?,
                }
            }
            WeightOp::Linear => {
                let x = x.reshape((n, usize_of(c * h * w)))?;
                let u = x.matmul(&self.weight.as_tensor().t()?)?;
                match &self.bias {
                    Some(b) => u.broadcast_add(b.as_tensor())?,
                    None => u,
                }
            }
        };
        Ok(u)
    }

    /// `z^(ℓ) = pool(f(u^(ℓ)))` for a batch of conv outputs.
    pub fn activate_and_pool(&self, u: &Tensor) -> candle_core::Result<Tensor> {
        self.pool(&activate(self.activation, u)?)
    }

    /// `z^(ℓ) = pool(v^(ℓ))`, shaped as the layer's output.
    fn pool(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        let n = v.dim(0)?;
        let z = match &self.pool {
            Some(p) => {
                let (c, h, w) = self.conv_output.chw();
                p.apply(&v.reshape((n, usize_of(c), usize_of(h), usize_of(w)))?)?
            }
            None => v.clone(),
        };
        z.reshape(batch_shape(n, self.output))
    }
}
