//! The candle model of any graph cnnc plans: residual additions, concatenations,
//! BatchNorm, gates, slices, shuffles, element-wise functions, resizes and resamplings
//! to any size, convs of standardized weights, and the attention ops (split attention's
//! radix softmax, global-context attention's softmax over the positions, attention pool
//! and broadcast add, efficient channel attention's swap of channels and width).
//!
//! In: a graph [`Graph`] (the IR of either front end) and a [`Plan`] for it (the std of
//! every weight node, the BatchNorm scales of `batch_norms`). Out: a [`GraphModel`]: one
//! runnable node per IR node, in the IR's topological order, each reading the values its
//! IR node reads, its parameters candle [`Var`]s named as in the plan (PyTorch's
//! `state_dict` names).
//!
//! Invariants: weights are drawn from N(0, std²) with one seeded generator, one stream
//! over the weight nodes in node order (PyTorch's memory layout within a weight); biases
//! and BatchNorm shifts are zero, BatchNorm scales the plan's. Value `k + 1` is node `k`'s
//! output, value 0 the input, every value shaped (N, dims of its IR shape…).
//!
//! Convolutions run cnnc's kernels ([`super::conv`]) on the CPU (their weight and bias
//! gradients handed over by the model's [`conv::GradSink`], as the chain model's), a conv
//! whose only reader is a ReLU as one fused op; candle's `conv2d` with
//! [`Kernels::Candle`] or on other devices. Pooling is [`PoolSpec`].
//!
//! Normalizations: a BatchNorm the IR marks `training` is PyTorch's `BatchNorm2d`: batch
//! statistics (biased variance; on the CPU one op with γ, β and a reading ReLU,
//! [`super::norm::BatchNormTrain`]) while the model
//! trains, and then running statistics updated with momentum 0.1 and the unbiased batch
//! variance; the running statistics in evaluation ([`GraphModel::set_training`]). They are buffers (`{module}.running_mean`,
//! `{module}.running_var`), not parameters. A BatchNorm the IR marks inference (an
//! exporter's eval-mode graph, a layer scale) is the fixed affine map of running mean 0
//! and variance 1, as the plan analyses it. Group, instance and layer norms use each
//! sample's statistics in both modes.

use super::conv::{self, ConvSpec};
use super::norm::{BatchNormTrain, ChannelAffine, Standardize};
use super::pool::PoolSpec;
use super::{activate, normal, usize_of, Kernels, NnError};
use crate::ir::{self, Activation, Expr, Fn1, Graph, Op, Shape, ValueId};
use crate::plan::Plan;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// PyTorch's BatchNorm momentum: `running = (1 − m)·running + m·batch`.
pub const BN_MOMENTUM: f64 = 0.1;

/// A named parameter or buffer.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub var: Var,
}

/// A normalization node's parameters and running statistics.
#[derive(Clone, Debug)]
struct Norm {
    spec: ir::BatchNorm,
    gamma: Option<Param>,
    beta: Option<Param>,
    /// Running mean and variance: batch normalizations the IR marks `training` only.
    running: Option<(Param, Param)>,
    /// ReLU applied in the op (its reader, a ReLU node, then passes the value on).
    relu: bool,
}

#[derive(Clone, Debug)]
enum NodeOp {
    Conv {
        spec: ConvSpec,
        weight: Param,
        bias: Option<Param>,
        /// The weight's shape as the op reads it, where it is stored in another
        /// (a channels-last Linear as a 1×1 conv): then no gradient hand-over.
        reshaped: Option<[usize; 4]>,
        /// The weight is standardized per filter before use: then no gradient hand-over.
        standardized: Option<Box<StdWeight>>,
        /// The weight is a ConvTranspose's, [C_in, C_out/g, k_h, k_w] ([`transposed_weight`]):
        /// then no gradient hand-over.
        transposed: bool,
        /// ReLU applied in the op (its reader, a ReLU node, then passes the value on).
        relu: bool,
    },
    Linear {
        weight: Param,
        bias: Option<Param>,
    },
    Activation(Activation),
    /// A ReLU whose conv applied it already.
    Fused,
    Elementwise(Expr),
    Pool(PoolSpec),
    Flatten,
    /// A sum of the inputs; of two, with the ReLU of its only reader applied (`relu`).
    Add {
        relu: bool,
    },
    Concat,
    Mul,
    Slice {
        start: usize,
        len: usize,
    },
    Shuffle {
        groups: usize,
    },
    Dilate {
        stride: [usize; 2],
    },
    Resize(Resize),
    Norm(Box<Norm>),
    RadixSoftmax {
        radix: usize,
        groups: usize,
    },
    AddBroadcast,
    SoftmaxPositions,
    AttentionPool,
    SwapChannelsWidth,
}

/// One node of the graph, runnable.
#[derive(Clone, Debug)]
pub struct GraphNode {
    pub name: String,
    pub kind: &'static str,
    pub inputs: Vec<usize>,
    pub output: Shape,
    op: NodeOp,
}

impl GraphNode {
    /// The weight parameter of a conv or linear node.
    pub fn weight(&self) -> Option<&Param> {
        match &self.op {
            NodeOp::Conv { weight, .. } | NodeOp::Linear { weight, .. } => Some(weight),
            _ => None,
        }
    }
}

/// How a conv of a standardized weight computes the weight it uses from the stored one
/// (see [`standardize_weight`]).
#[derive(Clone, Debug)]
struct StdWeight {
    epsilon: f64,
    /// The constant factor: the network's gain over the gain parameter's initial value.
    factor: f64,
    /// The per-filter gain parameter (C_out, 1, 1, 1), where the network has one.
    gain: Option<Param>,
}

