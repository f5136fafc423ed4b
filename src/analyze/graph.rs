//! The analysis on graphs: residual additions, concatenations, batch norm, gates.
//!
//! In: an [`ir::Graph`] (any DAG the importer builds) and [`GraphOptions`]. Out: a
//! [`GraphAnalysis`]: σ² of every weight node (conv, linear), the value of every
//! BatchNorm scale, and the predicted second moments forward (every value) and of the
//! gradient backward.
//!
//! Every value carries, per channel, its mean and its second moment (the paper's layer
//! mean over positions, kept per channel so that a Concat of unequal branches and a
//! depthwise conv after it stay exact); backward, every value carries the second moment
//! of the gradient per channel. The rules, one function per op (`forward_node`,
//! `backward_node`), and every approximation are written out in `docs/dag.md`. In short:
//! - conv/linear: zero-mean output, `E[u²] = σ² κ Σ_{c ∈ group} E[z_c²]` with κ the mean
//!   number of real (unpadded) taps per output position — on a chain, `σ² q τ ε / M'`;
//! - element-wise f (ReLU … hard-swish, GELU written with Erf): moments of f(x) for a
//!   Gaussian x with the value's mean and variance (closed forms for the piecewise-linear
//!   ones, quadrature otherwise); backward `E[f'(x)²]`;
//! - max pooling of a monotone f of a Gaussian: `f(max) `, by the density of the maximum
//!   (the paper's τ and γ when the mean is 0); of anything else: the input taken as
//!   Gaussian (named approximation);
//! - average pooling: `(E[x²] + (T − 1) E[x]²) / T`, backward `/T²` (the paper's T);
//! - Add: means add, second moments add plus `2 μ_a μ_b` (branches independent: one of
//!   them ends in a zero-mean random layer), `4×` for the same value twice; Concat side by
//!   side; Mul gate `E[x²] E[g²]`;
//! - BatchNorm in training mode: mean β, second moment γ² + β² whatever comes in;
//!   backward × γ²/Var(x). Inference mode (running statistics 0 and 1 at init): the
//!   identity scaled by γ/√(1 + ε).
//! - a value read by several nodes gets the sum of their gradients' second moments.
//!
//! On a chain of unified layers these rules are the paper's equations, term for term
//! (a test checks F34 against `analyze::analyze`).

use super::{constants, corr, max_density, negative_half, upper_limit, Analysis, AnalysisError, Mode, PoolingKind};
use crate::ir::{self, Activation, Expr, Graph, Op, PoolKind, Shape, ValueId};
use crate::quad::integrate_width;
use crate::unify;
use std::collections::{HashMap, HashSet};

/// The most channels (or elements of a vector) one value may have: the analysis keeps
/// numbers per channel, and a flatten makes every element a channel.
pub const MAX_CHANNELS: u64 = 1 << 22;

/// The most positions one plane may have in the map analyses (chains and graphs).
pub const MAX_MAP_CELLS: u64 = 1 << 24;

/// How σ² is chosen on a graph.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphOptions {
    pub mode: Mode,
    /// The reference code's cap (forward and backward modes), as for chains.
    pub std_cap: Option<f64>,
    /// α: the last weight layer of each residual branch (or the BatchNorm after it)
    /// targets α² instead of 1; 0 starts the branches at zero.
    pub branch_scale: f64,
    /// The training batch size N, where the plan should count the projection a
    /// batch-statistics BatchNorm makes: its batch mean removes 1/N of the part of the
    /// gradient each sample shares across its positions. `None`: the large-batch limit.
    pub batch: Option<u64>,
}

/// The numbers of one weight node.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightResult {
    /// Index of the node in `graph.nodes`.
    pub node: usize,
    pub weight: unify::Weight,
    pub connections: u64,
    pub variance: f64,
    pub uncapped_std: f64,
    pub capped: bool,
    /// Mean over channels of E[u²] at the node's output.
    pub forward_variance: f64,
    /// Mean over channels of the gradient's second moment at the node's input value.
    pub backward_variance: f64,
    /// Map analysis: (min, max) over positions of E[u²] at the output.
    pub forward_range: Option<(f64, f64)>,
    /// Map analysis: (min, max) over positions of the gradient's second moment at the input.
    pub backward_range: Option<(f64, f64)>,
    /// Whether it is the last weight layer of a residual branch (it targets α²).
    pub residual_last: bool,
    /// The training-mode BatchNorm node that follows it, which sets the forward signal
    /// whatever σ² is.
    pub normalized_by: Option<usize>,
    /// The unified layer it starts: the activation and pooling nodes that follow it
    /// (single consumers), and τ = E[z²]/E[u²], γ = E[δu²]/E[δz²] of that layer.
    pub activation: Option<usize>,
    pub pooling: Option<usize>,
    pub tau: f64,
    pub gamma: f64,
}

/// The numbers of one BatchNorm node.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormResult {
    pub node: usize,
    /// The value its scale γ is set to (1, or α after a residual branch).
    pub scale: f64,
    pub residual_last: bool,
    pub forward_variance: f64,
    pub backward_variance: f64,
}

/// The numbers of one join (Add, Concat, Mul).
#[derive(Clone, Debug, PartialEq)]
pub struct JoinResult {
    pub node: usize,
    /// Mean over channels of the output's second moment.
    pub forward_variance: f64,
    /// Mean over channels of the gradient's second moment at the output.
    pub backward_variance: f64,
    /// For an Add: which inputs are residual branches (not the identity path).
    pub branches: Vec<bool>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GraphAnalysis {
    pub weights: Vec<WeightResult>,
    pub batch_norms: Vec<BatchNormResult>,
    pub joins: Vec<JoinResult>,
    /// Per value (0 the input, k + 1 node k's output): the mean over channels (and
    /// positions) of its second moment and of its gradient's (`cnnc lower --nodes`; none
    /// for an activation fused into the max pool that reads it).
    pub values: Vec<(f64, Option<f64>)>,
    /// Mean second moment of the network output.
    pub output_variance: f64,
    /// Mean second moment of the gradient at the network input.
    pub input_gradient_variance: f64,
}

/// Per-channel statistics of a value.
#[derive(Clone, Debug, PartialEq)]
struct Stat {
    mean: Vec<f64>,
    second: Vec<f64>,
    /// The variance of the channel's random offset: the part of a value that is the same
    /// at every position of every sample (x = μ + m + e, m ~ N(0, offset) per channel and
    /// weight draw, e per element). A conv of an input with a mean gives each output
    /// channel one (σ² Σ_taps (μ² + offset)); averaging over positions keeps it whole
    /// while it divides the rest by T, and BatchNorm's batch statistics remove it.
    offset: Vec<f64>,
}

impl Stat {
    fn uniform(c: u64, mean: f64, second: f64) -> Stat {
        Stat { mean: vec![mean; c as usize], second: vec![second; c as usize], offset: vec![0.0; c as usize] }
    }
}

fn avg(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// An element-wise function.
#[derive(Clone, Copy, Debug)]
pub(super) enum Func<'a> {
    Act(Activation),
    Expr(&'a Expr),
}

impl Func<'_> {
    pub(super) fn eval(&self, x: f64) -> (f64, f64) {
        match self {
            Func::Act(a) => a.eval(x),
            Func::Expr(e) => {
                let d = e.eval(x);
                (d.v, d.d)
            }
        }
    }
    pub(super) fn monotone(&self) -> bool {
        match self {
            Func::Act(Activation::LeakyRelu { slope }) => *slope >= 0.0,
            Func::Act(Activation::Gelu | Activation::Silu) => false,
            Func::Act(_) => true,
            Func::Expr(e) => e.monotone(),
        }
    }
    /// `Some(a)` when f(x) = x above 0 and a·x below.
    pub(super) fn slope(&self) -> Option<f64> {
        match self {
            Func::Act(a) => super::piecewise_linear_slope(*a),
            Func::Expr(_) => None,
        }
    }
}

pub(super) fn func(op: &Op) -> Option<Func<'_>> {
    match op {
        Op::Activation(a) => Some(Func::Act(*a)),
        Op::Elementwise(e) => Some(Func::Expr(e)),
        _ => None,
    }
}

/// (E f(x), E f(x)², E f'(x)²) for x ~ N(μ, v).
pub(super) fn gauss_moments(f: Func<'_>, mu: f64, v: f64) -> (f64, f64, f64) {
    let v = v.max(0.0);
    if v == 0.0 {
        let (y, d) = f.eval(mu);
        return (y, y * y, d * d);
    }
    let s = v.sqrt();
    if let Some(a) = f.slope() {
        // f = relu(x) − a·relu(−x): closed forms for a Gaussian.
        let r = mu / s;
        let (cdf, pdf) = (super::big_phi(r), super::phi(r));
        let (ncdf, npdf) = (super::big_phi(-r), pdf);
        let pos1 = mu * cdf + s * pdf; // E relu(x)
        let pos2 = (mu * mu + v) * cdf + mu * s * pdf; // E relu(x)²
        let neg1 = -mu * ncdf + s * npdf; // E relu(−x)
        let neg2 = (mu * mu + v) * ncdf - mu * s * npdf; // E relu(−x)²
        if mu == 0.0 {
            // Exactly the chain's constants: E f² = v (1 + a²)/2.
            let second = super::piecewise_linear_moments(a).1;
            return (pos1 - a * neg1, v * second, second);
        }
        return (pos1 - a * neg1, pos2 + a * a * neg2, cdf + a * a * ncdf);
    }
    if let Func::Expr(Expr::Apply(ir::Fn1::Clip { min, max }, x)) = f {
        if matches!(**x, Expr::X) && min <= max {
            return clip_moments(*min, *max, mu, v);
        }
    }
    quadrature_moments(f, mu, v)
}

/// (E f, E f², E f'²) by quadrature over ±12σ, with panels broken where the functions
/// exporters write have kinks (x = −3, 0, 3, 6: ReLU, ReLU6, hard-sigmoid, hard-swish),
/// so that a jump of f' does not sit inside a panel.
fn quadrature_moments(f: Func<'_>, mu: f64, v: f64) -> (f64, f64, f64) {
    let s = v.sqrt();
    let mut cuts: Vec<f64> = [-3.0, 0.0, 3.0, 6.0].iter().map(|x| (x - mu) / s).filter(|z| z.abs() < 12.0).collect();
    cuts.push(-12.0);
    cuts.push(12.0);
    cuts.sort_by(f64::total_cmp);
    let e = |g: &dyn Fn(f64) -> f64| {
        cuts.windows(2).map(|w| integrate_width(|z| g(mu + s * z) * super::phi(z), w[0], w[1], 0.0625)).sum::<f64>()
    };
    (e(&|x| f.eval(x).0), e(&|x| f.eval(x).0.powi(2)), e(&|x| f.eval(x).1.powi(2)))
}

/// Moments of clip(x, lo, hi) for x ~ N(μ, v > 0), from the truncated normal's:
/// with a = (lo − μ)/σ, b = (hi − μ)/σ, P = Φ(b) − Φ(a),
/// E[x 1(a<z<b)] = μP + σ(φ(a) − φ(b)),
/// E[x² 1(a<z<b)] = (μ² + σ²)P + 2μσ(φ(a) − φ(b)) + σ²(aφ(a) − bφ(b)).
fn clip_moments(lo: f64, hi: f64, mu: f64, v: f64) -> (f64, f64, f64) {
    let s = v.sqrt();
    let z = |t: f64| (t - mu) / s;
    let (a, b) = (z(lo), z(hi));
    let cdf = |t: f64| {
        if t == f64::INFINITY {
            1.0
        } else if t == f64::NEG_INFINITY {
            0.0
        } else {
            super::big_phi(t)
        }
    };
    let pdf = |t: f64| if t.is_finite() { super::phi(t) } else { 0.0 };
    let tp = |t: f64| if t.is_finite() { t * super::phi(t) } else { 0.0 };
    let p = cdf(b) - cdf(a);
    let d = pdf(a) - pdf(b);
    let mid1 = mu * p + s * d;
    let mid2 = (mu * mu + v) * p + 2.0 * mu * s * d + v * (tp(a) - tp(b));
    let (below, above) = (cdf(a), 1.0 - cdf(b));
    let edge = |bound: f64, mass: f64| if mass > 0.0 { bound * mass } else { 0.0 };
    let edge2 = |bound: f64, mass: f64| if mass > 0.0 { bound * bound * mass } else { 0.0 };
    (edge(lo, below) + mid1 + edge(hi, above), edge2(lo, below) + mid2 + edge2(hi, above), p)
}

/// E over the offset m ~ N(0, a) of the `N` components of g(m): Gauss–Legendre over ±6
/// standard deviations (g is smooth in m: a Gaussian average of f), one evaluation of g
/// per node.
fn over_offset<const N: usize>(g: impl Fn(f64) -> [f64; N], a: f64) -> [f64; N] {
    let s = a.sqrt();
    let v = crate::quad::integrate_vec(
        |z, out| {
            let w = super::phi(z);
            for (o, y) in out.iter_mut().zip(g(s * z)) {
                *o = y * w;
            }
        },
        N,
        -6.0,
        6.0,
        4,
    );
    std::array::from_fn(|i| v[i])
}

/// E f(x) for x ~ N(μ, b): closed forms where `gauss_moments` has them, else a coarser
/// quadrature than `gauss_moments` (enough for an offset's variance, at a fraction of
/// the cost: it runs once per quadrature node of the offset).
pub(super) fn inner_mean(f: Func<'_>, mu: f64, b: f64) -> f64 {
    let closed = f.slope().is_some() || matches!(f, Func::Expr(Expr::Apply(ir::Fn1::Clip { .. }, x)) if matches!(**x, Expr::X));
    if closed || b <= 0.0 {
        return gauss_moments(f, mu, b.max(0.0)).0;
    }
    let s = b.sqrt();
    integrate_width(|z| f.eval(mu + s * z).0 * super::phi(z), -10.0, 10.0, 0.25)
}

/// The offset variance of f(x), x = μ + m + e (m ~ N(0, a), e ~ N(0, b)):
/// Var_m E_e f(μ + m + e), with `mean` = E f(x).
pub(super) fn offset_through(f: Func<'_>, mu: f64, a: f64, b: f64, mean: f64) -> f64 {
    let [h2] = over_offset(|m| [inner_mean(f, mu + m, b).powi(2)], a);
    (h2 - mean * mean).max(0.0)
}

/// Max pooling of f(μ + m + e_k) over T members sharing the offset m:
/// (E f(M), E f(M)², the offset variance of the result).
fn offset_max(f: Func<'_>, mu: f64, a: f64, b: f64, t: u64) -> (f64, f64, f64) {
    if f.slope() == Some(1.0) {
        // The identity (a max pool after an Add, a Concat): μ + m + √b M, in closed form
        // from E[M] and E[M²] of the maximum of T standard normals.
        let (em, em2) = (max_expect(|m| m, t), max_expect(|m| m * m, t));
        let sb = b.max(0.0).sqrt();
        let m1 = mu + sb * em;
        return (m1, mu * mu + a + 2.0 * mu * sb * em + b.max(0.0) * em2, a);
    }
    let [m1, m2, h2] = over_offset(
        |m| {
            let (e1, e2, _) = max_moments(f, mu + m, b.max(0.0), t);
            [e1, e2, e1 * e1]
        },
        a,
    );
    (m1, m2, (h2 - m1 * m1).max(0.0))
}

/// ∫ g(m) p_T(m) dm over the density of the maximum of T standard normals.
fn max_expect(g: impl Fn(f64) -> f64, t: u64) -> f64 {
    negative_half(|m| g(m) * max_density(t, m), t) + integrate_width(|m| g(m) * max_density(t, m), 0.0, upper_limit(t), 0.25)
}

/// Max pooling of f(x), x ~ N(μ, v) per member, T members: (E f(M), E f(M)², E f'(M)²/T).
pub(super) fn max_moments(f: Func<'_>, mu: f64, v: f64, t: u64) -> (f64, f64, f64) {
    let s = v.max(0.0).sqrt();
    if mu == 0.0 && f.slope().is_some() {
        if let Func::Act(act) = f {
            // The paper's τ and γ (unit variance), scaled.
            if let Ok((tau, gamma)) = constants(act, PoolingKind::Max(t)) {
                let a = f.slope().unwrap_or(0.0);
                let mean = s * max_expect(|m| if m > 0.0 { m } else { a * m }, t);
                return (mean, v * tau, gamma);
            }
        }
    }
    let mean = max_expect(|m| f.eval(mu + s * m).0, t);
    let second = max_expect(|m| f.eval(mu + s * m).0.powi(2), t);
    let grad = max_expect(|m| f.eval(mu + s * m).1.powi(2), t) / t as f64;
    (mean, second, grad)
}

/// A normalization with statistics of each channel of its own (a BatchNorm with batch
/// statistics, an InstanceNorm): every output channel is standardized.
pub(super) fn per_channel_norm(b: &ir::BatchNorm) -> bool {
    (b.training && b.groups.is_none()) || b.groups == Some(b.channels)
}

/// Per channel of `v`, where it is a max pool's output channel unmixed: (the pool node,
/// the channel there, whether a per-channel normalization lies between), read back
/// through such normalizations, channel slices and concats. `None` where no channel is.
///
/// Such a channel is not Gaussian (a maximum of T members is skewed to the right): after a
/// normalization, an element-wise f sees the standardized maximum, and its moments are
/// the maximum's ([`max_composite_moments`]). In DenseNet-121, the ReLU after the first
/// normalization of the stem's 3×3/2 max pool keeps E[x²] 0.57, not 0.5, and is open
/// 46 % of the time, not 50 %; every dense layer of the first block reads those channels.
pub(super) fn max_pooled_channels(g: &Graph, v: ValueId) -> Option<Vec<Option<(usize, usize, bool)>>> {
    fn walk(g: &Graph, v: ValueId, budget: &mut usize) -> Option<Vec<Option<(usize, usize, bool)>>> {
        if v.0 == 0 || *budget == 0 {
            return None;
        }
        *budget -= 1;
        let k = v.0 - 1;
        let n = &g.nodes[k];
        match &n.op {
            Op::Pool(p) if p.kind == PoolKind::Max => Some((0..n.output.chw().0 as usize).map(|c| Some((k, c, false))).collect()),
            Op::BatchNorm(b) if per_channel_norm(b) => {
                Some(walk(g, n.inputs[0], budget)?.into_iter().map(|o| o.map(|(p, c, _)| (p, c, true))).collect())
            }
            Op::ChannelSlice { start, end } => Some(walk(g, n.inputs[0], budget)?.get(*start as usize..*end as usize)?.to_vec()),
            Op::Concat => {
                let parts: Vec<_> = n.inputs.iter().map(|&u| walk(g, u, budget)).collect();
                if parts.iter().all(Option::is_none) {
                    return None;
                }
                Some(n.inputs.iter().zip(parts).flat_map(|(&u, p)| p.unwrap_or_else(|| vec![None; g.shape(u).chw().0 as usize])).collect())
            }
            _ => None,
        }
    }
    // A dense block's concats list every earlier map: the walk is bounded, not the graph.
    walk(g, v, &mut 256)
}

/// (E f(x), E f(x)², E f'(x)²) for x = a·f0(M) + c, M the maximum of `t` independent
/// N(μ, v) members (f0 the pool's own monotone function, looked through).
pub(super) fn max_composite_moments(f: Func<'_>, f0: Func<'_>, mu: f64, v: f64, t: u64, a: f64, c: f64) -> (f64, f64, f64) {
    let s = v.max(0.0).sqrt();
    let x = |m: f64| a * f0.eval(mu + s * m).0 + c;
    (max_expect(|m| f.eval(x(m)).0, t), max_expect(|m| f.eval(x(m)).0.powi(2), t), max_expect(|m| f.eval(x(m)).1.powi(2), t))
}

/// Per channel of element-wise node `k`'s input: [`max_composite_moments`] where the
/// channel is a max pool's output ([`max_pooled_channels`]), from the pool's members and
/// its output (the affine map a normalization makes of it: x = a·v + c).
fn max_channel_moments(cx: &Cx<'_>, stats: &[Option<Stat>], k: usize, fun: Func<'_>) -> Option<Vec<Option<[f64; 3]>>> {
    let g = cx.g;
    let v = g.nodes[k].inputs[0];
    let origin = max_pooled_channels(g, v)?;
    let x = cx.input_stat(stats, v);
    let mut memo: HashMap<[u64; 6], [f64; 3]> = HashMap::new();
    Some(
        origin
            .iter()
            .enumerate()
            .map(|(ch, o)| {
                let &(pool, pc, normalized) = o.as_ref()?;
                let (f0, src) = max_source_of(g, pool);
                let (sv, pv) = (cx.input_stat(stats, src), cx.input_stat(stats, ValueId(pool + 1)));
                if sv.offset[pc] != 0.0 || pv.offset[pc] != 0.0 || x.offset[ch] != 0.0 {
                    return None;
                }
                let (ms, vs) = (sv.mean[pc], sv.second[pc] - sv.mean[pc] * sv.mean[pc]);
                let (mp, vp) = (pv.mean[pc], pv.second[pc] - pv.mean[pc] * pv.mean[pc]);
                let (mx, vx) = (x.mean[ch], x.second[ch] - x.mean[ch] * x.mean[ch]);
                let (a, c) = if normalized && vp > 0.0 { ((vx / vp).sqrt(), mx - (vx / vp).sqrt() * mp) } else { (1.0, 0.0) };
                let t = window_of(&g.nodes[pool], g.shape(g.nodes[pool].inputs[0]));
                let r = *memo
                    .entry([ms, vs, a, c, t as f64, pool as f64].map(f64::to_bits))
                    .or_insert_with(|| max_composite_moments(fun, f0, ms, vs, t, a, c).into());
                Some(r)
            })
            .collect(),
    )
}

/// A value's second moment as a pass reports it: the mean over channels and positions,
/// and the range over positions (the paper's analysis has one number per channel).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Moment {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
}

