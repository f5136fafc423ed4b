//! Analysis: τ, γ, ε and σ² of every unified layer, and the variances they predict.
//!
//! In: a [`Network`] and [`Options`] (mode, optional cap). Out: one [`LayerAnalysis`]
//! per layer, in order. Notation and equations are the paper's (DESIGN.md):
//! - forward:  `q^(ℓ) = σ_b² + σ_w² q^(ℓ-1) τ_{ℓ-1} ε_ℓ / M'_ℓ`, `q^(0) = 1`, `τ_0 = 1`;
//! - backward: `r^(ℓ-1) = σ_w² r^(ℓ) γ_ℓ ε_ℓ / M_{ℓ-1}`, `r^(L) = 1`;
//! - proposed σ²: forward `M'_ℓ / (τ_{ℓ-1} ε_ℓ)` (6), backward `M_{ℓ-1} / (γ_ℓ ε_ℓ)` (7);
//! - baselines: Xavier `2/(fan_in + fan_out)`, Kaiming `2/fan_in` or `2/fan_out`, with
//!   PyTorch's fans, as the reference code computes them.
//!
//! τ_ℓ = E[z²]/q and γ_ℓ = E[(∂z/∂u)²]-weighted gradient gain of the layer's activation
//! followed by its pooling, for u ~ N(0, 1). For ReLU, leaky ReLU and identity they are
//! exact (closed form, or one 1-D integral for max pooling); for tanh, sigmoid, GELU and
//! SiLU (not positively homogeneous) they are evaluated at unit variance, which is the
//! variance a forward plan keeps. Biases are zero (σ_b² = 0).

pub mod budget;
mod corr;
pub mod graph;
mod graph_map;
pub mod map;
mod walk;

use crate::ir::{Activation, PoolKind};
use crate::quad::{integrate, integrate_width};
use crate::unify::{Layer, Network};
use libm::erfc;
use std::f64::consts::{PI, SQRT_2};

/// How σ² is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Keeps the forward signal variance (the paper's eq. 6).
    Forward,
    /// Keeps the backward gradient variance (the paper's eq. 7).
    Backward,
    /// Glorot & Bengio: 2 / (fan_in + fan_out).
    Xavier,
    /// He et al., fan-in: 2 / fan_in.
    KaimingIn,
    /// He et al., fan-out: 2 / fan_out.
    KaimingOut,
}

impl Mode {
    pub const ALL: [Mode; 5] = [Mode::Forward, Mode::Backward, Mode::Xavier, Mode::KaimingIn, Mode::KaimingOut];
    pub fn name(self) -> &'static str {
        match self {
            Mode::Forward => "forward",
            Mode::Backward => "backward",
            Mode::Xavier => "xavier",
            Mode::KaimingIn => "kaiming-in",
            Mode::KaimingOut => "kaiming-out",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    pub mode: Mode,
    /// The reference code's cap: σ ≤ cap × the padding-aware He value
    /// (`sqrt(M'/(ε/2))` forward, `sqrt(M/(ε/2))` backward). Only for forward/backward.
    pub std_cap: Option<f64>,
}

/// Everything the plan says about one layer's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerAnalysis {
    /// `M_{ℓ-1}`
    pub m_in: u64,
    /// `M'_ℓ`
    pub m_conv: u64,
    /// `M_ℓ`
    pub m_out: u64,
    /// `ε_ℓ`
    pub connections: u64,
    pub fan_in: u64,
    pub fan_out: u64,
    /// `T_ℓ` (1 without pooling).
    pub window: u64,
    pub tau: f64,
    pub gamma: f64,
    /// The chosen σ_w² (after the cap).
    pub variance: f64,
    /// σ_w before the cap.
    pub uncapped_std: f64,
    pub capped: bool,
    /// Predicted `q^(ℓ)`: variance of the conv output `u^(ℓ)`.
    pub forward_variance: f64,
    /// Predicted `r^(ℓ-1)`: variance of the gradient at the layer's input `z^(ℓ-1)`.
    pub backward_variance: f64,
    /// Map analysis only: (min, max) over positions of the predicted conv-output variance.
    pub forward_range: Option<(f64, f64)>,
    /// Map analysis only: (min, max) over positions of the predicted input-gradient variance.
    pub backward_range: Option<(f64, f64)>,
}

