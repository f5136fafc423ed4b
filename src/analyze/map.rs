//! The position-resolved analysis (`--analysis map`).
//!
//! The paper replaces each unit's variance by its layer mean. Here every spatial position
//! keeps its own variance (all channels of a layer share one map, by symmetry), still
//! under the paper's independence assumption:
//! - conv: `q(o) = σ² Σ_{(i,a) ∈ s(o)} E[z_i²]` — border units read fewer real inputs;
//! - activation (ReLU, leaky ReLU, identity, exactly): `E f(u)² = q(1+a²)/2`,
//!   `E f(u) = √q (1−a)/√(2π)`, `E f'(u)² = (1+a²)/2`;
//! - average pooling over the clipped window t(o) with divisor D:
//!   `E z² = (Σ_k Var f_k + (Σ_k E f_k)²) / D²`;
//! - max pooling: `E f(max_k u_k)²` for independent `u_k ~ N(0, q_k)` of unequal variances,
//!   by quadrature over the density of the maximum; backward, each member's chance of
//!   being the (positive) argmax, by the same quadrature. Windows with the same variances
//!   share one integral (a cache), so interior windows cost one evaluation.
//! Backward maps go the other way through the transposed sets j, h, d.
//!
//! Both maps are linear in the scale of σ² (the activations are positively homogeneous),
//! so one pass with each layer normalized gives the forward σ² (mean of the u-map = 1),
//! another the backward σ² (mean of the gradient map at the layer input = 1), and the
//! predictions for any other σ² are products of ratios.

use super::{phi, AnalysisError};
use crate::ir::PoolKind;
use crate::quad::integrate_vec;
use crate::unify::{Layer, Network};
use std::collections::HashMap;

/// What the map analysis gives per layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerMap {
    /// σ² that makes the mean of the conv-output variance map 1, given unit-mean input.
    pub forward_variance: f64,
    /// σ² that makes the mean of the input-gradient variance map 1, given unit-mean output gradient.
    pub backward_variance: f64,
    /// (min, max) of the normalized conv-output variance map (mean 1).
    pub forward_range: (f64, f64),
    /// (min, max) of the normalized input-gradient variance map (mean 1).
    pub backward_range: (f64, f64),
}

/// A per-position map of one plane (h × w), row-major.
#[derive(Clone, Debug)]
struct Map {
    h: usize,
    w: usize,
    data: Vec<f64>,
}

impl Map {
    fn filled(h: u64, w: u64, v: f64) -> Map {
        Map { h: h as usize, w: w as usize, data: vec![v; (h * w) as usize] }
    }
    fn at(&self, y: u64, x: u64) -> f64 {
        self.data[y as usize * self.w + x as usize]
    }
    fn mean(&self) -> f64 {
        self.data.iter().sum::<f64>() / self.data.len() as f64
    }
    fn scale(&mut self, k: f64) {
        self.data.iter_mut().for_each(|v| *v *= k);
    }
    fn range(&self) -> (f64, f64) {
        self.data.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }
}

/// Slope `a` of a piecewise-linear activation (`f(u) = u` above 0, `a u` below).
fn slope(layer: &Layer) -> Result<f64, AnalysisError> {
    super::piecewise_linear_slope(layer.activation).ok_or_else(|| AnalysisError::Layer {
        layer: layer.index,
        module: layer.weight.module.clone(),
        message: format!("the map analysis supports relu, leaky_relu and identity, not {}", layer.activation),
    })
}

/// The pooling window of output (oy, ox) as ranges of input positions, and its divisor.
struct Window {
    ys: std::ops::Range<u64>,
    xs: std::ops::Range<u64>,
    divisor: f64,
}

fn window(layer: &Layer, oy: u64, ox: u64) -> Window {
    let p = layer.pooling.as_ref().expect("window() is called on pooled layers");
    let g = &p.geometry;
    let (ys, xs) = (g.h.window(oy), g.w.window(ox));
    let include_pad = p.pool.as_ref().is_none_or(|q| q.count_include_pad);
    let divisor =
        if include_pad && !p.global { (g.h.kernel * g.w.kernel) as f64 } else { ((ys.end - ys.start) * (xs.end - xs.start)) as f64 };
    Window { ys, xs, divisor }
}