/// A forward and a backward pass over the graph. With `choose`, σ² of each weight node
/// is chosen to meet its target; otherwise `Params::sigma2` is used as it is. Backward
/// reads the statistics of the latest forward pass.
pub(super) trait Passes {
    fn forward(&mut self, cx: &Cx<'_>, p: &mut Params, opts: &GraphOptions, choose: bool) -> Result<Vec<Moment>, AnalysisError>;
    fn backward(&mut self, cx: &Cx<'_>, p: &mut Params, opts: &GraphOptions, choose: bool) -> Result<Vec<Moment>, AnalysisError>;
}

/// The paper's analysis: per channel, positions averaged.
struct PaperPasses {
    stats: Vec<Option<Stat>>,
}

fn channel_moment(v: &[f64]) -> Moment {
    let (min, max) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    Moment { avg: avg(v), min, max }
}

impl Passes for PaperPasses {
    fn forward(&mut self, cx: &Cx<'_>, p: &mut Params, opts: &GraphOptions, choose: bool) -> Result<Vec<Moment>, AnalysisError> {
        self.stats = forward(cx, p, opts, choose)?;
        Ok(self.stats.iter().map(|s| channel_moment(&s.as_ref().expect("computed").second)).collect())
    }
    fn backward(&mut self, cx: &Cx<'_>, p: &mut Params, opts: &GraphOptions, choose: bool) -> Result<Vec<Moment>, AnalysisError> {
        Ok(backward(cx, &self.stats, p, opts, choose)?.iter().map(|g| channel_moment(g)).collect())
    }
}

/// What the passes share: the graph, its consumers, and the unified-layer structure.
pub(super) struct Cx<'g> {
    pub(super) g: &'g Graph,
    /// Per value, the nodes that read it.
    pub(super) consumers: Vec<Vec<usize>>,
    /// Per max-pool node: the element-wise node it pools when they fuse (monotone f, the
    /// pool its only reader).
    pub(super) fused: HashMap<usize, usize>,
    /// Weight geometry per weight node.
    pub(super) weights: HashMap<usize, (unify::Weight, u64)>,
}

pub(super) fn fail(g: &Graph, k: usize, message: String) -> AnalysisError {
    AnalysisError::Node { node: g.nodes[k].name.clone(), op: g.nodes[k].op.kind_name().into(), message }
}

fn window_of(node: &ir::Node, input: Shape) -> u64 {
    match &node.op {
        Op::Pool(p) => p.kernel[0] * p.kernel[1],
        _ => {
            let (_, h, w) = input.chw();
            h * w
        }
    }
}

impl<'g> Cx<'g> {
    fn new(g: &'g Graph) -> Result<Cx<'g>, AnalysisError> {
        let mut consumers = vec![Vec::new(); g.nodes.len() + 1];
        for (k, n) in g.nodes.iter().enumerate() {
            for v in &n.inputs {
                if v.0 > k {
                    return Err(fail(g, k, "reads a value computed after it: the graph is not in topological order".into()));
                }
                consumers[v.0].push(k);
            }
        }
        for (k, n) in g.nodes.iter().enumerate() {
            let c = n.output.chw().0;
            if c > MAX_CHANNELS {
                return Err(fail(
                    g,
                    k,
                    format!("its output has {c} channels (or vector elements), more than the analysis's limit of {MAX_CHANNELS}"),
                ));
            }
        }
        let mut fused = HashMap::new();
        let mut weights = HashMap::new();
        for (k, n) in g.nodes.iter().enumerate() {
            let is_max = matches!(n.op, Op::Pool(ir::Pool { kind: PoolKind::Max, .. }) | Op::GlobalPool(PoolKind::Max));
            if is_max {
                let v = n.inputs[0].0;
                if v > 0 && consumers[v].len() == 1 {
                    let a = v - 1;
                    if func(&g.nodes[a].op).is_some_and(|f| f.monotone()) {
                        fused.insert(k, a);
                    }
                }
            }
            if matches!(n.op, Op::Conv(_) | Op::Linear(_)) {
                let w = unify::weight(n, g.shape(n.inputs[0]));
                let eps = w
                    .geometry
                    .connections()
                    .and_then(|c| u64::try_from(c).ok())
                    .ok_or_else(|| fail(g, k, "the number of connections does not fit in 64 bits".into()))?;
                if eps == 0 {
                    return Err(fail(g, k, "no output of this layer reads any input (every window lies in the padding)".into()));
                }
                weights.insert(k, (w, eps));
            }
        }
        Ok(Cx { g, consumers, fused, weights })
    }

    fn input_stat<'s>(&self, stats: &'s [Option<Stat>], v: ValueId) -> &'s Stat {
        stats[v.0].as_ref().expect("values are computed in topological order")
    }
}

/// The σ², BatchNorm scales and targets the passes use.
pub(super) struct Params {
    pub(super) sigma2: HashMap<usize, f64>,
    pub(super) bn_scale: HashMap<usize, f64>,
    /// Target second moment of each weight node (1, or α²).
    pub(super) target: HashMap<usize, f64>,
    /// σ² before the cap, where the cap lowered it.
    capped: HashMap<usize, f64>,
    /// Scale-invariant weight nodes whose σ² the forward rule chooses even when the
    /// passes choose backward (backward mode): a batch-statistics normalization divides
    /// their σ out of their own gradient target, so the backward rule has no fixed point.
    pub(super) forward_choice: HashSet<usize>,
}

impl Params {
    /// Whether a forward pass chooses σ² of weight node `k`.
    pub(super) fn chooses_forward(&self, choose: bool, k: usize) -> bool {
        choose || self.forward_choice.contains(&k)
    }
    /// Whether a backward pass chooses σ² of weight node `k`.
    pub(super) fn chooses_backward(&self, choose: bool, k: usize) -> bool {
        choose && !self.forward_choice.contains(&k)
    }
}

/// κ of a weight node: E[u_o²] = σ² κ Σ_{c ∈ group(o)} E[z_c²].
fn kappa(w: &unify::Weight, eps: u64) -> f64 {
    eps as f64 / (w.geometry.m_out() as f64 * w.geometry.group_in() as f64)
}

/// Σ_k f_k² over the taps of one axis, f_k the fraction of output positions where tap k
/// reads real input: a channel's offset over the positions of a conv's output is
/// m̄ = Σ_t w_t f_t (μ + m) (the padding reads 0), so E[m̄²] = σ² Σ_t f_t² (μ² + A) —
/// Σ_t f_t (κ) where every tap is real everywhere, less on small padded maps.
pub(super) fn shared_taps(a: &crate::index::Axis) -> f64 {
    tap_counts(a).iter().map(|c| (c / a.output as f64).powi(2)).sum()
}

/// Per tap of one axis, the output positions where it reads real input.
fn tap_counts(a: &crate::index::Axis) -> Vec<f64> {
    let mut count = vec![0.0; a.kernel as usize];
    for o in 0..a.output {
        for k in a.taps(o) {
            count[k as usize] += 1.0;
        }
    }
    count
}

/// Σ_k (c_k / input)² over the taps of one axis, c_k the output positions where tap k
/// reads real input: the backward counterpart of [`shared_taps`].
fn shared_taps_back(a: &crate::index::Axis) -> f64 {
    tap_counts(a).iter().map(|c| (c / a.input as f64).powi(2)).sum()
}

/// ρ of a weight node: E[δz_c²] = σ² ρ Σ_{o ∈ group(c)} E[δu_o²].
fn rho(w: &unify::Weight, eps: u64) -> f64 {
    eps as f64 / (w.geometry.m_in() as f64 * w.geometry.group_out() as f64)
}

/// Channels per sample position of a value: an image's C, or a vector's n.
fn channels(s: Shape) -> u64 {
    s.chw().0
}

/// Output channel j of a shuffle with `groups` groups reads input channel `source[j]`:
/// (N, g, C/g, H, W) transposed to (N, C/g, g, H, W).
pub(super) fn shuffle_source(c: u64, groups: u64) -> Vec<usize> {
    let per = c / groups;
    (0..c).map(|j| ((j % groups) * per + j / groups) as usize).collect()
}

impl Params {
    /// Sets σ² of node `k`, lowered to the cap (`cap` × the padding-aware He σ) if one is set.
    pub(super) fn set(&mut self, k: usize, s2: f64, he: f64, opts: &GraphOptions) {
        let limit = opts.std_cap.map(|c| c * he.sqrt());
        match limit {
            Some(l) if s2.sqrt() > l => {
                self.sigma2.insert(k, l * l);
                self.capped.insert(k, s2);
            }
            _ => {
                self.sigma2.insert(k, s2);
                self.capped.remove(&k);
            }
        }
    }
}

/// What a forward rule reads and writes: the graph, σ² and the statistics so far.
struct Fwd<'a, 'g> {
    cx: &'a Cx<'g>,
    p: &'a mut Params,
    opts: &'a GraphOptions,
    /// Choose σ² of each weight node to meet its target (forward mode).
    choose: bool,
    stats: Vec<Option<Stat>>,
    /// Per value, the spatial correlation of its fluctuation ([`corr`]).
    lags: Vec<Option<corr::Lags>>,
    memo: HashMap<(usize, u64, u64), (f64, f64, f64)>,
    /// The stages' streams ([`Chains`]), and each one's law so far.
    chains: Chains,
    streams: HashMap<usize, super::walk::Stream>,
}

/// What a backward rule reads and writes: the forward statistics and the gradients.
struct Bwd<'a, 'g> {
    cx: &'a Cx<'g>,
    p: &'a mut Params,
    opts: &'a GraphOptions,
    /// Choose σ² of each weight node to meet its target (backward mode).
    choose: bool,
    stats: &'a [Option<Stat>],
    grads: Vec<Vec<f64>>,
    /// Per value and channel, the second moment of the part of the gradient that is the
    /// same at every position of one sample (all of it where a value has one position).
    /// A global pool's gradient is all such; a normalization by each sample's statistics
    /// removes it (and the part along its normalized input), which is most of what
    /// reaches a GroupNorm, InstanceNorm or LayerNorm before a global pool.
    shared: Vec<Vec<f64>>,
    /// Whether anything reads `shared` (a per-sample normalization): its element-wise
    /// rule costs a quadrature per channel otherwise spared.
    track_shared: bool,
    memo: HashMap<(usize, u64, u64), f64>,
    /// Per value x ≥ 0 made by a ReLU g: the part of its gradient that a reader which is
    /// the identity on x's support sent, already masked where g(c) = 0 ([`passes_unchanged`]):
    /// g passes it whole.
    on_support: HashMap<usize, Vec<f64>>,
    /// Per value x = g(c) made by a ReLU g that a residual stream's next ReLU f reads
    /// through an Add (f(a + g(c))): the part of x's gradient that came through f and the
    /// Add's identity path, and per channel κ = E[f'² g'²]/(E[f'²] E[g'²]) — the masks of
    /// the two ReLUs overlap (where c is large, a + g(c) is likely positive too), so g
    /// passes that part with P(g open | f open), not P(g open) ([`mask_overlap`]).
    via_skip: HashMap<usize, (Vec<f64>, Vec<f64>)>,
    /// The stages' stream ReLUs ([`stream_walks`]).
    walks: HashMap<usize, ChainPos>,
    /// Per value made by a stage's stream ReLU: the parts of its gradient that came back
    /// through the stage's identity path, by how many of its masks they passed (index 0:
    /// one), per channel.
    along: HashMap<usize, Vec<Vec<f64>>>,
}

impl Fwd<'_, '_> {
    fn input(&self, v: ValueId) -> &Stat {
        self.cx.input_stat(&self.stats, v)
    }
}

impl Bwd<'_, '_> {
    fn input(&self, v: ValueId) -> &Stat {
        self.cx.input_stat(self.stats, v)
    }
    /// Adds a gradient contribution to value `v`.
    fn send(&mut self, v: ValueId, contrib: &[f64]) {
        for (a, b) in self.grads[v.0].iter_mut().zip(contrib) {
            *a += b;
        }
    }
    /// Adds a contribution to the per-sample shared part of value `v`'s gradient.
    fn send_shared(&mut self, v: ValueId, contrib: &[f64]) {
        for (a, b) in self.shared[v.0].iter_mut().zip(contrib) {
            *a += b;
        }
    }
    /// The per-sample shared part of the gradient `full` at value `v`.
    fn shared_of(&self, v: usize, full: &[f64]) -> Vec<f64> {
        if positions(self.cx.g.shape(ValueId(v))) == 1 {
            full.to_vec()
        } else {
            self.shared[v].clone()
        }
    }
}

/// Whether a rule reads the gradients' per-sample shared parts: a normalization by each
/// sample's statistics, or a batch-statistics BatchNorm at a finite batch (`--batch`).
pub(super) fn reads_shared(g: &Graph, opts: &GraphOptions) -> bool {
    g.nodes.iter().any(|n| match &n.op {
        Op::BatchNorm(bn) => bn.groups.is_some() || (bn.training && opts.batch.is_some()),
        Op::Resample(_) => true,
        Op::Mul => g.shape(n.inputs[1]) != n.output,
        Op::SoftmaxPositions | Op::AttentionPool | Op::AddBroadcast => true,
        _ => standardized(n).is_some(),
    })
}

/// Positions per channel of a value (1 for a vector).
fn positions(s: Shape) -> u64 {
    let (_, h, w) = s.chw();
    h * w
}

/// E f'(x) for x ~ N(μ, v): the factor on the part of a gradient that every position
/// shares (its square).
pub(super) fn mean_slope(f: Func<'_>, mu: f64, v: f64) -> f64 {
    let v = v.max(0.0);
    if v == 0.0 {
        return f.eval(mu).1;
    }
    let s = v.sqrt();
    if let Some(a) = f.slope() {
        return super::big_phi(mu / s) + a * super::big_phi(-mu / s);
    }
    integrate_width(|z| f.eval(mu + s * z).1 * super::phi(z), -12.0, 12.0, 0.0625)
}

/// E over a channel's offset o ~ N(0, a) of (E_e f'(μ + o + e))², e ~ N(0, b): the factor
/// on the part of a gradient that every position of a sample shares, per channel. The
/// offset is fixed by the weights, the same at every position, so a channel whose offset
/// is high is open almost everywhere and one whose offset is low almost nowhere: the mean
/// of the square of its open fraction, not (E f')² over all of its variance (for a ReLU
/// whose input is all offset 1/2, not 1/4). Without an offset, [`mean_slope`]².
/// (Smooth f: Gauss–Hermite at both levels, as the composite rule's points multiply.)
pub(super) fn mean_slope_sq(f: Func<'_>, mu: f64, a: f64, b: f64) -> f64 {
    if a <= 0.0 {
        return mean_slope(f, mu, b).powi(2);
    }
    let (s, t) = (a.sqrt(), b.max(0.0).sqrt());
    if f.slope().is_none() {
        return crate::quad::normal_expectation(|z| crate::quad::normal_expectation(|u| f.eval(mu + s * z + t * u).1).powi(2));
    }
    integrate_width(|z| mean_slope(f, mu + s * z, b).powi(2) * super::phi(z), -10.0, 10.0, 0.25)
}

/// [`slope_along`]² taken over a channel's offset o ~ N(0, a), the rest of x̂'s variance
/// `b` within: E_o[(E_e f'(γ(m + o + e)) (m + o + e))²] (see [`mean_slope_sq`]).
pub(super) fn slope_along_sq(f: Func<'_>, gamma: f64, m: f64, a: f64, b: f64) -> f64 {
    if a <= 0.0 {
        return slope_along(f, gamma, m, b).powi(2);
    }
    let (s, t) = (a.sqrt(), b.max(0.0).sqrt());
    if f.slope().is_none() || gamma <= 0.0 {
        return crate::quad::normal_expectation(|z| {
            crate::quad::normal_expectation(|u| {
                let y = m + s * z + t * u;
                f.eval(gamma * y).1 * y
            })
            .powi(2)
        });
    }
    integrate_width(|z| slope_along(f, gamma, m + s * z, b).powi(2) * super::phi(z), -10.0, 10.0, 0.25)
}

/// The element-wise f that reads a per-sample normalization's output (node `k`'s): directly,
/// or through an Add with one other value — a residual stream s, f(γ x̂ + s) (a ResNet's
/// branch-ending GroupNorm). Returns f's node and the stream.
pub(super) fn norm_reader(g: &Graph, consumers: &[Vec<usize>], k: usize) -> Option<(usize, Option<ValueId>)> {
    let &[r] = consumers[k + 1].as_slice() else { return None };
    if func(&g.nodes[r].op).is_some() {
        return Some((r, None));
    }
    let n = &g.nodes[r];
    if !matches!(n.op, Op::Add) || n.inputs.len() != 2 || n.inputs[0] == n.inputs[1] {
        return None;
    }
    let &[fk] = consumers[r + 1].as_slice() else { return None };
    func(&g.nodes[fk].op)?;
    let stream = if n.inputs[0].0 == k + 1 { n.inputs[1] } else { n.inputs[0] };
    Some((fk, Some(stream)))
}

/// [`slope_along_sq`] where f reads γ x̂ + s, s an independent stream N(μ_s, a_s + b_s) (a_s
/// its channel offset, fixed per channel as x̂'s is): E_{o, o_s}[(E f'(u) (m + o + e))²],
/// u = γ(m + o + e) + μ_s + o_s + e_s. For piecewise-linear f, by Stein's lemma,
/// E[x 1(u > 0)] = (m + o) Φ(μ_u/σ_u) + (γ b/σ_u) φ(μ_u/σ_u); the offsets by Gauss–Hermite.
/// `None` for a smooth f (the caller leaves the term out, as before).
#[allow(clippy::too_many_arguments)]
pub(super) fn slope_along_sum_sq(f: Func<'_>, gamma: f64, m: f64, a: f64, b: f64, ms: f64, a_s: f64, b_s: f64) -> Option<f64> {
    let alpha = f.slope()?;
    if gamma <= 0.0 {
        return Some(0.0);
    }
    let (sa, ss) = (a.max(0.0).sqrt(), a_s.max(0.0).sqrt());
    let sigma = (gamma * gamma * b.max(0.0) + b_s.max(0.0)).sqrt();
    let inner = |mo: f64, mu: f64| {
        let above = if sigma > 0.0 {
            mo * super::big_phi(mu / sigma) + gamma * b.max(0.0) / sigma * super::phi(mu / sigma)
        } else if mu > 0.0 {
            mo
        } else {
            0.0
        };
        above + alpha * (mo - above)
    };
    Some(crate::quad::normal_expectation(|z| {
        let mo = m + sa * z;
        crate::quad::normal_expectation(|zs| inner(mo, gamma * mo + ms + ss * zs).powi(2))
    }))
}

/// E[f'(γ x̂) x̂] for x̂ ~ N(m, v): how much of the gradient through f(γ x̂) lies along x̂.
pub(super) fn slope_along(f: Func<'_>, gamma: f64, m: f64, v: f64) -> f64 {
    let s = v.max(0.0).sqrt();
    if let (Some(a), true) = (f.slope(), gamma > 0.0) {
        // f' is 1 above 0 and a below: E[x̂; x̂ > 0] + a E[x̂; x̂ < 0].
        let above = if s > 0.0 { m * super::big_phi(m / s) + s * super::phi(m / s) } else { m.max(0.0) };
        return above + a * (m - above);
    }
    integrate_width(|z| f.eval(gamma * (m + s * z)).1 * (m + s * z) * super::phi(z), -12.0, 12.0, 0.0625)
}

/// A forward rule: node `k`'s output statistics.
type FwdRule = fn(&mut Fwd<'_, '_>, usize) -> Result<Stat, AnalysisError>;
/// A backward rule: node `k` sends the gradient `dz` at its output to its inputs.
type BwdRule = fn(&mut Bwd<'_, '_>, usize, &[f64]) -> Result<(), AnalysisError>;

/// The paper analysis's rules: one forward and one backward function per op kind
/// (`Op::kind_name`), as the importer has one function per ONNX op type.
const RULES: &[(&str, FwdRule, BwdRule)] = &[
    ("conv", weight_fwd, weight_bwd),
    ("linear", weight_fwd, weight_bwd),
    ("activation", elementwise_fwd, elementwise_bwd),
    ("elementwise", elementwise_fwd, elementwise_bwd),
    ("avgpool", avg_pool_fwd, avg_pool_bwd),
    ("global avgpool", avg_pool_fwd, avg_pool_bwd),
    ("maxpool", max_pool_fwd, max_pool_bwd),
    ("global maxpool", max_pool_fwd, max_pool_bwd),
    ("flatten", flatten_fwd, flatten_bwd),
    ("add", add_fwd, add_bwd),
    ("concat", concat_fwd, concat_bwd),
    ("mul", mul_fwd, mul_bwd),
    ("batchnorm", batch_norm_fwd, batch_norm_bwd),
    ("slice", slice_fwd, slice_bwd),
    ("shuffle", shuffle_fwd, shuffle_bwd),
    ("resize", resize_fwd, resize_bwd),
    ("dilate", dilate_fwd, dilate_bwd),
    ("resample", resample_fwd, resample_bwd),
    ("swap", swap_fwd, swap_bwd),
    ("softmax positions", softmax_positions_fwd, softmax_positions_bwd),
    ("attention pool", attention_pool_fwd, attention_pool_bwd),
    ("add broadcast", add_broadcast_fwd, add_broadcast_bwd),
    ("radix softmax", radix_softmax_fwd, radix_softmax_bwd),
];

fn rules(op: &Op) -> (FwdRule, BwdRule) {
    let kind = op.kind_name();
    let (_, f, b) = RULES.iter().find(|(name, _, _)| *name == kind).unwrap_or_else(|| panic!("no rules for op kind `{kind}`"));
    (*f, *b)
}

/// The forward pass. With `choose`, σ² of each weight node is chosen to meet its
/// target (forward mode); otherwise `p.sigma2` is used as it is.
fn forward(cx: &Cx<'_>, p: &mut Params, opts: &GraphOptions, choose: bool) -> Result<Vec<Option<Stat>>, AnalysisError> {
    let g = cx.g;
    let mut stats: Vec<Option<Stat>> = vec![None; g.nodes.len() + 1];
    stats[0] = Some(Stat::uniform(channels(g.input), 0.0, 1.0));
    let mut lags = vec![None; g.nodes.len() + 1];
    lags[0] = Some(corr::white());
    let mut f = Fwd { cx, p, opts, choose, stats, lags, memo: HashMap::new(), chains: Chains::of(g), streams: HashMap::new() };
    for (k, n) in g.nodes.iter().enumerate() {
        let out = (rules(&n.op).0)(&mut f, k)?;
        debug_assert_eq!(out.second.len() as u64, channels(n.output), "node {k} {}", n.op.kind_name());
        f.stats[k + 1] = Some(out);
        let stats = &f.stats;
        f.lags[k + 1] = Some(corr::propagate(g, k, &f.lags, &|v| summary(cx.input_stat(stats, v))));
    }
    Ok(f.stats)
}