/// Which variance model chooses σ² and makes the predictions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Analysis {
    /// The paper's: every unit's variance replaced by its layer mean.
    #[default]
    Paper,
    /// Position-resolved: a variance per spatial position ([`map`]).
    Map,
}

impl Analysis {
    pub fn name(self) -> &'static str {
        match self {
            Analysis::Paper => "paper",
            Analysis::Map => "map",
        }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    #[error("layer {layer} (`{module}`): {message}")]
    Layer { layer: usize, module: String, message: String },
    /// A problem located at one graph node.
    #[error("node `{node}` ({op}): {message}")]
    Node { node: String, op: String, message: String },
    #[error("{0}")]
    Options(String),
}

/// The pooling seen by the constants: kind and window size `T`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolingKind {
    None,
    Max(u64),
    Avg(u64),
}

/// τ and γ of an activation followed by a pooling, for unit-variance Gaussian input.
pub fn constants(act: Activation, pool: PoolingKind) -> Result<(f64, f64), String> {
    if let Activation::LeakyRelu { slope } = act {
        if !slope.is_finite() {
            return Err("the leaky ReLU slope must be finite".into());
        }
    }
    let (tau, gamma) = match piecewise_linear_slope(act) {
        Some(a) => piecewise_linear_constants(a, pool),
        None => smooth_constants(act, pool)?,
    };
    if !(positive_finite(tau) && positive_finite(gamma)) {
        return Err(format!("its activation and pooling give τ = {tau} and γ = {gamma}: both must be positive finite numbers"));
    }
    Ok((tau, gamma))
}

/// The message for a layer whose input signal (or output gradient) has the second
/// moment `a`, which is not a positive finite number: `zero` says why it may be 0.
pub(crate) fn not_positive_finite(what: &str, a: f64, zero: &str) -> String {
    if a.is_finite() {
        zero.to_string()
    } else {
        format!("{what} is {a}: the signal over- or underflows (an activation's slope, or a constant factor, upstream is out of range)")
    }
}