/// A conv weight standardized per filter (weight standardization, [`ir::Standardized`]):
/// `factor · gain_f · (v − mean(v)) / √(var(v) + ε)` for each filter f of the stored
/// weight `v` (C_out, C_in/g, k_h, k_w), the mean and the biased variance over the
/// filter's elements, `gain` (C_out, 1, 1, 1) the per-filter gain parameter where there
/// is one. Candle operations: the gradient reaches `v` and `gain` through them.
pub fn standardize_weight(v: &Tensor, epsilon: f64, factor: f64, gain: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let o = v.dim(0)?;
    let flat = v.reshape((o, ()))?;
    let centred = flat.broadcast_sub(&flat.mean_keepdim(1)?)?;
    let var = centred.sqr()?.mean_keepdim(1)?;
    let w = centred.broadcast_div(&var.affine(1.0, epsilon)?.sqrt()?)?.affine(factor, 0.0)?;
    let w = match gain {
        Some(g) => w.broadcast_mul(&g.reshape((o, 1))?)?,
        None => w,
    };
    w.reshape(v.dims())
}

/// A graph ready to run.
#[derive(Debug)]
pub struct GraphModel {
    pub name: String,
    pub nodes: Vec<GraphNode>,
    pub input: Shape,
    pub device: Device,
    pub dtype: DType,
    training: AtomicBool,
    kernels: Kernels,
    sink: conv::GradSink,
}

fn node_err(k: usize, n: &ir::Node, message: impl Into<String>) -> NnError {
    NnError::Node { node: k, name: n.name.clone(), op: n.op.kind_name(), message: message.into() }
}

fn batch_shape(n: usize, s: Shape) -> Vec<usize> {
    let mut v = vec![n];
    v.extend(s.dims().into_iter().map(usize_of));
    v
}

/// The interpolation matrix (out × in) of an upsampling by `scale` along one axis:
/// nearest takes input `o / scale`; linear the half-pixel rule of PyTorch's
/// `align_corners=False` and ONNX's default (source `(o + ½)/scale − ½`, clamped).
fn resize_matrix(input: usize, scale: usize, linear: bool) -> Vec<f64> {
    let out = input * scale;
    let mut a = vec![0.0; out * input];
    for o in 0..out {
        if !linear {
            a[o * input + o / scale] = 1.0;
            continue;
        }
        let src = ((o as f64 + 0.5) / scale as f64 - 0.5).clamp(0.0, (input - 1) as f64);
        let i0 = src.floor() as usize;
        let i1 = (i0 + 1).min(input - 1);
        let frac = src - i0 as f64;
        a[o * input + i0] += 1.0 - frac;
        a[o * input + i1] += frac;
    }
    a
}

/// Zeros between the positions of an (N, C, H, W) tensor: `stride − 1` after each row and
/// column but the last (a transposed conv's input, before its stride-1 conv).
pub fn dilate(x: &Tensor, stride: [usize; 2]) -> candle_core::Result<Tensor> {
    dilate_axis(&dilate_axis(x, 2, stride[0])?, 3, stride[1])
}

/// The channel shuffle of an (N, C, H, W) tensor in `groups` groups (ShuffleNet's):
/// channel `g·(C/groups) + i` moves to `i·groups + g`.
pub fn channel_shuffle(x: &Tensor, groups: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, groups, c / groups, h, w))?.transpose(1, 2)?.contiguous()?.reshape((n, c, h, w))
}

/// A separable resampling as `y = A_h · x · A_wᵀ` per channel: upsampling by an integer
/// factor per axis (nearest or linear half-pixel, PyTorch's `Upsample` and ONNX's
/// `Resize`), or any [`ir::Resample`] (ONNX `Resize` to any size, torch's
/// `F.interpolate`), whose matrices hold [`ir::Resample::weights`]. Its backward is
/// candle's of the two matrix products: `A_hᵀ · g · A_w`.
#[derive(Clone, Debug)]
pub struct Resize {
    rows: Tensor,
    cols_t: Tensor,
}

impl Resize {
    /// The upsampling of (N, C, `h`, `w`) inputs by `scale` = [sh, sw].
    pub fn new(h: usize, w: usize, scale: [usize; 2], linear: bool, device: &Device, dtype: DType) -> candle_core::Result<Resize> {
        let [sh, sw] = scale;
        let rows = Tensor::from_vec(resize_matrix(h, sh, linear), (h * sh, h), device)?.to_dtype(dtype)?;
        let cols_t = Tensor::from_vec(resize_matrix(w, sw, linear), (w * sw, w), device)?.to_dtype(dtype)?.t()?.contiguous()?;
        Ok(Resize { rows, cols_t })
    }

    /// The resampling `r` of (N, C, `input`) inputs to (N, C, `output`) ([h, w] each).
    pub fn resample(r: &ir::Resample, input: [usize; 2], output: [usize; 2], device: &Device, dtype: DType) -> candle_core::Result<Resize> {
        let matrix = |axis: usize| -> candle_core::Result<Tensor> {
            let (i, o) = (input[axis], output[axis]);
            let mut a = vec![0.0; o * i];
            for (row, taps) in r.weights(axis, i as u64, o as u64).into_iter().enumerate() {
                for (at, weight) in taps {
                    a[row * i + at] += weight;
                }
            }
            Tensor::from_vec(a, (o, i), device)?.to_dtype(dtype)
        };
        Ok(Resize { rows: matrix(0)?, cols_t: matrix(1)?.t()?.contiguous()? })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.rows.broadcast_matmul(&x.contiguous()?.broadcast_matmul(&self.cols_t)?)
    }
}

/// The softmax along `dim`: exp(x − max) / Σ exp(x − max), the max a constant (the
/// softmax does not change with it, so no gradient goes through it).
fn softmax(x: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(dim)?.detach())?.exp()?;
    e.broadcast_div(&e.sum_keepdim(dim)?)
}

/// Split attention's softmax across the radix (ResNeSt's rSoftMax, [`Op::RadixSoftmax`]) of
/// (N, C, 1, 1), C = groups · radix · n: viewed (N, groups, radix, n), transposed to
/// (N, radix, groups, n), a softmax over the radix, back to (N, C, 1, 1).
pub fn radix_softmax(x: &Tensor, radix: usize, groups: usize) -> candle_core::Result<Tensor> {
    let (n, c) = (x.dim(0)?, x.elem_count() / x.dim(0)?.max(1));
    let viewed = x.reshape((n, groups, radix, c / (groups * radix)))?.transpose(1, 2)?;
    softmax(&viewed, 1)?.contiguous()?.reshape(x.dims())
}