/// Integrals over the maximum of independent zero-mean Gaussians with standard
/// deviations `s`: `E[f(M)²]` and, for each member k, `P(argmax = k, M > 0)` and
/// `P(argmax = k, M < 0)`.
pub(crate) struct MaxMoments {
    pub second_pos: f64,
    pub second_neg: f64,
    /// `∫_0^∞ m p(m) dm` and `∫_{-∞}^0 m p(m) dm`: the two halves of E[M].
    pub first_pos: f64,
    pub first_neg: f64,
    pub argmax_pos: Vec<f64>,
    pub argmax_neg: Vec<f64>,
}

pub(crate) fn max_moments(s: &[f64]) -> MaxMoments {
    let (lo, hi) = super::max_limits(s);
    // ln Φ(m / s_l) summed, and each member's density term, at one point.
    let members = |m: f64| -> (f64, Vec<f64>) {
        let lns: Vec<f64> = s.iter().map(|&v| super::ln_big_phi(m / v)).collect();
        let total: f64 = lns.iter().sum();
        let dens = s.iter().zip(&lns).map(|(&v, &l)| phi(m / v) / v * (total - l).exp()).collect();
        (total, dens)
    };
    let n = s.len();
    let panels = 64;
    // Components: each member's density term, then m² and m times their sum; one
    // evaluation of the members per quadrature node (integrate_vec keeps the scalar
    // rule's arithmetic, so the numbers are those of integrating each one alone).
    let all = |m: f64, out: &mut [f64]| {
        let dens = members(m).1;
        let sum: f64 = dens.iter().sum();
        out[..n].copy_from_slice(&dens);
        out[n] = m * m * sum;
        out[n + 1] = m * sum;
    };
    let pos = integrate_vec(all, n + 2, 0.0, hi, panels);
    let neg = integrate_vec(all, n + 2, lo, 0.0, panels);
    MaxMoments {
        second_pos: pos[n],
        second_neg: neg[n],
        first_pos: pos[n + 1],
        first_neg: neg[n + 1],
        argmax_pos: pos[..n].to_vec(),
        argmax_neg: neg[..n].to_vec(),
    }
}

type Cache = HashMap<Vec<u64>, std::rc::Rc<MaxMoments>>;

fn cached_max(cache: &mut Cache, s: &[f64]) -> std::rc::Rc<MaxMoments> {
    let key: Vec<u64> = s.iter().map(|v| v.to_bits()).collect();
    cache.entry(key).or_insert_with(|| std::rc::Rc::new(max_moments(s))).clone()
}