/// The backward pass: the gradient's second moment per channel at every value, for a
/// unit one at the output. With `choose`, σ² of each weight node is chosen so that its
/// contribution to its input's gradient meets its target (backward mode).
fn backward(
    cx: &Cx<'_>,
    stats: &[Option<Stat>],
    p: &mut Params,
    opts: &GraphOptions,
    choose: bool,
) -> Result<Vec<Vec<f64>>, AnalysisError> {
    Ok(backward_pass(cx, stats, p, opts, choose, reads_shared(cx.g, opts))?.0)
}

/// The backward pass: the gradients, and the parts of them a sample shares
/// (`track_shared`; all zero otherwise).
fn backward_pass(
    cx: &Cx<'_>,
    stats: &[Option<Stat>],
    p: &mut Params,
    opts: &GraphOptions,
    choose: bool,
    track_shared: bool,
) -> Result<(Vec<Vec<f64>>, Vec<Vec<f64>>), AnalysisError> {
    let g = cx.g;
    let grads: Vec<Vec<f64>> = (0..=g.nodes.len()).map(|v| vec![0.0; channels(g.shape(ValueId(v))) as usize]).collect();
    let shared = grads.clone();
    let mut b = Bwd {
        cx,
        p,
        opts,
        choose,
        stats,
        grads,
        shared,
        track_shared,
        memo: HashMap::new(),
        on_support: HashMap::new(),
        via_skip: HashMap::new(),
        walks: stream_walks(g, |v| {
            let x = cx.input_stat(stats, v);
            (avg(&x.mean), avg(&x.second))
        }),
        along: HashMap::new(),
    };
    let last = g.nodes.len();
    b.grads[last].iter_mut().for_each(|x| *x = 1.0);
    let fused_acts: HashSet<usize> = cx.fused.values().copied().collect();
    for (k, n) in g.nodes.iter().enumerate().rev() {
        if fused_acts.contains(&k) {
            continue; // its max pool sent the gradient to its input directly
        }
        let dz = std::mem::take(&mut b.grads[k + 1]);
        (rules(&n.op).1)(&mut b, k, &dz)?;
        b.grads[k + 1] = dz;
    }
    let shared = (0..=last).map(|v| b.shared_of(v, &b.grads[v])).collect();
    Ok((b.grads, shared))
}

/// Per value and channel, the fraction of the gradient's second moment that every
/// position of a sample shares, from a backward pass of the paper analysis over
/// per-channel statistics (`mean`, `second`, `offset` per channel of every value): what
/// the map analysis's per-sample normalizations project out.
pub(super) fn shared_fractions(
    cx: &Cx<'_>,
    stats: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)>,
    p: &mut Params,
    opts: &GraphOptions,
) -> Result<Vec<Vec<f64>>, AnalysisError> {
    let stats: Vec<Option<Stat>> = stats.into_iter().map(|(mean, second, offset)| Some(Stat { mean, second, offset })).collect();
    let (grads, shared) = backward_pass(cx, &stats, p, opts, false, true)?;
    Ok(grads
        .iter()
        .zip(&shared)
        .map(|(full, part)| part.iter().zip(full).map(|(s, f)| if *f > 0.0 { (s / f).min(1.0) } else { 0.0 }).collect())
        .collect())
}

// ---------------------------------------------------------------- one pair of rules per op

/// Conv and linear: E[u_o²] = σ² κ Σ_{c ∈ group(o)} E[z_c²]; the output is zero-mean.
fn weight_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    if standardized(&f.cx.g.nodes[k]).is_some() {
        return standardized_fwd(f, k);
    }
    let (g, n) = (f.cx.g, &f.cx.g.nodes[k]);
    let (w, eps) = &f.cx.weights[&k];
    let x = f.input(n.inputs[0]);
    let geo = &w.geometry;
    let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
    let sums: Vec<f64> = (0..geo.groups as usize).map(|gi| x.second[gi * cin_g..(gi + 1) * cin_g].iter().sum()).collect();
    let kap = kappa(w, *eps);
    let lam = shared_taps(&geo.h) * shared_taps(&geo.w);
    // Per group, the part of the input that is the same at every position: mean and offset.
    let shared: Vec<f64> =
        (0..geo.groups as usize).map(|gi| (gi * cin_g..(gi + 1) * cin_g).map(|c| x.mean[c] * x.mean[c] + x.offset[c]).sum()).collect();
    // Where a group's input channels are equal, the chain's form σ² s ε / M' (same digits).
    let group_uniform: Vec<Option<f64>> = (0..geo.groups as usize)
        .map(|gi| {
            let part = &x.second[gi * cin_g..(gi + 1) * cin_g];
            part.iter().all(|&s| s == part[0]).then_some(part[0])
        })
        .collect();
    let all_uniform = x.second.iter().all(|&s| s == x.second[0]).then_some(x.second[0]);
    if f.p.chooses_forward(f.choose, k) {
        // Mean over output channels of κ Σ: on a chain, the paper's ε τ q / M'.
        let a = match all_uniform {
            Some(s) => s * *eps as f64 / geo.m_out() as f64,
            None => kap * avg(&sums),
        };
        if !(a > 0.0 && a.is_finite()) {
            let zero =
                "the input of this layer carries no signal (its predicted second moment is 0): a weight layer upstream starts at zero";
            return Err(fail(g, k, super::not_positive_finite("the second moment of its input", a, zero)));
        }
        let he = geo.m_out() as f64 / (0.5 * *eps as f64);
        let target = f.p.target[&k];
        f.p.set(k, target / a, he, f.opts);
    }
    let s2 = f.p.sigma2[&k];
    let mut second = Vec::with_capacity(channels(n.output) as usize);
    let mut offset = Vec::with_capacity(channels(n.output) as usize);
    for (gi, uniform) in group_uniform.iter().enumerate() {
        let v = match uniform {
            Some(s) => s2 * (s * *eps as f64 / geo.m_out() as f64),
            None => s2 * kap * sums[gi],
        };
        second.extend(std::iter::repeat_n(v, cout_g));
        offset.extend(std::iter::repeat_n(s2 * lam * shared[gi], cout_g));
    }
    Ok(Stat { mean: vec![0.0; second.len()], second, offset })
}

/// Backward through a standardized filter, the factor on the part of the gradient a
/// sample shares: E[(Σ_t w_t a_t)²] = σ² F/(F−1) (Σ_t a_t² − (Σ_t a_t)²/F), a_t = c_t/P_in
/// (the filter's zero mean is over all its F elements, the sum here over one channel's).
fn standardized_shared_back(g: &Graph, k: usize, geo: &crate::index::ConvGeometry) -> Result<f64, AnalysisError> {
    let fan = standardized_fan(g, k, geo)?;
    let sum = |a: &crate::index::Axis| tap_counts(a).iter().sum::<f64>() / a.input as f64;
    let sq = shared_taps_back(&geo.h) * shared_taps_back(&geo.w);
    Ok((fan / (fan - 1.0) * (sq - (sum(&geo.h) * sum(&geo.w)).powi(2) / fan)).max(0.0))
}

/// Per axis: the mean over input positions of the (output, tap) pairs that read it, and
/// of their square.
pub(super) fn readers_per_input(a: &crate::index::Axis) -> (f64, f64) {
    let (mut one, mut two) = (0.0, 0.0);
    for i in 0..a.input {
        let n = a.readers(i).len() as f64;
        one += n;
        two += n * n;
    }
    (one / a.input as f64, two / a.input as f64)
}

/// Backward through a standardized conv: δz_c = Σ_o Σ_t w_oct δu_o,t over the r pairs
/// reading the position, E[w wᵀ] = σ² F/(F−1)(I − 11ᵀ/F) within a filter:
/// E[δz_c²] = σ² F/(F−1) Σ_o [r E[δu_o²] − (r² G_o + r (E[δu_o²] − G_o))/F], G_o the part
/// of δu_o a sample shares over its positions (the filter's zero mean removes what its
/// taps share, (C−1)/C of a fully shared gradient for C input channels).
fn standardized_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let (g, n) = (b.cx.g, &b.cx.g.nodes[k]);
    let (w, eps) = &b.cx.weights[&k];
    let geo = &w.geometry;
    let fan = standardized_fan(g, k, geo)?;
    let scale = fan / (fan - 1.0);
    let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
    let ((rh1, rh2), (rw1, rw2)) = (readers_per_input(&geo.h), readers_per_input(&geo.w));
    let (r1, r2) = (rh1 * rw1, rh2 * rw2);
    let gs = b.shared_of(k + 1, dz);
    // Per group, per unit σ²: the gradient each input channel receives.
    let unit: Vec<f64> = (0..geo.groups as usize)
        .map(|gi| {
            let os = gi * cout_g..(gi + 1) * cout_g;
            let d: f64 = dz[os.clone()].iter().sum();
            let sh: f64 = gs[os].iter().sum();
            (scale * (r1 * d - (r2 * sh + r1 * (d - sh)) / fan)).max(0.0)
        })
        .collect();
    if b.p.chooses_backward(b.choose, k) {
        let a = avg(&unit);
        if !(a > 0.0 && a.is_finite()) {
            let zero = "no gradient reaches this layer's output (a layer downstream starts at zero)";
            return Err(fail(g, k, super::not_positive_finite("the second moment of its output gradient", a, zero)));
        }
        let he = geo.m_in() as f64 / (0.5 * *eps as f64);
        let target = b.p.target[&k];
        b.p.set(k, target / a, he, b.opts);
    }
    let s2 = b.p.sigma2[&k];
    let contrib: Vec<f64> = unit.iter().flat_map(|u| std::iter::repeat_n(s2 * u, cin_g)).collect();
    b.send(n.inputs[0], &contrib);
    let lam = standardized_shared_back(g, k, geo)?;
    let to_shared: Vec<f64> = (0..geo.groups as usize)
        .flat_map(|gi| std::iter::repeat_n(s2 * lam * gs[gi * cout_g..(gi + 1) * cout_g].iter().sum::<f64>(), cin_g))
        .collect();
    b.send_shared(n.inputs[0], &to_shared);
    Ok(())
}

/// The weight standardization of a conv node, if its weight has one.
pub(super) fn standardized(n: &ir::Node) -> Option<&ir::Standardized> {
    n.params.as_ref().and_then(|p| p.standardized.as_ref())
}

/// Per axis: the mean over output positions of the real taps, and of their square.
pub(super) fn real_taps(a: &crate::index::Axis) -> (f64, f64) {
    let (mut one, mut two) = (0.0, 0.0);
    for o in 0..a.output {
        let n = a.taps(o).count() as f64;
        one += n;
        two += n * n;
    }
    (one / a.output as f64, two / a.output as f64)
}

/// F/(F − 1), F the filter's fan (C_in/g · k_h · k_w): E[w wᵀ] = σ² F/(F − 1) (I − 11ᵀ/F)
/// for a standardized filter of mean square σ² (uniform on the sphere of the hyperplane
/// Σ w = 0). An error for F = 1, whose standardized weight is 0.
pub(super) fn standardized_fan(g: &Graph, k: usize, geo: &crate::index::ConvGeometry) -> Result<f64, AnalysisError> {
    let fan = geo.taps_per_kernel() as f64;
    if fan < 2.0 {
        return Err(fail(g, k, "its weight is standardized over filters of one element: every standardized weight is 0".into()));
    }
    Ok(fan)
}

/// A conv of a standardized weight (docs/dag.md, "Weight standardization"): each filter
/// has mean 0, so it removes the part of its input patch that is common to the patch.
/// Per output position with n real taps per input channel, with x = μ_c + m_c + e:
/// E[u²] = σ² F/(F−1) [n Σ_c s_c − (n² (Σ_c μ_c)² + n² Σ_c A_c + n Σ_c B_c)/F], B_c = s_c −
/// μ_c² − A_c; the offset σ² F/(F−1) [λ Σ_c (μ_c² + A_c) − κ² ((Σ_c μ_c)² + Σ_c A_c)/F].
/// σ² is the effective weight's mean square, gain² — what the plan chooses.
fn standardized_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let (g, n) = (f.cx.g, &f.cx.g.nodes[k]);
    let (w, eps) = &f.cx.weights[&k];
    let x = f.input(n.inputs[0]);
    let geo = &w.geometry;
    let fan = standardized_fan(g, k, geo)?;
    let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
    let ((kh1, kh2), (kw1, kw2)) = (real_taps(&geo.h), real_taps(&geo.w));
    let (kap, kap2) = (kh1 * kw1, kh2 * kw2);
    let lam = shared_taps(&geo.h) * shared_taps(&geo.w);
    let scale = fan / (fan - 1.0);
    // Per group, per unit σ²: (E[u²], offset).
    let unit: Vec<(f64, f64)> = (0..geo.groups as usize)
        .map(|gi| {
            let cs = gi * cin_g..(gi + 1) * cin_g;
            let sum_s: f64 = x.second[cs.clone()].iter().sum();
            let sum_mu: f64 = x.mean[cs.clone()].iter().sum();
            let sum_a: f64 = x.offset[cs.clone()].iter().sum();
            let sum_m2a: f64 = cs.clone().map(|c| x.mean[c] * x.mean[c] + x.offset[c]).sum();
            let sum_b = sum_s - sum_m2a;
            let second = scale * (kap * sum_s - (kap2 * (sum_mu * sum_mu + sum_a) + kap * sum_b) / fan);
            let offset = scale * (lam * sum_m2a - kap * kap * (sum_mu * sum_mu + sum_a) / fan);
            (second.max(0.0), offset.max(0.0))
        })
        .collect();
    if f.p.chooses_forward(f.choose, k) {
        let a = avg(&unit.iter().map(|u| u.0).collect::<Vec<_>>());
        if !(a > 0.0 && a.is_finite()) {
            let zero = "the input of this layer carries no signal its standardized filters pass (its predicted second moment after the filters' mean is removed is 0)";
            return Err(fail(g, k, super::not_positive_finite("the second moment of its input", a, zero)));
        }
        let he = geo.m_out() as f64 / (0.5 * *eps as f64);
        let target = f.p.target[&k];
        f.p.set(k, target / a, he, f.opts);
    }
    let s2 = f.p.sigma2[&k];
    let second = unit.iter().flat_map(|u| std::iter::repeat_n(s2 * u.0, cout_g)).collect::<Vec<_>>();
    let offset = unit.iter().flat_map(|u| std::iter::repeat_n(s2 * u.1, cout_g)).collect();
    Ok(Stat { mean: vec![0.0; second.len()], second, offset })
}

/// Conv and linear backward: E[δz_c²] = σ² ρ Σ_{o ∈ group(c)} E[δu_o²].
fn weight_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    if standardized(&b.cx.g.nodes[k]).is_some() {
        return standardized_bwd(b, k, dz);
    }
    let (g, n) = (b.cx.g, &b.cx.g.nodes[k]);
    let (w, eps) = &b.cx.weights[&k];
    let geo = &w.geometry;
    let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
    let r = rho(w, *eps);
    let sums: Vec<f64> = (0..geo.groups as usize).map(|gi| dz[gi * cout_g..(gi + 1) * cout_g].iter().sum()).collect();
    if b.p.chooses_backward(b.choose, k) {
        let a = if dz.iter().all(|&d| d == dz[0]) { dz[0] * *eps as f64 / geo.m_in() as f64 } else { r * avg(&sums) };
        if !(a > 0.0 && a.is_finite()) {
            let zero = "no gradient reaches this layer's output (a layer downstream starts at zero)";
            return Err(fail(g, k, super::not_positive_finite("the second moment of its output gradient", a, zero)));
        }
        let he = geo.m_in() as f64 / (0.5 * *eps as f64);
        let target = b.p.target[&k];
        b.p.set(k, target / a, he, b.opts);
    }
    let s2 = b.p.sigma2[&k];
    let mut contrib = Vec::with_capacity(channels(g.shape(n.inputs[0])) as usize);
    for gi in 0..geo.groups as usize {
        let part = &dz[gi * cout_g..(gi + 1) * cout_g];
        let v = if part.iter().all(|&d| d == part[0]) { s2 * (part[0] * *eps as f64 / geo.m_in() as f64) } else { s2 * r * sums[gi] };
        contrib.extend(std::iter::repeat_n(v, cin_g));
    }
    b.send(n.inputs[0], &contrib);
    // The shared part: δx's mean over a sample's input positions is Σ_t w_t c_t/P_in · g,
    // c_t the outputs where tap t is real; σ² Σ_t (c_t/P_in)² per output channel.
    let gs = b.shared_of(k + 1, dz);
    let lam = shared_taps_back(&geo.h) * shared_taps_back(&geo.w);
    let mut to_shared = Vec::with_capacity(contrib.len());
    for gi in 0..geo.groups as usize {
        let total: f64 = gs[gi * cout_g..(gi + 1) * cout_g].iter().sum();
        to_shared.extend(std::iter::repeat_n(s2 * lam * total, cin_g));
    }
    b.send_shared(n.inputs[0], &to_shared);
    Ok(())
}

/// Node `k` is a function that is the identity on [0, ∞) (ReLU, leaky ReLU) reading a
/// value x ≥ 0: one ReLU's output g(c), or an Add of it and values that are exactly zero
/// (`zero`: residual branches started at zero, `--branch-scale 0`). Returns g's node.
/// Then f(x) = x forward, and backward f passes the gradient where x > 0, which is where
/// g passes it too: the two masks are one. f sends E[δ²] P(x > 0) (g's slope) and marks
/// it as lying where g passes everything, so g does not mask it again (taking the masks
/// as independent halved the gradient once per block on the identity path of
/// zero-started ResNets: 14× at ResNet-18's input, 20× at ResNet-50's).
pub(super) fn passes_unchanged(g: &Graph, k: usize, zero: impl Fn(ValueId) -> bool) -> Option<usize> {
    if !matches!(g.nodes[k].op, Op::Activation(Activation::Relu | Activation::LeakyRelu { .. } | Activation::Identity)) {
        return None;
    }
    // Through ReLUs of such values too (a stage of zero-started blocks is a chain of
    // them): g is the first ReLU whose input can be negative, the one mask of the chain.
    let (mut v, mut root) = (g.nodes[k].inputs[0], None);
    loop {
        let Some(p) = v.0.checked_sub(1) else { return root };
        match &g.nodes[p].op {
            Op::Activation(Activation::Relu) => {
                root = Some(p);
                v = g.nodes[p].inputs[0];
            }
            Op::Add => {
                let mut rest = g.nodes[p].inputs.iter().copied().filter(|&u| !zero(u));
                let (Some(u), None) = (rest.next(), rest.next()) else { return root };
                v = u;
            }
            _ => return root,
        }
    }
}

/// A value that is exactly zero (every channel's second moment 0).
fn is_zero(x: &Stat) -> bool {
    x.second.iter().all(|&s| s == 0.0)
}

/// A residual stream after its ReLU plus a branch: the input of an element-wise f is an
/// Add of a value a and a piecewise-linear g(c) of another value c
/// (ResNet's `relu(bn3(…) + x)`, x = relu(s) of the block before). Returns (g, a, c).
pub(super) fn rectified_sum<'g>(g: &'g Graph, v: ValueId) -> Option<(Func<'g>, ValueId, ValueId)> {
    let node = g.nodes.get(v.0.checked_sub(1)?)?;
    if !matches!(node.op, Op::Add) || node.inputs.len() != 2 || node.inputs[0] == node.inputs[1] {
        return None;
    }
    for (i, &r) in node.inputs.iter().enumerate() {
        let Some(prod) = r.0.checked_sub(1).map(|p| &g.nodes[p]) else { continue };
        if let Some(gf) = func(&prod.op).filter(|f| f.slope().is_some()) {
            return Some((gf, node.inputs[1 - i], prod.inputs[0]));
        }
    }
    None
}

/// [E f, E f², E f'², E f'] of f(x), x = μ_a + e + g(c), e ~ N(0, v_a) and c ~ N(μ_c, v_c)
/// independent: the Gaussian's moments (closed forms) averaged over c by quadrature.
/// A sum of a Gaussian and a rectified value is not Gaussian: it has less mass below 0
/// than the Gaussian of its mean and variance (ReLU after a residual Add: P(x > 0) is
/// 0.64, not 0.67, for a unit branch on a stream that is a ReLU of N(0, 2)), and taking
/// it as Gaussian overestimated the gradient by about 5 % per block.
pub(super) fn sum_moments(f: Func<'_>, mu_a: f64, v_a: f64, g: Func<'_>, mu_c: f64, v_c: f64) -> [f64; 4] {
    let s_c = v_c.max(0.0).sqrt();
    let inner = |z: f64, out: &mut [f64]| {
        let c = mu_c + s_c * z;
        let y = mu_a + g.eval(c).0;
        let (m1, m2, d2) = gauss_moments(f, y, v_a);
        let w = super::phi(z);
        out[0] = m1 * w;
        out[1] = m2 * w;
        out[2] = d2 * w;
        out[3] = mean_slope(f, y, v_a) * w;
    };
    if s_c == 0.0 {
        let mut out = [0.0; 4];
        let y = mu_a + g.eval(mu_c).0;
        let (m1, m2, d2) = gauss_moments(f, y, v_a);
        out[0] = m1;
        out[1] = m2;
        out[2] = d2;
        out[3] = mean_slope(f, y, v_a);
        return out;
    }
    let mut out = [0.0; 4];
    out.copy_from_slice(&over_standard_normal(inner, 4, -mu_c / s_c));
    out
}