/// A softmax over the positions of each channel of each sample of (N, C, H, W)
/// ([`Op::SoftmaxPositions`]).
pub fn softmax_positions(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    softmax(&x.reshape((n, c, h * w))?, 2)?.reshape((n, c, h, w))
}

/// The attention pool of x (N, C, H, W) with weights a (N, 1, H, W) ([`Op::AttentionPool`]):
/// (N, C, 1, 1), Σ_p a_p x_c,p.
pub fn attention_pool(x: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h * w))?.matmul(&a.reshape((n, h * w, 1))?)?.reshape((n, c, 1, 1))
}

/// A transposed conv's weight as the stride-1 conv after its zeros reads it. ONNX's (and
/// PyTorch's) ConvTranspose stores v as [C_in, C_out/g, k_h, k_w] and adds v[i, o, y, x] ·
/// input i at output position (p·s + y, q·s + x); the conv over the dilated input that
/// computes the same reads w[g·C_out/g + o, i, y, x] = v[g·C_in/g + i, o, k_h − 1 − y,
/// k_w − 1 − x]: per group the transpose, the kernel turned by 180°. Differentiable.
pub fn transposed_weight(v: &Tensor, groups: usize) -> candle_core::Result<Tensor> {
    let (ci, mg, kh, kw) = v.dims4()?;
    if groups == 0 || ci % groups != 0 {
        candle_core::bail!("a transposed conv's weight of {ci} input channels in {groups} groups");
    }
    let turned = |k: usize| Tensor::from_vec((0..k as u32).rev().collect::<Vec<u32>>(), k, v.device());
    v.reshape((groups, ci / groups, mg, kh, kw))?
        .transpose(1, 2)?
        .contiguous()?
        .index_select(&turned(kh)?, 3)?
        .index_select(&turned(kw)?, 4)?
        .reshape((groups * mg, ci / groups, kh, kw))
}

/// The per-sample transpose of (N, A, 1, B) to (N, B, 1, A) ([`Op::SwapChannelsWidth`]).
pub fn swap_channels_width(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, a, _, b) = x.dims4()?;
    x.reshape((n, a, b))?.transpose(1, 2)?.contiguous()?.reshape((n, b, 1, a))
}

/// Zeros between the positions along `dim` (2 or 3) of an (N, C, H, W) tensor.
fn dilate_axis(x: &Tensor, dim: usize, s: usize) -> candle_core::Result<Tensor> {
    if s == 1 {
        return Ok(x.clone());
    }
    let dims = x.dims4()?;
    let len = if dim == 2 { dims.2 } else { dims.3 };
    let (n, c, h, w) = dims;
    let spread = match dim {
        2 => x.unsqueeze(3)?.pad_with_zeros(3, 0, s - 1)?.reshape((n, c, h * s, w))?,
        _ => x.unsqueeze(4)?.pad_with_zeros(4, 0, s - 1)?.reshape((n, c, h, w * s))?,
    };
    spread.narrow(dim, 0, (len - 1) * s + 1)
}

/// An [`Expr`] evaluated on a tensor: a constant stays a number until it meets the tensor.
enum Val {
    C(f64),
    T(Tensor),
}

fn expr(e: &Expr, x: &Tensor) -> candle_core::Result<Val> {
    use Val::{C, T};
    Ok(match e {
        Expr::X => T(x.clone()),
        Expr::Const(c) => C(*c),
        Expr::Apply(f, a) => match expr(a, x)? {
            C(c) => C(f.apply(ir::Dual { v: c, d: 0.0 }).v),
            T(t) => T(fn1(*f, &t)?),
        },
        Expr::Add(a, b) => match (expr(a, x)?, expr(b, x)?) {
            (C(a), C(b)) => C(a + b),
            (T(t), C(c)) | (C(c), T(t)) => T(t.affine(1.0, c)?),
            (T(a), T(b)) => T((a + b)?),
        },
        Expr::Sub(a, b) => match (expr(a, x)?, expr(b, x)?) {
            (C(a), C(b)) => C(a - b),
            (T(t), C(c)) => T(t.affine(1.0, -c)?),
            (C(c), T(t)) => T(t.affine(-1.0, c)?),
            (T(a), T(b)) => T((a - b)?),
        },
        Expr::Mul(a, b) => match (expr(a, x)?, expr(b, x)?) {
            (C(a), C(b)) => C(a * b),
            (T(t), C(c)) | (C(c), T(t)) => T(t.affine(c, 0.0)?),
            (T(a), T(b)) => T((a * b)?),
        },
        Expr::Div(a, b) => match (expr(a, x)?, expr(b, x)?) {
            (C(a), C(b)) => C(a / b),
            (T(t), C(c)) => T(t.affine(1.0 / c, 0.0)?),
            (C(c), T(t)) => T(t.recip()?.affine(c, 0.0)?),
            (T(a), T(b)) => T((a / b)?),
        },
    })
}

/// `log(1 + eˣ)`, stable: `relu(x) + log(1 + e^−|x|)`.
fn softplus(t: &Tensor) -> candle_core::Result<Tensor> {
    t.relu()? + t.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?
}

/// `f(t)` element by element, as the graph model evaluates an [`Expr`]'s functions.
pub fn fn1(f: Fn1, t: &Tensor) -> candle_core::Result<Tensor> {
    match f {
        Fn1::Act(a) => activate(a, t),
        Fn1::Clip { min, max } => clip(t, min, max),
        Fn1::HardSigmoid { alpha, beta } => clip(&t.affine(alpha, beta)?, 0.0, 1.0),
        Fn1::HardSwish => t * clip(&t.affine(1.0 / 6.0, 0.5)?, 0.0, 1.0)?,
        Fn1::Elu { alpha } => t.elu(alpha),
        Fn1::Softplus => softplus(t),
        Fn1::Mish => t * softplus(t)?.tanh()?,
        Fn1::Erf => t.erf(),
        Fn1::Exp => t.exp(),
        Fn1::Neg => t.neg(),
        Fn1::Abs => t.abs(),
        Fn1::Sqrt => t.sqrt(),
    }
}

