//! Spatial correlation of a value's fluctuation: how alike neighbouring positions are.
//!
//! Both graph analyses take the part of a value that varies from position to position
//! (`e` in x = μ + m + e: not the mean, not the channel's offset m) as independent
//! between positions. A conv with random weights keeps that true on average: it neither
//! makes nor removes correlation (E_w[Cov(u_p, u_p')] = σ² Σ_taps Cov(x_{p+k}, x_{p'+k}),
//! the input's covariance at the same lag, times the stride). What makes neighbours
//! alike is a pooling whose windows overlap — the 3×3/2 max pool after a stem shares a
//! row or a column of three members between neighbouring windows, and its outputs
//! correlate by 0.28 at lag 1 (measured in torch on DenseNet-121) — and an upsampling
//! that copies one input to several outputs. That correlation then survives the convs
//! and the batch normalizations and is only slowly worn down by the nonlinearities, and
//! it changes what an average pool or a global pool keeps: the variance of a mean of T
//! members is (b/T)·Σ_d count(d)·ρ(d)/T, not b/T. In DenseNet-121 the first transition's
//! 2×2 average keeps 1.49× the variance the independent rule gives; every training
//! BatchNorm that reads it then divides the gradient by that much more.
//!
//! A value's correlation is one table per value (averaged over its channels, weighted by
//! their fluctuation variance): ρ at lags |dy|, |dx| ≤ [`R`], zero beyond.

use super::graph::Func;
use crate::ir::{self, Op, PoolKind, ValueId};
use crate::quad::integrate_vec;

/// The largest lag kept, per axis.
pub(super) const R: usize = 3;

/// ρ(|dy|, |dx|) of a value's fluctuation; [0][0] = 1.
pub(super) type Lags = [[f64; R + 1]; R + 1];

/// Below this a correlation is taken as zero (its effect on an average pool's variance is
/// below 1 % even with all eight neighbours at it).
const NEGLIGIBLE: f64 = 1e-3;

/// Independent positions.
pub(super) fn white() -> Lags {
    let mut l = [[0.0; R + 1]; R + 1];
    l[0][0] = 1.0;
    l
}

pub(super) fn is_white(l: &Lags) -> bool {
    l.iter().flatten().skip(1).all(|&r| r.abs() < NEGLIGIBLE)
}

/// The table whose entry at every lag (y, x) ≠ (0, 0) is `rho(y, x)`.
fn table(rho: impl Fn(usize, usize) -> f64) -> Lags {
    let mut out = white();
    for (y, row) in out.iter_mut().enumerate() {
        for (x, r) in row.iter_mut().enumerate() {
            if (y, x) != (0, 0) {
                *r = rho(y, x);
            }
        }
    }
    out
}

fn at(l: &Lags, dy: i64, dx: i64) -> f64 {
    let (y, x) = (dy.unsigned_abs() as usize, dx.unsigned_abs() as usize);
    if y > R || x > R {
        0.0
    } else {
        l[y][x]
    }
}

/// What the correlation rules read of a value: its channel-averaged mean, the variance
/// of its fluctuation and of its channel offset, and its channel count.
#[derive(Clone, Copy, Debug)]
pub(super) struct Summary {
    pub mean: f64,
    pub fluct: f64,
    pub offset: f64,
    pub channels: f64,
}

/// Σ over the member pairs (i, j) of two ky × kx windows `o` positions apart of
/// ρ(o + j − i): (ky − |dy|)(kx − |dx|) pairs at each within-window offset d.
fn pair_sum(l: &Lags, [ky, kx]: [u64; 2], [oy, ox]: [i64; 2]) -> f64 {
    let (ky, kx, r) = (ky as i64, kx as i64, R as i64);
    let mut s = 0.0;
    for dy in (-(ky - 1)).max(-r - oy)..=(ky - 1).min(r - oy) {
        for dx in (-(kx - 1)).max(-r - ox)..=(kx - 1).min(r - ox) {
            s += ((ky - dy.abs()) * (kx - dx.abs())) as f64 * at(l, oy + dy, ox + dx);
        }
    }
    s
}

/// Σ over the pairs (i, j) of a ky × kx window of ρ(j − i), divided by its T = ky·kx
/// members: the factor on b/T in the variance of the window's mean (1 for independent
/// members, T for identical ones).
pub(super) fn window_factor(l: &Lags, ky: u64, kx: u64) -> f64 {
    if is_white(l) {
        return 1.0;
    }
    (pair_sum(l, [ky, kx], [0, 0]) / (ky * kx) as f64).max(0.0)
}