/// The channel offset of f(a + g(c)) ([`sum_moments`]) where a and c carry offsets o_a ~
/// N(0, `off_a`) and o_c ~ N(0, `off_c`), fixed per channel, within variances `v_a` and
/// `v_c` in all: Var over channels of E[f | o_a, o_c], by Gauss–Hermite over both offsets.
/// The stream g(c) keeps its channels' offsets through g's convexity, and a Gaussian of
/// the sum's offset under-predicted f's (torchvision's ResNet-50 with GroupNorm, layer1:
/// 0.36 against 0.42 measured, 0.41 against 0.55 one block on).
#[allow(clippy::too_many_arguments)]
pub(super) fn sum_offset(f: Func<'_>, mu_a: f64, v_a: f64, off_a: f64, g: Func<'_>, mu_c: f64, v_c: f64, off_c: f64) -> f64 {
    let (sa, sc) = (off_a.max(0.0).sqrt(), off_c.max(0.0).sqrt());
    let (ba, bc) = ((v_a - off_a).max(0.0), (v_c - off_c).max(0.0));
    let h = |za: f64, zc: f64| sum_moments(f, mu_a + sa * za, ba, g, mu_c + sc * zc, bc)[0];
    let (mut m1, mut m2) = (0.0, 0.0);
    let (x, w) = crate::quad::hermite();
    for (&za, &wa) in x.iter().zip(w) {
        for (&zc, &wc) in x.iter().zip(w) {
            let v = h(za, zc);
            m1 += wa * wc * v;
            m2 += wa * wc * v * v;
        }
    }
    (m2 - m1 * m1).max(0.0)
}

/// ∫ `inner`(z) dz over z ∈ [−10, 10] (`inner` carries φ(z) itself), `n` integrands at
/// once, the panels broken at `kink` (where g(μ_c + s_c z) bends: z = −μ_c/s_c).
fn over_standard_normal(inner: impl Fn(f64, &mut [f64]), n: usize, kink: f64) -> Vec<f64> {
    let mut cuts = vec![-10.0, 10.0];
    if kink.abs() < 10.0 {
        cuts.insert(1, kink);
    }
    let mut out = vec![0.0; n];
    for w in cuts.windows(2) {
        let panels = ((w[1] - w[0]) / 0.5).ceil().max(1.0) as usize;
        for (o, v) in out.iter_mut().zip(crate::quad::integrate_vec(&inner, n, w[0], w[1], panels)) {
            *o += v;
        }
    }
    out
}

/// A residual stream's ReLU: element-wise node `k`, ReLU-like, reads a [`rectified_sum`]
/// a + g(c). Returns (g's node, a, c).
pub(super) fn stream_relu(g: &Graph, k: usize) -> Option<(usize, ValueId, ValueId)> {
    func(&g.nodes[k].op).and_then(|f| f.slope())?;
    let v = g.nodes[k].inputs[0];
    let (_, a, c) = rectified_sum(g, v)?;
    let add = &g.nodes[v.0 - 1];
    let made = if add.inputs[0] == a { add.inputs[1] } else { add.inputs[0] };
    Some((made.0 - 1, a, c))
}

/// A stream ReLU's place in its stage ([`stream_walks`]).
#[derive(Clone, Debug)]
pub(super) struct ChainPos {
    pub(super) walk: std::rc::Rc<super::walk::Walk>,
    /// Its index in the chain (0: the ReLU that starts the stream).
    pub(super) i: usize,
    /// The chain's ReLU before it (the one that made the stream it reads).
    pub(super) prev: Option<usize>,
}

/// The stages of residual streams: chains of ReLUs r_0, r_1, … where r_i (i ≥ 1) reads
/// Add(a_i, r_{i−1}'s output) ([`stream_relu`]). Only ReLUs (a walk's masks are 0 or 1),
/// only chains of two or more, and not where a stream is read by two such ReLUs.
pub(super) struct Chains {
    /// Each chain's ReLUs, and the branch ends a_1, a_2, … of its members after the first.
    chains: Vec<(Vec<usize>, Vec<ValueId>)>,
    /// Node → (chain, index in it).
    pos: HashMap<usize, (usize, usize)>,
}

impl Chains {
    pub(super) fn of(g: &Graph) -> Chains {
        let relu = |k: usize| matches!(g.nodes[k].op, Op::Activation(Activation::Relu));
        let mut next: HashMap<usize, Option<usize>> = HashMap::new(); // g → the one stream ReLU reading it
        let mut branch: HashMap<usize, ValueId> = HashMap::new();
        for k in 0..g.nodes.len() {
            if let Some((gk, a, _)) = stream_relu(g, k).filter(|&(gk, _, _)| relu(k) && relu(gk)) {
                branch.insert(k, a);
                next.entry(gk).and_modify(|n| *n = None).or_insert(Some(k));
            }
        }
        let mut starts: Vec<usize> = next.keys().copied().filter(|s| !branch.contains_key(s)).collect();
        starts.sort_unstable();
        let mut chains = Vec::new();
        let mut pos = HashMap::new();
        for start in starts {
            let mut chain = vec![start];
            while let Some(&Some(n)) = next.get(chain.last().expect("non-empty")) {
                chain.push(n);
            }
            if chain.len() < 2 {
                continue;
            }
            for (i, &k) in chain.iter().enumerate() {
                pos.insert(k, (chains.len(), i));
            }
            let branches = chain[1..].iter().map(|k| branch[k]).collect();
            chains.push((chain, branches));
        }
        Chains { chains, pos }
    }

    /// Chain `c`'s i-th ReLU.
    pub(super) fn node(&self, c: usize, i: usize) -> usize {
        self.chains[c].0[i]
    }

    /// The branch end that chain `c`'s i-th ReLU (i ≥ 1) adds to the stream.
    pub(super) fn branch(&self, c: usize, i: usize) -> ValueId {
        self.chains[c].1[i - 1]
    }

    /// Node `k`'s chain and index in it.
    pub(super) fn at(&self, k: usize) -> Option<(usize, usize)> {
        self.pos.get(&k).copied()
    }

    /// The walk of chain `c`'s first `upto` + 1 ReLUs ([`super::walk::Walk`]), from
    /// `moments` (a value's mean and second moment over its channels and positions): x_0
    /// the input of r_0, the steps the branch ends. `None` where a branch has no spread (a
    /// zero branch passes its stream unchanged: [`passes_unchanged`]).
    pub(super) fn walk(&self, g: &Graph, c: usize, upto: usize, moments: impl Fn(ValueId) -> (f64, f64)) -> Option<super::walk::Walk> {
        let (chain, branches) = &self.chains[c];
        let centered = |v: ValueId| {
            let (m, q) = moments(v);
            (m, q - m * m)
        };
        let steps: Vec<(f64, f64)> = branches[..upto].iter().map(|&a| centered(a)).collect();
        super::walk::Walk::new(centered(g.nodes[chain[0]].inputs[0]), &steps)
    }
}

/// Every chain's walk ([`Chains`]), keyed by the chain's nodes.
pub(super) fn stream_walks(g: &Graph, moments: impl Fn(ValueId) -> (f64, f64)) -> HashMap<usize, ChainPos> {
    let chains = Chains::of(g);
    let mut out = HashMap::new();
    for (c, (chain, _)) in chains.chains.iter().enumerate() {
        let Some(walk) = chains.walk(g, c, chain.len() - 1, &moments) else { continue };
        let walk = std::rc::Rc::new(walk);
        for (i, &k) in chain.iter().enumerate() {
            out.insert(k, ChainPos { walk: walk.clone(), i, prev: i.checked_sub(1).map(|j| chain[j]) });
        }
    }
    out
}

/// κ = E[f'(s)² g'(c)²] / (E[f'(s)²] E[g'(c)²]) for s = μ_a + e + g(c), e ~ N(0, v_a) and
/// c ~ N(μ_c, v_c) independent (offsets counted in the variances): how much more often
/// the stream's ReLU f and the ReLU g that made the stream are open together than apart.
/// For ReLUs, E[f'²g'²] = ∫_{c>0} φ Φ((μ_a + c)/√v_a). 1 where either has no spread.
pub(super) fn mask_overlap(f: Func<'_>, mu_a: f64, v_a: f64, g: Func<'_>, mu_c: f64, v_c: f64) -> f64 {
    let s_c = v_c.max(0.0).sqrt();
    if s_c == 0.0 || v_a <= 0.0 {
        return 1.0;
    }
    let inner = |z: f64, out: &mut [f64]| {
        let c = mu_c + s_c * z;
        let (gv, gd) = g.eval(c);
        let d2 = gauss_moments(f, mu_a + gv, v_a).2;
        let w = super::phi(z);
        out[0] = d2 * gd * gd * w;
        out[1] = d2 * w;
        out[2] = gd * gd * w;
    };
    let m = over_standard_normal(inner, 3, -mu_c / s_c);
    if m[1] > 0.0 && m[2] > 0.0 {
        m[0] / (m[1] * m[2])
    } else {
        1.0
    }
}

/// Which pass asks ([`sum_channel_moments`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Direction {
    Forward,
    Backward,
}

/// Per channel of node `k`'s input: the moments of f for a residual stream plus a branch
/// ([`rectified_sum`]); `None` elsewhere. `Forward` takes channels with offsets too (a's
/// and c's offsets are independent Gaussians, so the marginal of a + g(c) is the one
/// `sum_moments` integrates with the offsets in the variances); `Backward` only channels
/// without (see "A residual stream is not Gaussian" in docs/dag.md: along a stream whose
/// channels carry offsets the masks persist, and the sum's smaller open fraction, taken
/// block by block, under-predicts the gradient more than the Gaussian's).
fn sum_channel_moments(cx: &Cx<'_>, stats: &[Option<Stat>], k: usize, fun: Func<'_>, dir: Direction) -> Option<Vec<Option<[f64; 4]>>> {
    let (g, a, c) = rectified_sum(cx.g, cx.g.nodes[k].inputs[0])?;
    let (sa, sc) = (cx.input_stat(stats, a), cx.input_stat(stats, c));
    let mut memo: HashMap<[u64; 4], [f64; 4]> = HashMap::new();
    Some(
        (0..sa.mean.len())
            .map(|ch| {
                // With offsets only for piecewise-linear f (closed forms inside; a smooth f
                // costs a quadrature per node of the offsets' and takes the Gaussian).
                if (dir == Direction::Backward || fun.slope().is_none()) && (sa.offset[ch] != 0.0 || sc.offset[ch] != 0.0) {
                    return None;
                }
                let key = [sa.mean[ch], sa.second[ch], sc.mean[ch], sc.second[ch]].map(f64::to_bits);
                Some(*memo.entry(key).or_insert_with(|| {
                    let (ma, mc) = (sa.mean[ch], sc.mean[ch]);
                    sum_moments(fun, ma, sa.second[ch] - ma * ma, g, mc, sc.second[ch] - mc * mc)
                }))
            })
            .collect(),
    )
}

/// Per channel of node `k`'s output, where it is f of a residual stream plus a branch
/// ([`rectified_sum`]), f piecewise linear, and either carries an offset: the offset
/// ([`sum_offset`]).
fn sum_channel_offsets(cx: &Cx<'_>, stats: &[Option<Stat>], k: usize, fun: Func<'_>) -> Option<Vec<Option<f64>>> {
    fun.slope()?;
    let (g, a, c) = rectified_sum(cx.g, cx.g.nodes[k].inputs[0])?;
    let (sa, sc) = (cx.input_stat(stats, a), cx.input_stat(stats, c));
    let mut memo: HashMap<[u64; 6], f64> = HashMap::new();
    Some(
        (0..sa.mean.len())
            .map(|ch| {
                let (ma, mc, oa, oc) = (sa.mean[ch], sc.mean[ch], sa.offset[ch], sc.offset[ch]);
                if oa <= 0.0 && oc <= 0.0 {
                    return None;
                }
                let key = [ma, sa.second[ch], oa, mc, sc.second[ch], oc].map(f64::to_bits);
                Some(
                    *memo
                        .entry(key)
                        .or_insert_with(|| sum_offset(fun, ma, sa.second[ch] - ma * ma, oa, g, mc, sc.second[ch] - mc * mc, oc)),
                )
            })
            .collect(),
    )
}

/// An element-wise f of a Gaussian with the value's mean and variance (of a residual
/// stream plus a branch: [`sum_moments`]).
fn elementwise_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let fun = func(&n.op).expect("element-wise");
    let x = f.cx.input_stat(&f.stats, n.inputs[0]);
    if passes_unchanged(f.cx.g, k, |v| is_zero(f.cx.input_stat(&f.stats, v))).is_some() {
        return Ok(x.clone());
    }
    let sums = sum_channel_moments(f.cx, &f.stats, k, fun, Direction::Forward);
    let maxed = max_channel_moments(f.cx, &f.stats, k, fun);
    let mut out = Stat { mean: Vec::with_capacity(x.mean.len()), second: Vec::with_capacity(x.mean.len()), offset: Vec::new() };
    for (ch, (&mu, &s)) in x.mean.iter().zip(&x.second).enumerate() {
        let (m1, m2) = match (sums.as_ref().and_then(|v| v[ch]), maxed.as_ref().and_then(|v| v[ch])) {
            (Some(m), _) => (m[0], m[1]),
            (None, Some(m)) => (m[0], m[1]),
            (None, None) => {
                let r = *f.memo.entry((k, mu.to_bits(), s.to_bits())).or_insert_with(|| gauss_moments(fun, mu, s - mu * mu));
                (r.0, r.1)
            }
        };
        out.mean.push(m1);
        out.second.push(m2);
    }
    let mut walk_offset = None;
    if let Some((c, i)) = f.chains.at(k).filter(|&(_, i)| i > 0) {
        // A stage's stream: the walk's moments and channel offsets (the sum's take c
        // Gaussian, one level of the walk), spread over the channels as the sum's.
        let moments = |v: ValueId| {
            let x = f.cx.input_stat(&f.stats, v);
            let (m, q) = (avg(&x.mean), avg(&x.second));
            (m, q - m * m, avg(&x.offset))
        };
        let (m, v, a) = moments(f.chains.branch(c, i));
        let stream = if i == 1 {
            let (m0, v0, a0) = moments(f.cx.g.nodes[f.chains.node(c, 0)].inputs[0]);
            super::walk::Stream::start(m0, v0, a0)
        } else {
            f.streams.remove(&c)
        };
        let stream = stream.and_then(|mut s| s.step(m, v, a).then_some(s));
        if let Some(s) = stream {
            let (m1, m2, off) = s.moments();
            walk_offset = Some(off);
            let (a1, a2) = (avg(&out.mean), avg(&out.second));
            if a1 > 0.0 && a2 > 0.0 {
                out.mean.iter_mut().for_each(|v| *v *= m1 / a1);
                out.second.iter_mut().for_each(|v| *v *= m2 / a2);
            }
            f.streams.insert(c, s);
        }
    }
    let sum_offsets = if walk_offset.is_none() { sum_channel_offsets(f.cx, &f.stats, k, fun) } else { None };
    let mut memo: HashMap<(u64, u64, u64), f64> = HashMap::new();
    for (c, &a) in x.offset.iter().enumerate() {
        let (mu, s) = (x.mean[c], x.second[c]);
        let m1 = out.mean[c];
        let v = if let Some(v) = walk_offset {
            v
        } else if let Some(v) = sum_offsets.as_ref().and_then(|v| v[c]) {
            v
        } else if a > 0.0 {
            *memo.entry((mu.to_bits(), s.to_bits(), a.to_bits())).or_insert_with(|| offset_through(fun, mu, a, s - mu * mu - a, m1))
        } else {
            0.0
        };
        out.offset.push(v);
    }
    Ok(out)
}

/// E[f'(x)²] per channel of element-wise node `k` (of a residual stream plus a branch:
/// [`sum_moments`]).
fn elementwise_slopes(b: &mut Bwd<'_, '_>, k: usize) -> Vec<f64> {
    let n = &b.cx.g.nodes[k];
    let fun = func(&n.op).expect("element-wise");
    let x = b.cx.input_stat(b.stats, n.inputs[0]);
    // A stage's stream ReLU: its own open fraction is the sum's, offsets and all; how its
    // mask overlaps the stage's others is the walk's (`elementwise_bwd`).
    let pos = b.walks.get(&k).cloned();
    let dir = if pos.is_some() { Direction::Forward } else { Direction::Backward };
    let sums = sum_channel_moments(b.cx, b.stats, k, fun, dir);
    let maxed = max_channel_moments(b.cx, b.stats, k, fun);
    let memo = &mut b.memo;
    let mut slopes: Vec<f64> = x
        .mean
        .iter()
        .zip(&x.second)
        .enumerate()
        .map(|(ch, (&mu, &s))| match (sums.as_ref().and_then(|v| v[ch]), maxed.as_ref().and_then(|v| v[ch])) {
            (Some(m), _) => m[2],
            (None, Some(m)) => m[2],
            (None, None) => *memo.entry((k, mu.to_bits(), s.to_bits())).or_insert_with(|| gauss_moments(fun, mu, s - mu * mu).2),
        })
        .collect();
    if let Some(pos) = pos {
        // The walk's open fraction (the sum's takes c Gaussian), spread over the channels
        // as the sum's.
        let a = avg(&slopes);
        if a > 0.0 {
            let f = pos.walk.open(pos.i) / a;
            slopes.iter_mut().for_each(|p| *p *= f);
        }
    }
    slopes
}

/// × E[f'(x)²].
fn elementwise_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let fun = func(&n.op).expect("element-wise");
    if let Some(g) = passes_unchanged(b.cx.g, k, |v| is_zero(b.cx.input_stat(b.stats, v))) {
        // Where g(c) > 0 only, which g passes whole (see `passes_unchanged`).
        let slopes = elementwise_slopes(b, g);
        let on = b.on_support.remove(&(k + 1)).unwrap_or_else(|| vec![0.0; dz.len()]);
        let contrib: Vec<f64> = dz.iter().zip(&slopes).zip(&on).map(|((d, p), o)| (d - o).max(0.0) * p + o).collect();
        b.send(n.inputs[0], &contrib);
        for (o, c) in b.on_support.entry(n.inputs[0].0).or_insert_with(|| vec![0.0; dz.len()]).iter_mut().zip(&contrib) {
            *o += c;
        }
        if b.track_shared {
            // The part a sample shares passes whole here: g's rule applies the mask's
            // (mean slope)² once, at the chain's root.
            let gs = b.shared_of(k + 1, dz);
            b.send_shared(n.inputs[0], &gs);
        }
        return Ok(());
    }
    let sums = sum_channel_moments(b.cx, b.stats, k, fun, Direction::Backward);
    // The part of the gradient that an identity-on-its-support reader already masked.
    let on = b.on_support.remove(&(k + 1));
    if let (None, Some(pos)) = (&on, b.walks.get(&k).cloned()) {
        // A stage's stream ReLU i: a part that passed d of the stage's masks after it
        // passes with P(open i..i+d)/P(open i+1..i+d), the walk's; the rest with P(open).
        let slopes = elementwise_slopes(b, k);
        let parts = b.along.remove(&(k + 1)).unwrap_or_default();
        let mut fresh = dz.to_vec();
        let mut passed = Vec::with_capacity(parts.len() + 1);
        for (d, part) in parts.iter().enumerate() {
            let f = pos.walk.factor(pos.i, d + 1);
            passed.push(part.iter().zip(&slopes).map(|(q, p)| q * p * f).collect::<Vec<f64>>());
            for (r, q) in fresh.iter_mut().zip(part) {
                *r -= q;
            }
        }
        let fresh: Vec<f64> = fresh.iter().zip(&slopes).map(|(r, p)| r.max(0.0) * p).collect();
        let mut contrib = fresh.clone();
        for part in &passed {
            for (c, q) in contrib.iter_mut().zip(part) {
                *c += q;
            }
        }
        b.send(n.inputs[0], &contrib);
        if let Some(prev) = pos.prev {
            passed.insert(0, fresh);
            b.along.insert(prev + 1, passed);
        }
        if b.track_shared {
            send_shared_through(b, k, fun, sums.as_deref(), dz);
        }
        return Ok(());
    }
    // The part that came from the stream's next ReLU through the identity path: passed
    // with P(open | that ReLU open) = κ P(open).
    let skip = b.via_skip.remove(&(k + 1));
    let slopes = elementwise_slopes(b, k);
    let contrib: Vec<f64> = dz
        .iter()
        .zip(&slopes)
        .enumerate()
        .map(|(ch, (&d, &p))| match (&on, &skip) {
            (Some(on), _) => (d - on[ch]).max(0.0) * p + on[ch],
            (None, Some((part, kappa))) => {
                let part = part[ch].min(d);
                (d - part) * p + part * p * kappa[ch]
            }
            (None, None) => d * p,
        })
        .collect();
    b.send(n.inputs[0], &contrib);
    // Only where the stream before g is not itself a stream ReLU's sum (c a sum of
    // Gaussian values: the first link after a downsample or a stem), where the pairwise
    // κ is exact; along a chain c is mostly positive and κ would be too large.
    if let Some((gk, a, c)) = stream_relu(b.cx.g, k).filter(|&(gk, _, _)| stream_relu(b.cx.g, gk).is_none()) {
        let gfun = func(&b.cx.g.nodes[gk].op).expect("a ReLU-like node");
        let (sa, sc) = (b.cx.input_stat(b.stats, a), b.cx.input_stat(b.stats, c));
        let mut memo: HashMap<[u64; 4], f64> = HashMap::new();
        let kappa: Vec<f64> = (0..contrib.len())
            .map(|ch| {
                let (ma, mc) = (sa.mean[ch], sc.mean[ch]);
                let key = [ma, sa.second[ch], mc, sc.second[ch]].map(f64::to_bits);
                *memo.entry(key).or_insert_with(|| mask_overlap(fun, ma, sa.second[ch] - ma * ma, gfun, mc, sc.second[ch] - mc * mc))
            })
            .collect();
        b.via_skip.insert(gk + 1, (contrib.clone(), kappa));
    }
    if b.track_shared {
        send_shared_through(b, k, fun, sums.as_deref(), dz);
    }
    Ok(())
}