/// `min(max(x, lo), hi)`, an infinite bound skipped.
fn clip(t: &Tensor, lo: f64, hi: f64) -> candle_core::Result<Tensor> {
    let t = if lo.is_finite() { t.maximum(lo)? } else { t.clone() };
    if hi.is_finite() {
        t.minimum(hi)
    } else {
        Ok(t)
    }
}

impl GraphModel {
    /// Builds the model of `graph` with weights drawn from `plan` (seeded by `seed`), on
    /// `device` in `dtype` (f32 or f64). The plan must be one of this graph at this size:
    /// a `cnnc-plan/2` of the graph analysis, or a chain's `cnnc-plan/1`.
    pub fn new(graph: &Graph, plan: &Plan, seed: u64, device: &Device, dtype: DType) -> Result<GraphModel, NnError> {
        if !super::pool::supported(dtype) {
            return Err(NnError::PlanMismatch(format!("dtype {dtype:?} is not supported (f32 or f64)")));
        }
        if plan.input_shape != graph.input.dims() {
            return Err(NnError::PlanMismatch(format!("the plan is for input {:?}, the network takes {}", plan.input_shape, graph.input)));
        }
        let by_weight: HashMap<&str, &crate::plan::PlanLayer> = plan.layers.iter().map(|l| (l.weight.name.as_str(), l)).collect();
        let scales: HashMap<&str, f64> = plan.batch_norms.iter().flatten().map(|b| (b.scale.name.as_str(), b.scale.value)).collect();
        let weight_nodes = graph.nodes.iter().filter(|n| matches!(n.op, Op::Conv(_) | Op::Linear(_))).count();
        if weight_nodes != plan.layers.len() {
            return Err(NnError::PlanMismatch(format!("the plan has {} weight layers, the network {weight_nodes}", plan.layers.len())));
        }
        // Readers of each value, for the conv + ReLU fusion.
        let mut readers = vec![0usize; graph.nodes.len() + 1];
        for n in &graph.nodes {
            for v in &n.inputs {
                readers[v.0] += 1;
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut nodes: Vec<GraphNode> = Vec::with_capacity(graph.nodes.len());
        for (k, n) in graph.nodes.iter().enumerate() {
            if n.inputs.iter().any(|v| v.0 > k) || n.inputs.is_empty() {
                return Err(node_err(k, n, "reads a value not computed before it"));
            }
            let input = graph.shape(n.inputs[0]);
            let op = match &n.op {
                Op::RadixSoftmax { radix, groups } => {
                    let c = input.numel();
                    if input.chw().1 * input.chw().2 != 1 || *radix == 0 || *groups == 0 || !c.is_multiple_of(radix * groups) {
                        return Err(node_err(
                            k,
                            n,
                            format!("a radix softmax of {radix} × {groups} groups over {input}: it needs (C, 1, 1), C a multiple of their product"),
                        ));
                    }
                    NodeOp::RadixSoftmax { radix: usize_of(*radix), groups: usize_of(*groups) }
                }
                Op::AddBroadcast => NodeOp::AddBroadcast,
                Op::SoftmaxPositions => NodeOp::SoftmaxPositions,
                Op::AttentionPool => NodeOp::AttentionPool,
                Op::SwapChannelsWidth => {
                    if input.chw().1 != 1 {
                        return Err(node_err(k, n, format!("swaps the channels and the width of a value of height 1, not {input}")));
                    }
                    NodeOp::SwapChannelsWidth
                }
                Op::Conv(_) | Op::Linear(_) => {
                    let w = crate::unify::weight(n, input);
                    let p = by_weight.get(w.weight_param.as_str()).ok_or_else(|| {
                        NnError::PlanMismatch(format!("node {k} (`{}`): the plan has no weight `{}`", n.name, w.weight_param))
                    })?;
                    if p.weight.shape != w.weight_shape {
                        return Err(NnError::PlanMismatch(format!(
                            "`{}`: the plan's shape is {:?}, the network's {:?}",
                            w.weight_param, p.weight.shape, w.weight_shape
                        )));
                    }
                    let std = p.weight.std;
                    if !(std.is_finite() && std >= 0.0) {
                        return Err(NnError::PlanMismatch(format!("`{}`: std {std} is not a finite non-negative number", w.weight_param)));
                    }
                    let shape: Vec<usize> = w.weight_shape.iter().map(|&d| usize_of(d)).collect();
                    let values = normal(&mut rng, shape.iter().product(), std)?;
                    let weight = Param {
                        name: w.weight_param.clone(),
                        var: Var::from_tensor(&Tensor::from_vec(values, shape.clone(), device)?.to_dtype(dtype)?)?,
                    };
                    let bias = match &w.bias_param {
                        Some(name) => {
                            Some(Param { name: name.clone(), var: Var::zeros(usize_of(w.geometry.out_channels), dtype, device)? })
                        }
                        None => None,
                    };
                    match &n.op {
                        Op::Conv(c) => {
                            let own = [c.out_channels, c.in_channels / c.groups, c.kernel[0], c.kernel[1]].map(usize_of);
                            let pd = c.pad;
                            let fuse = matches!(graph.nodes.get(k + 1), Some(next)
                                if next.op == Op::Activation(Activation::Relu) && next.inputs == [ValueId(k + 1)])
                                && readers[k + 1] == 1;
                            let standardized = match n.params.as_ref().and_then(|p| p.standardized.as_ref()) {
                                None => None,
                                Some(s) => {
                                    let planned = p.standardized.as_ref().and_then(|i| i.gain_param.as_ref());
                                    let gain = match (&s.gain_param, planned) {
                                        (None, _) => None,
                                        (Some((name, _)), Some(g)) if g.name == *name => Some(Param {
                                            name: name.clone(),
                                            var: Var::from_tensor(&(Tensor::ones((own[0], 1, 1, 1), dtype, device)? * g.value)?)?,
                                        }),
                                        (Some((name, _)), _) => {
                                            return Err(NnError::PlanMismatch(format!(
                                                "node {k} (`{}`): the plan has no value of the gain `{name}`",
                                                n.name
                                            )))
                                        }
                                    };
                                    let factor = match &s.gain_param {
                                        Some((_, init)) => s.gain / init,
                                        None => s.gain,
                                    };
                                    if !factor.is_finite() {
                                        return Err(node_err(k, n, format!("the standardized weight's gain {factor} is not finite")));
                                    }
                                    Some(Box::new(StdWeight { epsilon: s.epsilon, factor, gain }))
                                }
                            };
                            let transposed = n.params.as_ref().is_some_and(|p| p.transposed);
                            if transposed && standardized.is_some() {
                                return Err(node_err(k, n, "a transposed conv of a standardized weight"));
                            }
                            NodeOp::Conv {
                                standardized,
                                transposed,
                                spec: ConvSpec {
                                    stride: c.stride.map(usize_of),
                                    dilation: c.dilation.map(usize_of),
                                    pad: [pd[0].begin, pd[1].begin, pd[0].end, pd[1].end].map(usize_of),
                                    groups: usize_of(c.groups),
                                },
                                weight,
                                bias,
                                reshaped: (!transposed && shape != own).then_some(own),
                                relu: fuse,
                            }
                        }
                        _ => NodeOp::Linear { weight, bias },
                    }
                }
                Op::Activation(a) => {
                    let fused = *a == Activation::Relu
                        && match nodes.last().map(|n| &n.op) {
                            Some(NodeOp::Conv { relu, .. }) => *relu,
                            Some(NodeOp::Norm(norm)) => norm.relu,
                            Some(NodeOp::Add { relu }) => *relu,
                            _ => false,
                        };
                    if fused {
                        NodeOp::Fused
                    } else {
                        NodeOp::Activation(*a)
                    }
                }
                Op::Elementwise(e) => NodeOp::Elementwise(e.clone()),
                Op::Pool(_) | Op::GlobalPool(_) => {
                    NodeOp::Pool(PoolSpec::of(&crate::unify::pooling(n, input)).map_err(|m| node_err(k, n, m))?)
                }
                Op::Flatten => NodeOp::Flatten,
                Op::Add => {
                    // A join of two whose only reader is a ReLU applies it.
                    let relu = n.inputs.len() == 2
                        && matches!(graph.nodes.get(k + 1), Some(next)
                        if next.op == Op::Activation(Activation::Relu) && next.inputs == [ValueId(k + 1)])
                        && readers[k + 1] == 1;
                    NodeOp::Add { relu }
                }
                Op::Concat => NodeOp::Concat,
                Op::Mul => NodeOp::Mul,
                Op::ChannelSlice { start, end } => NodeOp::Slice { start: usize_of(*start), len: usize_of(end - start) },
                Op::Shuffle { groups } => NodeOp::Shuffle { groups: usize_of(*groups) },
                Op::Dilate { stride } => NodeOp::Dilate { stride: stride.map(usize_of) },
                Op::Resize { scale, linear } => {
                    let (_, h, w) = input.chw();
                    NodeOp::Resize(Resize::new(usize_of(h), usize_of(w), scale.map(usize_of), *linear, device, dtype)?)
                }
                Op::Resample(r) => {
                    let (Shape::Image { h, w, .. }, Shape::Image { h: oh, w: ow, .. }) = (input, n.output) else {
                        return Err(node_err(k, n, format!("resamples images, not {input} → {}", n.output)));
                    };
                    let (input, output) = ([h, w].map(usize_of), [oh, ow].map(usize_of));
                    NodeOp::Resize(Resize::resample(r, input, output, device, dtype)?)
                }
                Op::BatchNorm(bn) => {
                    let affine: Vec<usize> = bn.affine.iter().map(|&d| usize_of(d)).collect();
                    let (gamma, beta) = if bn.scale.is_empty() {
                        (None, None)
                    } else {
                        let value = *scales.get(bn.scale.as_str()).ok_or_else(|| {
                            NnError::PlanMismatch(format!("node {k} (`{}`): the plan has no BatchNorm scale `{}`", n.name, bn.scale))
                        })?;
                        let gamma = Var::from_tensor(&(Tensor::ones(affine.clone(), dtype, device)? * value)?)?;
                        let beta = (!bn.shift.is_empty())
                            .then(|| Var::zeros(affine.clone(), dtype, device).map(|var| Param { name: bn.shift.clone(), var }))
                            .transpose()?;
                        (Some(Param { name: bn.scale.clone(), var: gamma }), beta)
                    };
                    let running = if bn.training && bn.groups.is_none() {
                        let m = bn.module(&n.name);
                        let c = usize_of(bn.channels);
                        Some((
                            Param { name: format!("{m}.running_mean"), var: Var::zeros(c, dtype, device)? },
                            Param { name: format!("{m}.running_var"), var: Var::ones(c, dtype, device)? },
                        ))
                    } else {
                        None
                    };
                    // A BatchNorm whose only reader is a ReLU applies it.
                    let relu = matches!(graph.nodes.get(k + 1), Some(next)
                        if next.op == Op::Activation(Activation::Relu) && next.inputs == [ValueId(k + 1)])
                        && readers[k + 1] == 1;
                    NodeOp::Norm(Box::new(Norm { spec: bn.clone(), gamma, beta, running, relu }))
                }
            };
            nodes.push(GraphNode {
                name: n.name.clone(),
                kind: n.op.kind_name(),
                inputs: n.inputs.iter().map(|v| v.0).collect(),
                output: n.output,
                op,
            });
        }
        Ok(GraphModel {
            name: graph.name.clone(),
            nodes,
            input: graph.input,
            device: device.clone(),
            dtype,
            training: AtomicBool::new(true),
            kernels: Kernels::default(),
            sink: conv::GradSink::default(),
        })
    }

    /// Chooses the convolution kernels (on the CPU; see [`Kernels`]). With candle's, no
    /// conv applies its reader's ReLU.
    pub fn with_kernels(mut self, kernels: Kernels) -> GraphModel {
        self.kernels = kernels;
        if kernels == Kernels::Candle {
            self.unfuse();
        }
        self
    }

    /// Every ReLU as a node of its own (the probe reads each conv's output `u`).
    pub fn unfuse(&mut self) {
        for node in &mut self.nodes {
            match &mut node.op {
                NodeOp::Conv { relu, .. } => *relu = false,
                NodeOp::Norm(norm) => norm.relu = false,
                NodeOp::Add { relu } => *relu = false,
                op @ NodeOp::Fused => *op = NodeOp::Activation(Activation::Relu),
                _ => {}
            }
        }
    }

    /// Training mode (the default: BatchNorm uses and tracks batch statistics) or
    /// evaluation mode (it uses its running statistics).
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::SeqCst);
    }

    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::SeqCst)
    }

    /// The parameters, named as in the plan, in node order (weight, bias; γ, β).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let params: Vec<&Param> = match &n.op {
                NodeOp::Conv { weight, bias, standardized, .. } => {
                    std::iter::once(weight).chain(bias).chain(standardized.iter().flat_map(|s| &s.gain)).collect()
                }
                NodeOp::Linear { weight, bias } => std::iter::once(weight).chain(bias).collect(),
                NodeOp::Norm(norm) => norm.gamma.iter().chain(&norm.beta).collect(),
                _ => Vec::new(),
            };
            out.extend(params.into_iter().map(|p| (p.name.clone(), p.var.clone())));
        }
        out
    }

    /// The running statistics of the batch normalizations, by `state_dict` name.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if let NodeOp::Norm(norm) = &n.op {
                if let Some((m, v)) = &norm.running {
                    out.push((m.name.clone(), m.var.clone()));
                    out.push((v.name.clone(), v.var.clone()));
                }
            }
        }
        out
    }

    /// The gradients of `loss`: `loss.backward()` with the conv weight and bias gradients
    /// handed over directly (see [`super::Model::backward`]).
    pub fn backward(&self, loss: &Tensor) -> candle_core::Result<GradStore> {
        super::backward_with_sink(&self.sink, loss)
    }

    /// Runs the graph on a batch `x` (N, input dims…); returns the output value.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
        let mut values = self.values(x, |_, y| Ok(y))?;
        Ok(values.pop().flatten().expect("the last value is kept"))
    }

    /// Runs the graph on `x`, passing each node's output through `visit(k, value)` as it is
    /// computed (what it returns is the value later nodes read: the probe adds a variable
    /// there to read the gradient); returns the values still read later (the last one,
    /// the output, always).
    pub fn values(
        &self,
        x: &Tensor,
        mut visit: impl FnMut(usize, Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Vec<Option<Tensor>>, NnError> {
        let n = x.dim(0)?;
        let mut last_read = vec![0usize; self.nodes.len() + 1];
        for (k, node) in self.nodes.iter().enumerate() {
            for &v in &node.inputs {
                last_read[v] = k;
            }
        }
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len() + 1];
        let input = x.reshape(batch_shape(n, self.input)).map_err(|_| {
            NnError::PlanMismatch(format!("the input batch has shape {:?}; the network takes (N, {})", x.dims(), self.input))
        })?;
        values[0] = Some(input);
        for (k, node) in self.nodes.iter().enumerate() {
            let at = |e: candle_core::Error| NnError::Node { node: k, name: node.name.clone(), op: node.kind, message: e.to_string() };
            let inputs: Vec<&Tensor> = node.inputs.iter().map(|&v| values[v].as_ref().expect("values are kept until read")).collect();
            let y = self.node_forward(node, &inputs, n).map_err(at)?;
            values[k + 1] = Some(visit(k, y).map_err(at)?);
            for &v in &node.inputs {
                if last_read[v] == k && v != self.nodes.len() {
                    values[v] = None;
                }
            }
        }
        Ok(values)
    }

    /// One node's output from its inputs (each shaped as its IR value).
    pub fn node_forward(&self, node: &GraphNode, inputs: &[&Tensor], n: usize) -> candle_core::Result<Tensor> {
        let x = inputs[0];
        let out = batch_shape(n, node.output);
        Ok(match &node.op {
            NodeOp::Conv { spec, weight, bias, reshaped, standardized, transposed, relu } => {
                let x = if x.rank() == 4 { x.clone() } else { x.reshape((n, (), 1, 1))? };
                let b = bias.as_ref().map(|b| b.var.as_tensor());
                let cpu_ours = self.kernels == Kernels::Cnnc;
                let u = match (reshaped, standardized) {
                    (None, None) if cpu_ours && !transposed => spec.apply_with_sink(&x, weight.var.as_tensor(), b, *relu, &self.sink)?,
                    (None, None) if !transposed => spec.apply_candle(&x, weight.var.as_tensor(), b)?,
                    (shape, standardized) => {
                        let w = match shape {
                            _ if *transposed => transposed_weight(weight.var.as_tensor(), spec.groups)?,
                            Some(shape) => weight.var.as_tensor().reshape(shape.to_vec())?,
                            None => weight.var.as_tensor().clone(),
                        };
                        let w = match standardized {
                            Some(s) => standardize_weight(&w, s.epsilon, s.factor, s.gain.as_ref().map(|g| g.var.as_tensor()))?,
                            None => w,
                        };
                        let u = if cpu_ours { spec.apply(&x, &w, b)? } else { spec.apply_candle(&x, &w, b)? };
                        if *relu {
                            crate::nn::relu::relu(&u)?
                        } else {
                            u
                        }
                    }
                };
                reshape_if(u, &out)?
            }
            NodeOp::Linear { weight, bias } => {
                let u = reshape_if(x.clone(), &[n, x.elem_count() / n.max(1)])?.matmul(&weight.var.as_tensor().t()?)?;
                let u = match bias {
                    Some(b) => u.broadcast_add(b.var.as_tensor())?,
                    None => u,
                };
                reshape_if(u, &out)?
            }
            NodeOp::Activation(a) => activate(*a, x)?,
            NodeOp::Fused => x.clone(),
            NodeOp::Elementwise(e) => match expr(e, x)? {
                Val::T(t) => t,
                Val::C(c) => (x.zeros_like()? + c)?,
            },
            NodeOp::Pool(p) => {
                let x = if x.rank() == 4 { x.clone() } else { x.reshape((n, (), 1, 1))? };
                reshape_if(p.apply(&x)?, &out)?
            }
            NodeOp::Flatten => reshape_if(x.clone(), &out)?,
            NodeOp::Add { relu: true } => super::relu::add_relu(x, inputs[1])?,
            NodeOp::Add { relu: false } => {
                let mut s = x.clone();
                for t in &inputs[1..] {
                    s = (s + *t)?;
                }
                s
            }
            NodeOp::Concat => Tensor::cat(inputs, 1)?,
            NodeOp::Mul => x.broadcast_mul(inputs[1])?,
            NodeOp::Slice { start, len } => x.narrow(1, *start, *len)?,
            NodeOp::Shuffle { groups } => channel_shuffle(x, *groups)?,
            NodeOp::Dilate { stride } => dilate(x, *stride)?,
            NodeOp::Resize(r) => r.forward(x)?,
            NodeOp::RadixSoftmax { radix, groups } => radix_softmax(x, *radix, *groups)?,
            NodeOp::AddBroadcast => x.broadcast_add(inputs[1])?,
            NodeOp::SoftmaxPositions => softmax_positions(x)?,
            NodeOp::AttentionPool => attention_pool(x, inputs[1])?,
            NodeOp::SwapChannelsWidth => swap_channels_width(x)?,
            NodeOp::Norm(norm) => normalize_relu(
                &norm.spec,
                x,
                norm.gamma.as_ref().map(|p| p.var.as_tensor()),
                norm.beta.as_ref().map(|p| p.var.as_tensor()),
                norm.running.as_ref().map(|(m, v)| (&m.var, &v.var)),
                self.is_training(),
                norm.relu,
            )?,
        })
    }
}