/// Forward: from E[z²] of the layer input to the normalized u-map (mean 1) and E[z²] of
/// the output (for that normalization). Returns (σ², u-map, E[z²] map).
fn forward_layer(layer: &Layer, input: &Map, cache: &mut Cache) -> Result<(f64, Map, Map), AnalysisError> {
    let g = &layer.weight.geometry;
    let per = g.group_in() as f64;
    let mut q = Map::filled(g.h.output, g.w.output, 0.0);
    for oy in 0..g.h.output {
        let ty = g.h.taps(oy);
        for ox in 0..g.w.output {
            let tx = g.w.taps(ox);
            let mut sum = 0.0;
            for ky in ty.clone() {
                let iy = g.h.input_of(oy, ky);
                for kx in tx.clone() {
                    sum += input.at(iy, g.w.input_of(ox, kx));
                }
            }
            q.data[oy as usize * q.w + ox as usize] = per * sum;
        }
    }
    let mean = q.mean();
    if !(mean > 0.0 && mean.is_finite()) {
        return Err(AnalysisError::Layer {
            layer: layer.index,
            module: layer.weight.module.clone(),
            message: super::not_positive_finite("the mean of its output variance map", mean, "no unit of this layer reads any input"),
        });
    }
    let sigma2 = 1.0 / mean;
    q.scale(sigma2);
    let a = slope(layer)?;
    let (mean1, second1) = super::piecewise_linear_moments(a);
    let second = |qv: f64| qv * second1;
    let first = |qv: f64| qv.sqrt() * mean1;
    let out = match &layer.pooling {
        None => Map { h: q.h, w: q.w, data: q.data.iter().map(|&v| second(v)).collect() },
        Some(p) => {
            let pg = &p.geometry;
            let mut z = Map::filled(pg.h.output, pg.w.output, 0.0);
            for oy in 0..pg.h.output {
                for ox in 0..pg.w.output {
                    let win = window(layer, oy, ox);
                    let value = match p.kind {
                        PoolKind::Avg => {
                            let (mut var, mut mean) = (0.0, 0.0);
                            for y in win.ys.clone() {
                                for x in win.xs.clone() {
                                    let qv = q.at(y, x);
                                    var += second(qv) - first(qv).powi(2);
                                    mean += first(qv);
                                }
                            }
                            (var + mean * mean) / (win.divisor * win.divisor)
                        }
                        PoolKind::Max => {
                            if a < 0.0 {
                                return Err(AnalysisError::Layer {
                                    layer: layer.index,
                                    module: layer.weight.module.clone(),
                                    message: "max pooling after a non-monotone activation has no map analysis".into(),
                                });
                            }
                            let s: Vec<f64> =
                                win.ys.clone().flat_map(|y| win.xs.clone().map(move |x| (y, x))).map(|(y, x)| q.at(y, x).sqrt()).collect();
                            let mm = cached_max(cache, &s);
                            mm.second_pos + a * a * mm.second_neg
                        }
                    };
                    z.data[oy as usize * z.w + ox as usize] = value;
                }
            }
            z
        }
    };
    Ok((sigma2, q, out))
}

/// Backward: from the gradient map at the layer output z^(ℓ) (E[(∂E/∂z)²] per position)
/// to the normalized gradient map at its input (mean 1). `q` is the layer's normalized
/// u-map (max pooling needs each member's chance of being the argmax).
fn backward_layer(layer: &Layer, grad_out: &Map, q: &Map, cache: &mut Cache) -> Result<(f64, Map), AnalysisError> {
    let a = slope(layer)?;
    let dfdu = super::piecewise_linear_moments(a).1;
    // E[(∂E/∂u)²] per conv-output position.
    let mut gu = Map::filled(q.h as u64, q.w as u64, 0.0);
    match &layer.pooling {
        None => {
            for (k, v) in gu.data.iter_mut().enumerate() {
                *v = dfdu * grad_out.data[k];
            }
        }
        Some(p) => {
            let pg = &p.geometry;
            for oy in 0..pg.h.output {
                for ox in 0..pg.w.output {
                    let win = window(layer, oy, ox);
                    let r = grad_out.at(oy, ox);
                    match p.kind {
                        PoolKind::Avg => {
                            let share = dfdu * r / (win.divisor * win.divisor);
                            for y in win.ys.clone() {
                                for x in win.xs.clone() {
                                    gu.data[y as usize * gu.w + x as usize] += share;
                                }
                            }
                        }
                        PoolKind::Max => {
                            let cells: Vec<(u64, u64)> = win.ys.clone().flat_map(|y| win.xs.clone().map(move |x| (y, x))).collect();
                            let s: Vec<f64> = cells.iter().map(|&(y, x)| q.at(y, x).sqrt()).collect();
                            let mm = cached_max(cache, &s);
                            for (k, &(y, x)) in cells.iter().enumerate() {
                                gu.data[y as usize * gu.w + x as usize] += r * (mm.argmax_pos[k] + a * a * mm.argmax_neg[k]);
                            }
                        }
                    }
                }
            }
        }
    }
    // Through the transposed conv: r(i) = σ² (C_out/groups) Σ_{(o,k) reading i} gu(o).
    let g = &layer.weight.geometry;
    let per = g.group_out() as f64;
    let mut r = Map::filled(g.h.input, g.w.input, 0.0);
    let rows: Vec<Vec<(u64, u64)>> = (0..g.h.input).map(|i| g.h.readers(i)).collect();
    let cols: Vec<Vec<(u64, u64)>> = (0..g.w.input).map(|i| g.w.readers(i)).collect();
    for iy in 0..g.h.input {
        for ix in 0..g.w.input {
            let mut sum = 0.0;
            for &(oy, _) in &rows[iy as usize] {
                for &(ox, _) in &cols[ix as usize] {
                    sum += gu.at(oy, ox);
                }
            }
            r.data[iy as usize * r.w + ix as usize] = per * sum;
        }
    }
    let mean = r.mean();
    if !(mean > 0.0 && mean.is_finite()) {
        return Err(AnalysisError::Layer {
            layer: layer.index,
            module: layer.weight.module.clone(),
            message: super::not_positive_finite("the mean of its input gradient map", mean, "no gradient reaches this layer's input"),
        });
    }
    let sigma2 = 1.0 / mean;
    r.scale(sigma2);
    Ok((sigma2, r))
}