/// The part of element-wise node `k`'s gradient that a sample shares, to its input: ×
/// E_o[(E f'(x) | o)²] per channel, o the channel's offset ([`mean_slope_sq`]; of a
/// stream plus a branch without offsets, (E f')² of [`sum_moments`]).
fn send_shared_through(b: &mut Bwd<'_, '_>, k: usize, fun: Func<'_>, sums: Option<&[Option<[f64; 4]>]>, dz: &[f64]) {
    let n = &b.cx.g.nodes[k];
    let x = b.cx.input_stat(b.stats, n.inputs[0]);
    let gs = b.shared_of(k + 1, dz);
    let mut slopes: HashMap<(u64, u64, u64), f64> = HashMap::new();
    let to_shared: Vec<f64> = gs
        .iter()
        .zip(x.mean.iter().zip(&x.second))
        .enumerate()
        .map(|(ch, (&d, (&mu, &s)))| {
            if d == 0.0 {
                return 0.0;
            }
            match sums.and_then(|v| v[ch]) {
                Some(m) => d * m[3] * m[3],
                None => {
                    let a = x.offset[ch].max(0.0);
                    d * *slopes
                        .entry((mu.to_bits(), s.to_bits(), a.to_bits()))
                        .or_insert_with(|| mean_slope_sq(fun, mu, a, (s - mu * mu - a).max(0.0)))
                }
            }
        })
        .collect();
    b.send_shared(n.inputs[0], &to_shared);
}

/// What [`corr`] reads of a value: channel averages.
fn summary(x: &Stat) -> corr::Summary {
    let c = x.mean.len().max(1) as f64;
    let fluct = (0..x.mean.len()).map(|i| (x.second[i] - x.mean[i] * x.mean[i] - x.offset[i]).max(0.0)).sum::<f64>() / c;
    corr::Summary { mean: avg(&x.mean), fluct, offset: avg(&x.offset), channels: c }
}

/// The kernel (H × W for a global pool) of a pooling node.
pub(super) fn kernel_of(n: &ir::Node, input: Shape) -> [u64; 2] {
    match &n.op {
        Op::Pool(p) => p.kernel,
        _ => {
            let (_, h, w) = input.chw();
            [h, w]
        }
    }
}

/// (E[x²] + (T − 1) E[x]²) / T, the paper's T (kernel area; H·W for a global pool), for
/// independent positions; the fluctuation's part is multiplied by the window's
/// correlation factor ([`corr::window_factor`]) where its members are alike.
fn avg_pool_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let (g, n) = (f.cx.g, &f.cx.g.nodes[k]);
    let [ky, kx] = kernel_of(n, g.shape(n.inputs[0]));
    let alike = f.lags[n.inputs[0].0].map_or(1.0, |l| corr::window_factor(&l, ky, kx));
    let t = window_of(n, g.shape(n.inputs[0])) as f64 / alike;
    let x = f.input(n.inputs[0]);
    // The offset is the same at every position: it survives the average whole; the rest
    // (e, independent per position) is divided by T.
    let second = (0..x.mean.len())
        .map(|c| {
            let (m, s, a) = (x.mean[c], x.second[c], x.offset[c]);
            if a == 0.0 {
                (s + (t - 1.0) * m * m) / t
            } else {
                m * m + a + (s - m * m - a) / t
            }
        })
        .collect();
    Ok(Stat { mean: x.mean.clone(), second, offset: x.offset.clone() })
}

/// Each member: E[δz²] / T².
fn avg_pool_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let (g, n) = (b.cx.g, &b.cx.g.nodes[k]);
    let t = window_of(n, g.shape(n.inputs[0]));
    let tf = (t * t) as f64;
    let contrib: Vec<f64> = dz.iter().map(|d| d / tf).collect();
    b.send(n.inputs[0], &contrib);
    let gs: Vec<f64> = b.shared_of(k + 1, dz).iter().map(|d| d / tf).collect();
    b.send_shared(n.inputs[0], &gs);
    Ok(())
}

/// The function and the Gaussian a max pool takes the maximum of: after a monotone f,
/// f(max u) with u the pre-activation, whoever else reads f's output (a U-Net's skip reads
/// the ReLU its max pool reads); otherwise the input itself, taken as Gaussian. The
/// maximum of rectified values is not the maximum of Gaussians of their mean and
/// variance (37 % too little E[x²]), and the member a pool's gradient goes to is almost
/// always on f's slope (ReLU: 15/16, not 1/2: 1.9× too little gradient). So the pool
/// sends its gradient to u with E[f'(M)² 1(argmax)], past f, whose own backward takes
/// what its other readers send ([`Cx::fused`]: with no other reader, f is skipped).
fn max_source<'g>(cx: &Cx<'g>, k: usize) -> (Func<'g>, ValueId) {
    max_source_of(cx.g, k)
}

/// [`max_source`] on the graph alone.
pub(super) fn max_source_of(g: &Graph, k: usize) -> (Func<'_>, ValueId) {
    let v = g.nodes[k].inputs[0].0;
    if v > 0 {
        if let Some(f) = func(&g.nodes[v - 1].op).filter(|f| f.monotone()) {
            return (f, g.nodes[v - 1].inputs[0]);
        }
    }
    (Func::Act(Activation::Identity), g.nodes[k].inputs[0])
}

fn max_pool_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let (g, n) = (f.cx.g, &f.cx.g.nodes[k]);
    let t = window_of(n, g.shape(n.inputs[0]));
    let (fun, src) = max_source(f.cx, k);
    let u = f.cx.input_stat(&f.stats, src);
    let mut out = Stat { mean: Vec::new(), second: Vec::new(), offset: Vec::new() };
    let mut memo: HashMap<(u64, u64, u64), (f64, f64, f64)> = HashMap::new();
    for c in 0..u.mean.len() {
        let (mu, s, a) = (u.mean[c], u.second[c], u.offset[c]);
        if a == 0.0 {
            let (m1, m2, _) = *f.memo.entry((k, mu.to_bits(), s.to_bits())).or_insert_with(|| max_moments(fun, mu, s - mu * mu, t));
            out.mean.push(m1);
            out.second.push(m2);
            out.offset.push(0.0);
        } else {
            // The window's members share the offset: max f(μ + m + e_k) = f(μ + m + max e_k)
            // for monotone f (iid e otherwise, the named approximation), averaged over m.
            let (m1, m2, a2) =
                *memo.entry((mu.to_bits(), s.to_bits(), a.to_bits())).or_insert_with(|| offset_max(fun, mu, a, s - mu * mu - a, t));
            out.mean.push(m1);
            out.second.push(m2);
            out.offset.push(a2);
        }
    }
    Ok(out)
}

/// Each member: E[δz²] E[f'(M)² 1(argmax)] (the paper's γ after a ReLU), sent to u.
fn max_pool_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let (g, n) = (b.cx.g, &b.cx.g.nodes[k]);
    let t = window_of(n, g.shape(n.inputs[0]));
    let (fun, src) = max_source(b.cx, k);
    let u = b.cx.input_stat(b.stats, src);
    let memo = &mut b.memo;
    let contrib: Vec<f64> = dz
        .iter()
        .zip(u.mean.iter().zip(&u.second))
        .map(|(&d, (&mu, &s))| d * *memo.entry((k, mu.to_bits(), s.to_bits())).or_insert_with(|| max_moments(fun, mu, s - mu * mu, t).2))
        .collect();
    // The shared part: each member's mean weight E[f'(M) 1(argmax)], the share itself for
    // f' ∈ {0, 1} (ReLU, identity).
    let gs = b.shared_of(k + 1, dz);
    let to_shared: Vec<f64> = gs
        .iter()
        .zip(u.mean.iter().zip(&u.second))
        .map(|(&d, (&mu, &s))| d * b.memo.get(&(k, mu.to_bits(), s.to_bits())).copied().unwrap_or(0.0).powi(2))
        .collect();
    b.send(src, &contrib);
    b.send_shared(src, &to_shared);
    Ok(())
}

/// Every element of the vector has its channel's statistics.
fn flatten_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let (g, n) = (f.cx.g, &f.cx.g.nodes[k]);
    let (_, h, w) = g.shape(n.inputs[0]).chw();
    let hw = (h * w) as usize;
    let x = f.input(n.inputs[0]);
    Ok(Stat {
        mean: x.mean.iter().flat_map(|&m| std::iter::repeat_n(m, hw)).collect(),
        second: x.second.iter().flat_map(|&m| std::iter::repeat_n(m, hw)).collect(),
        offset: x.offset.iter().flat_map(|&m| std::iter::repeat_n(m, hw)).collect(),
    })
}

/// A channel's gradient: the mean over its positions' elements.
fn flatten_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let (g, n) = (b.cx.g, &b.cx.g.nodes[k]);
    let (_, h, w) = g.shape(n.inputs[0]).chw();
    let contrib: Vec<f64> = dz.chunks((h * w) as usize).map(avg).collect();
    b.send(n.inputs[0], &contrib);
    Ok(())
}

/// Means add; second moments add, plus 2 μ_a μ_b (independent fluctuations), plus the
/// full cross term for the same value twice.
fn add_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let ins: Vec<&Stat> = n.inputs.iter().map(|&v| f.input(v)).collect();
    let c = ins[0].mean.len();
    let mut out = Stat { mean: vec![0.0; c], second: vec![0.0; c], offset: vec![0.0; c] };
    for ch in 0..c {
        let (mut second, mut offset) = (0.0, 0.0);
        for (i, a) in ins.iter().enumerate() {
            second += a.second[ch];
            offset += a.offset[ch];
            for (j, b) in ins.iter().enumerate().skip(i + 1) {
                let same = n.inputs[i] == n.inputs[j];
                second += 2.0 * if same { a.second[ch] } else { a.mean[ch] * b.mean[ch] };
                offset += if same { 2.0 * a.offset[ch] } else { 0.0 };
            }
        }
        out.mean[ch] = ins.iter().map(|a| a.mean[ch]).sum();
        out.second[ch] = second;
        out.offset[ch] = offset;
    }
    Ok(out)
}

/// Every input receives the whole gradient; a value added m times receives m² δ².
fn add_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    for (i, &v) in n.inputs.iter().enumerate() {
        if n.inputs.iter().position(|&u| u == v) == Some(i) {
            let m = n.inputs.iter().filter(|&&u| u == v).count() as f64;
            let contrib: Vec<f64> = dz.iter().map(|d| d * m * m).collect();
            b.send(v, &contrib);
            let gs: Vec<f64> = b.shared_of(k + 1, dz).iter().map(|d| d * m * m).collect();
            b.send_shared(v, &gs);
        }
    }
    // A part already masked on the support of the one input that is not zero goes there.
    if let Some(on) = b.on_support.remove(&(k + 1)) {
        let mut rest = n.inputs.iter().filter(|&&u| !is_zero(b.cx.input_stat(b.stats, u)));
        if let (Some(&u), None) = (rest.next(), rest.next()) {
            for (o, c) in b.on_support.entry(u.0).or_insert_with(|| vec![0.0; on.len()]).iter_mut().zip(&on) {
                *o += c;
            }
        }
    }
    Ok(())
}

fn concat_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let mut out = Stat { mean: Vec::new(), second: Vec::new(), offset: Vec::new() };
    for &v in &n.inputs {
        let a = f.input(v);
        out.mean.extend(&a.mean);
        out.second.extend(&a.second);
        out.offset.extend(&a.offset);
    }
    Ok(out)
}

fn concat_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let (g, n) = (b.cx.g, &b.cx.g.nodes[k]);
    let mut at = 0;
    let gs = b.shared_of(k + 1, dz);
    for &v in &n.inputs {
        let c = channels(g.shape(v)) as usize;
        b.send(v, &dz[at..at + c]);
        b.send_shared(v, &gs[at..at + c]);
        at += c;
    }
    Ok(())
}

/// A gate: E[(x g)²] = E[x²] E[g²] (g independent of x), μ = μ_x μ_g.
fn mul_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let (x, gate) = (f.input(n.inputs[0]), f.input(n.inputs[1]));
    let c = x.mean.len();
    Ok(Stat {
        mean: (0..c).map(|ch| x.mean[ch] * gate.mean[ch]).collect(),
        second: (0..c).map(|ch| x.second[ch] * gate.second[ch]).collect(),
        // The part shared by every position and sample: (μ + m) of each factor.
        offset: (0..c)
            .map(|ch| {
                let (px, pg) = (x.mean[ch].powi(2) + x.offset[ch], gate.mean[ch].powi(2) + gate.offset[ch]);
                (px * pg - (x.mean[ch] * gate.mean[ch]).powi(2)).max(0.0)
            })
            .collect(),
    })
}

/// δx: E[δ²] E[g²]; δg: Σ over the positions of E[δ²] E[x²].
fn mul_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let (g, n) = (b.cx.g, &b.cx.g.nodes[k]);
    let (x, gate) = (b.input(n.inputs[0]), b.input(n.inputs[1]));
    let hw = if g.shape(n.inputs[1]) == n.output {
        1.0
    } else {
        let (_, h, w) = n.output.chw();
        (h * w) as f64
    };
    let to_x: Vec<f64> = dz.iter().zip(&gate.second).map(|(d, s)| d * s).collect();
    // δg = Σ_p δ_p x_p over a sample's positions: besides Σ_p E[δ²] E[x²], the part of δ a
    // sample shares (G) meets the part of x every position shares (μ² + A), coherently.
    let shared = b.shared_of(k + 1, dz);
    let to_gate: Vec<f64> =
        (0..dz.len()).map(|c| dz[c] * x.second[c] * hw + hw * (hw - 1.0) * shared[c] * (x.mean[c] * x.mean[c] + x.offset[c])).collect();
    // The gate is the same at every position of a sample: the shared part of δx is the
    // shared part of δy times it.
    let gs: Vec<f64> = b.shared_of(k + 1, dz).iter().zip(&gate.second).map(|(d, s)| d * s).collect();
    b.send(n.inputs[0], &to_x);
    b.send(n.inputs[1], &to_gate);
    b.send_shared(n.inputs[0], &gs);
    Ok(())
}

/// Training mode: mean β (0), E[y²] = γ² whatever comes in; inference: × γ/√(1 + ε).
fn batch_norm_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let Op::BatchNorm(bn) = &n.op else { unreachable!("the batchnorm rule") };
    let gamma = f.p.bn_scale[&k];
    if bn.per_position {
        let x = f.input(n.inputs[0]);
        let st = PerPosition::of(&x.mean, &x.second, &x.offset);
        let mut out = Stat { mean: Vec::new(), second: Vec::new(), offset: Vec::new() };
        for c in 0..x.mean.len() {
            let (m2, m1, a) = st.channel(x.mean[c], x.second[c], x.offset[c]);
            out.mean.push(gamma * m1);
            out.second.push(gamma * gamma * m2);
            out.offset.push(gamma * gamma * a);
        }
        return Ok(out);
    }
    if let Some(groups) = bn.groups {
        let x = f.input(n.inputs[0]);
        let mut out = Stat { mean: Vec::new(), second: Vec::new(), offset: Vec::new() };
        for g in group_stats(x, groups) {
            for c in g.range.clone() {
                let (m2, m1, a) = g.channel(c, x.mean[c], x.second[c], x.offset[c]);
                out.mean.push(gamma * m1);
                out.second.push(gamma * gamma * m2);
                out.offset.push(gamma * gamma * a);
            }
        }
        return Ok(out);
    }
    if bn.training {
        return Ok(Stat::uniform(bn.channels, 0.0, gamma * gamma));
    }
    let x = f.input(n.inputs[0]);
    let k2 = gamma * gamma / (1.0 + bn.epsilon);
    Ok(Stat {
        mean: x.mean.iter().map(|m| m * gamma / (1.0 + bn.epsilon).sqrt()).collect(),
        second: x.second.iter().map(|s| s * k2).collect(),
        offset: x.offset.iter().map(|a| a * k2).collect(),
    })
}

/// Training mode: × γ²/Var_B(x) per channel, Var_B the variance the batch statistics
/// see: E[x²] − μ² − offset (the channel's offset is shared by every sample and position,
/// so the batch mean removes it with μ); inference: × γ²/(1 + ε).
fn batch_norm_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let Op::BatchNorm(bn) = &n.op else { unreachable!("the batchnorm rule") };
    let gamma = b.p.bn_scale[&k];
    let (cx, stats) = (b.cx, b.stats);
    let x = cx.input_stat(stats, n.inputs[0]);
    let gs = b.shared_of(k + 1, dz);
    if bn.per_position {
        let st = PerPosition::of(&x.mean, &x.second, &x.offset);
        let y2: Vec<f64> = (0..dz.len()).map(|c| st.channel(x.mean[c], x.second[c], x.offset[c]).0).collect();
        let (out, out_shared) = per_position_backward(st.var, gamma, &y2, dz, &gs);
        b.send(n.inputs[0], &out);
        b.send_shared(n.inputs[0], &out_shared);
        return Ok(());
    }
    if let Some(groups) = bn.groups {
        // δx = (γ/σ)(δy − mean(δy) − x̂ mean(δy x̂)) over each sample's group: the mean
        // removes the shared parts (1/n² of their sum), the second term what lies along
        // x̂ — through the element-wise f that reads the output, E[f'(y) x̂] per channel
        // times its output's shared gradient.
        let reader = norm_reader(b.cx.g, &b.cx.consumers, k).map(|(r, stream)| {
            let f = func(&b.cx.g.nodes[r].op).expect("an element-wise reader");
            (f, b.shared_of(r + 1, &b.grads[r + 1]), stream.map(|s| cx.input_stat(stats, s)))
        });
        let (mut out, mut out_shared) = (Vec::with_capacity(dz.len()), Vec::with_capacity(dz.len()));
        for g in group_stats(x, groups) {
            let k2 = g.gain(gamma);
            let mean_part: f64 = gs[g.range.clone()].iter().sum::<f64>() / (g.n * g.n);
            let mut along = 0.0;
            if let Some((f, gz, stream)) = &reader {
                for c in g.range.clone() {
                    if gz[c] > 0.0 {
                        let (y2, y1, ya) = g.channel(c, x.mean[c], x.second[c], x.offset[c]);
                        let yb = (y2 - y1 * y1 - ya).max(0.0);
                        along += gz[c]
                            * match stream {
                                None => slope_along_sq(*f, gamma, y1, ya, yb),
                                Some(s) => {
                                    let (ms, as_) = (s.mean[c], s.offset[c]);
                                    slope_along_sum_sq(*f, gamma, y1, ya, yb, ms, as_, (s.second[c] - ms * ms - as_).max(0.0))
                                        .unwrap_or(0.0)
                                }
                            };
                    }
                }
                along /= g.n * g.n;
            }
            for c in g.range.clone() {
                let y2 = g.channel(c, x.mean[c], x.second[c], x.offset[c]).0;
                out.push((dz[c] - mean_part - along * y2).max(0.0) * k2);
                out_shared.push((gs[c] * (1.0 - 2.0 / g.n) + mean_part).max(0.0) * k2);
            }
        }
        b.send(n.inputs[0], &out);
        b.send_shared(n.inputs[0], &out_shared);
        return Ok(());
    }
    let k2s: Vec<f64> = if bn.training {
        x.mean
            .iter()
            .zip(&x.second)
            .zip(&x.offset)
            .map(|((m, s), a)| if s - m * m - a > 0.0 { gamma * gamma / (s - m * m - a) } else { 0.0 })
            .collect()
    } else {
        vec![gamma * gamma / (1.0 + bn.epsilon); dz.len()]
    };
    // The batch mean of N samples removes 1/N of the part of the gradient each sample
    // shares across its positions (the samples' parts independent): E[(s_i − s̄)²] =
    // A(1 − 1/N), and the whole gradient loses A/N (`--batch`; none: N → ∞).
    let keep = match (bn.training, b.opts.batch) {
        (true, Some(n)) => 1.0 / n as f64,
        _ => 0.0,
    };
    let (along, inflate) = if bn.training { few_values(b.cx.g, k, b.opts.batch)? } else { (0.0, 1.0) };
    let to_shared: Vec<f64> = gs.iter().zip(&k2s).map(|(d, k2)| d * (1.0 - keep - along) * k2 * inflate).collect();
    b.send_shared(n.inputs[0], &to_shared);
    let contrib: Vec<f64> =
        dz.iter().zip(&gs).zip(&k2s).map(|((d, a), k2)| (d * (1.0 - along) - a * keep).max(0.0) * k2 * inflate).collect();
    b.send(n.inputs[0], &contrib);
    Ok(())
}

/// A batch-statistics BatchNorm over few values per channel (n = N·H·W at `--batch N`;
/// a pooled vector at N = 8 has n = 8): the projection also removes the direction of x̂
/// (1/n of the gradient, the other readers' parts independent of x), and the batch's
/// biased variance σ̂² = σ² χ²_{n−1}/n divides it with E[1/σ̂²] = n/((n − 3) σ²) for
/// Gaussian x. So (1 − 1/n) of what the mean leaves, times n/(n − 3): (n − 2)/(n − 3)
/// in all where every value is a sample's own (1×1 maps). Without `--batch`, n → ∞:
/// (0, 1). n ≤ 3 has no finite expectation: an error naming the node.
pub(super) fn few_values(g: &Graph, k: usize, batch: Option<u64>) -> Result<(f64, f64), AnalysisError> {
    let Some(batch) = batch else { return Ok((0.0, 1.0)) };
    let n = (batch * positions(g.nodes[k].output)) as f64;
    if n <= 3.0 {
        let message = format!(
            "at --batch {batch} this BatchNorm normalizes {n} values per channel (the batch times {} positions): its gradient has no finite second moment below 4; use a larger batch",
            positions(g.nodes[k].output)
        );
        return Err(fail(g, k, message));
    }
    Ok((1.0 / n, n / (n - 3.0)))
}

/// The statistics of a LayerNorm over the channels at each position (n channels): the
/// mean over the channels removes μ̄ and 1/n of every channel's variance V_c = E[x_c²] −
/// μ_c² (nothing is averaged over positions), so the variance it sees is E[s²] = s̄ − μ̄² −
/// V̄/n; each channel keeps its offset less 2/n of it, plus Ā/n.
pub(super) struct PerPosition {
    n: f64,
    mean: f64,
    total: f64,
    offset: f64,
    pub(super) var: f64,
}