/// `t` shaped `dims`: itself where it has that shape already (a reshape is a node of the
/// backward graph, and candle's autograd adds every node's gradient into a new zeroed
/// buffer: a full pass over the value and a `memset` for nothing).
fn reshape_if(t: Tensor, dims: &[usize]) -> candle_core::Result<Tensor> {
    if t.dims() == dims {
        Ok(t)
    } else {
        t.reshape(dims)
    }
}

/// A normalization node's output (see the module's doc for which statistics): `gamma`
/// and `beta` shaped as `spec.affine`, `running` the running mean and variance of a
/// batch normalization in training (updated in place while `training`).
pub fn normalize(
    spec: &ir::BatchNorm,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    running: Option<(&Var, &Var)>,
    training: bool,
) -> candle_core::Result<Tensor> {
    normalize_relu(spec, x, gamma, beta, running, training, false)
}

/// [`normalize`], then a ReLU ([`super::relu::relu`]) when `relu`: the same values and
/// gradients, bit for bit; a batch normalization in training with γ and β runs as one op
/// with its ReLU on the CPU ([`BatchNormTrain`]).
pub fn normalize_relu(
    spec: &ir::BatchNorm,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    running: Option<(&Var, &Var)>,
    training: bool,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let (n, c) = (dims[0], dims[1]);
    let eps = spec.epsilon;
    // (x − mean)/√(biased variance + ε) along `dim`.
    let standardize = |x: &Tensor, dim: usize| -> candle_core::Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(dim)?)?;
        let var = centred.sqr()?.mean_keepdim(dim)?;
        centred.broadcast_div(&(var.affine(1.0, eps)?.sqrt()?))
    };
    let y = match (spec.groups, running) {
        (Some(_), _) if spec.per_position => {
            // Each sample's statistics at each position, over the channels.
            let flat = x.reshape((n, c, ()))?;
            standardize(&flat, 1)?.reshape(dims.clone())?
        }
        (Some(g), _) => {
            let g = usize_of(g);
            let flat = x.reshape((n, g, ()))?;
            standardize(&flat, 2)?.reshape(dims.clone())?
        }
        (None, Some((rm, rv))) if training => {
            // (N, C, P): the statistics of each channel over the batch and positions.
            let positions: usize = dims[2..].iter().product();
            let count = n * positions;
            if count < 2 {
                candle_core::bail!(
                    "BatchNorm needs more than one value per channel in training (batch of {n}, {positions} position(s) a sample; an epoch's last batch can be smaller than --batch-size: --drop-last leaves it out)"
                );
            }
            // With per-channel γ and β on the CPU: one op, its ReLU included (`norm.rs`),
            // on x as it is (each reshape would be a node of the backward, a zeroed buffer
            // and an add).
            let fused = match (gamma, beta) {
                (Some(g), Some(b)) if x.device().is_cpu() && g.rank() == 1 && b.rank() == 1 => Some((g, b)),
                _ => None,
            };
            if let Some((g, b)) = fused {
                let op = BatchNormTrain::new(eps, relu);
                let y = op.apply(x, g, b)?;
                let (mean, var): (Vec<f64>, Vec<f64>) = op.stats().into_iter().unzip();
                let dev = x.device();
                update_running(rm, rv, &Tensor::new(mean, dev)?.to_dtype(x.dtype())?, &Tensor::new(var, dev)?.to_dtype(x.dtype())?, count)?;
                return Ok(y);
            }
            let flat = x.reshape((n, c, ()))?;
            let (y, mean, var) = if x.device().is_cpu() {
                // One op forward and backward (`norm.rs`).
                let op = Standardize::new(eps);
                let y = op.apply(&flat)?;
                let (mean, var): (Vec<f64>, Vec<f64>) = op.stats().into_iter().unzip();
                let dev = x.device();
                (y, Tensor::new(mean, dev)?.to_dtype(x.dtype())?, Tensor::new(var, dev)?.to_dtype(x.dtype())?)
            } else {
                let mean = flat.mean_keepdim((0, 2))?;
                let centred = flat.broadcast_sub(&mean)?;
                let var = centred.sqr()?.mean_keepdim((0, 2))?;
                let y = centred.broadcast_div(&var.affine(1.0, eps)?.sqrt()?)?;
                (y, mean.detach().flatten_all()?, var.detach().flatten_all()?)
            };
            update_running(rm, rv, &mean, &var, count)?;
            y.reshape(dims.clone())?
        }
        (None, Some((rm, rv))) => {
            let shape = channel_shape(&dims);
            let mean = rm.as_tensor().reshape(shape.clone())?;
            let std = rv.as_tensor().affine(1.0, eps)?.sqrt()?.reshape(shape)?;
            x.broadcast_sub(&mean)?.broadcast_div(&std)?
        }
        // Fixed running statistics: mean 0, variance 1.
        (None, None) => x.affine(1.0 / (1.0 + eps).sqrt(), 0.0)?,
    };
    let affine_shape = |t: &Tensor| -> candle_core::Result<Tensor> {
        if t.rank() == 1 {
            t.reshape(channel_shape(&dims))
        } else {
            t.unsqueeze(0)
        }
    };
    // Per-channel γ and β on the CPU: one op (`norm.rs`), whose backward sums their
    // gradients per channel in one pass instead of candle's strided reduction; the same
    // values as the broadcast multiply and add below.
    let y = match (gamma, beta) {
        (Some(g), Some(b)) if x.device().is_cpu() && g.rank() == 1 && b.rank() == 1 && dims.len() >= 2 => {
            let flat = y.reshape((n, c, ()))?;
            ChannelAffine::apply(&flat, g, b)?.reshape(dims)?
        }
        _ => {
            let y = match gamma {
                Some(g) => y.broadcast_mul(&affine_shape(g)?)?,
                None => y,
            };
            match beta {
                Some(b) => y.broadcast_add(&affine_shape(b)?)?,
                None => y,
            }
        }
    };
    if relu {
        super::relu::relu(&y)
    } else {
        Ok(y)
    }
}