/// The average pool's output correlation: at output lag δ, the mean correlation between
/// the members of two windows S·δ apart, over that within one window.
fn avg_pool(l: &Lags, k: [u64; 2], s: [u64; 2]) -> Lags {
    if is_white(l) && k[0] <= s[0] && k[1] <= s[1] {
        return white();
    }
    let own = pair_sum(l, k, [0, 0]);
    table(|y, x| pair_sum(l, k, [y as i64 * s[0] as i64, x as i64 * s[1] as i64]) / own)
}

/// A strided map of positions (a conv, a stride-1 conv is the identity): lag δ of the
/// output is lag s·δ of the input.
fn strided(l: &Lags, s: [u64; 2]) -> Lags {
    table(|y, x| at(l, (y as u64 * s[0]) as i64, (x as u64 * s[1]) as i64))
}

/// Zeros between the positions (`Op::Dilate`): lags that are multiples of the stride
/// keep the input's correlation at lag/stride (both positions real, or one is zero and
/// the covariance is 0 there too), the others are 0.
fn dilated(l: &Lags, s: [u64; 2]) -> Lags {
    table(|y, x| {
        let (y, x) = (y as u64, x as u64);
        if y % s[0] == 0 && x % s[1] == 0 {
            at(l, (y / s[0]) as i64, (x / s[1]) as i64)
        } else {
            0.0
        }
    })
}

/// Nearest upsampling by whole factors: two outputs δ apart copy inputs ⌊δ/f⌋ or
/// ⌊δ/f⌋ + 1 apart, the latter with probability (δ mod f)/f, per axis.
fn nearest(l: &Lags, f: [u64; 2]) -> Lags {
    let axis = |d: u64, f: u64| [((d / f) as i64, (f - d % f) as f64 / f as f64), ((d / f + 1) as i64, (d % f) as f64 / f as f64)];
    table(|y, x| {
        let mut s = 0.0;
        for (ly, py) in axis(y as u64, f[0]) {
            for (lx, px) in axis(x as u64, f[1]) {
                s += py * px * at(l, ly, lx);
            }
        }
        s
    })
}

/// Linear (bilinear) upsampling by whole factors, half-pixel centres: output o reads
/// inputs i and i + 1 with weights (1 − t, t); per axis, the covariance of two outputs
/// is the weighted sum of the inputs' covariances, averaged over the f phases.
fn linear(l: &Lags, f: [u64; 2]) -> Lags {
    // Per axis: for output lag d, the distribution of (input lag, weight product) pairs,
    // normalized by the same sum at lag 0.
    fn axis(f: u64) -> impl Fn(u64) -> Vec<(i64, f64)> {
        move |d: u64| {
            let src = |o: u64| {
                let c = (o as f64 + 0.5) / f as f64 - 0.5;
                let i = c.floor();
                (i as i64, c - i)
            };
            let mut terms = Vec::new();
            for o in f..2 * f {
                let ((i, t), (j, u)) = (src(o), src(o + d));
                for (a, wa) in [(i, 1.0 - t), (i + 1, t)] {
                    for (b, wb) in [(j, 1.0 - u), (j + 1, u)] {
                        terms.push((b - a, wa * wb / f as f64));
                    }
                }
            }
            terms
        }
    }
    let (ay, ax) = (axis(f[0]), axis(f[1]));
    let cov = |dy: u64, dx: u64| {
        let mut s = 0.0;
        for (ly, wy) in ay(dy) {
            for (lx, wx) in ax(dx) {
                s += wy * wx * at(l, ly, lx);
            }
        }
        s
    };
    let own = cov(0, 0);
    table(|y, x| cov(y as u64, x as u64) / own)
}