impl PerPosition {
    pub(super) fn of(mean: &[f64], second: &[f64], offset: &[f64]) -> PerPosition {
        let n = mean.len() as f64;
        let (m, s, a) = (avg(mean), avg(second), avg(offset));
        let total = avg(&mean.iter().zip(second).map(|(m, s)| s - m * m).collect::<Vec<_>>());
        PerPosition { n, mean: m, total, offset: a, var: s - m * m - total / n }
    }
    /// A channel after the normalization (γ = 1): (E[y²], E[y], offset variance) from its
    /// mean μ, second moment s and offset A.
    pub(super) fn channel(&self, mu: f64, s: f64, a: f64) -> (f64, f64, f64) {
        if self.var <= 0.0 {
            return (0.0, 0.0, 0.0);
        }
        let v = s - mu * mu;
        let second = (s - 2.0 * mu * self.mean - 2.0 * v / self.n + self.mean * self.mean + self.total / self.n).max(0.0);
        let shared = (a * (1.0 - 2.0 / self.n) + self.offset / self.n).max(0.0);
        (second / self.var, (mu - self.mean) / self.var.sqrt(), shared / self.var)
    }
}

/// A LayerNorm over the channels at each position (statistics over n channels, variance
/// `var`): δx = (γ/σ)(δy − m − x̂ a), m = mean_c δy, a = mean_c δy x̂ at one position.
/// With the channels' gradients independent of each other and of x̂ (they come through
/// the weights of the layer that reads the output), E[δx_c²] = γ²/σ² (E[δy_c²](1 − 2/n −
/// 2 y2_c/n) + Σ E[δy²]/n² + y2_c Σ E[δy²] y2/n²), y2_c = E[x̂_c²]. The part a sample shares
/// over its positions loses its channel mean: (1 − 2/n) of its own and 1/n² of their sum.
/// 1/σ² is taken at its mean over the draws of one position's n channels, not at its
/// mean's inverse: s² = var·χ²_{n−1}/(n − 1) for Gaussian channels, so E[1/s²] =
/// (1/var)(n − 1)/(n − 3) (10 % at 24 channels, 2 % at ConvNeXt's 96).
/// Returns (E[δx²], its shared part) per channel.
pub(super) fn per_position_backward(var: f64, gamma: f64, y2: &[f64], dz: &[f64], gs: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = dz.len() as f64;
    let k2 = per_position_gain(var, gamma, n);
    let sum: f64 = dz.iter().sum::<f64>() / (n * n);
    let along: f64 = dz.iter().zip(y2).map(|(d, y)| d * y).sum::<f64>() / (n * n);
    let shared_sum: f64 = gs.iter().sum::<f64>() / (n * n);
    let out = dz.iter().zip(y2).map(|(d, y)| (d * (1.0 - 2.0 / n - 2.0 * y / n) + sum + y * along).max(0.0) * k2).collect();
    let shared = gs.iter().map(|d| (d * (1.0 - 2.0 / n) + shared_sum).max(0.0) * k2).collect();
    (out, shared)
}

/// E[γ²/s²] for a per-position LayerNorm over n channels of variance `var` (see
/// [`per_position_backward`]).
pub(super) fn per_position_gain(var: f64, gamma: f64, n: f64) -> f64 {
    if var > 0.0 && n > 3.0 {
        gamma * gamma / var * (n - 1.0) / (n - 3.0)
    } else if var > 0.0 {
        gamma * gamma / var
    } else {
        0.0
    }
}

/// One group of a normalization with each sample's statistics (GroupNorm, InstanceNorm,
/// LayerNorm): its channels and the variance its statistics see.
pub(super) struct GroupStats {
    pub(super) range: std::ops::Range<usize>,
    /// Channels in the group.
    pub(super) n: f64,
    /// The mean over its channels of their means, offsets.
    pub(super) mean: f64,
    pub(super) offset: f64,
    /// The group's variance in one sample: E[x²] − μ̄² less the part of the channels'
    /// offsets their mean shares (Ā/n; the offsets of different channels independent).
    pub(super) var: f64,
    /// E[1/V] over the draws of the channels' offsets, V the variance one sample's group
    /// statistics see: the gain of the gradient, γ² E[1/V] (not γ²/E[V]). See
    /// [`inverse_group_variance`].
    pub(super) inv_var: f64,
    /// E[1/V] times the part of V that is not the channels' offsets (their values within
    /// a sample): what a channel's own variance keeps after the normalization, over its
    /// value before (1/E[V] if the offsets were constant).
    within_gain: f64,
    /// The same for the channels' offsets and deterministic means: the rest of the unit
    /// second moment the group leaves with, E[S/V]/E[S].
    offset_gain: f64,
    /// Per channel of the group, the mean over positions of the offset's square beyond
    /// E[m̄²] (the map analysis: a conv's border outputs have partial offsets, fixed by
    /// the weights like m̄, so in the draw's part of V; 0 without positions).
    extra: Vec<f64>,
}

impl GroupStats {
    /// A channel of the group after the normalization (γ = 1): (E[y²], E[y], offset
    /// variance), from its mean μ, second moment s and offset A. The group's per-sample
    /// mean removes μ̄ and m̄ = the mean of the channels' offsets; what is left of each
    /// channel's offset stays shared by its positions and samples: A (1 − 2/n) + Ā/n.
    /// The channel's own variance within a sample (s − μ² − A) leaves × `within_gain`,
    /// its offset and the distance of its mean from the group's × `offset_gain`: a group
    /// whose channels' offsets happen to lie close has a small V, so what varies within a
    /// sample is larger after the normalization than its share of E[V] says, and the
    /// offsets smaller (their sum over the group still 1: y is normalized).
    /// `c` is the channel's index in the value.
    pub(super) fn channel(&self, c: usize, mu: f64, s: f64, a: f64) -> (f64, f64, f64) {
        self.at_position(c, mu, s, a, 1.0, a)
    }

    /// [`Self::channel`] at one position o of the map analysis, whose variance is `w`
    /// times the channel's mean over positions: its offset there, E[m(o)²], taken as the
    /// same share of the channel's (a conv's border outputs have fewer real taps for
    /// both), `cross` E[m(o) m̄] (the channel's mean offset: `a` on average over o). The
    /// group's mean removes M = mean_c m̄_c: E[(m(o) − M)²] = E[m(o)²] − 2 E[m(o) m̄]/n +
    /// Ā/n.
    pub(super) fn at_position(&self, c: usize, mu: f64, s: f64, a: f64, w: f64, cross: f64) -> (f64, f64, f64) {
        if self.var <= 0.0 {
            return (0.0, 0.0, 0.0);
        }
        let e = self.extra[c - self.range.start];
        let shared = (a * (1.0 - 2.0 / self.n) + self.offset / self.n).max(0.0);
        let within = (s - mu * mu - (a + e) * w).max(0.0);
        let offsets = (a + e) * w - 2.0 * cross / self.n + self.offset / self.n;
        let spread = ((mu - self.mean).powi(2) + offsets).max(0.0);
        let second = within * self.within_gain + spread * self.offset_gain;
        (second, (mu - self.mean) / self.var.sqrt(), shared * self.offset_gain)
    }

    /// γ² E[1/V]: the factor of the gradient.
    pub(super) fn gain(&self, gamma: f64) -> f64 {
        gamma * gamma * self.inv_var
    }
}

/// E[1/V] for V = c + (A/n) χ²_{n−1}: a group's variance in one sample, c what does not
/// depend on the draw of its channels' offsets (their values within a sample, the spread
/// of their means), (A/n) χ²_{n−1} the spread of n independent offsets of variance A
/// about their mean. By 1/V = ∫₀^∞ e^{−tV} dt and E[e^{−tbχ²_k}] = (1 + 2tb)^{−k/2}:
/// E[1/V] = (1/c) ∫₀^∞ e^{−u} (1 + 2u b/c)^{−k/2} du, integrated in s with u = (eˢ − 1)/R,
/// R = max(2b/c, 1), where the integrand is smooth on every scale. Jensen's gap, E[1/V] −
/// 1/E[V], is largest for few channels a group and offsets that dominate: torchvision's
/// GroupNorm(32) ResNet-18 has 2 channels a group in layer1, whose convs read a stream
/// with a large mean (offsets 0.6–0.8 of E[x²]): E[1/V] E[V] = 1.3–1.7 measured per
/// GroupNorm there, and the gradient's gain through it the same (docs/dag.md).
#[cfg(test)]
pub(super) fn inverse_group_variance(c: f64, a: f64, n: f64) -> f64 {
    inverse_variance(c, &[(a / n, n - 1.0)])
}

/// E[1/V] for V = c + Σ_i λ_i χ²_{k_i} (`terms`: (λ_i, k_i), independent), by the same
/// integral: E[e^{−tV}] = e^{−tc} Π_i (1 + 2tλ_i)^{−k_i/2}.
pub(super) fn inverse_variance(c: f64, terms: &[(f64, f64)]) -> f64 {
    let terms: Vec<(f64, f64)> = terms.iter().copied().filter(|&(l, k)| l > 0.0 && k > 0.0).collect();
    if terms.is_empty() {
        return if c > 0.0 { 1.0 / c } else { 0.0 };
    }
    if c <= 0.0 {
        // The offsets alone: E[1/(b χ²_k)] = 1/(b (k − 2)) for k > 2, taken with the
        // terms' total mean and degrees of freedom; fewer is the degenerate case, 1/E[V].
        let (mean, k) = terms.iter().fold((0.0, 0.0), |(m, d), &(l, k)| (m + l * k, d + k));
        return if k > 2.0 { k / (mean * (k - 2.0)) } else { 1.0 / mean };
    }
    let big = terms.iter().map(|&(l, _)| 2.0 * l / c).fold(1.0, f64::max);
    // e^{−u} < 1e-17 past u = 40.
    let top = (1.0 + 40.0 * big).ln();
    let f = |s: f64| {
        let u = (s.exp() - 1.0) / big;
        let prod: f64 = terms.iter().map(|&(l, k)| (1.0 + 2.0 * u * l / c).powf(-0.5 * k)).product();
        (-u).exp() * prod * s.exp() / big
    };
    integrate_width(f, 0.0, top, 0.25) / c
}

/// How a conv's offsets fall on its output positions, for the variance one sample's
/// group sees. Tap t's offset g_t = Σ_c w_{c,t} μ_c is one Gaussian per (output channel,
/// tap), of the same variance v at every tap (the input's channel statistics taken flat);
/// position o's offset is m(o) = Σ_{t real at o} g_t. So a channel's mean square offset
/// over the positions is gᵀBg, B_{tt'} the fraction of positions where t and t' are both
/// real, and its mean over positions m̄ = fᵀg (f_t = B_tt). A group of n channels sees
/// (1/n) Σ_c g_cᵀBg_c − ((1/n) Σ_c fᵀg_c)²: along the n − 1 directions orthogonal to the
/// channels' mean, v/n times the eigenvalues of B; along the mean, v/n those of B − ffᵀ.
/// A 1×1 conv (B = ffᵀ = 1) gives back (v/n) χ²_{n−1}; a 3×3 conv's borders add
/// eigenvalues, each a degree of freedom of its own (few, and so a Jensen gap).
#[derive(Clone, Debug)]
pub(super) struct OffsetShape {
    pub(super) own: Vec<f64>,
    pub(super) mean: Vec<f64>,
}

impl OffsetShape {
    /// Of a conv with this geometry.
    pub(super) fn of(geo: &crate::index::ConvGeometry) -> OffsetShape {
        let pairs = |a: &crate::index::Axis| {
            let k = a.kernel as usize;
            let mut b = vec![vec![0.0; k]; k];
            for o in 0..a.output {
                let taps: Vec<usize> = a.taps(o).map(|t| t as usize).collect();
                for &t in &taps {
                    for &u in &taps {
                        b[t][u] += 1.0 / a.output as f64;
                    }
                }
            }
            b
        };
        let (bh, bw) = (pairs(&geo.h), pairs(&geo.w));
        let (kh, kw) = (bh.len(), bw.len());
        let n = kh * kw;
        let b: Vec<Vec<f64>> = (0..n).map(|t| (0..n).map(|u| bh[t / kw][u / kw] * bw[t % kw][u % kw]).collect()).collect();
        let f: Vec<f64> = (0..n).map(|t| b[t][t]).collect();
        let centered: Vec<Vec<f64>> = (0..n).map(|t| (0..n).map(|u| b[t][u] - f[t] * f[u]).collect()).collect();
        OffsetShape { own: symmetric_eigenvalues(b), mean: symmetric_eigenvalues(centered) }
    }

    /// The terms (λ, degrees of freedom) of a group of n channels whose offsets' part of
    /// V has mean `total`.
    fn terms(&self, n: f64, total: f64) -> Vec<(f64, f64)> {
        let norm = (n - 1.0) * self.own.iter().sum::<f64>() + self.mean.iter().sum::<f64>();
        if norm <= 0.0 || total <= 0.0 {
            return Vec::new();
        }
        let own = self.own.iter().map(|l| (total * l / norm, n - 1.0));
        own.chain(self.mean.iter().map(|l| (total * l / norm, 1.0))).filter(|&(l, _)| l > 1e-12 * total).collect()
    }
}

/// The eigenvalues of a small symmetric matrix (cyclic Jacobi rotations).
fn symmetric_eigenvalues(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for _ in 0..64 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i][j] * a[i][j]).sum();
        let diag: f64 = (0..n).map(|i| a[i][i] * a[i][i]).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (row_p, row_q) = (a[p].clone(), a[q].clone());
                for (k, (apk, aqk)) in row_p.into_iter().zip(row_q).enumerate() {
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i][i].max(0.0)).collect()
}

/// The groups of a per-sample normalization over a value with these statistics.
/// **Approximation**: the statistics of one sample are taken as their expectations
/// (exact as the group's channels × positions grow; an InstanceNorm of a few positions
/// fluctuates).
///
/// `extra` (the map analysis; empty: none) is per channel the mean over positions of
/// E[m(o)²] − E[m̄²]: a conv's border outputs read fewer real taps, so their offsets are
/// partial sums, fixed by the weights like m̄, with degrees of freedom of their own
/// (`shape`, [`OffsetShape`]). They belong in the part of V that the weights' draw sets;
/// counted with what varies within a sample, the map analysis under-predicted E[1/V] by
/// 2–3 % a GroupNorm after a 3×3 conv at ResNet-50's 14×14 and 7×7 maps (torch, 16
/// draws: E[1/V]·E[V] 1.156 at layer3.5.bn2; the paper analysis 1.148; the map analysis
/// 1.115 before, 1.127 with the shape).
pub(super) fn group_stats_of(
    mean: &[f64],
    second: &[f64],
    offset: &[f64],
    extra: &[f64],
    shape: Option<&OffsetShape>,
    groups: u64,
) -> Vec<GroupStats> {
    let per = mean.len() / groups.max(1) as usize;
    (0..groups as usize)
        .map(|g| {
            let range = g * per..(g + 1) * per;
            let (m, s, a) = (avg(&mean[range.clone()]), avg(&second[range.clone()]), avg(&offset[range.clone()]));
            let n = per as f64;
            let extra: Vec<f64> = if extra.is_empty() { vec![0.0; per] } else { extra[range.clone()].to_vec() };
            let e = avg(&extra);
            let var = s - m * m - a / n;
            // The spread of the channels' means about the group's, and what varies within
            // a sample (neither depends on the offsets' draw).
            let squares = avg(&mean[range.clone()].iter().map(|u| u * u).collect::<Vec<_>>());
            let (means, within) = ((squares - m * m).max(0.0), (s - squares - a - e).max(0.0));
            // The offsets' part of V has the mean a + e − a/n: (a/n) χ²_{n−1} without
            // positions, spread by the conv's [`OffsetShape`] with them.
            let terms = match shape {
                Some(sh) => sh.terms(n, var - within - means),
                None => vec![(a / n, n - 1.0)],
            };
            let inv_var = if var > 0.0 { inverse_variance(within + means, &terms) } else { 0.0 };
            let spread = var - within;
            let within_gain = inv_var;
            let offset_gain = if spread > 0.0 { (1.0 - within * inv_var).max(0.0) / spread } else { 0.0 };
            GroupStats { range, n, mean: m, offset: a, var, inv_var, within_gain, offset_gain, extra }
        })
        .collect()
}

fn group_stats(x: &Stat, groups: u64) -> Vec<GroupStats> {
    group_stats_of(&x.mean, &x.second, &x.offset, &[], None, groups)
}

fn slice_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let Op::ChannelSlice { start, end } = n.op else { unreachable!("the slice rule") };
    let x = f.input(n.inputs[0]);
    let (s, e) = (start as usize, end as usize);
    Ok(Stat { mean: x.mean[s..e].to_vec(), second: x.second[s..e].to_vec(), offset: x.offset[s..e].to_vec() })
}

fn slice_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let Op::ChannelSlice { start, .. } = n.op else { unreachable!("the slice rule") };
    let gs = b.shared_of(k + 1, dz);
    for (i, d) in dz.iter().enumerate() {
        b.grads[n.inputs[0].0][start as usize + i] += d;
        b.shared[n.inputs[0].0][start as usize + i] += gs[i];
    }
    Ok(())
}

fn shuffle_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let Op::Shuffle { groups } = n.op else { unreachable!("the shuffle rule") };
    let perm = shuffle_source(channels(n.output), groups);
    let x = f.input(n.inputs[0]);
    Ok(Stat {
        mean: perm.iter().map(|&i| x.mean[i]).collect(),
        second: perm.iter().map(|&i| x.second[i]).collect(),
        offset: perm.iter().map(|&i| x.offset[i]).collect(),
    })
}

fn shuffle_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let Op::Shuffle { groups } = n.op else { unreachable!("the shuffle rule") };
    let gs = b.shared_of(k + 1, dz);
    for (j, &i) in shuffle_source(channels(n.output), groups).iter().enumerate() {
        b.grads[n.inputs[0].0][i] += dz[j];
        b.shared[n.inputs[0].0][i] += gs[j];
    }
    Ok(())
}

/// Nearest upsampling copies each input (linear taken as nearest: named in docs/dag.md).
fn resize_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    Ok(f.input(n.inputs[0]).clone())
}

/// Each input receives its r copies' gradients: × r.
fn resize_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let Op::Resize { scale, .. } = n.op else { unreachable!("the resize rule") };
    let r = (scale[0] * scale[1]) as f64;
    let contrib: Vec<f64> = dz.iter().map(|d| d * r).collect();
    b.send(n.inputs[0], &contrib);
    let gs: Vec<f64> = b.shared_of(k + 1, dz).iter().map(|d| d * r * r).collect();
    b.send_shared(n.inputs[0], &gs);
    Ok(())
}

/// Per axis of a resampling node: (mean over outputs of Σ_i a_i², mean over inputs of
/// Σ_o a_oi², mean over inputs of (Σ_o a_oi)²), a the interpolation weights.
pub(super) fn resample_sums(g: &Graph, k: usize) -> [(f64, f64, f64); 2] {
    let n = &g.nodes[k];
    let Op::Resample(r) = &n.op else { unreachable!("the resample rule") };
    let (_, h, w) = g.shape(n.inputs[0]).chw();
    let (_, oh, ow) = n.output.chw();
    let axis = |a: usize, input: u64, output: u64| {
        let wts = r.weights(a, input, output);
        let fwd = wts.iter().map(|row| row.iter().map(|(_, v)| v * v).sum::<f64>()).sum::<f64>() / output as f64;
        let (mut sq, mut col) = (vec![0.0; input as usize], vec![0.0; input as usize]);
        for row in &wts {
            for &(i, v) in row {
                sq[i] += v * v;
                col[i] += v;
            }
        }
        let n = input as f64;
        (fwd, sq.iter().sum::<f64>() / n, col.iter().map(|c| c * c).sum::<f64>() / n)
    };
    [axis(0, h, oh), axis(1, w, ow)]
}

/// Resampling, forward: each output is Σ_i a_i x_i with Σ a_i = 1, so the mean and the
/// offset pass whole, and the rest, independent per position, × Σ a_i² (docs/dag.md,
/// "Resize to any size": linear interpolation mixes neighbours, an average's variance).
fn resample_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let [h, w] = resample_sums(f.cx.g, k);
    let q = h.0 * w.0;
    let x = f.input(n.inputs[0]).clone();
    let second = (0..x.second.len())
        .map(|c| x.mean[c] * x.mean[c] + x.offset[c] + (x.second[c] - x.mean[c] * x.mean[c] - x.offset[c]) * q)
        .collect();
    Ok(Stat { second, ..x })
}

/// Resampling, backward: δx_i = Σ_o a_oi δy_o; the gradient's part a sample shares (G)
/// adds coherently, (Σ_o a_oi)² G, the rest Σ_o a_oi² (E[δy²] − G); the shared part
/// itself × (P_out/P_in)², the mean column sum squared.
fn resample_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let [h, w] = resample_sums(b.cx.g, k);
    let (sq, col) = (h.1 * w.1, h.2 * w.2);
    let gs = b.shared_of(k + 1, dz);
    let contrib: Vec<f64> = dz.iter().zip(&gs).map(|(d, g)| (d - g) * sq + g * col).collect();
    b.send(n.inputs[0], &contrib);
    let ratio = positions(n.output) as f64 / positions(b.cx.g.shape(n.inputs[0])) as f64;
    let to_shared: Vec<f64> = gs.iter().map(|g| g * ratio * ratio).collect();
    b.send_shared(n.inputs[0], &to_shared);
    Ok(())
}

/// The transpose (A, 1, B) → (B, 1, A), forward: output channel b holds position b of
/// every input channel, so (uniform positions) each output channel has the input
/// channels' mean statistics; the part shared by all its positions and samples is the
/// mean of the A channels' offsets, 1/A of their mean (independent channels). Exact in
/// the map analysis, which keeps every position.
fn swap_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let x = f.input(n.inputs[0]);
    let b = channels(n.output) as usize;
    let a = x.second.len() as f64;
    let (mu, s, off) = (avg(&x.mean), avg(&x.second), if a > 1.0 { avg(&x.offset) / a } else { x.offset[0] });
    Ok(Stat { mean: vec![mu; b], second: vec![s; b], offset: vec![off; b] })
}

/// The transpose, backward: input channel a's positions b take output channels b's
/// gradients (their mean, uniform positions); the part a sample shares over the B
/// positions is 1/B of their shared parts' mean (independent channels).
fn swap_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let a = channels(b.cx.g.shape(n.inputs[0])) as usize;
    let gs = b.shared_of(k + 1, dz);
    let width = dz.len() as f64;
    b.send(n.inputs[0], &vec![avg(dz); a]);
    b.send_shared(n.inputs[0], &vec![avg(&gs) / width; a]);
    Ok(())
}