/// PyTorch's update of a BatchNorm's running statistics from a batch's per-channel mean
/// and biased variance (C) over `count` values a channel (the unbiased variance goes in).
fn update_running(rm: &Var, rv: &Var, mean: &Tensor, var: &Tensor, count: usize) -> candle_core::Result<()> {
    let m = BN_MOMENTUM;
    let unbiased = var.affine(count as f64 / (count - 1) as f64, 0.0)?;
    rm.set(&rm.as_tensor().affine(1.0 - m, 0.0)?.add(&mean.affine(m, 0.0)?)?)?;
    rv.set(&rv.as_tensor().affine(1.0 - m, 0.0)?.add(&unbiased.affine(m, 0.0)?)?)
}

/// A normalization layer on its own, as a generated crate holds one (`cnnc emit candle`):
/// what [`GraphModel`] runs for a normalization node, with the same parameters, buffers
/// and [`normalize`].
#[derive(Clone, Debug)]
pub struct Normalization {
    pub spec: ir::BatchNorm,
    /// γ and β (shaped as `spec.affine`), where the node has them.
    pub gamma: Option<Tensor>,
    pub beta: Option<Tensor>,
    /// The running mean and variance of a batch normalization in training, named
    /// `{module}.running_mean` and `{module}.running_var`.
    pub running: Option<(Param, Param)>,
}