/// Adapts a map across a flatten: a linear layer reads every unit, so its input is one
/// position holding the mean (forward), and the gradient it sends back is the same at
/// every position (backward). Maps of matching size pass through.
fn fit(map: Map, h: u64, w: u64) -> Map {
    if (map.h as u64, map.w as u64) == (h, w) {
        map
    } else {
        Map::filled(h, w, map.mean())
    }
}

/// The (h, w) of a layer's output map: its pooling's output, or its conv output.
fn output_dims(layer: &Layer) -> (u64, u64) {
    match &layer.pooling {
        Some(p) => (p.geometry.h.output, p.geometry.w.output),
        None => (layer.weight.geometry.h.output, layer.weight.geometry.w.output),
    }
}

/// Runs the map analysis over the whole network.
pub fn analyze_map(net: &Network) -> Result<Vec<LayerMap>, AnalysisError> {
    let limit = super::graph::MAX_MAP_CELLS;
    for layer in &net.layers {
        let (_, h, w) = layer.input.chw();
        let (_, ch, cw) = layer.conv_output.chw();
        if h * w > limit || ch * cw > limit {
            return Err(AnalysisError::Layer {
                layer: layer.index,
                module: layer.weight.module.clone(),
                message: format!(
                    "its maps have up to {} positions, more than the map analysis's limit of {limit}; use --analysis paper",
                    (h * w).max(ch * cw)
                ),
            });
        }
    }
    let mut cache = Cache::new();
    let (_, h, w) = net.input.chw();
    let mut input = Map::filled(h, w, 1.0); // q^(0) = 1, τ_0 = 1
    let mut q_maps = Vec::with_capacity(net.layers.len());
    let mut forward = Vec::with_capacity(net.layers.len());
    for layer in &net.layers {
        let g = &layer.weight.geometry;
        let (sigma2, q, z) = forward_layer(layer, &fit(input, g.h.input, g.w.input), &mut cache)?;
        forward.push((sigma2, q.range()));
        q_maps.push(q);
        input = z;
    }
    let mut backward = vec![(0.0, (0.0, 0.0)); net.layers.len()];
    let mut grad = Map::filled(1, 1, 1.0); // r^(L) = 1
    for (k, layer) in net.layers.iter().enumerate().rev() {
        let (oh, ow) = output_dims(layer);
        let (sigma2, r) = backward_layer(layer, &fit(grad, oh, ow), &q_maps[k], &mut cache)?;
        backward[k] = (sigma2, r.range());
        grad = r;
    }
    Ok(forward
        .into_iter()
        .zip(backward)
        .map(|((fv, fr), (bv, br))| LayerMap { forward_variance: fv, backward_variance: bv, forward_range: fr, backward_range: br })
        .collect())
}