fn positive_finite(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

/// Every σ² a plan would hold must be a positive finite number, and every predicted
/// variance finite: an activation with an enormous slope, or a chain of them, can drive
/// them to 0 or ∞ (a plan of `null`s and zeros), which is an error naming the layer.
fn check_chain_finite(net: &Network, out: &[LayerAnalysis]) -> Result<(), AnalysisError> {
    for (layer, a) in net.layers.iter().zip(out) {
        let figures = [("σ²", a.variance, true), ("the predicted forward variance", a.forward_variance, false)];
        let figures = figures.into_iter().chain([("the predicted backward variance", a.backward_variance, false)]);
        for (what, x, positive) in figures {
            if !x.is_finite() || (positive && x <= 0.0) {
                return Err(AnalysisError::Layer {
                    layer: layer.index,
                    module: layer.weight.module.clone(),
                    message: format!("{what} is {x}: the signal over- or underflows (an activation's slope or gain is out of range)"),
                });
            }
        }
    }
    Ok(())
}

/// [`check_chain_finite`] for the graph analysis: every weight node's σ² (0 allowed: a
/// residual branch's last layer at `--branch-scale 0`), every BatchNorm scale, every
/// predicted variance.
pub fn check_graph_finite(g: &crate::ir::Graph, a: &graph::GraphAnalysis) -> Result<(), AnalysisError> {
    let node_err = |k: usize, what: &str, x: f64| AnalysisError::Node {
        node: g.nodes[k].name.clone(),
        op: g.nodes[k].op.kind_name().into(),
        message: format!("{what} is {x}: the signal over- or underflows (an activation's slope or gain is out of range)"),
    };
    for w in &a.weights {
        // 0 is the σ² of a residual branch's last layer at --branch-scale 0.
        if !(w.variance >= 0.0 && w.variance.is_finite()) {
            return Err(node_err(w.node, "σ²", w.variance));
        }
        for (what, x) in [("the predicted forward variance", w.forward_variance), ("the predicted backward variance", w.backward_variance)]
        {
            if !x.is_finite() {
                return Err(node_err(w.node, what, x));
            }
        }
    }
    for b in &a.batch_norms {
        for (what, x) in [("the scale", b.scale), ("the predicted forward variance", b.forward_variance)] {
            if !x.is_finite() {
                return Err(node_err(b.node, what, x));
            }
        }
    }
    for (what, x) in [("the predicted output variance", a.output_variance), ("the predicted input gradient", a.input_gradient_variance)] {
        if !x.is_finite() {
            return Err(AnalysisError::Options(format!("{what} is {x}: the signal over- or underflows")));
        }
    }
    Ok(())
}

/// `Some(a)` when `f(u) = u` for u > 0 and `a·u` for u < 0.
pub(crate) fn piecewise_linear_slope(act: Activation) -> Option<f64> {
    match act {
        Activation::Relu => Some(0.0),
        Activation::Identity => Some(1.0),
        Activation::LeakyRelu { slope } => Some(slope),
        _ => None,
    }
}

/// `(E f(u), E f(u)²)` of `f(u) = max(u, 0) + a min(u, 0)` for u ~ N(0, 1); E f'(u)² is
/// the second of these too.
pub(crate) fn piecewise_linear_moments(a: f64) -> (f64, f64) {
    ((1.0 - a) / (2.0 * PI).sqrt(), (1.0 + a * a) / 2.0)
}

fn piecewise_linear_constants(a: f64, pool: PoolingKind) -> (f64, f64) {
    let (mean, second) = piecewise_linear_moments(a);
    match pool {
        PoolingKind::None => (second, second),
        PoolingKind::Avg(t) => {
            let t = t as f64;
            ((second + (t - 1.0) * mean * mean) / t, second / (t * t))
        }
        PoolingKind::Max(t) if a >= 0.0 => {
            // f is non-decreasing, so max_i f(u_i) = f(max_i u_i).
            let (pos, neg) = max_second_moment_halves(t);
            let p_neg = 0.5f64.powf(t as f64); // P(max < 0)
            (pos + a * a * neg, ((1.0 - p_neg) + a * a * p_neg) / t as f64)
        }
        PoolingKind::Max(t) => {
            // A negative slope makes f non-monotone: fall back to the generic integrals.
            smooth_max(|u| if u > 0.0 { u } else { a * u }, |u| if u > 0.0 { 1.0 } else { a }, t, false).unwrap_or((f64::NAN, f64::NAN))
        }
    }
}

/// Standard normal density.
pub fn phi(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

/// Standard normal cdf, accurate in both tails.
pub fn big_phi(x: f64) -> f64 {
    0.5 * erfc(-x / SQRT_2)
}

/// `ln Φ(x)`, accurate in both tails.
pub(crate) fn ln_big_phi(x: f64) -> f64 {
    if x > 0.0 {
        (-0.5 * erfc(x / SQRT_2)).ln_1p()
    } else {
        big_phi(x).ln()
    }
}

/// Density of the maximum of `t` independent standard normals: `t φ(m) Φ(m)^(t-1)`.
pub fn max_density(t: u64, m: f64) -> f64 {
    if t == 1 {
        return phi(m);
    }
    let log = (t as f64).ln() - 0.5 * m * m - 0.5 * (2.0 * PI).ln() + (t - 1) as f64 * ln_big_phi(m);
    log.exp()
}

/// Integration limits `(lower, upper)` for the maximum `M` of independent zero-mean
/// Gaussians with standard deviations `s` (all 1 for the paper's `T`-window).
///
/// Upper: beyond `s_max (√(2 ln T) + 12)` the density is below 1e-30 of its scale.
/// Lower: member k's density term carries `∏_{l≠k} Φ(m/s_l)`, and `ln Φ(m) ≤ −ln 2 +
/// m φ(0)/Φ(0)` (concavity), so it decays at least like `exp(0.79 m Σ_{l≠k} 1/s_l)`
/// relative to its value at 0; the slowest k is the narrowest member. Beyond
/// `80 / (0.79 rate)` every term is below e^-80 of its scale; ±12 s_max bound both ends.
pub(crate) fn max_limits(s: &[f64]) -> (f64, f64) {
    let s_max = s.iter().cloned().fold(0.0, f64::max);
    let s_min = s.iter().cloned().fold(f64::INFINITY, f64::min);
    let rate = s.iter().map(|v| 1.0 / v).sum::<f64>() - 1.0 / s_min;
    let hi = s_max * ((2.0 * (s.len() as f64).ln()).sqrt() + 12.0);
    let lo = if rate > 0.0 { -(80.0 / (0.79 * rate)).min(12.0 * s_max) } else { -12.0 * s_max };
    (lo, hi)
}

/// [`max_limits`] of a window of `t` unit-variance members.
fn unit_limits(t: u64) -> (f64, f64) {
    // Written out rather than through a vector of t ones: t can be a whole feature map.
    let hi = (2.0 * (t as f64).ln()).sqrt() + 12.0;
    let lo = if t <= 1 { -12.0 } else { -(80.0 / (0.79 * (t - 1) as f64)).min(12.0) };
    (lo, hi)
}

/// Upper integration limit of the paper's `T`-window maximum ([`max_limits`]).
pub(crate) fn upper_limit(t: u64) -> f64 {
    unit_limits(t).1
}

/// ∫ g(m) p_T(m) dm over the negative half, with panels fitted to its decay.
pub(crate) fn negative_half(g: impl Fn(f64) -> f64, t: u64) -> f64 {
    integrate(g, unit_limits(t).0, 0.0, 48)
}

/// `(∫_0^∞ m² p_T(m) dm, ∫_{-∞}^0 m² p_T(m) dm)`: the two halves of E[max²].
/// The first is the paper's τ for max pooling after a ReLU.
pub fn max_second_moment_halves(t: u64) -> (f64, f64) {
    let f = |m: f64| m * m * max_density(t, m);
    let pos = integrate_width(f, 0.0, upper_limit(t), 0.25);
    let neg = negative_half(f, t);
    (pos, neg)
}

/// An activation as (f, f', whether f is non-decreasing).
type ActivationFns = (fn(f64) -> f64, fn(f64) -> f64, bool);

fn smooth_fns(act: Activation) -> ActivationFns {
    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    match act {
        Activation::Tanh => (f64::tanh, |x| 1.0 - x.tanh().powi(2), true),
        Activation::Sigmoid => (sig, |x| sig(x) * (1.0 - sig(x)), true),
        Activation::Gelu => (|x| x * big_phi(x), |x| big_phi(x) + x * phi(x), false),
        Activation::Silu => (|x| x * sig(x), |x| sig(x) * (1.0 + x * (1.0 - sig(x))), false),
        Activation::Relu => (|x| x.max(0.0), |x| if x > 0.0 { 1.0 } else { 0.0 }, true),
        Activation::Identity => (|x| x, |_| 1.0, true),
        Activation::LeakyRelu { .. } => unreachable!("leaky ReLU has closed forms"),
    }
}

fn gauss_mean(f: impl Fn(f64) -> f64) -> f64 {
    integrate_width(|u| f(u) * phi(u), -12.0, 0.0, 0.25) + integrate_width(|u| f(u) * phi(u), 0.0, 12.0, 0.25)
}

fn smooth_max(f: impl Fn(f64) -> f64, df: impl Fn(f64) -> f64, t: u64, monotone: bool) -> Result<(f64, f64), String> {
    if !monotone && t > 1 {
        return Err("max pooling after a non-monotone activation has no τ/γ in this analysis".into());
    }
    let hi = upper_limit(t);
    let moment = |g: &dyn Fn(f64) -> f64| {
        negative_half(|m| g(m) * max_density(t, m), t) + integrate_width(|m| g(m) * max_density(t, m), 0.0, hi, 0.25)
    };
    let tau = moment(&|m| f(m) * f(m));
    let gamma = moment(&|m| df(m) * df(m)) / t as f64;
    Ok((tau, gamma))
}

fn smooth_constants(act: Activation, pool: PoolingKind) -> Result<(f64, f64), String> {
    let (f, df, monotone) = smooth_fns(act);
    let second = gauss_mean(|u| f(u) * f(u));
    let grad = gauss_mean(|u| df(u) * df(u));
    match pool {
        PoolingKind::None => Ok((second, grad)),
        PoolingKind::Avg(t) => {
            let mean = gauss_mean(f);
            let t = t as f64;
            Ok(((second + (t - 1.0) * mean * mean) / t, grad / (t * t)))
        }
        PoolingKind::Max(t) => smooth_max(f, df, t, monotone),
    }
}

/// The pooling of a layer as the constants see it.
pub fn pooling_kind(layer: &Layer) -> PoolingKind {
    match &layer.pooling {
        None => PoolingKind::None,
        Some(p) => {
            let t = p.geometry.window_size();
            match p.kind {
                PoolKind::Max => PoolingKind::Max(t),
                PoolKind::Avg => PoolingKind::Avg(t),
            }
        }
    }
}

/// Analyses every layer with the paper's layer-mean analysis.
pub fn analyze(net: &Network, opts: Options) -> Result<Vec<LayerAnalysis>, AnalysisError> {
    analyze_with(net, opts, Analysis::Paper)
}

/// Analyses every layer. Counts are exact integers; σ² and predictions are f64.
pub fn analyze_with(net: &Network, opts: Options, analysis: Analysis) -> Result<Vec<LayerAnalysis>, AnalysisError> {
    let mut out: Vec<LayerAnalysis> = Vec::with_capacity(net.layers.len());
    for layer in &net.layers {
        let fail = |message: String| AnalysisError::Layer { layer: layer.index, module: layer.weight.module.clone(), message };
        let pool = pooling_kind(layer);
        let (tau, gamma) = constants(layer.activation, pool).map_err(&fail)?;
        let geo = &layer.weight.geometry;
        let connections = geo
            .connections()
            .and_then(|c| u64::try_from(c).ok())
            .ok_or_else(|| fail("the number of connections does not fit in 64 bits".into()))?;
        if connections == 0 {
            return Err(fail("no output of this layer reads any input (every window lies in the padding)".into()));
        }
        let window = match pool {
            PoolingKind::None => 1,
            PoolingKind::Max(t) | PoolingKind::Avg(t) => t,
        };
        out.push(LayerAnalysis {
            m_in: geo.m_in(),
            m_conv: geo.m_out(),
            m_out: layer.output.numel(),
            connections,
            fan_in: layer.weight.fan_in(),
            fan_out: layer.weight.fan_out(),
            window,
            tau,
            gamma,
            variance: 0.0,
            uncapped_std: 0.0,
            capped: false,
            forward_variance: 0.0,
            backward_variance: 0.0,
            forward_range: None,
            backward_range: None,
        });
    }
    let maps = match analysis {
        Analysis::Paper => None,
        Analysis::Map => {
            budget::check_chain_map(net)?;
            Some(map::analyze_map(net)?)
        }
    };
    // σ² per layer.
    for k in 0..out.len() {
        let tau_prev = if k == 0 { 1.0 } else { out[k - 1].tau };
        let a = &mut out[k];
        let eps = a.connections as f64;
        let (variance, he) = match (opts.mode, &maps) {
            (Mode::Forward, Some(m)) => (m[k].forward_variance, a.m_conv as f64 / (0.5 * eps)),
            (Mode::Backward, Some(m)) => (m[k].backward_variance, a.m_in as f64 / (0.5 * eps)),
            (Mode::Forward, None) => (a.m_conv as f64 / (tau_prev * eps), a.m_conv as f64 / (0.5 * eps)),
            (Mode::Backward, None) => (a.m_in as f64 / (a.gamma * eps), a.m_in as f64 / (0.5 * eps)),
            (Mode::Xavier, _) => (2.0 / (a.fan_in + a.fan_out) as f64, f64::INFINITY),
            (Mode::KaimingIn, _) => (2.0 / a.fan_in as f64, f64::INFINITY),
            (Mode::KaimingOut, _) => (2.0 / a.fan_out as f64, f64::INFINITY),
        };
        a.uncapped_std = variance.sqrt();
        a.variance = variance;
        if let Some(cap) = opts.std_cap {
            let limit = cap * he.sqrt();
            if a.uncapped_std > limit {
                a.capped = true;
                a.variance = limit * limit;
            }
        }
    }
    // Predicted variances.
    if let Some(m) = maps {
        // The maps scale linearly with σ²: the prediction for the chosen σ² is the
        // normalized map times the product of σ²/σ²_normalizing so far.
        let mut scale = 1.0;
        for (a, lm) in out.iter_mut().zip(&m) {
            scale *= a.variance / lm.forward_variance;
            a.forward_variance = scale;
            a.forward_range = Some((scale * lm.forward_range.0, scale * lm.forward_range.1));
        }
        let mut scale = 1.0;
        for (a, lm) in out.iter_mut().zip(&m).rev() {
            scale *= a.variance / lm.backward_variance;
            a.backward_variance = scale;
            a.backward_range = Some((scale * lm.backward_range.0, scale * lm.backward_range.1));
        }
        check_chain_finite(net, &out)?;
        return Ok(out);
    }
    let mut q_prev_tau = 1.0; // q^(0) τ_0
    for a in out.iter_mut() {
        let q = a.variance * q_prev_tau * a.connections as f64 / a.m_conv as f64;
        a.forward_variance = q;
        q_prev_tau = q * a.tau;
    }
    let mut r = 1.0; // r^(L)
    for a in out.iter_mut().rev() {
        r = a.variance * r * a.gamma * a.connections as f64 / a.m_in as f64;
        a.backward_variance = r;
    }
    check_chain_finite(net, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_without_pooling_is_one_half() {
        assert_eq!(constants(Activation::Relu, PoolingKind::None).unwrap(), (0.5, 0.5));
        assert_eq!(constants(Activation::Identity, PoolingKind::None).unwrap(), (1.0, 1.0));
    }

    #[test]
    fn average_pool_matches_the_paper_table() {
        for t in [1u64, 4, 9, 49] {
            let (tau, gamma) = constants(Activation::Relu, PoolingKind::Avg(t)).unwrap();
            let tf = t as f64;
            assert!((tau - (1.0 + (tf - 1.0) / PI) / (2.0 * tf)).abs() < 1e-15);
            assert!((gamma - 1.0 / (2.0 * tf * tf)).abs() < 1e-15);
        }
    }

    #[test]
    fn generic_quadrature_agrees_with_closed_forms() {
        // The smooth path, run on ReLU and identity, must reproduce the closed forms.
        for pool in [PoolingKind::None, PoolingKind::Avg(9), PoolingKind::Max(9), PoolingKind::Max(49)] {
            for act in [Activation::Relu, Activation::Identity] {
                let exact = piecewise_linear_constants(if act == Activation::Relu { 0.0 } else { 1.0 }, pool);
                let generic = smooth_constants(act, pool).unwrap();
                assert!((exact.0 - generic.0).abs() < 1e-9 * exact.0, "{act} {pool:?}: {exact:?} vs {generic:?}");
                assert!((exact.1 - generic.1).abs() < 1e-9 * exact.1, "{act} {pool:?}: {exact:?} vs {generic:?}");
            }
        }
    }
}