/// E[a_p²] of a softmax over P positions of logits with variance v (the part not shared
/// by the positions: their offset and mean cancel in a softmax): e^v / P², the
/// log-normal moments (a_p ≈ e^{l_p} / (P E e^l) for large P), at most E[a_p] = 1/P.
pub(super) fn softmax_square(v: f64, p: f64) -> f64 {
    (v.max(0.0).exp() / (p * p)).min(1.0 / p)
}

/// Softmax over positions, forward: mean 1/P, E[a²] = e^v/P² per channel (docs/dag.md,
/// "Global-context attention").
fn softmax_positions_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let x = f.input(n.inputs[0]);
    let p = positions(n.output) as f64;
    let second = (0..x.second.len()).map(|c| softmax_square(x.second[c] - x.mean[c] * x.mean[c] - x.offset[c], p)).collect::<Vec<_>>();
    Ok(Stat { mean: vec![1.0 / p; second.len()], offset: vec![0.0; second.len()], second })
}

/// Softmax over positions, backward: δl_p = a_p (δa_p − Σ_q a_q δa_q): the part of δa
/// every position shares (G) cancels, E[δl²] = E[a²] (E[δa²] − G); and Σ_p δl_p = 0,
/// so no part of δl is shared.
fn softmax_positions_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let a2 = b.input(ValueId(k + 1)).second.clone();
    let gs = b.shared_of(k + 1, dz);
    let contrib: Vec<f64> = (0..dz.len()).map(|c| a2[c] * (dz[c] - gs[c]).max(0.0)).collect();
    b.send(n.inputs[0], &contrib);
    Ok(())
}

/// Attention pool ctx_c = Σ_p a_p x_c,p, forward (a independent of x): mean μ_c (Σ a = 1),
/// E[ctx²] = μ² + A + B Σ_p E[a_p²], B = E[x²] − μ² − A; the offset A whole.
fn attention_pool_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let (x, a) = (f.input(n.inputs[0]), f.input(n.inputs[1]));
    let s2 = a.second[0] * positions(f.cx.g.shape(n.inputs[0])) as f64;
    let second = (0..x.second.len())
        .map(|c| x.mean[c] * x.mean[c] + x.offset[c] + (x.second[c] - x.mean[c] * x.mean[c] - x.offset[c]).max(0.0) * s2)
        .collect();
    Ok(Stat { mean: x.mean.clone(), second, offset: x.offset.clone() })
}

/// Attention pool, backward: δx_c,p = a_p δctx_c (E[a²] δctx², its shared part δctx²/P²);
/// δa_p = Σ_c δctx_c x_c,p (Σ_c δctx² E[x²], of which Σ_c δctx² (μ² + A) every position
/// shares).
fn attention_pool_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let (x, a) = (b.input(n.inputs[0]).clone(), b.input(n.inputs[1]).clone());
    let p = positions(b.cx.g.shape(n.inputs[0])) as f64;
    let to_x: Vec<f64> = dz.iter().map(|d| d * a.second[0]).collect();
    let to_x_shared: Vec<f64> = dz.iter().map(|d| d / (p * p)).collect();
    let to_a: f64 = (0..dz.len()).map(|c| dz[c] * x.second[c]).sum();
    let to_a_shared: f64 = (0..dz.len()).map(|c| dz[c] * (x.mean[c] * x.mean[c] + x.offset[c])).sum();
    b.send(n.inputs[0], &to_x);
    b.send_shared(n.inputs[0], &to_x_shared);
    b.send(n.inputs[1], &[to_a]);
    b.send_shared(n.inputs[1], &[to_a_shared]);
    Ok(())
}

/// x + t, t (C, 1, 1) broadcast: means add, E[(x + t)²] = E[x²] + E[t²] + 2 μ_x μ_t (t
/// independent of x's fluctuations), offsets add. **Approximation**: t is one number per
/// sample and channel, the same at every position, which the forward statistics (the
/// part shared by positions and samples, and the rest independent per position) do not
/// hold: an average over positions downstream keeps t's variance whole.
fn add_broadcast_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let (x, t) = (f.input(n.inputs[0]), f.input(n.inputs[1]));
    let c = x.mean.len();
    Ok(Stat {
        mean: (0..c).map(|i| x.mean[i] + t.mean[i]).collect(),
        second: (0..c).map(|i| x.second[i] + t.second[i] + 2.0 * x.mean[i] * t.mean[i]).collect(),
        offset: (0..c).map(|i| x.offset[i] + t.offset[i]).collect(),
    })
}

/// x + t backward: x takes δ; t the sum over a sample's P positions, P E[δ²] + P(P − 1) G
/// (G the part every position shares, adding coherently).
fn add_broadcast_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let p = positions(n.output) as f64;
    let gs = b.shared_of(k + 1, dz);
    let to_t: Vec<f64> = dz.iter().zip(&gs).map(|(d, g)| p * d + p * (p - 1.0) * g).collect();
    b.send(n.inputs[0], dz);
    b.send_shared(n.inputs[0], &gs);
    b.send(n.inputs[1], &to_t);
    Ok(())
}

/// Split attention's softmax across a radix of 2: output channel j reads input `me` and
/// its partner `other`, a = σ(z_me − z_other). Per output channel: (me, other). An error
/// (naming node `k`) for another radix, or channels that are not groups · radix · n: the
/// importer builds neither, a hand-built graph can.
pub(super) fn radix_pairs(g: &Graph, k: usize, c: u64, radix: u64, groups: u64) -> Result<Vec<(usize, usize)>, AnalysisError> {
    if radix != 2 {
        return Err(fail(g, k, format!("a softmax across a radix of {radix}: only radix 2 (a sigmoid of the difference) has a rule")));
    }
    if groups == 0 || !c.is_multiple_of(radix * groups) {
        return Err(fail(g, k, format!("{c} channels are not {groups} groups of radix {radix}")));
    }
    let rest = c / (radix * groups);
    Ok((0..c)
        .map(|j| {
            let (r, g, k) = (j / (groups * rest), j / rest % groups, j % rest);
            let input = |r: u64| ((g * radix + r) * rest + k) as usize;
            (input(r), input(1 - r))
        })
        .collect())
}

/// Per output channel of a radix-2 softmax, from the inputs' (mean, second, offset):
/// (E a, E a², the offset of a, E σ'(d)²), d = z_me − z_other ~ N(μ_me − μ_other, v_me + v_other)
/// (the two channels' offsets differ per draw: they are part of d's variance).
pub(super) fn radix_moments(x: &[(f64, f64, f64)], pairs: &[(usize, usize)]) -> Vec<(f64, f64, f64, f64)> {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    // σ is smooth: a coarse rule over ±8 standard deviations is exact to ~1e-9.
    let moment = |g: &dyn Fn(f64) -> f64, mu: f64, v: f64| {
        let s = v.max(0.0).sqrt();
        integrate_width(|z| g(mu + s * z) * super::phi(z), -8.0, 8.0, 0.25)
    };
    pairs
        .iter()
        .map(|&(me, other)| {
            let ((m1, s1, a1), (m2, s2, a2)) = (x[me], x[other]);
            let (mu, a, b) = (m1 - m2, a1 + a2, (s1 - m1 * m1 - a1).max(0.0) + (s2 - m2 * m2 - a2).max(0.0));
            let ea = moment(&sig, mu, a + b);
            let ea2 = moment(&|x| sig(x).powi(2), mu, a + b);
            let ed2 = moment(&|x| (sig(x) * (1.0 - sig(x))).powi(2), mu, a + b);
            // The offset Var_m E_e σ(μ + m + e), with the probit approximation
            // E_e σ(x + e) ≈ σ(x / √(1 + π b / 8)) inside (one quadrature, not two: the
            // backward plan's rounds call this often).
            let k = 1.0 / (1.0 + std::f64::consts::PI * b / 8.0).sqrt();
            let sa = a.sqrt();
            let h2 = integrate_width(|z| sig((mu + sa * z) * k).powi(2) * super::phi(z), -8.0, 8.0, 0.25);
            (ea, ea2, (h2 - ea * ea).max(0.0), ed2)
        })
        .collect()
}

/// Split attention's softmax across the radix, forward (docs/dag.md).
fn radix_softmax_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let Op::RadixSoftmax { radix, groups } = n.op else { unreachable!("the radix softmax rule") };
    let x = f.input(n.inputs[0]);
    let xs: Vec<(f64, f64, f64)> = (0..x.mean.len()).map(|c| (x.mean[c], x.second[c], x.offset[c])).collect();
    let m = radix_moments(&xs, &radix_pairs(f.cx.g, k, x.mean.len() as u64, radix, groups)?);
    Ok(Stat { mean: m.iter().map(|v| v.0).collect(), second: m.iter().map(|v| v.1).collect(), offset: m.iter().map(|v| v.2).collect() })
}

/// Backward: δz_me = σ'(d)(δa_me − δa_other) for output me, and −that for its partner:
/// input i receives E σ'(d)² (E[δa_me²] + E[δa_other²]) (the two gradients independent).
fn radix_softmax_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    let Op::RadixSoftmax { radix, groups } = n.op else { unreachable!("the radix softmax rule") };
    let x = b.input(n.inputs[0]);
    let xs: Vec<(f64, f64, f64)> = (0..x.mean.len()).map(|c| (x.mean[c], x.second[c], x.offset[c])).collect();
    let pairs = radix_pairs(b.cx.g, k, x.mean.len() as u64, radix, groups)?;
    let m = radix_moments(&xs, &pairs);
    // Output j holds (me, other); the input `me` of output j gets σ'(d_j)² (δa_j² + δa_partner²).
    let mut contrib = vec![0.0; dz.len()];
    let out_of: HashMap<usize, usize> = pairs.iter().enumerate().map(|(j, &(me, _))| (me, j)).collect();
    for (j, &(me, other)) in pairs.iter().enumerate() {
        let partner = out_of[&other];
        contrib[me] = m[j].3 * (dz[j] + dz[partner]);
    }
    b.send(n.inputs[0], &contrib);
    Ok(())
}

/// The fraction of a dilated value's positions that hold its input (the rest are 0).
fn dilate_fraction(g: &Graph, k: usize) -> f64 {
    let n = &g.nodes[k];
    let (_, h, w) = g.shape(n.inputs[0]).chw();
    let (_, oh, ow) = n.output.chw();
    (h * w) as f64 / (oh * ow) as f64
}

/// Zeros between the positions: the mean and second moment over the positions scale by
/// the fraction q of them that hold input, a channel's offset (its mean over positions)
/// by q². The conv that reads it sees them right on average over its outputs.
fn dilate_fwd(f: &mut Fwd<'_, '_>, k: usize) -> Result<Stat, AnalysisError> {
    let n = &f.cx.g.nodes[k];
    let q = dilate_fraction(f.cx.g, k);
    let x = f.input(n.inputs[0]);
    Ok(Stat {
        mean: x.mean.iter().map(|m| m * q).collect(),
        second: x.second.iter().map(|s| s * q).collect(),
        offset: x.offset.iter().map(|a| a * q * q).collect(),
    })
}

/// Each input position takes the gradient of the position it went to: the mean over the
/// positions of E[δ²] (taken as uniform), and its shared part, unchanged.
fn dilate_bwd(b: &mut Bwd<'_, '_>, k: usize, dz: &[f64]) -> Result<(), AnalysisError> {
    let n = &b.cx.g.nodes[k];
    b.send(n.inputs[0], dz);
    let gs = b.shared_of(k + 1, dz);
    b.send_shared(n.inputs[0], &gs);
    Ok(())
}

/// For each Add, which inputs are residual branches: those with strictly the most
/// weight layers since the inputs' latest common ancestor (the identity path and a
/// 1×1 downsample conv have fewer). An Add whose inputs tie has no branch.
fn residual_branches(g: &Graph, k: usize) -> Vec<bool> {
    let n = &g.nodes[k];
    let values = g.nodes.len() + 1;
    let ancestors = |v: ValueId| -> Vec<bool> {
        let mut a = vec![false; values];
        a[v.0] = true;
        for u in (1..=v.0).rev() {
            if a[u] {
                for i in &g.nodes[u - 1].inputs {
                    a[i.0] = true;
                }
            }
        }
        a
    };
    let sets: Vec<Vec<bool>> = n.inputs.iter().map(|&v| ancestors(v)).collect();
    let Some(fork) = (0..values).rev().find(|&u| sets.iter().all(|s| s[u])) else { return vec![false; n.inputs.len()] };
    // Longest count of weight nodes from the fork to each value.
    let mut depth: Vec<Option<u64>> = vec![None; values];
    depth[fork] = Some(0);
    for u in fork + 1..values {
        let node = &g.nodes[u - 1];
        let best = node.inputs.iter().filter_map(|i| depth[i.0]).max();
        depth[u] = best.map(|d| d + matches!(node.op, Op::Conv(_) | Op::Linear(_)) as u64);
    }
    let d: Vec<u64> = n.inputs.iter().map(|v| depth[v.0].unwrap_or(0)).collect();
    let max = d.iter().copied().max().unwrap_or(0);
    if max == 0 || d.iter().filter(|&&x| x == max).count() > 1 {
        return vec![false; n.inputs.len()];
    }
    d.iter().map(|&x| x == max).collect()
}

/// Walks back from a branch's end through single-input non-weight nodes to its last
/// weight node; returns it and the last BatchNorm met on the way (nearest the weight).
fn branch_end(g: &Graph, v: ValueId) -> (Option<usize>, Option<usize>) {
    let mut bn = None;
    let mut u = v.0;
    while u > 0 {
        let node = &g.nodes[u - 1];
        match node.op {
            Op::Conv(_) | Op::Linear(_) => return (Some(u - 1), bn),
            Op::BatchNorm(ref b) if !b.scale.is_empty() => bn = Some(u - 1),
            Op::BatchNorm(_) => {}
            Op::Activation(_) | Op::Elementwise(_) | Op::Resize { .. } | Op::Resample(_) | Op::Shuffle { .. } | Op::Flatten => {}
            _ => return (None, bn),
        }
        if node.inputs.len() != 1 {
            return (None, bn);
        }
        u = node.inputs[0].0;
    }
    (None, bn)
}

/// Backward mode stops when no σ² moved by more than this, relative, in a round.
pub const FIXED_POINT_TOLERANCE: f64 = 1e-12;
/// … or fails after this many rounds.
const MAX_ROUNDS: usize = 200;

/// The largest relative change of σ² between two rounds, and the node it is at.
fn largest_change(before: &HashMap<usize, f64>, after: &HashMap<usize, f64>) -> (f64, usize) {
    let mut worst = (0.0, 0);
    for (&k, &a) in after {
        let b = before.get(&k).copied().unwrap_or(0.0);
        let rel = if a == b { 0.0 } else { (a - b).abs() / a.abs().max(b.abs()) };
        if rel > worst.0 || (rel == worst.0 && k < worst.1) {
            worst = (rel, k);
        }
    }
    worst
}

/// The batch-statistics normalization that makes weight node `k` scale-invariant: every
/// path from its output reaches a training-mode BatchNorm through ops that keep each
/// channel's scale (positively homogeneous element-wise functions — ReLU, leaky ReLU,
/// identity —, pooling, resize, Concat, channel slices and shuffles), so that multiplying
/// the weight by c > 0 changes nothing after the normalization. Returns the first one.
fn normalized_by(g: &Graph, consumers: &[Vec<usize>], k: usize) -> Option<usize> {
    let mut stack = vec![k + 1];
    let mut seen = HashSet::new();
    let mut first = None;
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if consumers[v].is_empty() {
            return None; // the value reaches the output unnormalized
        }
        for &c in &consumers[v] {
            let n = &g.nodes[c];
            match &n.op {
                Op::BatchNorm(bn) if bn.own_statistics() => {
                    first = Some(first.map_or(c, |f: usize| f.min(c)));
                }
                op if keeps_scale(op) => stack.push(c + 1),
                _ => return None,
            }
        }
    }
    first
}

/// Ops that keep each channel's scale (x → c x gives c f(x)): what a normalization's
/// reach follows from a weight layer's output.
fn keeps_scale(op: &Op) -> bool {
    match op {
        Op::Activation(a) => super::piecewise_linear_slope(*a).is_some(),
        Op::Pool(_)
        | Op::GlobalPool(_)
        | Op::Resize { .. }
        | Op::Resample(_)
        | Op::SwapChannelsWidth
        | Op::Dilate { .. }
        | Op::Concat
        | Op::ChannelSlice { .. }
        | Op::Shuffle { .. } => true,
        _ => false,
    }
}

/// Whether some path from weight node `k`'s output reaches a normalization with its own
/// statistics through ops that keep each channel's scale (as [`normalized_by`] follows).
fn partly_normalized(g: &Graph, consumers: &[Vec<usize>], k: usize) -> bool {
    let mut stack = vec![k + 1];
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        for &c in &consumers[v] {
            match &g.nodes[c].op {
                Op::BatchNorm(bn) if bn.own_statistics() => return true,
                op if keeps_scale(op) => stack.push(c + 1),
                _ => {}
            }
        }
    }
    false
}

/// The weight layers whose σ² no gradient target can set: those a normalization with its
/// own statistics reads ([`normalized_by`]), and, closed over the graph, every layer each
/// of whose paths to the output meets such a normalization or such a layer first —
/// through element-wise functions, pools, flattens, per-channel scales and residual sums
/// (a gate's Mul stops it). A pre-norm residual branch's last layer (ConvNeXt's) is one:
/// the next block's LayerNorm and the head's divide by the stream it adds to, so the
/// gradient at its input saturates as its σ² grows and a backward target of 1 can be out
/// of reach (the iteration ran σ² up 600× a round). The layer before it (through GELU)
/// follows: the layer after it takes the forward rule and divides its scale out.
/// Backward mode gives them all the forward rule.
///
/// So does a layer that a normalization with its own statistics reads on some paths but
/// not all (`partly`: a dense block's features read by the next BatchNorm and by the
/// global pool directly): the gradient that comes back through the normalization does not
/// depend on its σ² (∝ 1/σ² at its output, × σ² at its input), so when that part alone
/// exceeds the target no σ² meets it, and the iteration shrank σ² by a constant factor a
/// round without end.
fn scale_free_layers(
    g: &Graph,
    consumers: &[Vec<usize>],
    weights: impl Iterator<Item = usize> + Clone,
    normalized: &HashMap<usize, usize>,
    partly: &HashSet<usize>,
) -> HashSet<usize> {
    let mut free: HashSet<usize> = normalized.keys().chain(partly).copied().collect();
    loop {
        let before = free.len();
        for k in weights.clone() {
            if !free.contains(&k) && every_path_rescaled(g, consumers, k, &free) {
                free.insert(k);
            }
        }
        if free.len() == before {
            return free;
        }
    }
}

/// Whether every path from weight node `k`'s output meets a normalization with its own
/// statistics or a layer of `free` before the network's output (see [`scale_free_layers`]).
fn every_path_rescaled(g: &Graph, consumers: &[Vec<usize>], k: usize, free: &HashSet<usize>) -> bool {
    let mut stack = vec![k + 1];
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if consumers[v].is_empty() {
            return false;
        }
        for &c in &consumers[v] {
            match &g.nodes[c].op {
                Op::BatchNorm(bn) if bn.own_statistics() => {}
                Op::Conv(_) | Op::Linear(_) if free.contains(&c) => {}
                Op::Conv(_) | Op::Linear(_) | Op::Mul => return false,
                _ => stack.push(c + 1),
            }
        }
    }
    true
}

/// Analyses a graph with the paper's analysis (layer means, per channel).
pub fn analyze_graph(g: &Graph, opts: GraphOptions) -> Result<GraphAnalysis, AnalysisError> {
    analyze_graph_with(g, opts, Analysis::Paper)
}

/// τ and γ of a unified layer (its activation and pooling nodes) for a unit-variance,
/// zero-mean input.
fn unit_constants(g: &Graph, activation: Option<usize>, pooling: Option<usize>) -> (f64, f64) {
    let f = activation.and_then(|a| func(&g.nodes[a].op)).unwrap_or(Func::Act(Activation::Identity));
    let (m1, m2, d2) = gauss_moments(f, 0.0, 1.0);
    match pooling.map(|q| &g.nodes[q]) {
        None => (m2, d2),
        Some(n) => {
            let t = window_of(n, g.shape(n.inputs[0]));
            let kind = match &n.op {
                Op::Pool(p) => p.kind,
                Op::GlobalPool(k) => *k,
                _ => PoolKind::Avg,
            };
            match kind {
                PoolKind::Avg => ((m2 + (t as f64 - 1.0) * m1 * m1) / t as f64, d2 / (t * t) as f64),
                PoolKind::Max => {
                    let (_, s, d) = max_moments(f, 0.0, 1.0, t);
                    (s, d)
                }
            }
        }
    }
}