/// Any resampling, each output a weighted sum of inputs, separable per axis
/// (`ir::Resample::weights`): per axis, for output lag d, the weight products of the
/// pairs of inputs the two outputs read, by their input lag, averaged over the outputs;
/// the covariance is their product over the axes times ρ at those lags.
fn resampled(l: &Lags, weights: [Vec<Vec<(usize, f64)>>; 2]) -> Lags {
    let lags_of = |w: &Vec<Vec<(usize, f64)>>, d: usize| {
        let mut terms: Vec<(i64, f64)> = Vec::new();
        let n = w.len().saturating_sub(d).max(1) as f64;
        for o in 0..w.len().saturating_sub(d) {
            for &(i, a) in &w[o] {
                for &(j, b) in &w[o + d] {
                    terms.push((j as i64 - i as i64, a * b / n));
                }
            }
        }
        terms
    };
    let cov = |dy: usize, dx: usize| {
        let (ty, tx) = (lags_of(&weights[0], dy), lags_of(&weights[1], dx));
        let mut s = 0.0;
        for &(ly, wy) in &ty {
            for &(lx, wx) in &tx {
                s += wy * wx * at(l, ly, lx);
            }
        }
        s
    };
    let own = cov(0, 0);
    if own.is_nan() || own <= 0.0 {
        return white();
    }
    table(|y, x| if y < weights[0].len() && x < weights[1].len() { (cov(y, x) / own).clamp(-1.0, 1.0) } else { 0.0 })
}

/// The inputs' tables weighted by their fluctuation variance (independent inputs add,
/// channels side by side average).
fn mixed(parts: &[(f64, Lags)]) -> Lags {
    let total: f64 = parts.iter().map(|(w, _)| w).sum();
    if total.is_nan() || total <= 0.0 {
        return parts.first().map_or_else(white, |p| p.1);
    }
    let mut out = [[0.0; R + 1]; R + 1];
    for (w, l) in parts {
        for (o, r) in out.iter_mut().flatten().zip(l.iter().flatten()) {
            *o += w / total * r;
        }
    }
    out
}

/// Hermite orders kept in [`hermite_powers`]: the terms left out are below ρ¹⁷ of the
/// variance (ρ ≤ 0.7 leaves < 0.3 % of a correlation out).
const ORDERS: usize = 16;

/// The fluctuation of f(x), x = μ + m + √b z (m ~ N(0, a) shared, z ~ N(0, 1) per
/// position), as a Hermite series: Cov(f(X), f(Y)) = Σ_n P_n ρⁿ for X, Y with
/// correlation ρ between their z (Mehler), P_n = E_m[n! c_n(m)²], c_n(m) = E[f He_n(z)]/n!.
/// Returns (P_1..P_ORDERS, the fluctuation variance E_m Var(f | m)). One quadrature for
/// every lag.
fn hermite_powers(f: Func<'_>, mu: f64, a: f64, b: f64) -> ([f64; ORDERS], f64) {
    let s = b.max(0.0).sqrt();
    // Per m: [∫ f He_n φ for n = 1..ORDERS, E f, E f²].
    let given = |m: f64| {
        integrate_vec(
            |z, out| {
                let y = f.eval(m + s * z).0 * super::phi(z);
                let (mut h0, mut h1) = (1.0, z);
                for (n, o) in out.iter_mut().take(ORDERS).enumerate() {
                    *o = y * h1;
                    let h2 = z * h1 - (n + 1) as f64 * h0;
                    (h0, h1) = (h1, h2);
                }
                out[ORDERS] = y;
                out[ORDERS + 1] = y * f.eval(m + s * z).0;
            },
            ORDERS + 2,
            -8.0,
            8.0,
            12,
        )
    };
    let powers = |v: &[f64]| {
        let mut out = [0.0; ORDERS + 1];
        let mut fact = 1.0;
        for n in 0..ORDERS {
            fact *= (n + 1) as f64;
            out[n] = v[n] * v[n] / fact;
        }
        out[ORDERS] = v[ORDERS + 1] - v[ORDERS] * v[ORDERS];
        out
    };
    let p = if a <= 0.0 {
        powers(&given(mu))
    } else {
        let sa = a.sqrt();
        let v = integrate_vec(
            |z, out| {
                let w = super::phi(z);
                for (o, p) in out.iter_mut().zip(powers(&given(mu + sa * z))) {
                    *o = p * w;
                }
            },
            ORDERS + 1,
            -6.0,
            6.0,
            4,
        );
        std::array::from_fn(|i| v[i])
    };
    (std::array::from_fn(|i| p[i]), p[ORDERS])
}