impl Normalization {
    /// Asks `vb` for γ (`Init::Const(scale)`) and β (`Init::Const(0)`) under the names
    /// `spec` gives, as [`GraphModel::new`] sets them, and makes the running statistics
    /// (mean 0, variance 1) of a batch normalization in training as buffers of `module`.
    pub fn new(vb: &candle_nn::VarBuilder, spec: ir::BatchNorm, module: &str, scale: f64) -> candle_core::Result<Normalization> {
        let affine: Vec<usize> = spec.affine.iter().map(|&d| usize_of(d)).collect();
        let (gamma, beta) = if spec.scale.is_empty() {
            (None, None)
        } else {
            let gamma = vb.get_with_hints(affine.clone(), &spec.scale, candle_nn::Init::Const(scale))?;
            let beta = (!spec.shift.is_empty())
                .then(|| vb.get_with_hints(affine.clone(), &spec.shift, candle_nn::Init::Const(0.0)))
                .transpose()?;
            (Some(gamma), beta)
        };
        let running = if spec.training && spec.groups.is_none() {
            let c = usize_of(spec.channels);
            Some((
                Param { name: format!("{module}.running_mean"), var: Var::zeros(c, vb.dtype(), vb.device())? },
                Param { name: format!("{module}.running_var"), var: Var::ones(c, vb.dtype(), vb.device())? },
            ))
        } else {
            None
        };
        Ok(Normalization { spec, gamma, beta, running })
    }