/// Analyses a graph with the paper's analysis or the position-resolved one.
pub fn analyze_graph_with(g: &Graph, opts: GraphOptions, analysis: Analysis) -> Result<GraphAnalysis, AnalysisError> {
    if !(opts.branch_scale.is_finite() && opts.branch_scale >= 0.0) {
        return Err(AnalysisError::Options(format!("--branch-scale must be a number ≥ 0, got {}", opts.branch_scale)));
    }
    super::budget::check_graph(g, analysis)?;
    let cx = Cx::new(g)?;
    if cx.weights.is_empty() {
        return Err(AnalysisError::Options("the network has no weight layer".into()));
    }
    let mut p = Params {
        sigma2: HashMap::new(),
        bn_scale: HashMap::new(),
        target: HashMap::new(),
        capped: HashMap::new(),
        forward_choice: HashSet::new(),
    };
    let normalized: HashMap<usize, usize> = cx.weights.keys().filter_map(|&k| normalized_by(g, &cx.consumers, k).map(|b| (k, b))).collect();
    if opts.mode == Mode::Backward {
        let partly: HashSet<usize> = cx.weights.keys().copied().filter(|&k| partly_normalized(g, &cx.consumers, k)).collect();
        p.forward_choice = scale_free_layers(g, &cx.consumers, cx.weights.keys().copied(), &normalized, &partly);
    }
    for (k, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::Conv(_) | Op::Linear(_)) {
            p.target.insert(k, 1.0);
        }
        if matches!(n.op, Op::BatchNorm(_)) {
            p.bn_scale.insert(k, 1.0);
        }
    }
    // Residual branches: their last weight layer (or the BatchNorm after it) targets α².
    let mut residual_last = std::collections::HashSet::new();
    let mut joins = Vec::new();
    for (k, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::Add | Op::Concat | Op::Mul) {
            let branches = if matches!(n.op, Op::Add) { residual_branches(g, k) } else { vec![false; n.inputs.len()] };
            for (&v, &b) in n.inputs.iter().zip(&branches) {
                if b {
                    match branch_end(g, v) {
                        (_, Some(bn)) => {
                            p.bn_scale.insert(bn, opts.branch_scale);
                            residual_last.insert(bn);
                        }
                        (Some(w), None) => {
                            p.target.insert(w, opts.branch_scale * opts.branch_scale);
                            residual_last.insert(w);
                        }
                        _ => {}
                    }
                }
            }
            joins.push(JoinResult { node: k, forward_variance: 0.0, backward_variance: 0.0, branches });
        }
    }
    // A weight node whose target is 0 gets σ² = 0 directly (its input may carry signal).
    let fixed = |mode: Mode, w: &unify::Weight| -> f64 {
        match mode {
            Mode::Xavier => 2.0 / (w.fan_in() + w.fan_out()) as f64,
            Mode::KaimingIn => 2.0 / w.fan_in() as f64,
            Mode::KaimingOut => 2.0 / w.fan_out() as f64,
            Mode::Forward | Mode::Backward => 2.0 / w.fan_in() as f64,
        }
    };
    for (&k, (w, _)) in &cx.weights {
        p.sigma2.insert(k, fixed(opts.mode, w));
    }
    let mut passes: Box<dyn Passes> = match analysis {
        Analysis::Paper => Box::new(PaperPasses { stats: Vec::new() }),
        Analysis::Map => Box::new(super::graph_map::MapPasses::new()),
    };
    let (fwd, bwd) = match opts.mode {
        Mode::Forward => {
            let fwd = passes.forward(&cx, &mut p, &opts, true)?;
            (fwd, passes.backward(&cx, &mut p, &opts, false)?)
        }
        Mode::Backward => {
            // The backward σ² depend on the forward statistics (activation slopes,
            // BatchNorm's input variance), which depend on σ²: iterate to a fixed point.
            // Scale-invariant layers take the forward rule (`forward_choice`), without
            // which a batch-statistics normalization makes the iteration rescale their σ
            // geometrically.
            passes.forward(&cx, &mut p, &opts, false)?;
            let mut round = 0;
            loop {
                let before = p.sigma2.clone();
                passes.backward(&cx, &mut p, &opts, true)?;
                passes.forward(&cx, &mut p, &opts, false)?;
                round += 1;
                let (moved, k) = largest_change(&before, &p.sigma2);
                if moved <= FIXED_POINT_TOLERANCE {
                    break;
                }
                if round == MAX_ROUNDS {
                    return Err(fail(
                        g,
                        k,
                        format!(
                            "backward mode reached no fixed point in {MAX_ROUNDS} rounds: this layer's σ² still moves by {moved:.1e} (relative) per round"
                        ),
                    ));
                }
            }
            let fwd = passes.forward(&cx, &mut p, &opts, false)?;
            (fwd, passes.backward(&cx, &mut p, &opts, false)?)
        }
        _ => {
            let fwd = passes.forward(&cx, &mut p, &opts, false)?;
            (fwd, passes.backward(&cx, &mut p, &opts, false)?)
        }
    };
    let map = analysis == Analysis::Map;
    let mut weights = Vec::new();
    let mut keys: Vec<usize> = cx.weights.keys().copied().collect();
    keys.sort_unstable();
    for k in keys {
        let (w, eps) = cx.weights[&k].clone();
        let n = &g.nodes[k];
        // The unified layer it starts: an activation, then a pooling, each the only reader.
        let only = |v: usize| -> Option<usize> { (cx.consumers[v].len() == 1).then(|| cx.consumers[v][0]) };
        let mut end = k;
        let mut activation = None;
        let mut pooling = None;
        let normalized_by = normalized.get(&k).copied();
        if let Some(a) = only(end + 1).filter(|&a| func(&g.nodes[a].op).is_some()) {
            activation = Some(a);
            end = a;
        }
        if let Some(q) = only(end + 1).filter(|&q| matches!(g.nodes[q].op, Op::Pool(_) | Op::GlobalPool(_))) {
            pooling = Some(q);
            end = q;
        }
        let (u, z, du, dz) = (fwd[k + 1].avg, fwd[end + 1].avg, bwd[k + 1].avg, bwd[end + 1].avg);
        let (unit_tau, unit_gamma) = unit_constants(g, activation, pooling);
        let variance = p.sigma2[&k];
        weights.push(WeightResult {
            node: k,
            connections: eps,
            uncapped_std: p.capped.get(&k).copied().unwrap_or(variance).sqrt(),
            capped: p.capped.contains_key(&k),
            variance,
            forward_variance: u,
            backward_variance: bwd[n.inputs[0].0].avg,
            forward_range: map.then(|| (fwd[k + 1].min, fwd[k + 1].max)),
            backward_range: map.then(|| (bwd[n.inputs[0].0].min, bwd[n.inputs[0].0].max)),
            residual_last: residual_last.contains(&k),
            normalized_by,
            activation,
            pooling,
            // Where the signal or the gradient is zero (a branch started at zero), the
            // layer's constants for a unit-variance zero-mean input.
            tau: if u > 0.0 { z / u } else { unit_tau },
            gamma: if dz > 0.0 { du / dz } else { unit_gamma },
            weight: w,
        });
    }
    let mut batch_norms = Vec::new();
    for (k, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::BatchNorm(_)) {
            batch_norms.push(BatchNormResult {
                node: k,
                scale: p.bn_scale[&k],
                residual_last: residual_last.contains(&k),
                forward_variance: fwd[k + 1].avg,
                backward_variance: bwd[k + 1].avg,
            });
        }
    }
    for j in &mut joins {
        j.forward_variance = fwd[j.node + 1].avg;
        j.backward_variance = bwd[j.node + 1].avg;
    }
    // An activation fused into the max pool that reads it has no gradient of its own at
    // its output (the pool's rule takes both).
    let fused: std::collections::HashSet<usize> = cx.fused.values().map(|&k| k + 1).collect();
    let values = fwd.iter().zip(&bwd).enumerate().map(|(v, (f, b))| (f.avg, (!fused.contains(&v)).then_some(b.avg))).collect();
    Ok(GraphAnalysis { weights, batch_norms, joins, values, output_variance: fwd[g.nodes.len()].avg, input_gradient_variance: bwd[0].avg })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ir::Fn1;

    /// Seeded N(0, 1) draws (xorshift, Box–Muller) for the tests that sample.
    fn normals(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            let mut u = || {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            let (a, b) = (u(), u());
            (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
        }
    }

    /// E[1/V] of a group against sampled groups: n offsets drawn N(0, A), V = c + the
    /// mean square of their deviations from their mean (one sample's group statistics
    /// over many positions). Planting 1/E[V] fails it (1.8× at two channels).
    #[test]
    fn inverse_group_variance_matches_sampled_groups() {
        let mut normal = normals(0x9E37_79B9_7F4A_7C15u64);
        for (c, a, n) in [(0.16f64, 0.84f64, 2usize), (0.3, 0.7, 4), (0.5, 0.5, 16), (0.05, 0.95, 3), (1.0, 0.0, 2)] {
            let draws = 200_000;
            let (mut sum, mut sq) = (0.0, 0.0);
            for _ in 0..draws {
                let o: Vec<f64> = (0..n).map(|_| a.sqrt() * normal()).collect();
                let m = o.iter().sum::<f64>() / n as f64;
                let v = c + o.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
                sum += 1.0 / v;
                sq += 1.0 / (v * v);
            }
            let mean = sum / draws as f64;
            let se = ((sq / draws as f64 - mean * mean) / draws as f64).sqrt();
            let rule = inverse_group_variance(c, a, n as f64);
            assert!((rule - mean).abs() < 4.0 * se + 1e-12, "c {c} A {a} n {n}: rule {rule}, sampled {mean} ± {se}");
        }
    }

    /// The open fraction's square over a channel's offset, sampled: offsets m ~ N(0, a) per
    /// channel, values μ + m + e at many positions; the mean over channels of (mean over
    /// positions of f')² (and of f'(γy)·y for the part along x̂) against the rules, for
    /// a ReLU (closed form inside) and smooth f (Gauss–Hermite at both levels).
    #[test]
    fn a_channel_s_offset_sets_its_open_fraction() {
        let mut normal = normals(0x9E37_79B9_7F4A_7C15u64);
        for act in [Activation::Relu, Activation::Silu, Activation::Gelu] {
            let f = Func::Act(act);
            for (mu, a, b) in [(0.0f64, 0.8f64, 0.2f64), (0.5, 0.3, 0.7), (-0.4, 1.5, 0.5)] {
                let (channels, positions) = (20_000, 400);
                let (mut sq, mut sq2, mut al, mut al2) = (0.0, 0.0, 0.0, 0.0);
                for _ in 0..channels {
                    let m = a.sqrt() * normal();
                    let (mut open, mut along) = (0.0, 0.0);
                    for _ in 0..positions {
                        let y = mu + m + b.sqrt() * normal();
                        let d = f.eval(y).1;
                        open += d;
                        along += d * y;
                    }
                    let (o, l) = ((open / positions as f64).powi(2), (along / positions as f64).powi(2));
                    sq += o;
                    sq2 += o * o;
                    al += l;
                    al2 += l * l;
                }
                let n = channels as f64;
                let (sq, al) = (sq / n, al / n);
                let (se_sq, se_al) = (((sq2 / n - sq * sq) / n).sqrt(), ((al2 / n - al * al) / n).sqrt());
                // What the positions' own noise adds to the square of their mean: E[f'²]/P.
                let (rule_sq, rule_al) = (mean_slope_sq(f, mu, a, b), slope_along_sq(f, 1.0, mu, a, b));
                let tol = |se: f64, rule: f64| 4.0 * se + rule / positions as f64 + 1e-4;
                assert!((sq - rule_sq).abs() < tol(se_sq, rule_sq), "{act:?} μ {mu} a {a} b {b}: open² {sq} ± {se_sq}, rule {rule_sq}");
                assert!((al - rule_al).abs() < tol(se_al, rule_al), "{act:?} μ {mu} a {a} b {b}: along² {al} ± {se_al}, rule {rule_al}");
                // And the rule without the offset (over all of the variance) is off here.
                let flat = mean_slope(f, mu, a + b).powi(2);
                assert!((sq - flat).abs() > tol(se_sq, rule_sq), "{act:?} μ {mu} a {a} b {b}: (E f')² {flat} also fits {sq}");
            }
        }
    }

    /// The part along x̂ where f reads γ x̂ + s (a branch-ending GroupNorm before a ResNet's
    /// Add): offsets of x̂ and of the stream per channel, values at many positions; the
    /// mean over channels of (mean over positions of f'(γy + s)·y)² against the rule.
    #[test]
    fn a_stream_beside_the_branch_sets_the_part_along_x_hat() {
        let mut normal = normals(0x2545_F491_4F6C_DD1Du64);
        for act in [Activation::Relu, Activation::LeakyRelu { slope: 0.1 }] {
            let f = Func::Act(act);
            for (gamma, mu, a, b, ms, a_s, b_s) in
                [(1.0f64, 0.0f64, 0.6f64, 0.4f64, 1.2f64, 0.5f64, 0.8f64), (0.7, 0.2, 0.2, 0.8, 0.4, 1.0, 0.3)]
            {
                let (channels, positions) = (20_000, 400);
                let (mut al, mut al2) = (0.0, 0.0);
                for _ in 0..channels {
                    let (m, o) = (a.sqrt() * normal(), a_s.sqrt() * normal());
                    let mut along = 0.0;
                    for _ in 0..positions {
                        let y = mu + m + b.sqrt() * normal();
                        along += f.eval(gamma * y + ms + o + b_s.sqrt() * normal()).1 * y;
                    }
                    let l = (along / positions as f64).powi(2);
                    al += l;
                    al2 += l * l;
                }
                let n = channels as f64;
                let al = al / n;
                let se = ((al2 / n - al * al) / n).sqrt();
                let rule = slope_along_sum_sq(f, gamma, mu, a, b, ms, a_s, b_s).expect("piecewise linear");
                let tol = 4.0 * se + rule / positions as f64 + 1e-4;
                assert!((al - rule).abs() < tol, "{act:?}: along² {al} ± {se}, rule {rule}");
                // Without the stream (f reading γ x̂ alone, the rule before) it is off.
                let alone = slope_along_sq(f, gamma, mu, a, b);
                assert!((al - alone).abs() > tol, "{act:?}: the stream-free rule {alone} also fits {al}");
            }
        }
    }

    /// The closed form of [`slope_along`] for piecewise-linear f against its integral.
    #[test]
    fn slope_along_of_a_relu_is_its_integral() {
        for act in [Activation::Relu, Activation::LeakyRelu { slope: 0.1 }] {
            let f = Func::Act(act);
            for (m, v) in [(-1.0, 0.3), (0.0, 1.0), (0.5, 4.0), (2.0, 1.0), (0.3, 0.0)] {
                let s: f64 = f64::sqrt(v);
                let numeric = if v > 0.0 {
                    integrate_width(|z| f.eval(m + s * z).1 * (m + s * z) * crate::analyze::phi(z), -12.0, 12.0, 0.0625)
                } else {
                    f.eval(m).1 * m
                };
                let closed = slope_along(f, 1.0, m, v);
                // (The integral is not split at the kink: good to about 1e-7.)
                assert!((closed - numeric).abs() < 1e-6, "{act:?} m {m} v {v}: {closed} vs {numeric}");
            }
        }
    }

    /// A conv's offsets at a small map: weights drawn, an input of mean 1 (no noise), so
    /// each output position's value is the partial sum of its real taps' weights. The
    /// variance one sample's group of n channels sees is c plus their spread over the
    /// group's positions; E[1/V] sampled against [`OffsetShape`]'s terms (to 0.3 %).
    /// Counting all of the spread as (n − 1) degrees of freedom misses by 16 % to 4.5×
    /// here, counting it as fixed by 16–44 %.
    #[test]
    fn a_conv_s_border_offsets_give_the_group_variance_its_shape() {
        let mut normal = normals(0x2545_F491_4F6C_DD1Du64);
        for (hw, k, n, c) in [(5u64, 3u64, 2usize, 0.2f64), (5, 3, 8, 0.05), (4, 3, 1, 0.02), (7, 3, 3, 0.1), (6, 5, 2, 0.3)] {
            let axis = crate::index::Axis { input: hw, output: hw, kernel: k, stride: 1, pad_begin: k / 2, dilation: 1 };
            let geo = crate::index::ConvGeometry { in_channels: 1, out_channels: n as u64, groups: 1, h: axis, w: axis };
            let draws = 100_000;
            let (mut sum, mut sq, mut total) = (0.0, 0.0, 0.0);
            for _ in 0..draws {
                let mut vals = Vec::new();
                for _ in 0..n {
                    let w: Vec<f64> = (0..k * k).map(|_| normal()).collect();
                    for oy in 0..hw {
                        for ox in 0..hw {
                            let m: f64 =
                                geo.h.taps(oy).flat_map(|ty| geo.w.taps(ox).map(move |tx| (ty * k + tx) as usize)).map(|t| w[t]).sum();
                            vals.push(m);
                        }
                    }
                }
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                let spread = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                let v = c + spread;
                total += spread;
                sum += 1.0 / v;
                sq += 1.0 / (v * v);
            }
            let mean = sum / draws as f64;
            let se = ((sq / draws as f64 - mean * mean) / draws as f64).sqrt();
            let rule = inverse_variance(c, &OffsetShape::of(&geo).terms(n as f64, total / draws as f64));
            assert!((rule - mean).abs() < 4.0 * se + 2e-3 * mean, "{hw}×{hw}, {k}×{k}, n {n}: rule {rule}, sampled {mean} ± {se}");
        }
    }

    /// One op of every kind the IR has (a new `Op` variant must be added here, and then
    /// needs rules in both registries).
    pub(crate) fn every_op() -> Vec<Op> {
        use crate::ir::{BatchNorm, Conv, Linear, Pad, Pool};
        let conv = Conv {
            in_channels: 1,
            out_channels: 1,
            kernel: [1, 1],
            stride: [1, 1],
            pad: [Pad::default(); 2],
            dilation: [1, 1],
            groups: 1,
            bias: false,
        };
        let pool =
            |kind| Pool { kind, kernel: [2, 2], stride: [2, 2], pad: [Pad::default(); 2], ceil_mode: false, count_include_pad: false };
        let ops = vec![
            Op::Conv(conv),
            Op::Linear(Linear { in_features: 1, out_features: 1, bias: false }),
            Op::Activation(Activation::Relu),
            Op::Elementwise(Expr::X),
            Op::Pool(pool(PoolKind::Max)),
            Op::Pool(pool(PoolKind::Avg)),
            Op::GlobalPool(PoolKind::Max),
            Op::GlobalPool(PoolKind::Avg),
            Op::Flatten,
            Op::Add,
            Op::Concat,
            Op::BatchNorm(BatchNorm::batch(1, 0.0, true, String::new(), String::new())),
            Op::Mul,
            Op::ChannelSlice { start: 0, end: 1 },
            Op::Shuffle { groups: 1 },
            Op::Resize { scale: [1, 1], linear: false },
            Op::Dilate { stride: [1, 1] },
            Op::Resample(ir::Resample {
                linear: true,
                transform: ir::CoordTransform::HalfPixel,
                nearest: ir::NearestMode::RoundPreferFloor,
                scale: [1.0, 1.0],
            }),
            Op::SwapChannelsWidth,
            Op::SoftmaxPositions,
            Op::AttentionPool,
            Op::AddBroadcast,
            Op::RadixSoftmax { radix: 2, groups: 1 },
        ];
        // Exhaustive: this match fails to compile when a variant is added.
        for op in &ops {
            match op {
                Op::Conv(_) | Op::Linear(_) | Op::Activation(_) | Op::Elementwise(_) | Op::Pool(_) | Op::GlobalPool(_) | Op::Flatten => {}
                Op::Add | Op::Concat | Op::BatchNorm(_) | Op::Mul | Op::ChannelSlice { .. } | Op::Shuffle { .. } | Op::Resize { .. } => {}
                Op::Dilate { .. }
                | Op::Resample(_)
                | Op::SwapChannelsWidth
                | Op::SoftmaxPositions
                | Op::AttentionPool
                | Op::AddBroadcast
                | Op::RadixSoftmax { .. } => {}
            }
        }
        ops
    }

    #[test]
    fn every_op_kind_has_paper_rules() {
        for op in every_op() {
            let _ = rules(&op);
        }
        assert_eq!(RULES.len(), every_op().len(), "one entry per op kind, no stale ones");
    }

    #[test]
    fn offset_max_of_the_identity_in_closed_form_agrees_with_quadrature() {
        let id = Func::Act(Activation::Identity);
        for (mu, a, b, t) in [(0.3, 0.5, 1.2, 9u64), (0.0, 0.1, 2.0, 4), (1.5, 2.0, 0.3, 49)] {
            let closed = offset_max(id, mu, a, b, t);
            let [m1, m2, h2] = over_offset(
                |m| {
                    let (e1, e2, _) = max_moments(id, mu + m, b, t);
                    [e1, e2, e1 * e1]
                },
                a,
            );
            for (c, q) in [(closed.0, m1), (closed.1, m2), (closed.2, h2 - m1 * m1)] {
                assert!(
                    (c - q).abs() < 1e-6 * q.abs().max(1e-3),
                    "N({mu}, {a} + {b}), T = {t}: {closed:?} vs {:?}",
                    (m1, m2, h2 - m1 * m1)
                );
            }
        }
    }

    #[test]
    fn clip_closed_form_agrees_with_quadrature() {
        for (lo, hi) in [(0.0, 6.0), (-1.0, 1.0), (0.0, f64::INFINITY), (f64::NEG_INFINITY, 0.5)] {
            let e = Expr::Apply(Fn1::Clip { min: lo, max: hi }, Box::new(Expr::X));
            for (mu, v) in [(0.0, 1.0), (0.7, 2.5), (-1.3, 0.2), (5.0, 9.0), (0.0, 40.0)] {
                let closed = clip_moments(lo, hi, mu, v);
                let quad = quadrature_moments(Func::Expr(&e), mu, v);
                // A plain midpoint sum, independent of both.
                let (n, s) = (400_000, v.sqrt());
                let dz = 24.0 / n as f64;
                let mut riemann = (0.0, 0.0, 0.0);
                for i in 0..n {
                    let z = -12.0 + (i as f64 + 0.5) * dz;
                    let x = mu + s * z;
                    let w = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt() * dz;
                    let y = x.clamp(lo, hi);
                    riemann.0 += y * w;
                    riemann.1 += y * y * w;
                    riemann.2 += if x > lo && x < hi { w } else { 0.0 };
                }
                for (c, q, r) in [(closed.0, quad.0, riemann.0), (closed.1, quad.1, riemann.1), (closed.2, quad.2, riemann.2)] {
                    assert!((c - r).abs() < 1e-4 * r.abs().max(1e-2), "clip[{lo},{hi}] N({mu},{v}): closed {closed:?} vs sum {riemann:?}");
                    // The quadrature breaks its panels at −3, 0, 3, 6 only.
                    let kinks_known = [lo, hi].iter().all(|b| !b.is_finite() || [-3.0, 0.0, 3.0, 6.0].contains(b));
                    assert!(
                        !kinks_known || (q - r).abs() < 1e-4 * r.abs().max(1e-2),
                        "clip[{lo},{hi}] N({mu},{v}): quadrature {quad:?} vs sum {riemann:?}"
                    );
                }
            }
        }
    }
}