/// An element-wise f: ρ_out(δ) = Σ_n P_n ρ(δ)ⁿ / Var ([`hermite_powers`]).
fn through(f: Func<'_>, x: Summary, l: &Lags) -> Lags {
    if is_white(l) || f.slope() == Some(1.0) {
        return *l;
    }
    let (p, var) = hermite_powers(f, x.mean, x.offset, x.fluct);
    if var.is_nan() || var <= 0.0 {
        return white();
    }
    let mut out = white();
    for (o, &r) in out.iter_mut().flatten().zip(l.iter().flatten()).skip(1) {
        if r.abs() >= NEGLIGIBLE {
            let r = r.clamp(-1.0, 1.0);
            let cov: f64 = p.iter().rev().fold(0.0, |acc, &pn| (acc + pn) * r);
            *o = (cov / var).clamp(-1.0, 1.0);
        }
    }
    out
}

/// E[f(M₁) f(M₂)] − (E f(M))² over Var f(M), for the maxima M₁, M₂ of two windows of T
/// independent N(μ, b) members that share k of them: with S the shared members'
/// maximum and A, B the others', E[f(max(S, A)) f(max(S, B))] = E_S[H(S)²], H(s) =
/// E_A f(max(s, A)) (f monotone: a max pool looks through it). On a grid of 1/64.
/// `f` need not be monotone here: the maximum is taken before it (the pool's own
/// function, looked through, is composed into `f` by the caller).
fn overlap_correlation(f: &dyn Fn(f64) -> f64, mu: f64, b: f64, t: u64, k: u64) -> f64 {
    if k == 0 {
        return 0.0;
    }
    if k >= t {
        return 1.0;
    }
    let s = b.max(0.0).sqrt();
    let h = 1.0 / 64.0;
    let (lo, hi) = (-9.0_f64, 9.0_f64);
    let n = ((hi - lo) / h) as usize + 1;
    let z: Vec<f64> = (0..n).map(|i| lo + i as f64 * h).collect();
    let fz: Vec<f64> = z.iter().map(|&z| f(mu + s * z)).collect();
    let cdf: Vec<f64> = z.iter().map(|&z| super::big_phi(z)).collect();
    let pdf: Vec<f64> = z.iter().map(|&z| super::phi(z)).collect();
    let r = (t - k) as i32;
    // Density of A (the max of T − k) and the tail ∫_z^∞ f dF_A, by the trapezoid rule.
    let da: Vec<f64> = (0..n).map(|i| r as f64 * cdf[i].powi(r - 1) * pdf[i]).collect();
    let mut tail = vec![0.0; n];
    for i in (0..n - 1).rev() {
        tail[i] = tail[i + 1] + 0.5 * h * (fz[i] * da[i] + fz[i + 1] * da[i + 1]);
    }
    let trap = |g: &dyn Fn(usize) -> f64| (0..n).map(|i| if i == 0 || i == n - 1 { 0.5 * g(i) } else { g(i) }).sum::<f64>() * h;
    let hs: Vec<f64> = (0..n).map(|i| fz[i] * cdf[i].powi(r) + tail[i]).collect();
    let ds = |i: usize| k as f64 * cdf[i].powi(k as i32 - 1) * pdf[i];
    let dm = |i: usize| t as f64 * cdf[i].powi(t as i32 - 1) * pdf[i];
    let joint = trap(&|i| hs[i] * hs[i] * ds(i));
    let m1 = trap(&|i| fz[i] * dm(i));
    let m2 = trap(&|i| fz[i] * fz[i] * dm(i));
    let var = m2 - m1 * m1;
    if var.is_nan() || var <= 0.0 {
        return 0.0;
    }
    ((joint - m1 * m1) / var).clamp(0.0, 1.0)
}

/// A max pool's output correlation: from the members two windows share (for independent
/// members), and from the correlation between the members of the two windows (the input's
/// own), combined as independent sources: ρ = ρ_shared + (1 − ρ_shared) ρ_input.
fn max_pool(l: &Lags, f: &dyn Fn(f64) -> f64, x_stats: Summary, k: [u64; 2], s: [u64; 2]) -> Lags {
    let t = k[0] * k[1];
    table(|y, x| {
        let (oy, ox) = (y as u64 * s[0], x as u64 * s[1]);
        let shared = k[0].saturating_sub(oy) * k[1].saturating_sub(ox);
        let from_shared = overlap_correlation(f, x_stats.mean, x_stats.fluct, t, shared);
        // The mean input correlation between the members of the two windows.
        let from_input = if is_white(l) { 0.0 } else { (pair_sum(l, k, [oy as i64, ox as i64]) / (t * t) as f64).clamp(0.0, 1.0) };
        from_shared + (1.0 - from_shared) * from_input
    })
}

