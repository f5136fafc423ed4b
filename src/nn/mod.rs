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
//! unified layers; asymmetric or per-axis padding is an explicit zero pad before a
//! padding-free candle conv; pooling is [`pool::PoolSpec`] (candle's own is unusable).
//! What candle cannot run (per-axis stride or dilation) is an error naming the layer.

pub mod pool;

use crate::ir::{Activation, Shape};
use crate::plan::Plan;
use crate::unify::{Layer, Network, WeightKind};
use candle_core::{DType, Device, Tensor, Var};
use pool::PoolSpec;
use rand::SeedableRng;
use rand_distr::Distribution;

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("layer {layer} (`{module}`): {message}")]
    Layer { layer: usize, module: String, message: String },
    #[error("the plan does not fit the network: {0}")]
    PlanMismatch(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// How one unified layer's weight operation runs in candle.
#[derive(Clone, Debug)]
enum WeightOp {
    Conv {
        /// Explicit zero padding [top, bottom, left, right], when candle's symmetric
        /// padding cannot express it; else `None` and `padding` is passed to the conv.
        explicit_pad: Option<[usize; 4]>,
        padding: usize,
        stride: usize,
        dilation: usize,
        groups: usize,
    },
    Linear,
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
    activation: Activation,
    pool: Option<PoolSpec>,
    /// One sample's input shape (a conv reshapes to it, a linear flattens it).
    input: Shape,
    /// Shape of `u` and `v` (a pooling sees it as C×H×W).
    conv_output: Shape,
    output: Shape,
}

/// A network ready to run: layers in order.
#[derive(Clone, Debug)]
pub struct Model {
    pub layers: Vec<ModelLayer>,
    pub input: Shape,
    pub device: Device,
    pub dtype: DType,
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
            if c.stride[0] != c.stride[1] {
                return Err(layer_err(
                    l,
                    format!("candle convolutions take one stride for both axes, not {}×{}", c.stride[0], c.stride[1]),
                ));
            }
            if c.dilation[0] != c.dilation[1] {
                return Err(layer_err(
                    l,
                    format!("candle convolutions take one dilation for both axes, not {}×{}", c.dilation[0], c.dilation[1]),
                ));
            }
            let p = c.pad;
            let symmetric = p[0].begin == p[0].end && p[1].begin == p[1].end && p[0].begin == p[1].begin;
            let pad = [p[0].begin, p[0].end, p[1].begin, p[1].end].map(usize_of);
            Ok(WeightOp::Conv {
                explicit_pad: if symmetric { None } else { Some(pad) },
                padding: if symmetric { pad[0] } else { 0 },
                stride: usize_of(c.stride[0]),
                dilation: usize_of(c.dilation[0]),
                groups: usize_of(c.groups),
            })
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
        if plan.layers.len() != net.layers.len() {
            return Err(NnError::PlanMismatch(format!("the plan has {} layers, the network {}", plan.layers.len(), net.layers.len())));
        }
        if plan.input_shape != net.input.dims() {
            return Err(NnError::PlanMismatch(format!("the plan is for input {:?}, the network takes {}", plan.input_shape, net.input)));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(net.layers.len());
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
                activation: l.activation,
                pool: pool_spec(l)?,
                input: l.input,
                conv_output: l.conv_output,
                output: l.output,
            });
        }
        Ok(Model { layers, input: net.input, device: device.clone(), dtype })
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

    /// Runs the network on a batch `x` of shape (N, input dims…); returns (N, output dims…).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
        let mut x = x.clone();
        for (k, l) in self.layers.iter().enumerate() {
            x = l.forward(&x).map_err(|e| NnError::Layer { layer: k + 1, module: l.module.clone(), message: e.to_string() })?;
        }
        Ok(x)
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
        let u = self.conv(x)?;
        self.activate_and_pool(&u)
    }

    /// `u^(ℓ) = conv(z^(ℓ-1))` (bias included) for a batch, shaped (N, C, H, W) for a
    /// conv or (N, out) for a linear layer.
    pub fn conv(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let (c, h, w) = self.input.chw();
        let u = match &self.op {
            WeightOp::Conv { explicit_pad, padding, stride, dilation, groups } => {
                let mut x = x.reshape((n, usize_of(c), usize_of(h), usize_of(w)))?;
                if let Some([top, bottom, left, right]) = *explicit_pad {
                    x = x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
                }
                let u = x.conv2d(self.weight.as_tensor(), *padding, *stride, *dilation, *groups)?;
                match &self.bias {
                    Some(b) => u.broadcast_add(&b.as_tensor().reshape((1, (), 1, 1))?)?,
                    None => u,
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
        let n = u.dim(0)?;
        let u = u.clone();
        let v = match self.activation {
            Activation::Identity => u,
            Activation::Relu => u.relu()?,
            Activation::LeakyRelu { slope } => candle_nn::ops::leaky_relu(&u, slope)?,
            Activation::Tanh => u.tanh()?,
            Activation::Sigmoid => candle_nn::ops::sigmoid(&u)?,
            Activation::Gelu => u.gelu_erf()?,
            Activation::Silu => u.silu()?,
        };
        let z = match &self.pool {
            Some(p) => {
                let (c, h, w) = self.conv_output.chw();
                p.apply(&v.reshape((n, usize_of(c), usize_of(h), usize_of(w)))?)?
            }
            None => v,
        };
        z.reshape(batch_shape(n, self.output))
    }
}