    /// The normalization of `x` with batch statistics (`training`, running ones updated)
    /// or running ones (see [`normalize`]).
    pub fn forward(&self, x: &Tensor, training: bool) -> candle_core::Result<Tensor> {
        let running = self.running.as_ref().map(|(m, v)| (&m.var, &v.var));
        normalize(&self.spec, x, self.gamma.as_ref(), self.beta.as_ref(), running, training)
    }

    /// The running statistics (checkpoint buffers), by `state_dict` name.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        self.running.iter().flat_map(|(m, v)| [(m.name.clone(), m.var.clone()), (v.name.clone(), v.var.clone())]).collect()
    }
}

/// A conv's weight standardization on its own, as a generated crate holds one (`cnnc emit
/// candle`): what [`GraphModel`] computes a standardized conv's weight with
/// ([`standardize_weight`]), its gain parameter asked for under the same name and value.
#[derive(Clone, Debug)]
pub struct WeightStandardization {
    pub epsilon: f64,
    /// The constant factor: the network's gain over the gain parameter's initial value.
    pub factor: f64,
    /// The per-filter gain parameter (C_out, 1, 1, 1), where the network has one.
    pub gain: Option<Tensor>,
}

impl WeightStandardization {
    /// Asks `vb` for the gain parameter `(name, C_out, value)` (`Init::Const(value)`), where
    /// there is one, as [`GraphModel::new`] sets it.
    pub fn new(vb: &candle_nn::VarBuilder, epsilon: f64, factor: f64, gain: Option<(&str, usize, f64)>) -> candle_core::Result<Self> {
        let gain = gain.map(|(name, c, value)| vb.get_with_hints((c, 1, 1, 1), name, candle_nn::Init::Const(value))).transpose()?;
        Ok(WeightStandardization { epsilon, factor, gain })
    }

    /// The weight a conv uses, from the stored one.
    pub fn weight(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        standardize_weight(v, self.epsilon, self.factor, self.gain.as_ref())
    }
}

/// (1, C, 1, …) for a value of shape `dims` = (N, C, …).
fn channel_shape(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    s[1] = dims[1];
    s
}