/// How many nodes [`max_pooled`] reads back through at most (a dense block's concats
/// list every earlier feature map: the walk is bounded, not the graph).
const MAX_WALK: usize = 256;

/// The max pools whose outputs reach `v` unmixed, through per-channel maps (a
/// normalization, a channel slice or shuffle) and concatenations, each with its share of
/// `v`'s fluctuation (weighted as [`mixed`] weights a concat's inputs) and whether a
/// normalization lies on the way.
///
/// Why: neighbouring outputs of an overlapping max pool are alike because they are often
/// the *same* member (the shared maximum), not because they are jointly Gaussian. An
/// element-wise function keeps that likeness (f(M) = f(M) where the windows share their
/// maximum), where the Hermite rule of [`through`] takes it as Gaussian and shrinks it: in
/// DenseNet-121 the ReLU after the first normalization of the stem's 3×3/2 max pool raises
/// the lag-1 correlation from 0.29 to 0.32 (torch), the Gaussian rule lowers it to 0.22.
/// A conv mixes the channels (a sum of many): past it the Gaussian rule holds again.
fn max_pooled(
    g: &ir::Graph,
    v: ValueId,
    summary: &dyn Fn(ValueId) -> Summary,
    budget: &mut usize,
    normalized: bool,
) -> Vec<(f64, usize, bool)> {
    if v.0 == 0 || *budget == 0 {
        return Vec::new();
    }
    *budget -= 1;
    let k = v.0 - 1;
    let n = &g.nodes[k];
    match &n.op {
        Op::Pool(p) if p.kind == PoolKind::Max => vec![(1.0, k, normalized)],
        Op::BatchNorm(b) if super::graph::per_channel_norm(b) => max_pooled(g, n.inputs[0], summary, budget, true),
        Op::ChannelSlice { .. } | Op::Shuffle { .. } => max_pooled(g, n.inputs[0], summary, budget, normalized),
        Op::Concat => {
            // Behind a normalization per channel every channel weighs alike.
            let weights: Vec<f64> =
                n.inputs.iter().map(|&u| summary(u)).map(|s| if normalized { s.channels } else { s.fluct * s.channels }).collect();
            let total: f64 = weights.iter().sum();
            if total.is_nan() || total <= 0.0 {
                return Vec::new();
            }
            let mut out = Vec::new();
            for (&u, w) in n.inputs.iter().zip(&weights) {
                for (share, pool, norm) in max_pooled(g, u, summary, budget, normalized) {
                    out.push((share * w / total, pool, norm));
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// An element-wise `f` of a value part of whose channels are max pool outputs
/// ([`max_pooled`]): those parts' correlation is the max pool's rule for `f` composed with
/// the pool's own function and the per-channel affine map between (a normalization
/// standardizes the pool output to `f`'s input: x = a·v + c); the rest, the input's table
/// less those parts, goes through the Hermite rule; the two are mixed by their shares.
fn through_max_pooled(
    g: &ir::Graph,
    f: Func<'_>,
    summary: &dyn Fn(ValueId) -> Summary,
    v: ValueId,
    l: &Lags,
    lags: &[Option<Lags>],
    pools: &[(f64, usize, bool)],
) -> Lags {
    let x = summary(v);
    let pooled: f64 = pools.iter().map(|p| p.0).sum::<f64>().min(1.0);
    let mut rest = *l;
    for &(share, pool, _) in pools {
        let lp = lags[pool + 1].unwrap_or_else(white);
        for (r, p) in rest.iter_mut().flatten().zip(lp.iter().flatten()) {
            *r -= share * p;
        }
    }
    let rest = if pooled < 1.0 - 1e-9 {
        let mut r = table(|y, xx| (rest[y][xx] / (1.0 - pooled)).clamp(-1.0, 1.0));
        r[0][0] = 1.0;
        through(f, x, &r)
    } else {
        white()
    };
    let mut out = [[0.0; R + 1]; R + 1];
    for (o, r) in out.iter_mut().flatten().zip(rest.iter().flatten()) {
        *o = (1.0 - pooled) * r;
    }
    for &(share, pool, normalized) in pools {
        let Op::Pool(p) = &g.nodes[pool].op else { unreachable!("max_pooled returns pools") };
        let (f0, src) = super::graph::max_source_of(g, pool);
        let (pv, sv) = (summary(ValueId(pool + 1)), summary(src));
        // The pool output v to f's input: a normalization maps it to x's mean and variance.
        let (a, c) = if normalized && pv.fluct > 0.0 {
            ((x.fluct / pv.fluct).sqrt(), x.mean - (x.fluct / pv.fluct).sqrt() * pv.mean)
        } else {
            (1.0, 0.0)
        };
        let h = |z: f64| f.eval(a * f0.eval(z).0 + c).0;
        let lp = max_pool(&lags[src.0].unwrap_or_else(white), &h, sv, p.kernel, p.stride);
        for (o, r) in out.iter_mut().flatten().zip(lp.iter().flatten()) {
            *o += share * r;
        }
    }
    out[0][0] = 1.0;
    out
}

/// Node `k`'s output table from its inputs' (`lags`, by value) and their summaries.
pub(super) fn propagate(g: &ir::Graph, k: usize, lags: &[Option<Lags>], summary: &dyn Fn(ValueId) -> Summary) -> Lags {
    let n = &g.nodes[k];
    let input = |i: usize| lags[n.inputs[i].0].unwrap_or_else(white);
    let (_, h, w) = n.output.chw();
    if h * w == 1 {
        return white();
    }
    match &n.op {
        Op::Conv(c) => strided(&input(0), c.stride),
        Op::Linear(_) | Op::Flatten | Op::GlobalPool(_) => white(),
        Op::Activation(_) | Op::Elementwise(_) => {
            let f = super::graph::func(&n.op).expect("element-wise");
            let mut budget = MAX_WALK;
            let pools = max_pooled(g, n.inputs[0], summary, &mut budget, false);
            if pools.is_empty() {
                through(f, summary(n.inputs[0]), &input(0))
            } else {
                through_max_pooled(g, f, summary, n.inputs[0], &input(0), lags, &pools)
            }
        }
        Op::Pool(p) => match p.kind {
            PoolKind::Avg => avg_pool(&input(0), p.kernel, p.stride),
            PoolKind::Max => {
                let (f, src) = super::graph::max_source_of(g, k);
                let l = lags[src.0].unwrap_or_else(white);
                max_pool(&l, &|x| f.eval(x).0, summary(src), p.kernel, p.stride)
            }
        },
        Op::Add | Op::Concat => {
            let parts: Vec<(f64, Lags)> = n
                .inputs
                .iter()
                .map(|&v| {
                    let s = summary(v);
                    (s.fluct * s.channels, lags[v.0].unwrap_or_else(white))
                })
                .collect();
            mixed(&parts)
        }
        Op::Mul => {
            // A per-channel gate scales each channel; a product of two maps keeps the
            // first one's table (the named approximation).
            let spatial = n.inputs.iter().find(|&&v| {
                let (_, h, w) = g.shape(v).chw();
                h * w > 1
            });
            spatial.and_then(|v| lags[v.0]).unwrap_or_else(white)
        }
        // A normalization per channel makes every channel count alike: a concat it reads
        // is mixed again, by channels instead of by the parts' variances.
        Op::BatchNorm(b)
            if super::graph::per_channel_norm(b) && n.inputs[0].0 > 0 && matches!(g.nodes[n.inputs[0].0 - 1].op, Op::Concat) =>
        {
            let cat = &g.nodes[n.inputs[0].0 - 1];
            let parts: Vec<(f64, Lags)> =
                cat.inputs.iter().map(|&v| (g.shape(v).chw().0 as f64, lags[v.0].unwrap_or_else(white))).collect();
            mixed(&parts)
        }
        Op::BatchNorm(_) | Op::ChannelSlice { .. } | Op::Shuffle { .. } => input(0),
        Op::AddBroadcast => input(0),
        // A softmax over positions is monotone in each logit: the named approximation
        // keeps the logits' table.
        Op::SoftmaxPositions => input(0),
        // Positions become channels (efficient channel attention's row): independent.
        Op::SwapChannelsWidth | Op::RadixSoftmax { .. } | Op::AttentionPool => white(),
        Op::Resample(r) => {
            let (_, ih, iw) = g.shape(n.inputs[0]).chw();
            resampled(&input(0), [r.weights(0, ih, h), r.weights(1, iw, w)])
        }
        Op::Dilate { stride } => dilated(&input(0), *stride),
        Op::Resize { scale, linear: false } => nearest(&input(0), *scale),
        Op::Resize { scale, linear: true } => linear(&input(0), *scale),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Activation;

    #[test]
    fn a_window_of_identical_members_keeps_its_whole_variance() {
        let mut l = [[1.0; R + 1]; R + 1];
        l[0][0] = 1.0;
        assert!((window_factor(&l, 2, 2) - 4.0).abs() < 1e-12);
        assert_eq!(window_factor(&white(), 7, 7), 1.0);
    }

    #[test]
    fn neighbours_sharing_no_member_are_uncorrelated_and_identical_windows_fully() {
        let relu = Func::Act(Activation::Relu);
        let relu = |x: f64| relu.eval(x).0;
        assert_eq!(overlap_correlation(&relu, 0.0, 1.0, 9, 0), 0.0);
        assert_eq!(overlap_correlation(&relu, 0.0, 1.0, 9, 9), 1.0);
        // For the identity, sharing k of T members: between 0 and 1, rising with k.
        let id = Func::Act(Activation::Identity);
        let id = |x: f64| id.eval(x).0;
        let (a, b) = (overlap_correlation(&id, 0.0, 1.0, 9, 3), overlap_correlation(&id, 0.0, 1.0, 9, 6));
        assert!(0.0 < a && a < b && b < 1.0, "{a} {b}");
    }
}

#[cfg(test)]
mod sampled {
    use super::*;
    use crate::ir::Activation;

    /// xorshift64* and Box–Muller: standard normals.
    struct Rng(u64);
    impl Rng {
        fn normal(&mut self) -> f64 {
            let mut u = || {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            let (a, b) = (u(), u());
            (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
        }
    }

    /// Lag-(0, 1) correlation of a field, its mean removed.
    fn lag1(f: &[f64], h: usize, w: usize) -> f64 {
        let m = f.iter().sum::<f64>() / f.len() as f64;
        let var = f.iter().map(|v| (v - m).powi(2)).sum::<f64>() / f.len() as f64;
        let mut c = 0.0;
        for y in 0..h {
            for x in 0..w - 1 {
                c += (f[y * w + x] - m) * (f[y * w + x + 1] - m);
            }
        }
        c / (h * (w - 1)) as f64 / var
    }

    #[test]
    fn the_rules_match_a_sampled_field() {
        // A 3×3/2 max pool of ReLUs of independent N(0, 1); a ReLU of a Gaussian field
        // whose neighbours along x correlate by 2/3 at lag 1 and 1/3 at lag 2
        // ((z_p + z_p+1 + z_p+2)/√3).
        let (n, o) = (257usize, 128usize);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut pooled, mut rectified, mut renormed, mut moments) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..8 {
            let x: Vec<f64> = (0..n * n).map(|_| rng.normal().max(0.0)).collect();
            let mut p = vec![0.0; o * o];
            for y in 0..o {
                for xx in 0..o {
                    p[y * o + xx] = (0..3)
                        .flat_map(|dy| (0..3).map(move |dx| (dy, dx)))
                        .map(|(dy, dx)| x[(2 * y + dy) * n + 2 * xx + dx])
                        .fold(f64::MIN, f64::max);
                }
            }
            pooled.push(lag1(&p, o, o));
            // The pool output standardized (a normalization) and rectified again: where two
            // windows share their maximum the two outputs stay equal.
            let m = p.iter().sum::<f64>() / p.len() as f64;
            let sd = (p.iter().map(|v| (v - m).powi(2)).sum::<f64>() / p.len() as f64).sqrt();
            moments.push((m, sd));
            renormed.push(lag1(&p.iter().map(|v| ((v - m) / sd).max(0.0)).collect::<Vec<_>>(), o, o));
            let z: Vec<f64> = (0..n * (n + 2)).map(|_| rng.normal()).collect();
            let g: Vec<f64> = (0..n * n).map(|i| (z[i + i / n * 2] + z[i + i / n * 2 + 1] + z[i + i / n * 2 + 2]) / 3f64.sqrt()).collect();
            rectified.push(lag1(&g.iter().map(|v| v.max(0.0)).collect::<Vec<_>>(), n, n));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let relu = Func::Act(Activation::Relu);
        let x = Summary { mean: 0.0, fluct: 1.0, offset: 0.0, channels: 1.0 };
        let pool = max_pool(&white(), &|v| relu.eval(v).0, x, [3, 3], [2, 2]);
        let mut field = white();
        (field[0][1], field[0][2]) = (2.0 / 3.0, 1.0 / 3.0);
        let after = through(relu, x, &field);
        eprintln!(
            "pool: sampled {:.4}, rule {:.4}; relu: sampled {:.4}, rule {:.4}",
            mean(&pooled),
            pool[0][1],
            mean(&rectified),
            after[0][1]
        );
        assert!((mean(&pooled) - pool[0][1]).abs() < 0.01);
        // The Gaussian rule would take the standardized maximum's ReLU to 0.22; the
        // maximum's own rule keeps the likeness of shared maxima.
        let (m, sd) = moments.iter().fold((0.0, 0.0), |a, &(m, s)| (a.0 + m / 8.0, a.1 + s / 8.0));
        let renorm = max_pool(&white(), &|v| ((relu.eval(v).0 - m) / sd).max(0.0), x, [3, 3], [2, 2]);
        eprintln!("renormalized: sampled {:.4}, rule {:.4}", mean(&renormed), renorm[0][1]);
        assert!((mean(&renormed) - renorm[0][1]).abs() < 0.01);
        assert!(mean(&renormed) > pool[0][1], "the ReLU of a standardized max raises the likeness");
        assert!((mean(&rectified) - after[0][1]).abs() < 0.01);
        assert!(pool[0][2].abs() < 1e-12 && pool[1][1] > 0.0 && after[1][0] == 0.0);
    }

    #[test]
    fn upsampling_rules_match_a_sampled_field() {
        // A white field upsampled 2× along x: by copies (nearest), and by torch's linear
        // interpolation with half-pixel centres (edges clamped), lag-1 and lag-2 correlation.
        let (h, w) = (64usize, 64usize);
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let (mut near, mut lin) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for _ in 0..8 {
            let x: Vec<f64> = (0..h * w).map(|_| rng.normal()).collect();
            let at = |y: usize, i: i64| x[y * w + i.clamp(0, w as i64 - 1) as usize];
            let (mut a, mut b) = (vec![0.0; h * 2 * w], vec![0.0; h * 2 * w]);
            for y in 0..h {
                for o in 0..2 * w {
                    a[y * 2 * w + o] = at(y, (o / 2) as i64);
                    let c = (o as f64 + 0.5) / 2.0 - 0.5;
                    let (i, t) = (c.floor() as i64, c - c.floor());
                    b[y * 2 * w + o] = (1.0 - t) * at(y, i) + t * at(y, i + 1);
                }
            }
            let lag = |f: &[f64], d: usize| {
                let m = f.iter().sum::<f64>() / f.len() as f64;
                let var = f.iter().map(|v| (v - m).powi(2)).sum::<f64>() / f.len() as f64;
                let mut c = 0.0;
                for y in 0..h {
                    for o in 0..2 * w - d {
                        c += (f[y * 2 * w + o] - m) * (f[y * 2 * w + o + d] - m);
                    }
                }
                c / (h * (2 * w - d)) as f64 / var
            };
            near.0.push(lag(&a, 1));
            near.1.push(lag(&a, 2));
            lin.0.push(lag(&b, 1));
            lin.1.push(lag(&b, 2));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (n, l) = (nearest(&white(), [1, 2]), linear(&white(), [1, 2]));
        eprintln!("nearest: sampled {:.4} {:.4}, rule {:.4} {:.4}", mean(&near.0), mean(&near.1), n[0][1], n[0][2]);
        eprintln!("linear: sampled {:.4} {:.4}, rule {:.4} {:.4}", mean(&lin.0), mean(&lin.1), l[0][1], l[0][2]);
        for (sampled, rule) in [(mean(&near.0), n[0][1]), (mean(&near.1), n[0][2]), (mean(&lin.0), l[0][1]), (mean(&lin.1), l[0][2])] {
            assert!((sampled - rule).abs() < 0.02, "sampled {sampled}, rule {rule}");
        }
        assert_eq!(n[1][0], 0.0);
    }
}
