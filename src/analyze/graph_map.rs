//! The position-resolved analysis on graphs (`--analysis map` for graphs).
//!
//! The same rules as [`super::graph`], but every value keeps a map per spatial position
//! (its mean and second moment; backward, the gradient's second moment), as the chain
//! map analysis (`super::map`) does: border units of a padded conv read fewer inputs,
//! border windows of a pooling are smaller, and these profiles compound through depth
//! and through the joins. Channels whose maps are equal share one [`Seg`] (a conv with
//! one group makes all its output channels equal), so a value is a short list of
//! segments, each one plane per moment.

use super::corr::{self, Lags};
use super::graph::{func, gauss_moments, max_moments as iid_max, Cx, Func, GraphOptions, Moment, Params, Passes};
use super::map::{max_moments, MaxMoments};
use super::AnalysisError;
use crate::index::{Axis, PoolGeometry};
use crate::ir::{Activation, Op, PoolKind, Shape, ValueId};
use crate::unify;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// One plane (h × w), row-major.
#[derive(Clone, Debug, PartialEq)]
struct Plane {
    h: usize,
    w: usize,
    d: Vec<f64>,
}

impl Plane {
    fn filled(h: usize, w: usize, v: f64) -> Plane {
        Plane { h, w, d: vec![v; h * w] }
    }
    fn mean(&self) -> f64 {
        self.d.iter().sum::<f64>() / self.d.len() as f64
    }
    fn map(&self, f: impl Fn(f64) -> f64) -> Plane {
        Plane { h: self.h, w: self.w, d: self.d.iter().map(|&v| f(v)).collect() }
    }
    fn scaled(&self, k: f64) -> Plane {
        self.map(|v| v * k)
    }
    fn add(&mut self, o: &Plane, k: f64) {
        for (a, b) in self.d.iter_mut().zip(&o.d) {
            *a += k * b;
        }
    }
}

/// `n` channels sharing their maps: forward `[mean, second]`, backward `[gradient]`.
#[derive(Clone, Debug, PartialEq)]
struct Seg {
    n: usize,
    maps: Vec<Plane>,
}

type Val = Vec<Seg>;

fn channels(v: &Val) -> usize {
    v.iter().map(|s| s.n).sum()
}

/// Channels `start..end`.
fn range(v: &Val, start: usize, end: usize) -> Val {
    let mut out = Vec::new();
    let mut at = 0;
    for s in v {
        let (lo, hi) = (at.max(start), (at + s.n).min(end));
        if lo < hi {
            out.push(Seg { n: hi - lo, maps: s.maps.clone() });
        }
        at += s.n;
    }
    out
}

/// Adjacent segments with equal maps become one.
fn merge(v: Val) -> Val {
    let mut out: Val = Vec::with_capacity(v.len());
    for s in v {
        match out.last_mut() {
            Some(l) if l.maps == s.maps => l.n += s.n,
            _ => out.push(s),
        }
    }
    out
}

/// The segments of several values cut at the union of their boundaries, in lockstep.
fn aligned<'a>(vals: &[&'a Val]) -> Vec<(usize, Vec<&'a Seg>)> {
    let mut cursors: Vec<(usize, usize)> = vec![(0, 0); vals.len()]; // (segment, used of it)
    let mut out = Vec::new();
    loop {
        if cursors.iter().zip(vals).any(|(c, v)| c.0 >= v.len()) {
            return out;
        }
        let n = cursors.iter().zip(vals).map(|(c, v)| v[c.0].n - c.1).min().unwrap_or(0);
        out.push((n, cursors.iter().zip(vals).map(|(c, v)| &v[c.0]).collect()));
        for (c, v) in cursors.iter_mut().zip(vals) {
            c.1 += n;
            if c.1 == v[c.0].n {
                *c = (c.0 + 1, 0);
            }
        }
    }
}

/// Mean over channels and positions of map `m`, and its range over positions.
fn moment(v: &Val, m: usize) -> Moment {
    let c = channels(v).max(1) as f64;
    let avg = v.iter().map(|s| s.n as f64 * s.maps[m].mean()).sum::<f64>() / c;
    let (min, max) =
        v.iter().flat_map(|s| s.maps[m].d.iter()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    Moment { avg, min, max }
}

/// Per position: Σ over the real taps of `p` (a conv's forward sum).
fn tap_sum(p: &Plane, h: &Axis, w: &Axis) -> Plane {
    let mut out = Plane::filled(h.output as usize, w.output as usize, 0.0);
    for oy in 0..h.output {
        let ty = h.taps(oy);
        for ox in 0..w.output {
            let tx = w.taps(ox);
            let mut s = 0.0;
            for ky in ty.clone() {
                let row = h.input_of(oy, ky) as usize * p.w;
                for kx in tx.clone() {
                    s += p.d[row + w.input_of(ox, kx) as usize];
                }
            }
            out.d[oy as usize * out.w + ox as usize] = s;
        }
    }
    out
}

/// Per tap t of a conv (row-major over the kernel): the mean over output positions of what
/// t reads of `mu` (0 where it reads padding), M_t.
fn tap_means(mu: &Plane, geo: &crate::index::ConvGeometry) -> Vec<f64> {
    let kw = geo.w.kernel as usize;
    let mut sum = vec![0.0; geo.h.kernel as usize * kw];
    for oy in 0..geo.h.output {
        for ox in 0..geo.w.output {
            for ky in geo.h.taps(oy) {
                let row = geo.h.input_of(oy, ky) as usize * mu.w;
                for kx in geo.w.taps(ox) {
                    sum[ky as usize * kw + kx as usize] += mu.d[row + geo.w.input_of(ox, kx) as usize];
                }
            }
        }
    }
    let p_out = (geo.h.output * geo.w.output) as f64;
    sum.iter().map(|v| v / p_out).collect()
}

/// Per input position: Σ over the (output, tap) pairs that read it (the transposed sum).
fn reader_sum(p: &Plane, h: &Axis, w: &Axis) -> Plane {
    let rows: Vec<Vec<(u64, u64)>> = (0..h.input).map(|i| h.readers(i)).collect();
    let cols: Vec<Vec<(u64, u64)>> = (0..w.input).map(|i| w.readers(i)).collect();
    let mut out = Plane::filled(h.input as usize, w.input as usize, 0.0);
    for (iy, r) in rows.iter().enumerate() {
        for (ix, c) in cols.iter().enumerate() {
            let mut s = 0.0;
            for &(oy, _) in r {
                for &(ox, _) in c {
                    s += p.d[oy as usize * p.w + ox as usize];
                }
            }
            out.d[iy * out.w + ix] = s;
        }
    }
    out
}

/// Per group of a conv (forward, or transposed for the gradient): Σ over the segments of
/// `v` among the group's `per_in` channels of n · `sum`(map `m`), with the number of
/// channels it gives on the other side (`per_out` per group). When each group reads one
/// channel (depthwise), one entry per segment, so that equal channels stay one segment.
fn group_sums(
    v: &Val,
    m: usize,
    groups: usize,
    per_in: usize,
    per_out: usize,
    dims: (usize, usize),
    sum: impl Fn(&Plane) -> Plane,
) -> Vec<(usize, Plane)> {
    if per_in == 1 {
        return v.iter().map(|s| (s.n * per_out, sum(&s.maps[m]))).collect();
    }
    (0..groups)
        .map(|gi| {
            let mut acc = Plane::filled(dims.0, dims.1, 0.0);
            for s in &range(v, gi * per_in, (gi + 1) * per_in) {
                acc.add(&sum(&s.maps[m]), s.n as f64);
            }
            (per_out, acc)
        })
        .collect()
}

/// A pooling's windows: per output position the input cells and the divisor.
struct Windows {
    geo: PoolGeometry,
    include_pad: bool,
    global: bool,
    max: bool,
}

impl Windows {
    fn of(node: &crate::ir::Node, input: Shape) -> Windows {
        let p = unify::pooling(node, input);
        let include_pad = p.pool.as_ref().is_none_or(|q| q.count_include_pad);
        Windows { geo: p.geometry, include_pad, global: p.global, max: p.kind == PoolKind::Max }
    }
    fn cells(&self, oy: u64, ox: u64) -> (Vec<usize>, f64) {
        let (ys, xs) = (self.geo.h.window(oy), self.geo.w.window(ox));
        let iw = self.geo.w.input as usize;
        let cells: Vec<usize> = ys.clone().flat_map(|y| xs.clone().map(move |x| y as usize * iw + x as usize)).collect();
        let divisor = if self.include_pad && !self.global { (self.geo.h.kernel * self.geo.w.kernel) as f64 } else { cells.len() as f64 };
        (cells, divisor)
    }
    fn out_dims(&self) -> (usize, usize) {
        (self.geo.h.output as usize, self.geo.w.output as usize)
    }
}

/// What [`MapPasses::max_pooled_seg`] reads of a max pool, per output position:
/// [members' mean, their variance, their count, the output's mean, its variance].
struct PooledSeg<'a> {
    f0: Func<'a>,
    normalized: bool,
    at: Vec<[f64; 5]>,
}

/// The segment of `v` that holds channel `c`.
fn seg_at(v: &Val, c: usize) -> &Seg {
    let mut first = 0;
    for s in v {
        if c < first + s.n {
            return s;
        }
        first += s.n;
    }
    v.last().expect("a value has channels")
}

type MaxCache = HashMap<Vec<u64>, Rc<MaxMoments>>;

/// An iid max-pool window: (node, mean bits, second-moment bits, members).
type IidKey = (usize, u64, u64, usize);

fn cached_max(cache: &mut MaxCache, s: &[f64]) -> Rc<MaxMoments> {
    let key: Vec<u64> = s.iter().map(|v| v.to_bits()).collect();
    cache.entry(key).or_insert_with(|| Rc::new(max_moments(s))).clone()
}

/// What a max-pool window reads: exactly (independent zero-mean Gaussians through a
/// monotone piecewise-linear f), or as iid Gaussians of the window's mean statistics.
enum MaxRule<'a> {
    Exact(f64),
    Iid(Func<'a>),
}

pub(super) struct MapPasses {
    stats: Vec<Option<Val>>,
    /// Per value and channel, the variance of the part that every position and sample
    /// shares ([`MapPasses::shared_fwd`]): what batch statistics remove besides the mean.
    shared: Vec<Vec<f64>>,
    shared_memo: HashMap<(usize, u64, u64, u64), f64>,
    /// The element-wise nodes whose input is a stream plus a branch with shared parts
    /// ([`MapPasses::elementwise`]): [`MapPasses::shared_fwd`] takes their offsets from
    /// [`super::graph::sum_offset`], memoized here.
    sum_shared: HashSet<usize>,
    sum_shared_memo: HashMap<(usize, [u64; 6]), f64>,
    /// The stages' streams ([`super::graph::Chains`]), each one's law so far, and per
    /// stream ReLU the channels' offset its law gives ([`super::walk::Stream`]).
    chains: Option<super::graph::Chains>,
    streams: HashMap<usize, super::walk::Stream>,
    stream_offset: HashMap<usize, f64>,
    /// Backward: the stages' walks ([`super::graph::stream_walks`]), and per value made by
    /// a stream ReLU the parts of its gradient by how many of the stage's masks they
    /// passed (the paper analysis's `along`).
    walks: HashMap<usize, super::graph::ChainPos>,
    along: HashMap<usize, Vec<Val>>,
    /// Per value and channel, the fraction of the gradient shared by a sample's positions
    /// ([`super::graph::shared_fractions`]), for the per-sample normalizations.
    gfrac: Vec<Vec<f64>>,
    cache: MaxCache,
    memo: HashMap<(usize, u64, u64), (f64, f64, f64)>,
    /// Element-wise node, then a max pool's members and the affine map to its input →
    /// moments ([`MapPasses::max_composite_at`]).
    composite: HashMap<(usize, [u64; 5]), (f64, f64, f64)>,
    /// Per value, the part of its gradient already masked on the support of the ReLU
    /// that made it (the paper analysis's `on_support`), for one backward pass.
    on_support: HashMap<usize, Val>,
    /// The paper analysis's `via_skip`: per value made by a ReLU g that a residual
    /// stream's next ReLU f reads through an Add, the part of its gradient that came
    /// through f and the identity path, and per channel κ ([`super::graph::mask_overlap`]).
    via_skip: HashMap<usize, (Val, Vec<f64>)>,
    /// iid max-pool windows: (node, mean, variance, members) → moments.
    iid: HashMap<IidKey, (f64, f64, f64)>,
    /// Per value, the spatial correlation of its fluctuation ([`super::corr`]).
    lags: Vec<Option<Lags>>,
    /// Per value and channel, where known, E[m(o) m̄] per position: the offset its
    /// weights give position o times the channel's mean offset ([`MapPasses::offset_cross`]).
    /// Conv outputs have it; Concat and channel slices pass it on.
    cross: Vec<Vec<Option<Rc<Plane>>>>,
}

impl MapPasses {
    pub(super) fn new() -> MapPasses {
        MapPasses {
            stats: Vec::new(),
            shared: Vec::new(),
            shared_memo: HashMap::new(),
            sum_shared: HashSet::new(),
            sum_shared_memo: HashMap::new(),
            chains: None,
            streams: HashMap::new(),
            stream_offset: HashMap::new(),
            walks: HashMap::new(),
            along: HashMap::new(),
            gfrac: Vec::new(),
            on_support: HashMap::new(),
            via_skip: HashMap::new(),
            cache: HashMap::new(),
            memo: HashMap::new(),
            composite: HashMap::new(),
            iid: HashMap::new(),
            lags: Vec::new(),
            cross: Vec::new(),
        }
    }
}

/// The max rule of a pooling node and the value its statistics come from.
fn max_rule<'g>(cx: &Cx<'g>, k: usize, stats: &[Option<Val>]) -> (MaxRule<'g>, ValueId, bool) {
    let g = cx.g;
    // A monotone f's output is looked through whoever else reads it (the paper
    // analysis's `max_source`).
    let through =
        Some(g.nodes[k].inputs[0].0).filter(|&v| v > 0).and_then(|v| func(&g.nodes[v - 1].op).filter(|f| f.monotone()).map(|_| v - 1));
    if let Some(a) = through {
        let an = &g.nodes[a];
        let u = stats[an.inputs[0].0].as_ref().expect("computed");
        let zero_mean = u.iter().all(|s| s.maps[0].d.iter().all(|&m| m == 0.0) && s.maps[1].d.iter().all(|&q| q > 0.0));
        if let Some(f) = func(&an.op) {
            if let (Some(slope), true) = (f.slope(), zero_mean) {
                return (MaxRule::Exact(slope), an.inputs[0], true);
            }
            return (MaxRule::Iid(f), an.inputs[0], true);
        }
    }
    (MaxRule::Iid(Func::Act(Activation::Identity)), g.nodes[k].inputs[0], false)
}

impl MapPasses {
    fn get(&self, v: ValueId) -> &Val {
        self.stats[v.0].as_ref().expect("values are computed in topological order")
    }

    /// A value that is exactly zero (a residual branch started at zero).
    fn is_zero(&self, v: ValueId) -> bool {
        self.get(v).iter().all(|s| s.maps[1].d.iter().all(|&q| q == 0.0))
    }

    /// Adds `part` to the on-support part of value `v`'s gradient ([`super::graph::passes_unchanged`]).
    fn mark_on_support(&mut self, v: ValueId, part: Val) {
        let merged = match self.on_support.remove(&v.0) {
            None => part,
            Some(old) => sum(&old, &part),
        };
        self.on_support.insert(v.0, merged);
    }

    fn elementwise(&mut self, cx: &Cx<'_>, k: usize, f: Func<'_>, x: &Val) -> (Val, Val) {
        // Returns the output value and the E[f'²] planes (for backward) as a value.
        if super::graph::passes_unchanged(cx.g, k, |v| self.is_zero(v)).is_some() {
            let ones = x.iter().map(|s| Seg { n: s.n, maps: vec![s.maps[0].map(|_| 1.0)] }).collect();
            return (x.clone(), ones);
        }
        let sum = self.elementwise_of_sum(cx, k, f);
        if let Some((r, false)) = sum {
            return r;
        }
        let origin = super::graph::max_pooled_channels(cx.g, cx.g.nodes[k].inputs[0]);
        let mut out = Vec::with_capacity(x.len());
        let mut grads = Vec::with_capacity(x.len());
        let mut first = 0;
        for s in x {
            let (mu, sec) = (&s.maps[0], &s.maps[1]);
            let mut m1 = Plane::filled(mu.h, mu.w, 0.0);
            let mut m2 = m1.clone();
            let mut d2 = m1.clone();
            let pooled = origin.as_ref().and_then(|o| self.max_pooled_seg(cx, &o[first..first + s.n]));
            first += s.n;
            for i in 0..mu.d.len() {
                let (a, b) = (mu.d[i], sec.d[i]);
                if let Some(m) = pooled.as_ref().and_then(|p| self.max_composite_at(k, p, f, i, a, b - a * a)) {
                    (m1.d[i], m2.d[i], d2.d[i]) = m;
                    continue;
                }
                let r = *self.memo.entry((k, a.to_bits(), b.to_bits())).or_insert_with(|| gauss_moments(f, a, b - a * a));
                m1.d[i] = r.0;
                m2.d[i] = r.1;
                d2.d[i] = r.2;
            }
            out.push(Seg { n: s.n, maps: vec![m1, m2] });
            grads.push(Seg { n: s.n, maps: vec![d2] });
        }
        if let Some(((sum_out, _), true)) = sum {
            // A stream and a branch with shared parts: the sum's moments forward, the
            // Gaussian's open fraction backward (see `super::graph::sum_channel_moments`).
            self.sum_shared.insert(k);
            return (sum_out, grads);
        }
        (out, grads)
    }

    /// A segment all of whose channels are one max pool's output channels, unmixed
    /// ([`super::graph::max_pooled_channels`]), with no channel offset at the pool's
    /// members: per position of the pool's output, its members' mean and variance (as
    /// iid), their count, and the pool output's mean and variance; the pool's own function;
    /// whether a normalization lies between. The first channel's stand for the segment's.
    fn max_pooled_seg<'c>(&self, cx: &Cx<'c>, origin: &[Option<(usize, usize, bool)>]) -> Option<PooledSeg<'c>> {
        let &(pool, pc, normalized) = origin.first()?.as_ref()?;
        if origin.iter().any(|o| o.is_none_or(|(p, _, n)| p != pool || n != normalized)) {
            return None;
        }
        let g = cx.g;
        let (f0, src) = super::graph::max_source_of(g, pool);
        if self.shared[src.0].get(pc).is_some_and(|&a| a != 0.0) {
            return None;
        }
        let n = &g.nodes[pool];
        let win = Windows::of(n, g.shape(n.inputs[0]));
        let (oh, ow) = win.out_dims();
        let (ss, ps) = (seg_at(self.get(src), pc), seg_at(self.get(ValueId(pool + 1)), pc));
        let mut at = Vec::with_capacity(oh * ow);
        for oy in 0..oh {
            for ox in 0..ow {
                let (cells, _) = win.cells(oy as u64, ox as u64);
                let t = cells.len() as f64;
                let m = cells.iter().map(|&c| ss.maps[0].d[c]).sum::<f64>() / t;
                let q = cells.iter().map(|&c| ss.maps[1].d[c]).sum::<f64>() / t;
                let i = oy * ow + ox;
                let (mp, qp) = (ps.maps[0].d[i], ps.maps[1].d[i]);
                at.push([m, q - m * m, t, mp, qp - mp * mp]);
            }
        }
        Some(PooledSeg { f0, normalized, at })
    }

    /// [`super::graph::max_composite_moments`] at position `i` of a [`PooledSeg`], the
    /// element-wise input there having mean `mx` and variance `vx`.
    fn max_composite_at(&mut self, k: usize, p: &PooledSeg<'_>, f: Func<'_>, i: usize, mx: f64, vx: f64) -> Option<(f64, f64, f64)> {
        let [ms, vs, t, mp, vp] = *p.at.get(i)?;
        let (a, c) = if p.normalized && vp > 0.0 { ((vx / vp).sqrt(), mx - (vx / vp).sqrt() * mp) } else { (1.0, 0.0) };
        let key = [ms, vs, t, a, c].map(f64::to_bits);
        Some(*self.composite.entry((k, key)).or_insert_with(|| super::graph::max_composite_moments(f, p.f0, ms, vs, t as u64, a, c)))
    }

    /// f of a residual stream plus a branch ([`super::graph::rectified_sum`]): per
    /// position, [`super::graph::sum_moments`] (the shared parts in the variances), and
    /// whether either carries a shared part.
    fn elementwise_of_sum(&mut self, cx: &Cx<'_>, k: usize, f: Func<'_>) -> Option<((Val, Val), bool)> {
        let (g, a, c) = super::graph::rectified_sum(cx.g, cx.g.nodes[k].inputs[0])?;
        let shared = self.shared[a.0].iter().chain(&self.shared[c.0]).any(|&v| v != 0.0);
        if shared && (f.slope().is_none() || self.chains.as_ref().and_then(|ch| ch.at(k)).is_some_and(|(_, i)| i > 0)) {
            // A stage's stream: the walk sets its moments and open fraction
            // ([`MapPasses::stream_fwd`]); the Gaussian per position gives their shape. A
            // smooth f with offsets: the Gaussian (the sum's quadrature per position and
            // offset node costs too much).
            return None;
        }
        let (va, vc) = (self.get(a).clone(), self.get(c).clone());
        let mut memo: HashMap<[u64; 4], [f64; 4]> = HashMap::new();
        let (mut out, mut grads) = (Vec::new(), Vec::new());
        for (n, segs) in aligned(&[&va, &vc]) {
            let (sa, sc) = (segs[0], segs[1]);
            let (h, w) = (sa.maps[0].h, sa.maps[0].w);
            let mut planes: Vec<Plane> = (0..4).map(|_| Plane::filled(h, w, 0.0)).collect();
            for i in 0..h * w {
                let (ma, qa, mc, qc) = (sa.maps[0].d[i], sa.maps[1].d[i], sc.maps[0].d[i], sc.maps[1].d[i]);
                let r = *memo
                    .entry([ma, qa, mc, qc].map(f64::to_bits))
                    .or_insert_with(|| super::graph::sum_moments(f, ma, qa - ma * ma, g, mc, qc - mc * mc));
                for (p, v) in planes.iter_mut().zip(r) {
                    p.d[i] = v;
                }
            }
            planes.pop(); // E f': the paper analysis's shared fractions carry it
            let d2 = planes.pop().expect("four planes");
            out.push(Seg { n, maps: planes });
            grads.push(Seg { n, maps: vec![d2] });
        }
        Some(((merge(out), grads), shared))
    }
}

impl Passes for MapPasses {
    fn forward(&mut self, cx: &Cx<'_>, p: &mut Params, opts: &GraphOptions, choose: bool) -> Result<Vec<Moment>, AnalysisError> {
        let g = cx.g;
        for (k, n) in g.nodes.iter().enumerate() {
            let (_, h, w) = g.shape(n.inputs[0]).chw();
            if h * w > super::graph::MAX_MAP_CELLS {
                let message = format!(
                    "its input has {h}×{w} positions per channel, more than the map analysis's limit of {}; use --analysis paper",
                    super::graph::MAX_MAP_CELLS
                );
                return Err(super::graph::fail(g, k, message));
            }
        }
        let (c0, h0, w0) = g.input.chw();
        self.stats = vec![None; g.nodes.len() + 1];
        self.stats[0] = Some(vec![Seg {
            n: c0 as usize,
            maps: vec![Plane::filled(h0 as usize, w0 as usize, 0.0), Plane::filled(h0 as usize, w0 as usize, 1.0)],
        }]);
        self.shared = vec![Vec::new(); g.nodes.len() + 1];
        self.shared[0] = vec![0.0; c0 as usize];
        self.sum_shared.clear();
        self.streams.clear();
        self.stream_offset.clear();
        self.chains = Some(super::graph::Chains::of(g));
        self.lags = vec![None; g.nodes.len() + 1];
        self.lags[0] = Some(corr::white());
        self.cross = vec![Vec::new(); g.nodes.len() + 1];
        self.cross[0] = vec![None; c0 as usize];
        for (k, n) in g.nodes.iter().enumerate() {
            let mut run = Run { cx, p: &mut *p, opts, choose };
            let out = (map_rules(&n.op).0)(self, &mut run, k)?;
            debug_assert_eq!(channels(&out) as u64, n.output.chw().0, "node {k}");
            self.stats[k + 1] = Some(out);
            self.shared[k + 1] = self.shared_fwd(cx, p, k);
            debug_assert_eq!(self.shared[k + 1].len() as u64, n.output.chw().0, "node {k}");
            self.cross[k + 1] = self.cross_fwd(cx, p, k);
            let (stats, shared) = (&self.stats, &self.shared);
            let l = corr::propagate(g, k, &self.lags, &|v| summary(stats[v.0].as_ref().expect("computed"), &shared[v.0]));
            self.lags[k + 1] = Some(l);
        }
        Ok(self.stats.iter().map(|v| moment(v.as_ref().expect("computed"), 1)).collect())
    }

    fn backward(&mut self, cx: &Cx<'_>, p: &mut Params, opts: &GraphOptions, choose: bool) -> Result<Vec<Moment>, AnalysisError> {
        let g = cx.g;
        self.on_support.clear();
        self.via_skip.clear();
        self.along.clear();
        self.walks = super::graph::stream_walks(g, |v| {
            let x = self.get(v);
            (moment(x, 0).avg, moment(x, 1).avg)
        });
        let zero = |v: usize| -> Val {
            let s = g.shape(ValueId(v));
            let (c, h, w) = s.chw();
            vec![Seg { n: c as usize, maps: vec![Plane::filled(h as usize, w as usize, 0.0)] }]
        };
        if super::graph::reads_shared(g, opts) {
            let per_channel = (0..=g.nodes.len())
                .map(|v| {
                    let x = self.stats[v].as_ref().expect("computed");
                    (channel_means(x, 0), channel_means(x, 1), self.shared[v].clone())
                })
                .collect();
            self.gfrac = super::graph::shared_fractions(cx, per_channel, p, opts)?;
        }
        let mut grads: Vec<Option<Val>> = vec![None; g.nodes.len() + 1];
        let last = g.nodes.len();
        let (c, h, w) = g.shape(ValueId(last)).chw();
        grads[last] = Some(vec![Seg { n: c as usize, maps: vec![Plane::filled(h as usize, w as usize, 1.0)] }]);
        let fused_acts: std::collections::HashSet<usize> = cx.fused.values().copied().collect();
        let mut out_moments = vec![Moment::default(); g.nodes.len() + 1];
        for (k, n) in g.nodes.iter().enumerate().rev() {
            let dz = grads[k + 1].take().unwrap_or_else(|| zero(k + 1));
            out_moments[k + 1] = moment(&dz, 0);
            if fused_acts.contains(&k) {
                continue;
            }
            let mut run = Run { cx, p: &mut *p, opts, choose };
            (map_rules(&n.op).1)(self, &mut run, k, &dz, &mut grads)?;
            grads[k + 1] = Some(dz);
        }
        out_moments[0] = moment(&grads[0].take().unwrap_or_else(|| zero(0)), 0);
        Ok(out_moments)
    }
}

/// What [`corr`] reads of a value: channel and position averages, the offset `shared`.
fn summary(x: &Val, shared: &[f64]) -> corr::Summary {
    let c = channels(x).max(1) as f64;
    let (mut mean, mut fluct) = (0.0, 0.0);
    for s in x {
        let (mu, sec) = (&s.maps[0], &s.maps[1]);
        let m = mu.mean();
        mean += s.n as f64 * m;
        fluct += s.n as f64 * (sec.mean() - mu.d.iter().map(|v| v * v).sum::<f64>() / mu.d.len() as f64);
    }
    let offset = shared.iter().sum::<f64>() / c;
    corr::Summary { mean: mean / c, fluct: (fluct / c - offset).max(0.0), offset, channels: c }
}

/// Two gradients' second moments added, position by position.
fn sum(a: &Val, b: &Val) -> Val {
    merge(
        aligned(&[a, b])
            .into_iter()
            .map(|(c, s)| {
                let mut m = s[0].maps[0].clone();
                m.add(&s[1].maps[0], 1.0);
                Seg { n: c, maps: vec![m] }
            })
            .collect(),
    )
}

/// Adds a gradient contribution to value `v`.
fn send(grads: &mut [Option<Val>], v: ValueId, contrib: Val) {
    let merged = match grads[v.0].take() {
        None => contrib,
        Some(old) => sum(&old, &contrib),
    };
    grads[v.0] = Some(merged);
}

/// A forward rule of the map analysis: node `k`'s output maps.
type MapFwdRule = fn(&mut MapPasses, &mut Run<'_, '_>, usize) -> Result<Val, AnalysisError>;
/// A backward rule: node `k` sends the gradient maps `dz` at its output to its inputs.
type MapBwdRule = fn(&mut MapPasses, &mut Run<'_, '_>, usize, &Val, &mut [Option<Val>]) -> Result<(), AnalysisError>;

/// What every rule reads: the graph, σ² (written when `choose`), the options.
pub(super) struct Run<'a, 'g> {
    cx: &'a Cx<'g>,
    p: &'a mut Params,
    opts: &'a GraphOptions,
    /// Choose σ² of each weight node to meet its target.
    choose: bool,
}

/// The map analysis's rules: one forward and one backward function per op kind
/// (`Op::kind_name`), beside the paper analysis's `RULES` in `graph.rs`.
const MAP_RULES: &[(&str, MapFwdRule, MapBwdRule)] = &[
    ("conv", MapPasses::weight_fwd, MapPasses::weight_bwd),
    ("linear", MapPasses::weight_fwd, MapPasses::weight_bwd),
    ("activation", MapPasses::elementwise_fwd, MapPasses::elementwise_bwd),
    ("elementwise", MapPasses::elementwise_fwd, MapPasses::elementwise_bwd),
    ("avgpool", MapPasses::pool_fwd, MapPasses::pool_bwd),
    ("global avgpool", MapPasses::pool_fwd, MapPasses::pool_bwd),
    ("maxpool", MapPasses::pool_fwd, MapPasses::pool_bwd),
    ("global maxpool", MapPasses::pool_fwd, MapPasses::pool_bwd),
    ("flatten", MapPasses::flatten_fwd, MapPasses::flatten_bwd),
    ("add", MapPasses::add_fwd, MapPasses::add_bwd),
    ("concat", MapPasses::concat_fwd, MapPasses::concat_bwd),
    ("mul", MapPasses::mul_fwd, MapPasses::mul_bwd),
    ("batchnorm", MapPasses::batch_norm_fwd, MapPasses::batch_norm_bwd),
    ("slice", MapPasses::slice_fwd, MapPasses::slice_bwd),
    ("shuffle", MapPasses::shuffle_fwd, MapPasses::shuffle_bwd),
    ("resize", MapPasses::resize_fwd, MapPasses::resize_bwd),
    ("dilate", MapPasses::dilate_fwd, MapPasses::dilate_bwd),
    ("resample", MapPasses::resample_fwd, MapPasses::resample_bwd),
    ("swap", MapPasses::swap_fwd, MapPasses::swap_bwd),
    ("softmax positions", MapPasses::softmax_positions_fwd, MapPasses::softmax_positions_bwd),
    ("attention pool", MapPasses::attention_pool_fwd, MapPasses::attention_pool_bwd),
    ("add broadcast", MapPasses::add_broadcast_fwd, MapPasses::add_broadcast_bwd),
    ("radix softmax", MapPasses::radix_softmax_fwd, MapPasses::radix_softmax_bwd),
];

fn map_rules(op: &Op) -> (MapFwdRule, MapBwdRule) {
    let kind = op.kind_name();
    let (_, f, b) = MAP_RULES.iter().find(|(name, _, _)| *name == kind).unwrap_or_else(|| panic!("no map rules for op kind `{kind}`"));
    (*f, *b)
}

// ---------------------------------------------------------------- one pair of rules per op

/// A resampling's weights per axis: (h, w), each output position's (input, weight) list.
type AxisWeights = [Vec<Vec<(usize, f64)>>; 2];

fn resample_weights(g: &crate::ir::Graph, k: usize) -> AxisWeights {
    let n = &g.nodes[k];
    let Op::Resample(r) = &n.op else { unreachable!("the resample rule") };
    let (_, h, w) = g.shape(n.inputs[0]).chw();
    let (_, oh, ow) = n.output.chw();
    [r.weights(0, h, oh), r.weights(1, w, ow)]
}

/// Σ_i a_i p_i per output position (a_i², with `square`), a = a_h ⊗ a_w.
fn resample_plane(p: &Plane, a: &AxisWeights, square: bool) -> Plane {
    let f = |v: f64| if square { v * v } else { v };
    let mut out = Plane::filled(a[0].len(), a[1].len(), 0.0);
    for (oy, row) in a[0].iter().enumerate() {
        for (ox, col) in a[1].iter().enumerate() {
            let mut s = 0.0;
            for &(iy, wy) in row {
                for &(ix, wx) in col {
                    s += f(wy * wx) * p.d[iy * p.w + ix];
                }
            }
            out.d[oy * out.w + ox] = s;
        }
    }
    out
}

/// Σ_o a_oi p_o per input position (a², with `square`): the transposed resampling.
fn resample_plane_t(p: &Plane, a: &AxisWeights, square: bool, (h, w): (usize, usize)) -> Plane {
    let f = |v: f64| if square { v * v } else { v };
    let mut out = Plane::filled(h, w, 0.0);
    for (oy, row) in a[0].iter().enumerate() {
        for (ox, col) in a[1].iter().enumerate() {
            let d = p.d[oy * p.w + ox];
            for &(iy, wy) in row {
                for &(ix, wx) in col {
                    out.d[iy * w + ix] += f(wy * wx) * d;
                }
            }
        }
    }
    out
}

impl MapPasses {
    /// Resampling, per position: the mean Σ a μ, the second moment (Σ a μ)² + A + Σ a²
    /// (s − μ² − A), A the channel's shared part (which the weights, summing to 1, keep).
    fn resample_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let a = resample_weights(r.cx.g, k);
        let x = self.get(n.inputs[0]).clone();
        let shared = self.shared[n.inputs[0].0].clone();
        let mut out = Vec::new();
        for (seg, sh) in split_by(&x, &shared) {
            let mean = resample_plane(&seg.maps[0], &a, false);
            let var_in = Plane {
                h: seg.maps[1].h,
                w: seg.maps[1].w,
                d: seg.maps[1].d.iter().zip(&seg.maps[0].d).map(|(s, m)| s - m * m - sh).collect(),
            };
            let var = resample_plane(&var_in, &a, true);
            let second = Plane { h: mean.h, w: mean.w, d: mean.d.iter().zip(&var.d).map(|(m, v)| m * m + sh + v).collect() };
            out.push(Seg { n: seg.n, maps: vec![mean, second] });
        }
        Ok(merge(out))
    }

    /// Resampling, backward, per input position: Σ_o a_oi² (E[δy_o²] − G) + (Σ_o a_oi)² G,
    /// G the part of the gradient a sample shares (its fraction from the paper analysis).
    fn resample_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let a = resample_weights(r.cx.g, k);
        let (_, h, w) = r.cx.g.shape(n.inputs[0]).chw();
        let dims = (h as usize, w as usize);
        let frac = self.gfrac.get(k + 1).cloned().unwrap_or_default();
        let frac: Vec<f64> = (0..channels(dz)).map(|c| frac.get(c).copied().unwrap_or(0.0)).collect();
        let ones = Plane::filled(a[0].len(), a[1].len(), 1.0);
        let col = resample_plane_t(&ones, &a, false, dims);
        let mut out = Vec::new();
        for (seg, f) in split_by(dz, &frac) {
            let g = f * seg.maps[0].mean();
            let rest = Plane { h: seg.maps[0].h, w: seg.maps[0].w, d: seg.maps[0].d.iter().map(|d| d - g).collect() };
            let sq = resample_plane_t(&rest, &a, true, dims);
            let d = sq.d.iter().zip(&col.d).map(|(v, c)| v + c * c * g).collect();
            out.push(Seg { n: seg.n, maps: vec![Plane { h: dims.0, w: dims.1, d }] });
        }
        send(grads, n.inputs[0], merge(out));
        Ok(())
    }
}

/// (A, 1, B) → (B, 1, A) of every map of `v`: output channel b's plane, position a, is
/// input channel a's plane at position b.
fn swap(v: &Val) -> Val {
    let planes = per_channel(v);
    let a = planes.len();
    let b = planes.first().map_or(0, |s| s.maps[0].d.len());
    let moments = planes.first().map_or(0, |s| s.maps.len());
    merge(
        (0..b)
            .map(|j| Seg {
                n: 1,
                maps: (0..moments).map(|m| Plane { h: 1, w: a, d: planes.iter().map(|s| s.maps[m].d[j]).collect() }).collect(),
            })
            .collect(),
    )
}

impl MapPasses {
    /// Split attention's softmax across the radix: the paper analysis's rule on the
    /// channels' one-position values (exact there: a pooled vector has one position).
    fn radix_softmax_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let Op::RadixSoftmax { radix, groups } = n.op else { unreachable!("the radix softmax rule") };
        let x = self.get(n.inputs[0]);
        let (mu, sec) = (channel_means(x, 0), channel_means(x, 1));
        let a = &self.shared[n.inputs[0].0];
        let xs: Vec<(f64, f64, f64)> = (0..mu.len()).map(|c| (mu[c], sec[c], a[c])).collect();
        let m = super::graph::radix_moments(&xs, &super::graph::radix_pairs(r.cx.g, k, mu.len() as u64, radix, groups)?);
        Ok(merge(m.iter().map(|v| Seg { n: 1, maps: vec![Plane::filled(1, 1, v.0), Plane::filled(1, 1, v.1)] }).collect()))
    }

    fn radix_softmax_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let Op::RadixSoftmax { radix, groups } = n.op else { unreachable!("the radix softmax rule") };
        let x = self.get(n.inputs[0]);
        let (mu, sec) = (channel_means(x, 0), channel_means(x, 1));
        let a = &self.shared[n.inputs[0].0];
        let xs: Vec<(f64, f64, f64)> = (0..mu.len()).map(|c| (mu[c], sec[c], a[c])).collect();
        let pairs = super::graph::radix_pairs(r.cx.g, k, mu.len() as u64, radix, groups)?;
        let m = super::graph::radix_moments(&xs, &pairs);
        let d = channel_means(dz, 0);
        let out_of: HashMap<usize, usize> = pairs.iter().enumerate().map(|(j, &(me, _))| (me, j)).collect();
        let mut contrib = vec![0.0; d.len()];
        for (j, &(me, other)) in pairs.iter().enumerate() {
            contrib[me] = m[j].3 * (d[j] + d[out_of[&other]]);
        }
        send(grads, n.inputs[0], merge(contrib.iter().map(|v| Seg { n: 1, maps: vec![Plane::filled(1, 1, *v)] }).collect()));
        Ok(())
    }

    /// x + t, t (C, 1, 1): per position, the mean μ_p + μ_t, the second s_p + s_t + 2 μ_p μ_t.
    fn add_broadcast_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let (x, t) = (self.get(n.inputs[0]).clone(), self.get(n.inputs[1]).clone());
        let out = aligned(&[&x, &t])
            .into_iter()
            .map(|(c, s)| {
                let (mu, sec, mt, st) = (&s[0].maps[0], &s[0].maps[1], s[1].maps[0].d[0], s[1].maps[1].d[0]);
                let mean = Plane { h: mu.h, w: mu.w, d: mu.d.iter().map(|m| m + mt).collect() };
                let second = Plane { h: mu.h, w: mu.w, d: (0..mu.d.len()).map(|i| sec.d[i] + st + 2.0 * mu.d[i] * mt).collect() };
                Seg { n: c, maps: vec![mean, second] }
            })
            .collect();
        Ok(merge(out))
    }

    /// x + t backward: x takes δ; t Σ_p E[δ_p²] + G (P² − P), G the shared part.
    fn add_broadcast_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let frac = self.gfrac.get(k + 1).cloned().unwrap_or_default();
        let frac: Vec<f64> = (0..channels(dz)).map(|c| frac.get(c).copied().unwrap_or(0.0)).collect();
        let to_t = split_by(dz, &frac)
            .into_iter()
            .map(|(s, f)| {
                let d = &s.maps[0];
                let p = d.d.len() as f64;
                Seg { n: s.n, maps: vec![Plane::filled(1, 1, d.d.iter().sum::<f64>() + f * d.mean() * (p * p - p))] }
            })
            .collect();
        send(grads, n.inputs[0], dz.clone());
        send(grads, n.inputs[1], merge(to_t));
        Ok(())
    }

    /// Softmax over positions: the paper analysis's rule on the channel's mean statistics
    /// over positions (mean 1/P, E[a²] = e^v/P² at every position).
    fn softmax_positions_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let shared = self.shared[n.inputs[0].0].clone();
        let mut out = Vec::new();
        for (seg, a) in split_by(&x, &shared) {
            let (mu, s) = (&seg.maps[0], &seg.maps[1]);
            let p = mu.d.len() as f64;
            let v = s.d.iter().zip(&mu.d).map(|(s, m)| s - m * m - a).sum::<f64>() / p;
            let a2 = super::graph::softmax_square(v, p);
            out.push(Seg { n: seg.n, maps: vec![Plane::filled(mu.h, mu.w, 1.0 / p), Plane::filled(mu.h, mu.w, a2)] });
        }
        Ok(merge(out))
    }

    /// Per position E[a²] (E[δa²] − G), G the shared part of δa (its fraction from the
    /// paper analysis's pass).
    fn softmax_positions_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let a = self.get(ValueId(k + 1)).clone();
        let frac = self.gfrac.get(k + 1).cloned().unwrap_or_default();
        let frac: Vec<f64> = (0..channels(dz)).map(|c| frac.get(c).copied().unwrap_or(0.0)).collect();
        let mut out = Vec::new();
        for (c, s) in aligned(&[dz, &a]) {
            let _ = c;
            let (d, a2) = (&s[0].maps[0], &s[1].maps[1]);
            let g = frac.first().copied().unwrap_or(0.0) * d.mean();
            out.push(Seg {
                n: c,
                maps: vec![Plane { h: d.h, w: d.w, d: d.d.iter().zip(&a2.d).map(|(d, a)| a * (d - g).max(0.0)).collect() }],
            });
        }
        send(grads, n.inputs[0], merge(out));
        Ok(())
    }

    /// ctx_c = Σ_p a_p x_c,p: mean Σ_p E[a_p] μ_c,p, second (that)² + A_c + Σ_p E[a_p²] B_c,p.
    fn attention_pool_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let (x, a) = (self.get(n.inputs[0]).clone(), self.get(n.inputs[1]).clone());
        let (ea, ea2) = (&a[0].maps[0], &a[0].maps[1]);
        let shared = self.shared[n.inputs[0].0].clone();
        let mut out = Vec::new();
        for (seg, sh) in split_by(&x, &shared) {
            let (mu, s) = (&seg.maps[0], &seg.maps[1]);
            let m: f64 = mu.d.iter().zip(&ea.d).map(|(m, a)| m * a).sum();
            let b: f64 = (0..mu.d.len()).map(|i| (s.d[i] - mu.d[i] * mu.d[i] - sh).max(0.0) * ea2.d[i]).sum();
            out.push(Seg { n: seg.n, maps: vec![Plane::filled(1, 1, m), Plane::filled(1, 1, m * m + sh + b)] });
        }
        Ok(merge(out))
    }

    /// δx_c,p = a_p δctx_c: E[a_p²] δctx²; δa_p = Σ_c δctx_c x_c,p: Σ_c δctx² E[x_c,p²].
    fn attention_pool_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let (x, a) = (self.get(n.inputs[0]).clone(), self.get(n.inputs[1]).clone());
        let ea2 = a[0].maps[1].clone();
        let to_x = dz.iter().map(|s| Seg { n: s.n, maps: vec![ea2.scaled(s.maps[0].d[0])] }).collect();
        let mut to_a = Plane::filled(ea2.h, ea2.w, 0.0);
        for (c, s) in aligned(&[dz, &x]) {
            to_a.add(&s[1].maps[1], c as f64 * s[0].maps[0].d[0]);
        }
        send(grads, n.inputs[0], merge(to_x));
        send(grads, n.inputs[1], vec![Seg { n: 1, maps: vec![to_a] }]);
        Ok(())
    }

    fn swap_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        Ok(swap(self.get(n.inputs[0])))
    }

    fn swap_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        send(grads, n.inputs[0], swap(dz));
        Ok(())
    }
}

/// Per entry of [`group_sums`] (a group, or a segment where each group reads one
/// channel): the channels it sums over, `start..start + len`.
fn group_channels(v: &Val, groups: usize, per_in: usize) -> Vec<(usize, usize)> {
    if per_in == 1 {
        let mut at = 0;
        return v
            .iter()
            .map(|s| {
                at += s.n;
                (at - s.n, s.n)
            })
            .collect();
    }
    (0..groups).map(|gi| (gi * per_in, per_in)).collect()
}

impl MapPasses {
    /// A conv of a standardized weight, per position (docs/dag.md, "Weight
    /// standardization"): σ² F/(F−1) [S − (M² + n² ΣA + S − Q − n ΣA)/F], S the tap sum of
    /// the second moments, M of the means, Q of the squared means, n the real taps, A the
    /// channels' shared parts; per entry of one channel where each group reads one.
    fn standardized_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let (cx, g) = (r.cx, r.cx.g);
        let n = &g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let (w, eps) = &cx.weights[&k];
        let geo = &w.geometry;
        let fan = super::graph::standardized_fan(g, k, geo)?;
        let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
        let dims = (geo.h.output as usize, geo.w.output as usize);
        let groups = geo.groups as usize;
        let taps = |p: &Plane| tap_sum(p, &geo.h, &geo.w);
        let s_sums = group_sums(&x, 1, groups, cin_g, cout_g, dims, taps);
        let m_sums = group_sums(&x, 0, groups, cin_g, cout_g, dims, taps);
        let q_sums = group_sums(&x, 0, groups, cin_g, cout_g, dims, |p| tap_sum(&p.map(|v| v * v), &geo.h, &geo.w));
        let ones = Plane::filled(geo.h.input as usize, geo.w.input as usize, 1.0);
        let real = taps(&ones);
        let a_in = &self.shared[n.inputs[0].0];
        let units: Vec<(usize, Plane)> = s_sums
            .iter()
            .zip(&m_sums)
            .zip(&q_sums)
            .zip(group_channels(&x, groups, cin_g))
            .map(|((((count, s), (_, m)), (_, q)), (start, len))| {
                let a: f64 = a_in[start..start + len].iter().sum::<f64>() / if cin_g == 1 { len as f64 } else { 1.0 };
                let d = (0..s.d.len())
                    .map(|i| {
                        let nt = real.d[i];
                        let common = m.d[i] * m.d[i] + nt * nt * a + (s.d[i] - q.d[i] - nt * a);
                        (fan / (fan - 1.0) * (s.d[i] - common / fan)).max(0.0)
                    })
                    .collect();
                (*count, Plane { h: s.h, w: s.w, d })
            })
            .collect();
        if r.p.chooses_forward(r.choose, k) {
            let total: f64 = units.iter().map(|(c, pl)| *c as f64 * pl.mean()).sum::<f64>() / geo.out_channels as f64;
            if !(total > 0.0 && total.is_finite()) {
                let zero = "the input of this layer carries no signal its standardized filters pass";
                return Err(super::graph::fail(g, k, super::not_positive_finite("the second moment of its input", total, zero)));
            }
            let he = geo.m_out() as f64 / (0.5 * *eps as f64);
            r.p.set(k, r.p.target[&k] / total, he, r.opts);
        }
        let s2 = r.p.sigma2[&k];
        Ok(merge(units.into_iter().map(|(c, pl)| Seg { n: c, maps: vec![Plane::filled(pl.h, pl.w, 0.0), pl.scaled(s2)] }).collect()))
    }

    /// The shared part of a standardized conv's output: σ² F/(F−1) [Σ_c Σ_t (M_ct² + f_t²
    /// A_c) − ((Σ_ct M_ct)² + (Σ_t f_t)² Σ_c A_c)/F], M_ct the mean over output positions of
    /// input channel c's mean map at tap t.
    fn standardized_shared(&self, cx: &Cx<'_>, p: &Params, k: usize) -> Vec<f64> {
        let n = &cx.g.nodes[k];
        let (w, _) = &cx.weights[&k];
        let geo = &w.geometry;
        let fan = geo.taps_per_kernel().max(2) as f64;
        let x = self.get(n.inputs[0]);
        let a_in = &self.shared[n.inputs[0].0];
        let f2 = super::graph::shared_taps(&geo.h) * super::graph::shared_taps(&geo.w);
        let kappa = super::graph::real_taps(&geo.h).0 * super::graph::real_taps(&geo.w).0;
        // Per input channel: (Σ_t M_ct², Σ_t M_ct).
        let mut per_in = Vec::with_capacity(a_in.len());
        for s in x {
            let m = tap_means(&s.maps[0], geo);
            let m2 = m.iter().map(|v| v * v).sum::<f64>();
            let m1 = m.iter().sum::<f64>();
            per_in.extend(std::iter::repeat_n((m2, m1), s.n));
        }
        let s2 = p.sigma2[&k];
        let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
        (0..geo.groups as usize)
            .flat_map(|gi| {
                let cs = gi * cin_g..(gi + 1) * cin_g;
                let own: f64 = cs.clone().map(|c| per_in[c].0 + f2 * a_in[c]).sum();
                let m1: f64 = cs.clone().map(|c| per_in[c].1).sum();
                let a: f64 = cs.map(|c| a_in[c]).sum();
                let v = fan / (fan - 1.0) * (own - (m1 * m1 + kappa * kappa * a) / fan);
                std::iter::repeat_n(s2 * v.max(0.0), cout_g)
            })
            .collect()
    }

    /// Backward through a standardized conv, per input position: σ² F/(F−1) [R − (r² ΣG +
    /// R − r ΣG)/F], R the reader sum of the gradient's second moments, r the readers,
    /// G_o the part of δu_o a sample shares (its fraction from the paper analysis's pass).
    fn standardized_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let (cx, g) = (r.cx, r.cx.g);
        let n = &g.nodes[k];
        let (w, eps) = &cx.weights[&k];
        let geo = &w.geometry;
        let fan = super::graph::standardized_fan(g, k, geo)?;
        let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
        let groups = geo.groups as usize;
        let dims = (geo.h.input as usize, geo.w.input as usize);
        let sums = group_sums(dz, 0, groups, cout_g, cin_g, dims, |p| reader_sum(p, &geo.h, &geo.w));
        let ones = Plane::filled(geo.h.output as usize, geo.w.output as usize, 1.0);
        let readers = reader_sum(&ones, &geo.h, &geo.w);
        // Per output channel, the shared part's second moment: its fraction × the mean.
        let frac = self.gfrac.get(k + 1);
        let mut shared = Vec::with_capacity(geo.out_channels as usize);
        for s in dz {
            for _ in 0..s.n {
                let c = shared.len();
                shared.push(frac.and_then(|f| f.get(c)).copied().unwrap_or(0.0) * s.maps[0].mean());
            }
        }
        let units: Vec<(usize, Plane)> = sums
            .iter()
            .zip(group_channels(dz, groups, cout_g))
            .map(|((count, rs), (start, len))| {
                let gsum: f64 = shared[start..start + len].iter().sum::<f64>() / if cout_g == 1 { len as f64 } else { 1.0 };
                let d = (0..rs.d.len())
                    .map(|i| {
                        let rn = readers.d[i];
                        (fan / (fan - 1.0) * (rs.d[i] - (rn * rn * gsum + rs.d[i] - rn * gsum) / fan)).max(0.0)
                    })
                    .collect();
                (*count, Plane { h: rs.h, w: rs.w, d })
            })
            .collect();
        if r.p.chooses_backward(r.choose, k) {
            let total: f64 = units.iter().map(|(c, pl)| *c as f64 * pl.mean()).sum::<f64>() / geo.in_channels as f64;
            if !(total > 0.0 && total.is_finite()) {
                let zero = "no gradient reaches this layer's output (a layer downstream starts at zero)";
                return Err(super::graph::fail(g, k, super::not_positive_finite("the second moment of its output gradient", total, zero)));
            }
            let he = geo.m_in() as f64 / (0.5 * *eps as f64);
            r.p.set(k, r.p.target[&k] / total, he, r.opts);
        }
        let s2 = r.p.sigma2[&k];
        send(grads, n.inputs[0], merge(units.into_iter().map(|(c, pl)| Seg { n: c, maps: vec![pl.scaled(s2)] }).collect()));
        Ok(())
    }
}

impl MapPasses {
    fn weight_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        if super::graph::standardized(&r.cx.g.nodes[k]).is_some() {
            return self.standardized_fwd(r, k);
        }
        let cx = r.cx;
        let opts = r.opts;
        let choose = r.choose;
        let p = &mut *r.p;
        let g = r.cx.g;
        let n = &g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        Ok({
            let (w, eps) = &cx.weights[&k];
            let geo = &w.geometry;
            let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
            // Per group: Σ_segments n · (tap sum of the second-moment map).
            let dims = (geo.h.output as usize, geo.w.output as usize);
            let sums = group_sums(&x, 1, geo.groups as usize, cin_g, cout_g, dims, |p| tap_sum(p, &geo.h, &geo.w));
            if p.chooses_forward(choose, k) {
                let total: f64 = sums.iter().map(|(c, pl)| *c as f64 * pl.mean()).sum::<f64>() / geo.out_channels as f64;
                if !(total > 0.0 && total.is_finite()) {
                    let zero = "the input of this layer carries no signal (a weight layer upstream starts at zero)";
                    return Err(super::graph::fail(g, k, super::not_positive_finite("the second moment of its input", total, zero)));
                }
                let he = geo.m_out() as f64 / (0.5 * *eps as f64);
                p.set(k, p.target[&k] / total, he, opts);
            }
            let s2 = p.sigma2[&k];
            merge(sums.into_iter().map(|(c, pl)| Seg { n: c, maps: vec![Plane::filled(pl.h, pl.w, 0.0), pl.scaled(s2)] }).collect())
        })
    }

    fn elementwise_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let out = self.elementwise(r.cx, k, func(&n.op).expect("element-wise"), &x).0;
        Ok(self.stream_fwd(r.cx, k, out))
    }

    /// A stage's stream ReLU after its first: the walk's moments and channel offset
    /// ([`super::walk::Stream`], on the values' means over channels and positions), spread
    /// over the positions as `out`'s (the paper analysis's `elementwise_fwd` alike).
    fn stream_fwd(&mut self, cx: &Cx<'_>, k: usize, out: Val) -> Val {
        let Some((c, i)) = self.chains.as_ref().and_then(|ch| ch.at(k)).filter(|&(_, i)| i > 0) else { return out };
        let chains = self.chains.as_ref().expect("set");
        let moments = |v: ValueId| {
            let x = self.get(v);
            let (m, q) = (moment(x, 0).avg, moment(x, 1).avg);
            let a = self.shared[v.0].iter().sum::<f64>() / self.shared[v.0].len().max(1) as f64;
            (m, q - m * m, a)
        };
        let (m, v, a) = moments(chains.branch(c, i));
        let stream = if i == 1 {
            let (m0, v0, a0) = moments(cx.g.nodes[chains.node(c, 0)].inputs[0]);
            super::walk::Stream::start(m0, v0, a0)
        } else {
            self.streams.remove(&c)
        };
        let Some(stream) = stream.and_then(|mut s| s.step(m, v, a).then_some(s)) else { return out };
        let (m1, m2, off) = stream.moments();
        self.streams.insert(c, stream);
        let (a1, a2) = (moment(&out, 0).avg, moment(&out, 1).avg);
        if !(a1 > 0.0 && a2 > 0.0) {
            return out;
        }
        self.stream_offset.insert(k, off);
        out.into_iter().map(|s| Seg { n: s.n, maps: vec![s.maps[0].scaled(m1 / a1), s.maps[1].scaled(m2 / a2)] }).collect()
    }

    fn pool_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let cx = r.cx;
        let g = r.cx.g;
        let n = &g.nodes[k];
        Ok({
            let win = Windows::of(n, g.shape(n.inputs[0]));
            let (oh, ow) = win.out_dims();
            let (rule, src, _) = if win.max { max_rule(cx, k, &self.stats) } else { (MaxRule::Exact(1.0), n.inputs[0], false) };
            let shared = if win.max { vec![0.0; channels(self.get(src))] } else { self.shared[src.0].clone() };
            // Members alike ([`super::corr`]): an average keeps more of their variance.
            let lags = self.lags[src.0].unwrap_or_else(corr::white);
            let mut factors: HashMap<(u64, u64), f64> = HashMap::new();
            let src = split_by(self.get(src), &shared);
            let mut out = Vec::new();
            for (s, shared) in &src {
                let (mu, sec) = (&s.maps[0], &s.maps[1]);
                let mut m1 = Plane::filled(oh, ow, 0.0);
                let mut m2 = m1.clone();
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (cells, div) = win.cells(oy as u64, ox as u64);
                        let (a, b) = if !win.max {
                            // The members' shared part is one variable: it adds as n² A,
                            // the rest as variances, times the window's correlation factor.
                            let (mut var, mut mean) = (0.0, 0.0);
                            for &c in &cells {
                                var += sec.d[c] - mu.d[c] * mu.d[c] - shared;
                                mean += mu.d[c];
                            }
                            let extent = (win.geo.h.window(oy as u64).count() as u64, win.geo.w.window(ox as u64).count() as u64);
                            let alike = *factors.entry(extent).or_insert_with(|| corr::window_factor(&lags, extent.0, extent.1));
                            let n = cells.len() as f64;
                            (mean / div, ((var * alike + n * n * shared).max(0.0) + mean * mean) / (div * div))
                        } else {
                            match &rule {
                                MaxRule::Exact(a) => {
                                    let sd: Vec<f64> = cells.iter().map(|&c| sec.d[c].sqrt()).collect();
                                    let mm = cached_max(&mut self.cache, &sd);
                                    (mm.first_pos + a * mm.first_neg, mm.second_pos + a * a * mm.second_neg)
                                }
                                MaxRule::Iid(f) => {
                                    let t = cells.len() as f64;
                                    let m = cells.iter().map(|&c| mu.d[c]).sum::<f64>() / t;
                                    let q = cells.iter().map(|&c| sec.d[c]).sum::<f64>() / t;
                                    let key = (k, m.to_bits(), q.to_bits(), cells.len());
                                    let r = *self.iid.entry(key).or_insert_with(|| iid_max(*f, m, q - m * m, cells.len() as u64));
                                    (r.0, r.1)
                                }
                            }
                        };
                        m1.d[oy * ow + ox] = a;
                        m2.d[oy * ow + ox] = b;
                    }
                }
                out.push(Seg { n: s.n, maps: vec![m1, m2] });
            }
            merge(out)
        })
    }

    fn flatten_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        Ok({
            let mut out = Vec::new();
            for s in &x {
                for _ in 0..s.n {
                    for i in 0..s.maps[0].d.len() {
                        out.push(Seg { n: 1, maps: vec![Plane::filled(1, 1, s.maps[0].d[i]), Plane::filled(1, 1, s.maps[1].d[i])] });
                    }
                }
            }
            merge(out)
        })
    }

    fn add_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        Ok({
            let ins: Vec<Val> = n.inputs.iter().map(|&v| self.get(v).clone()).collect();
            let refs: Vec<&Val> = ins.iter().collect();
            let mut out = Vec::new();
            for (c, segs) in aligned(&refs) {
                let mut mean = Plane::filled(segs[0].maps[0].h, segs[0].maps[0].w, 0.0);
                let mut sec = mean.clone();
                for (i, a) in segs.iter().enumerate() {
                    mean.add(&a.maps[0], 1.0);
                    sec.add(&a.maps[1], 1.0);
                    for (j, b) in segs.iter().enumerate().skip(i + 1) {
                        if n.inputs[i] == n.inputs[j] {
                            sec.add(&a.maps[1], 2.0);
                        } else {
                            for (q, (ma, mb)) in sec.d.iter_mut().zip(a.maps[0].d.iter().zip(&b.maps[0].d)) {
                                *q += 2.0 * ma * mb;
                            }
                        }
                    }
                }
                out.push(Seg { n: c, maps: vec![mean, sec] });
            }
            merge(out)
        })
    }

    fn concat_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        Ok(merge(n.inputs.iter().flat_map(|&v| self.get(v).clone()).collect()))
    }

    fn mul_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        Ok({
            let gate = self.get(n.inputs[1]).clone();
            let mut out = Vec::new();
            for (c, segs) in aligned(&[&x, &gate]) {
                let (a, b) = (segs[0], segs[1]);
                let pick = |pl: &Plane, i: usize| if pl.d.len() == 1 { pl.d[0] } else { pl.d[i] };
                let len = a.maps[0].d.len();
                let mut mean = Plane::filled(a.maps[0].h, a.maps[0].w, 0.0);
                let mut sec = mean.clone();
                for i in 0..len {
                    mean.d[i] = a.maps[0].d[i] * pick(&b.maps[0], i);
                    sec.d[i] = a.maps[1].d[i] * pick(&b.maps[1], i);
                }
                out.push(Seg { n: c, maps: vec![mean, sec] });
            }
            merge(out)
        })
    }

    fn batch_norm_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let p = &mut *r.p;
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let Op::BatchNorm(bn) = &n.op else { unreachable!("the batchnorm rule") };
        if bn.per_position {
            let gamma = p.bn_scale[&k];
            let shared = &self.shared[n.inputs[0].0];
            let stats = per_position_stats(&x, shared);
            let mut out = Vec::new();
            for (seg, a) in split_by(&x, shared) {
                let (mu, sec) = (&seg.maps[0], &seg.maps[1]);
                let (mut m1, mut m2) = (mu.clone(), sec.clone());
                for (i, st) in stats.iter().enumerate() {
                    let (y2, y1, _) = st.channel(mu.d[i], sec.d[i], a);
                    m1.d[i] = gamma * y1;
                    m2.d[i] = gamma * gamma * y2;
                }
                out.push(Seg { n: seg.n, maps: vec![m1, m2] });
            }
            return Ok(merge(out));
        }
        if let Some(groups) = bn.groups {
            let gamma = p.bn_scale[&k];
            let shared = &self.shared[n.inputs[0].0];
            let mut out = Vec::new();
            let extra = self.offset_positions(r.cx, p, n.inputs[0]);
            for g in map_groups(&x, shared, &extra, groups) {
                let (mut at, sd) = (g.range.start, g.var.max(0.0).sqrt());
                for (seg, _) in split_by(&range(&x, g.range.start, g.range.end), &runs(&shared[g.range.clone()], &extra.0[g.range.clone()]))
                {
                    let (mu, sec) = (&seg.maps[0], &seg.maps[1]);
                    let mut m1 = mu.clone();
                    let mut m2 = sec.clone();
                    let var = |i: usize| sec.d[i] - mu.d[i] * mu.d[i];
                    let mean_var = (0..mu.d.len()).map(var).sum::<f64>() / mu.d.len() as f64;
                    let cross = self.cross[n.inputs[0].0][at].clone();
                    for i in 0..mu.d.len() {
                        let w = if mean_var > 0.0 { var(i) / mean_var } else { 1.0 };
                        let cr = cross.as_ref().map_or(shared[at], |cr| cr.d[i]);
                        let (y2, y1, _) = g.at_position(at, mu.d[i], sec.d[i], shared[at], w, cr);
                        m1.d[i] = gamma * y1;
                        m2.d[i] = gamma * gamma * y2;
                    }
                    if sd == 0.0 {
                        m1 = m1.map(|_| 0.0);
                    }
                    at += seg.n;
                    out.push(Seg { n: seg.n, maps: vec![m1, m2] });
                }
                debug_assert_eq!(at, g.range.end);
            }
            return Ok(merge(out));
        }
        Ok({
            let gamma = p.bn_scale[&k];
            let out: Val = if bn.training {
                self.batch_normalized_map(&x, &self.shared[n.inputs[0].0], &self.cross[n.inputs[0].0], gamma)
            } else {
                let r = gamma / (1.0 + bn.epsilon).sqrt();
                x.iter().map(|s| Seg { n: s.n, maps: vec![s.maps[0].scaled(r), s.maps[1].scaled(r * r)] }).collect()
            };
            merge(out)
        })
    }

    fn slice_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let Op::ChannelSlice { start, end } = &n.op else { unreachable!("the slice rule") };
        Ok(range(&x, *start as usize, *end as usize))
    }

    fn shuffle_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let Op::Shuffle { groups } = &n.op else { unreachable!("the shuffle rule") };
        Ok(shuffle(&x, *groups as usize))
    }

    fn resize_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let Op::Resize { scale, .. } = &n.op else { unreachable!("the resize rule") };
        Ok(merge(x.iter().map(|s| Seg { n: s.n, maps: s.maps.iter().map(|m| upsample(m, *scale)).collect() }).collect()))
    }

    fn dilate_fwd(&mut self, r: &mut Run<'_, '_>, k: usize) -> Result<Val, AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let Op::Dilate { stride } = &n.op else { unreachable!("the dilate rule") };
        Ok(merge(x.iter().map(|s| Seg { n: s.n, maps: s.maps.iter().map(|m| dilate(m, *stride)).collect() }).collect()))
    }

    fn weight_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        if super::graph::standardized(&r.cx.g.nodes[k]).is_some() {
            return self.standardized_bwd(r, k, dz, grads);
        }
        let cx = r.cx;
        let opts = r.opts;
        let choose = r.choose;
        let p = &mut *r.p;
        let g = r.cx.g;
        let n = &g.nodes[k];
        let dz: Val = dz.clone();
        let (w, eps) = &cx.weights[&k];
        let geo = &w.geometry;
        let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
        // Per group: Σ_segments n · (reader sum of the gradient map), the transposed conv.
        let dims = (geo.h.input as usize, geo.w.input as usize);
        let sums = group_sums(&dz, 0, geo.groups as usize, cout_g, cin_g, dims, |p| reader_sum(p, &geo.h, &geo.w));
        if p.chooses_backward(choose, k) {
            let total: f64 = sums.iter().map(|(c, pl)| *c as f64 * pl.mean()).sum::<f64>() / geo.in_channels as f64;
            if !(total > 0.0 && total.is_finite()) {
                let zero = "no gradient reaches this layer's output (a layer downstream starts at zero)";
                return Err(super::graph::fail(g, k, super::not_positive_finite("the second moment of its output gradient", total, zero)));
            }
            let he = geo.m_in() as f64 / (0.5 * *eps as f64);
            p.set(k, p.target[&k] / total, he, opts);
        }
        let s2 = p.sigma2[&k];
        let contrib = merge(sums.into_iter().map(|(c, pl)| Seg { n: c, maps: vec![pl.scaled(s2)] }).collect());
        send(grads, n.inputs[0], contrib);
        Ok(())
    }

    fn elementwise_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let g = r.cx.g;
        let n = &g.nodes[k];
        let dz: Val = dz.clone();
        let times = |a: &Val, b: &Val| -> Val {
            merge(
                aligned(&[a, b])
                    .into_iter()
                    .map(|(c, s)| {
                        let mut m = s[0].maps[0].clone();
                        for (a, b) in m.d.iter_mut().zip(&s[1].maps[0].d) {
                            *a *= b;
                        }
                        Seg { n: c, maps: vec![m] }
                    })
                    .collect(),
            )
        };
        if let Some(gk) = super::graph::passes_unchanged(g, k, |v| self.is_zero(v)) {
            // Where g(c) > 0 only, which g passes whole (see `passes_unchanged`).
            let xg = self.get(g.nodes[gk].inputs[0]).clone();
            let (_, slopes) = self.elementwise(r.cx, gk, func(&g.nodes[gk].op).expect("element-wise"), &xg);
            let contrib = match self.on_support.remove(&(k + 1)) {
                None => times(&dz, &slopes),
                Some(on) => unmasked(&dz, &on, &slopes),
            };
            self.mark_on_support(n.inputs[0], contrib.clone());
            send(grads, n.inputs[0], contrib);
            return Ok(());
        }
        let x = self.get(n.inputs[0]).clone();
        let (_, xg) = self.elementwise(r.cx, k, func(&n.op).expect("element-wise"), &x);
        let on = self.on_support.remove(&(k + 1));
        if let (None, Some(pos)) = (&on, self.walks.get(&k).cloned()) {
            // A stage's stream ReLU i (the paper analysis's rule): the walk's open
            // fraction, spread over the positions as the sum's; a part that passed d of
            // the stage's masks after it passes with P(open i..i+d)/P(open i+1..i+d).
            let a = moment(&xg, 0).avg;
            let xg = if a > 0.0 { scaled_val(&xg, pos.walk.open(pos.i) / a) } else { xg };
            let parts = self.along.remove(&(k + 1)).unwrap_or_default();
            let mut rest = dz.clone();
            let mut passed = Vec::with_capacity(parts.len() + 1);
            for (d, part) in parts.iter().enumerate() {
                passed.push(scaled_val(&times(part, &xg), pos.walk.factor(pos.i, d + 1)));
                rest = sum(&rest, &scaled_val(part, -1.0));
            }
            let fresh = times(&clamped(&rest), &xg);
            let contrib = passed.iter().fold(fresh.clone(), |acc, p| sum(&acc, p));
            if let Some(prev) = pos.prev {
                passed.insert(0, fresh);
                self.along.insert(prev + 1, passed);
            }
            send(grads, n.inputs[0], contrib);
            return Ok(());
        }
        let skip = self.via_skip.remove(&(k + 1));
        let contrib = match (on, skip) {
            (Some(on), _) => unmasked(&dz, &on, &xg),
            (None, None) => times(&dz, &xg),
            (None, Some((part, kappa))) => {
                // The part from the stream's next ReLU passes with κ P(open).
                let extra: Vec<f64> = kappa.iter().map(|k| k - 1.0).collect();
                let more = split_by(&times(&part, &xg), &extra).into_iter().map(|(s, f)| Seg { n: s.n, maps: vec![s.maps[0].scaled(f)] });
                sum(&times(&dz, &xg), &merge(more.collect()))
            }
        };
        if let Some((gk, a, c)) = super::graph::stream_relu(g, k).filter(|&(gk, _, _)| super::graph::stream_relu(g, gk).is_none()) {
            let (f, gf) = (func(&n.op).expect("element-wise"), func(&g.nodes[gk].op).expect("a ReLU-like node"));
            let (sa, sc) = (self.get(a), self.get(c));
            let (ma, qa, mc, qc) = (channel_means(sa, 0), channel_means(sa, 1), channel_means(sc, 0), channel_means(sc, 1));
            let mut memo: HashMap<[u64; 4], f64> = HashMap::new();
            let kappa: Vec<f64> = (0..ma.len())
                .map(|ch| {
                    let key = [ma[ch], qa[ch], mc[ch], qc[ch]].map(f64::to_bits);
                    *memo.entry(key).or_insert_with(|| {
                        super::graph::mask_overlap(f, ma[ch], qa[ch] - ma[ch] * ma[ch], gf, mc[ch], qc[ch] - mc[ch] * mc[ch])
                    })
                })
                .collect();
            self.via_skip.insert(gk + 1, (contrib.clone(), kappa));
        }
        send(grads, n.inputs[0], contrib);
        Ok(())
    }

    fn pool_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let cx = r.cx;
        let g = r.cx.g;
        let n = &g.nodes[k];
        let dz: Val = dz.clone();
        let win = Windows::of(n, g.shape(n.inputs[0]));
        let (oh, ow) = win.out_dims();
        let (rule, src_v, _) = if win.max { max_rule(cx, k, &self.stats) } else { (MaxRule::Exact(1.0), n.inputs[0], false) };
        let src = self.get(src_v).clone();
        let (ih, iw) = (win.geo.h.input as usize, win.geo.w.input as usize);
        let mut contrib = Vec::new();
        for (c, s) in aligned(&[&dz, &src]) {
            let (r, st) = (&s[0].maps[0], s[1]);
            let mut gu = Plane::filled(ih, iw, 0.0);
            for oy in 0..oh {
                for ox in 0..ow {
                    let (cells, div) = win.cells(oy as u64, ox as u64);
                    let rv = r.d[oy * ow + ox];
                    if !win.max {
                        for &cell in &cells {
                            gu.d[cell] += rv / (div * div);
                        }
                        continue;
                    }
                    match &rule {
                        MaxRule::Exact(a) => {
                            let sd: Vec<f64> = cells.iter().map(|&cell| st.maps[1].d[cell].sqrt()).collect();
                            let mm = cached_max(&mut self.cache, &sd);
                            for (j, &cell) in cells.iter().enumerate() {
                                gu.d[cell] += rv * (mm.argmax_pos[j] + a * a * mm.argmax_neg[j]);
                            }
                        }
                        MaxRule::Iid(f) => {
                            let t = cells.len() as f64;
                            let m = cells.iter().map(|&cell| st.maps[0].d[cell]).sum::<f64>() / t;
                            let q = cells.iter().map(|&cell| st.maps[1].d[cell]).sum::<f64>() / t;
                            let key = (k, m.to_bits(), q.to_bits(), cells.len());
                            let share = self.iid.entry(key).or_insert_with(|| iid_max(*f, m, q - m * m, cells.len() as u64)).2;
                            for &cell in &cells {
                                gu.d[cell] += rv * share;
                            }
                        }
                    }
                }
            }
            contrib.push(Seg { n: c, maps: vec![gu] });
        }
        send(grads, src_v, merge(contrib));
        Ok(())
    }

    fn flatten_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let g = r.cx.g;
        let n = &g.nodes[k];
        let dz: Val = dz.clone();
        // The vector's elements, channel by channel, back into planes.
        let (c, h, w) = g.shape(n.inputs[0]).chw();
        let hw = (h * w) as usize;
        let mut flat = Vec::with_capacity(c as usize * hw);
        for s in &dz {
            flat.extend(std::iter::repeat_n(s.maps[0].d[0], s.n));
        }
        let contrib = (0..c as usize)
            .map(|ch| Seg { n: 1, maps: vec![Plane { h: h as usize, w: w as usize, d: flat[ch * hw..(ch + 1) * hw].to_vec() }] })
            .collect();
        send(grads, n.inputs[0], merge(contrib));
        Ok(())
    }

    fn add_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let dz: Val = dz.clone();
        for (i, &v) in n.inputs.iter().enumerate() {
            let m = n.inputs.iter().filter(|&&u| u == v).count() as f64;
            if n.inputs.iter().position(|&u| u == v) == Some(i) {
                send(grads, v, dz.iter().map(|s| Seg { n: s.n, maps: vec![s.maps[0].scaled(m * m)] }).collect());
            }
        }
        // A part already masked on the support of the one input that is not zero goes there.
        if let Some(on) = self.on_support.remove(&(k + 1)) {
            let mut rest = n.inputs.iter().filter(|&&u| !self.is_zero(u));
            if let (Some(&u), None) = (rest.next(), rest.next()) {
                self.mark_on_support(u, on);
            }
        }
        Ok(())
    }

    fn concat_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let g = r.cx.g;
        let n = &g.nodes[k];
        let dz: Val = dz.clone();
        let mut at = 0;
        for &v in &n.inputs {
            let c = g.shape(v).chw().0 as usize;
            send(grads, v, range(&dz, at, at + c));
            at += c;
        }
        Ok(())
    }

    fn mul_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let g = r.cx.g;
        let n = &g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let dz: Val = dz.clone();
        let gate = self.get(n.inputs[1]).clone();
        let broadcast = g.shape(n.inputs[1]) != n.output;
        let mut to_x = Vec::new();
        let mut to_g = Vec::new();
        let (frac, a_x) = (self.gfrac.get(k + 1).cloned().unwrap_or_default(), self.shared[n.inputs[0].0].clone());
        let mut at = 0;
        for (c, s) in aligned(&[&dz, &x, &gate]) {
            let (d, xs, gs) = (&s[0].maps[0], &s[1].maps[1], &s[2].maps[1]);
            let pick = |pl: &Plane, i: usize| if pl.d.len() == 1 { pl.d[0] } else { pl.d[i] };
            to_x.push(Seg { n: c, maps: vec![Plane { h: d.h, w: d.w, d: (0..d.d.len()).map(|i| d.d[i] * pick(gs, i)).collect() }] });
            let prod: Vec<f64> = (0..d.d.len()).map(|i| d.d[i] * xs.d[i]).collect();
            let gp = if broadcast {
                // δg = Σ_p δ_p x_p: the gradient's shared part G meets x's mean and
                // shared part coherently, G ((Σ μ)² − Σ μ² + A (P² − P)).
                let g_sh = frac.get(at).copied().unwrap_or(0.0) * d.mean();
                let mu = &s[1].maps[0];
                let (sum, sq) = (mu.d.iter().sum::<f64>(), mu.d.iter().map(|m| m * m).sum::<f64>());
                let p = mu.d.len() as f64;
                Plane::filled(1, 1, prod.iter().sum::<f64>() + g_sh * (sum * sum - sq + a_x.get(at).copied().unwrap_or(0.0) * (p * p - p)))
            } else {
                Plane { h: d.h, w: d.w, d: prod }
            };
            to_g.push(Seg { n: c, maps: vec![gp] });
            at += c;
        }
        send(grads, n.inputs[0], merge(to_x));
        send(grads, n.inputs[1], merge(to_g));
        Ok(())
    }

    fn batch_norm_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let p = &mut *r.p;
        let n = &r.cx.g.nodes[k];
        let x = self.get(n.inputs[0]).clone();
        let dz: Val = dz.clone();
        let Op::BatchNorm(bn) = &n.op else { unreachable!("the batchnorm rule") };
        let gamma = p.bn_scale[&k];
        let shared = &self.shared[n.inputs[0].0];
        let mut contrib = Vec::new();
        if bn.per_position {
            // Per position, the paper analysis's rule over the channels there.
            let stats = per_position_stats(&x, shared);
            let (xc, dc) = (per_channel(&x), per_channel(&dz));
            let nn = xc.len() as f64;
            let y2: Vec<Vec<f64>> = xc
                .iter()
                .zip(shared)
                .map(|(s, &a)| stats.iter().enumerate().map(|(i, st)| st.channel(s.maps[0].d[i], s.maps[1].d[i], a).0).collect())
                .collect();
            let cells = stats.len();
            let sum: Vec<f64> = (0..cells).map(|i| dc.iter().map(|d| d.maps[0].d[i]).sum::<f64>() / (nn * nn)).collect();
            let along: Vec<f64> =
                (0..cells).map(|i| dc.iter().zip(&y2).map(|(d, y)| d.maps[0].d[i] * y[i]).sum::<f64>() / (nn * nn)).collect();
            for (c, d) in dc.iter().enumerate() {
                let mut out = d.maps[0].clone();
                for (i, st) in stats.iter().enumerate() {
                    let k2 = super::graph::per_position_gain(st.var, gamma, nn);
                    let (g, y) = (d.maps[0].d[i], y2[c][i]);
                    out.d[i] = (g * (1.0 - 2.0 / nn - 2.0 * y / nn) + sum[i] + y * along[i]).max(0.0) * k2;
                }
                contrib.push(Seg { n: 1, maps: vec![out] });
            }
            send(grads, n.inputs[0], merge(contrib));
            return Ok(());
        }
        if let Some(groups) = bn.groups {
            // As the paper analysis: each sample's group mean removes the shared parts
            // (1/n² of their sum), the part along x̂ through an element-wise reader too;
            // here each channel's map is scaled by what is left of its mean.
            let d = channel_means(&dz, 0);
            let frac = &self.gfrac[k + 1];
            let reader = super::graph::norm_reader(r.cx.g, &r.cx.consumers, k).and_then(|(rd, stream)| {
                let f = func(&r.cx.g.nodes[rd].op).expect("an element-wise reader");
                let stream = stream.map(|s| {
                    let v = self.get(s);
                    (channel_means(v, 0), channel_means(v, 1), self.shared[s.0].clone())
                });
                grads[rd + 1].as_ref().map(|v| (f, channel_means(v, 0), &self.gfrac[rd + 1], stream))
            });
            let (mu, sec) = (channel_means(&x, 0), channel_means(&x, 1));
            let extra = self.offset_positions(r.cx, p, n.inputs[0]);
            for g in map_groups(&x, shared, &extra, groups) {
                let k2 = g.gain(gamma);
                let mean_part: f64 = g.range.clone().map(|c| frac[c] * d[c]).sum::<f64>() / (g.n * g.n);
                let mut along = 0.0;
                if let Some((f, gz, fz, stream)) = &reader {
                    for c in g.range.clone() {
                        if fz[c] * gz[c] > 0.0 {
                            let (y2, y1, ya) = g.channel(c, mu[c], sec[c], shared[c]);
                            let yb = (y2 - y1 * y1 - ya).max(0.0);
                            along += fz[c]
                                * gz[c]
                                * match stream {
                                    None => super::graph::slope_along_sq(*f, gamma, y1, ya, yb),
                                    Some((sm, ss, sa)) => {
                                        let (ms, as_) = (sm[c], sa[c]);
                                        super::graph::slope_along_sum_sq(*f, gamma, y1, ya, yb, ms, as_, (ss[c] - ms * ms - as_).max(0.0))
                                            .unwrap_or(0.0)
                                    }
                                };
                        }
                    }
                    along /= g.n * g.n;
                }
                let factors: Vec<f64> = g
                    .range
                    .clone()
                    .map(|c| {
                        let y2 = g.channel(c, mu[c], sec[c], shared[c]).0;
                        if d[c] > 0.0 {
                            k2 * ((d[c] - mean_part - along * y2).max(0.0) / d[c])
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let part = range(&dz, g.range.start, g.range.end);
                contrib.extend(split_by(&part, &factors).into_iter().map(|(s, f)| Seg { n: s.n, maps: vec![s.maps[0].scaled(f)] }));
            }
            send(grads, n.inputs[0], merge(contrib));
            return Ok(());
        }
        let mut at = 0;
        for (c, s) in aligned(&[&dz, &x]) {
            if !bn.training {
                contrib.push(Seg { n: c, maps: vec![s[0].maps[0].scaled(gamma * gamma / (1.0 + bn.epsilon))] });
                at += c;
                continue;
            }
            // The batch variance: the mean over positions of E[x²], less the square of
            // the channel's batch mean (its expectation, and the part every position and
            // sample shares), per run of channels with equal shared parts. At a batch of
            // N (`--batch`), the batch mean also removes 1/N of the gradient's part each
            // sample shares across its positions (the paper analysis's fraction of it).
            let (second, mean) = (s[1].maps[1].mean(), s[1].maps[0].mean());
            let dmean = s[0].maps[0].mean();
            let removed = |i: usize| match r.opts.batch {
                Some(n) if !self.gfrac.is_empty() => self.gfrac[k + 1][i] * dmean / n as f64,
                _ => 0.0,
            };
            // Few values per channel: the x̂ direction and the batch variance's bias
            // ([`super::graph::few_values`]).
            let (along, inflate) = super::graph::few_values(r.cx.g, k, r.opts.batch)?;
            let mut i = at;
            while i < at + c {
                let (a, cut) = (shared[i], removed(i));
                let run = (i..at + c).take_while(|&j| shared[j] == a && removed(j) == cut).count();
                let var = second - mean * mean - a;
                let k2 = if var > 0.0 { gamma * gamma / var } else { 0.0 };
                contrib.push(Seg { n: run, maps: vec![s[0].maps[0].map(|v| (v * (1.0 - along) - cut).max(0.0) * k2 * inflate)] });
                i += run;
            }
            at += c;
        }
        send(grads, n.inputs[0], merge(contrib));
        Ok(())
    }

    fn slice_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let g = r.cx.g;
        let n = &g.nodes[k];
        let dz: Val = dz.clone();
        let Op::ChannelSlice { start, end } = &n.op else { unreachable!("the slice rule") };
        let total = g.shape(n.inputs[0]).chw().0 as usize;
        let (h, w) = (dz[0].maps[0].h, dz[0].maps[0].w);
        let mut full = Vec::new();
        if *start > 0 {
            full.push(Seg { n: *start as usize, maps: vec![Plane::filled(h, w, 0.0)] });
        }
        full.extend(dz.iter().cloned());
        if (*end as usize) < total {
            full.push(Seg { n: total - *end as usize, maps: vec![Plane::filled(h, w, 0.0)] });
        }
        send(grads, n.inputs[0], merge(full));
        Ok(())
    }

    fn shuffle_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let dz: Val = dz.clone();
        let Op::Shuffle { groups } = &n.op else { unreachable!("the shuffle rule") };
        send(grads, n.inputs[0], unshuffle(&dz, *groups as usize));
        Ok(())
    }

    fn dilate_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let Op::Dilate { stride } = &n.op else { unreachable!("the dilate rule") };
        send(grads, n.inputs[0], merge(dz.iter().map(|s| Seg { n: s.n, maps: vec![undilate(&s.maps[0], *stride)] }).collect()));
        Ok(())
    }

    fn resize_bwd(&mut self, r: &mut Run<'_, '_>, k: usize, dz: &Val, grads: &mut [Option<Val>]) -> Result<(), AnalysisError> {
        let n = &r.cx.g.nodes[k];
        let dz: Val = dz.clone();
        let Op::Resize { scale, .. } = &n.op else { unreachable!("the resize rule") };
        send(grads, n.inputs[0], merge(dz.iter().map(|s| Seg { n: s.n, maps: vec![block_sum(&s.maps[0], *scale)] }).collect()));
        Ok(())
    }
}

/// A LayerNorm over the channels at each position: per position, the statistics of the
/// channels there ([`super::graph::PerPosition`]), each channel's offset `shared`.
fn per_position_stats(x: &Val, shared: &[f64]) -> Vec<super::graph::PerPosition> {
    let cells = x[0].maps[0].d.len();
    let per_channel = per_channel(x);
    (0..cells)
        .map(|i| {
            let mean: Vec<f64> = per_channel.iter().map(|s| s.maps[0].d[i]).collect();
            let second: Vec<f64> = per_channel.iter().map(|s| s.maps[1].d[i]).collect();
            super::graph::PerPosition::of(&mean, &second, shared)
        })
        .collect()
}

/// The segments of `v` cut where the per-channel `a` changes, each with its value of `a`.
fn split_by(v: &Val, a: &[f64]) -> Vec<(Seg, f64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for s in v {
        let mut i = at;
        while i < at + s.n {
            let run = a[i..at + s.n].iter().take_while(|&&b| b == a[i]).count();
            out.push((Seg { n: run, maps: s.maps.clone() }, a[i]));
            i += run;
        }
        at += s.n;
    }
    out
}

/// The groups of a per-sample normalization: the paper analysis's, on the channels'
/// means over positions and their shared parts.
fn map_groups(
    x: &Val,
    shared: &[f64],
    extra: &(Vec<f64>, Option<super::graph::OffsetShape>),
    groups: u64,
) -> Vec<super::graph::GroupStats> {
    super::graph::group_stats_of(&channel_means(x, 0), &channel_means(x, 1), shared, &extra.0, extra.1.as_ref(), groups)
}

/// A key per channel that changes where `a` or `b` does: [`split_by`] on it cuts at both.
fn runs(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut id = 0.0;
    (0..a.len())
        .map(|i| {
            if i > 0 && (a[i] != a[i - 1] || b[i] != b[i - 1]) {
                id += 1.0;
            }
            id
        })
        .collect()
}

/// Per channel, the mean over positions of map `m`.
/// Every plane of a one-map value × `f`.
fn scaled_val(v: &Val, f: f64) -> Val {
    v.iter().map(|s| Seg { n: s.n, maps: vec![s.maps[0].scaled(f)] }).collect()
}

/// A one-map value with its negative entries (rounding) set to 0.
fn clamped(v: &Val) -> Val {
    v.iter().map(|s| Seg { n: s.n, maps: vec![s.maps[0].map(|x| x.max(0.0))] }).collect()
}

fn channel_means(v: &Val, m: usize) -> Vec<f64> {
    v.iter().flat_map(|s| std::iter::repeat_n(s.maps[m].mean(), s.n)).collect()
}

impl MapPasses {
    /// The shared part of node `k`'s output, per channel: E[m̄²], m̄ the channel's mean
    /// over the positions (and samples) of one draw less its expectation. A conv of an
    /// input with a mean gives each output channel one: m̄_o = Σ_{c,t} w_{o,c,t} (M_{c,t} +
    /// f_t m_c), M_{c,t} the mean over output positions of μ_c at tap t's input (0 where
    /// the tap reads padding), f_t the fraction of output positions where tap t is real,
    /// m_c the input channel's own shared part; so E[m̄_o²] = σ² Σ_{c,t} (M_{c,t}² + f_t²
    /// E[m_c²]). Training-mode BatchNorm removes it; other ops carry it (element-wise f:
    /// Var_m E_e f(μ + m + e) on the channel's mean statistics; pooling and resize keep
    /// it, which is exact for averages and the named approximation for max pools).
    /// Per output channel of conv node `k`, per position o: E[m(o) m̄], the product of
    /// the offset its weights give o (Σ over o's real taps of the input's means and shared
    /// parts) with the channel's mean offset m̄ over positions.
    fn cross_fwd(&self, cx: &Cx<'_>, p: &Params, k: usize) -> Vec<Option<Rc<Plane>>> {
        let n = &cx.g.nodes[k];
        match &n.op {
            Op::Conv(_) if super::graph::standardized(n).is_none() => self.offset_cross(cx, p, k).into_iter().map(Some).collect(),
            Op::Concat => n.inputs.iter().flat_map(|v| self.cross[v.0].iter().cloned()).collect(),
            Op::ChannelSlice { start, end } => self.cross[n.inputs[0].0][*start as usize..*end as usize].to_vec(),
            Op::Pool(_) => {
                // An average: m_out(o) is the mean of its window's m, so E[m_out(o) m̄] the
                // mean of their cross terms (m̄ kept where the windows tile the input).
                let win = Windows::of(n, cx.g.shape(n.inputs[0]));
                let (oh, ow) = win.out_dims();
                let mut done: Vec<(*const Plane, Rc<Plane>)> = Vec::new();
                self.cross[n.inputs[0].0]
                    .iter()
                    .map(|c| {
                        let c = c.as_ref().filter(|_| !win.max)?;
                        if let Some((_, q)) = done.iter().find(|(k, _)| std::ptr::eq(*k, &**c)) {
                            return Some(q.clone());
                        }
                        let mut q = Plane::filled(oh, ow, 0.0);
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let (cells, div) = win.cells(oy as u64, ox as u64);
                                q.d[oy * ow + ox] = cells.iter().map(|&i| c.d[i]).sum::<f64>() / div;
                            }
                        }
                        let q = Rc::new(q);
                        done.push((&**c as *const Plane, q.clone()));
                        Some(q)
                    })
                    .collect()
            }
            _ => vec![None; n.output.chw().0 as usize],
        }
    }

    /// Per channel of value `v`, the mean over positions of E[m(o)²] less E[m̄²] (its
    /// `shared`): m(o) the offset the weights give position o. A conv's output has
    /// E[m(o)²] = σ² Σ_c Σ_{t real at o} (μ_c(o+t)² + E[m_c²]) (the input's offsets taken
    /// as its shared parts), so its mean over positions is σ² Σ_{c,t} (the mean over o of
    /// μ_c(o+t)² where t is real, + f_t E[m_c²]), against E[m̄²]'s M_{c,t}² + f_t² E[m_c²].
    /// Other values: 0 (not known; their offsets taken as flat).
    fn offset_positions(&self, cx: &Cx<'_>, p: &Params, v: ValueId) -> (Vec<f64>, Option<super::graph::OffsetShape>) {
        let c_out = cx.g.shape(v).chw().0 as usize;
        let k = match v.0.checked_sub(1) {
            Some(k) if matches!(cx.g.nodes[k].op, Op::Conv(_)) && super::graph::standardized(&cx.g.nodes[k]).is_none() => k,
            _ => return (vec![0.0; c_out], None),
        };
        let n = &cx.g.nodes[k];
        let geo = &cx.weights[&k].0.geometry;
        let x = self.get(n.inputs[0]);
        let a_in = &self.shared[n.inputs[0].0];
        let real = |a: &crate::index::Axis| (0..a.output).map(|o| a.taps(o).count() as f64).sum::<f64>() / a.output as f64;
        let f1 = real(&geo.h) * real(&geo.w);
        let mut per_in = Vec::with_capacity(a_in.len());
        for s in x {
            let mu = &s.maps[0];
            let m2 = if mu.d.iter().any(|&v| v != 0.0) { tap_means(&mu.map(|v| v * v), geo).iter().sum() } else { 0.0 };
            per_in.extend(std::iter::repeat_n(m2, s.n));
        }
        let s2 = p.sigma2[&k];
        let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
        let pos: Vec<f64> = (0..geo.groups as usize)
            .flat_map(|gi| {
                let total: f64 = (gi * cin_g..(gi + 1) * cin_g).map(|c| per_in[c] + f1 * a_in[c]).sum();
                std::iter::repeat_n(s2 * total, cout_g)
            })
            .collect();
        let extra = pos.iter().zip(&self.shared[v.0]).map(|(p, a)| (p - a).max(0.0)).collect();
        (extra, Some(super::graph::OffsetShape::of(geo)))
    }

    fn offset_cross(&self, cx: &Cx<'_>, p: &Params, k: usize) -> Vec<Rc<Plane>> {
        let n = &cx.g.nodes[k];
        let geo = &cx.weights[&k].0.geometry;
        let x = self.get(n.inputs[0]);
        let a_in = &self.shared[n.inputs[0].0];
        let kw = geo.w.kernel as usize;
        let (oh, ow) = (geo.h.output as usize, geo.w.output as usize);
        // f_t per axis: the fraction of outputs where tap t reads real input.
        let frac = |a: &crate::index::Axis| -> Vec<f64> {
            let mut f = vec![0.0; a.kernel as usize];
            for o in 0..a.output {
                for t in a.taps(o) {
                    f[t as usize] += 1.0 / a.output as f64;
                }
            }
            f
        };
        let (fh, fw) = (frac(&geo.h), frac(&geo.w));
        // Per input channel run (equal planes and shared parts): Σ_{t real at o} μ(o+t) M_t + a f_t.
        let per_run = |mu: &Plane, a: f64| -> Plane {
            let m = tap_means(mu, geo);
            let mut out = Plane::filled(oh, ow, 0.0);
            for oy in 0..geo.h.output {
                for ox in 0..geo.w.output {
                    let mut acc = 0.0;
                    for ky in geo.h.taps(oy) {
                        let row = geo.h.input_of(oy, ky) as usize * mu.w;
                        for kx in geo.w.taps(ox) {
                            let t = ky as usize * kw + kx as usize;
                            acc += mu.d[row + geo.w.input_of(ox, kx) as usize] * m[t] + a * fh[ky as usize] * fw[kx as usize];
                        }
                    }
                    out.d[oy as usize * ow + ox as usize] = acc;
                }
            }
            out
        };
        let s2 = p.sigma2[&k];
        let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
        let per_in: Vec<(usize, Plane)> = split_by(x, a_in).into_iter().map(|(seg, a)| (seg.n, per_run(&seg.maps[0], a))).collect();
        let mut out = Vec::with_capacity(geo.out_channels as usize);
        let mut it = per_in.into_iter().flat_map(|(c, pl)| std::iter::repeat_n(pl, c));
        for _ in 0..geo.groups {
            let mut acc = Plane::filled(oh, ow, 0.0);
            for _ in 0..cin_g {
                acc.add(&it.next().expect("the conv's input channels"), 1.0);
            }
            let acc = Rc::new(acc.scaled(s2));
            out.extend(std::iter::repeat_n(acc, cout_g));
        }
        out
    }

    /// A training BatchNorm's output map, y = γ (x − x̄)/s_B per position: E[(x(o) − x̄)²]
    /// = E[x²](o) − 2 E[x(o) x̄] + E[x̄²], whose mean over positions is the batch
    /// variance. With x = μ + m + e (m the offsets the weights give, [`Self::offset_cross`]
    /// their product with the channel's mean offset m̄ per position, `shared` E[m̄²]) that
    /// is E[x²](o) − 2 μ(o) μ̄ + μ̄² − 2 E[m(o) m̄] + E[m̄²]. So a conv's border outputs
    /// (fewer real taps) stay below its interior, and the offsets that the batch mean does
    /// not remove (the border positions' partial sums) stay with them. A channel with an
    /// offset whose cross term is not known is taken as flat, as before.
    fn batch_normalized_map(&self, x: &Val, shared: &[f64], cross: &[Option<Rc<Plane>>], gamma: f64) -> Val {
        let mut out = Vec::new();
        let mut c = 0;
        for s in x {
            let (mu, sec) = (&s.maps[0], &s.maps[1]);
            let mbar = mu.mean();
            for j in 0..s.n {
                let a = shared[c + j];
                let cr = match &cross[c + j] {
                    Some(cr) => Some(&**cr),
                    None if a == 0.0 => None,
                    None => {
                        out.push(Seg { n: 1, maps: vec![mu.map(|_| 0.0), sec.map(|_| gamma * gamma)] });
                        continue;
                    }
                };
                let mut num = sec.clone();
                for (i, v) in num.d.iter_mut().enumerate() {
                    let q = cr.map_or(0.0, |cr| cr.d[i]);
                    *v = (*v - 2.0 * mu.d[i] * mbar + mbar * mbar - 2.0 * q + a).max(0.0);
                }
                let var = num.mean();
                let seg = if var > 0.0 {
                    let sd = var.sqrt();
                    Seg { n: 1, maps: vec![mu.map(|m| gamma * (m - mbar) / sd), num.scaled(gamma * gamma / var)] }
                } else {
                    Seg { n: 1, maps: vec![mu.map(|_| 0.0), sec.map(|_| gamma * gamma)] }
                };
                out.push(seg);
            }
            c += s.n;
        }
        merge(out)
    }

    fn shared_fwd(&mut self, cx: &Cx<'_>, p: &Params, k: usize) -> Vec<f64> {
        let g = cx.g;
        let n = &g.nodes[k];
        let c_out = n.output.chw().0 as usize;
        let input = |i: usize| n.inputs[i].0;
        match &n.op {
            Op::Conv(_) if super::graph::standardized(n).is_some() => self.standardized_shared(cx, p, k),
            Op::Conv(_) | Op::Linear(_) => {
                let (w, _) = &cx.weights[&k];
                let geo = &w.geometry;
                let x = self.get(n.inputs[0]);
                let a_in = &self.shared[input(0)];
                // Σ_t f_t² (f_t: the fraction of output positions where tap t reads real
                // input), separable per axis.
                let f2 = super::graph::shared_taps(&geo.h) * super::graph::shared_taps(&geo.w);
                // Per input channel: Σ_t M_{c,t}² + f_t² E[m_c²].
                let mut per_in = Vec::with_capacity(a_in.len());
                for s in x {
                    let mu = &s.maps[0];
                    let mut m2 = 0.0;
                    if mu.d.iter().any(|&v| v != 0.0) {
                        m2 = tap_means(mu, geo).iter().map(|v| v * v).sum();
                    }
                    per_in.extend(std::iter::repeat_n(m2, s.n));
                }
                let s2 = p.sigma2[&k];
                let (cin_g, cout_g) = (geo.group_in() as usize, geo.group_out() as usize);
                (0..geo.groups as usize)
                    .flat_map(|gi| {
                        let total: f64 = (gi * cin_g..(gi + 1) * cin_g).map(|c| per_in[c] + f2 * a_in[c]).sum();
                        std::iter::repeat_n(s2 * total, cout_g)
                    })
                    .collect()
            }
            Op::Activation(_) | Op::Elementwise(_) if super::graph::passes_unchanged(g, k, |v| self.is_zero(v)).is_some() => {
                self.shared[input(0)].clone()
            }
            Op::Activation(_) | Op::Elementwise(_) if self.stream_offset.contains_key(&k) => vec![self.stream_offset[&k]; c_out],
            Op::Activation(_) | Op::Elementwise(_) if self.sum_shared.contains(&k) => {
                // A stream plus a branch with shared parts ([`MapPasses::elementwise`]).
                let f = func(&n.op).expect("element-wise");
                let (g, a, c) = super::graph::rectified_sum(cx.g, n.inputs[0]).expect("checked by `elementwise`");
                let (xa, xc) = (self.get(a), self.get(c));
                let (ma, qa, mc, qc) = (channel_means(xa, 0), channel_means(xa, 1), channel_means(xc, 0), channel_means(xc, 1));
                let (sa, sc) = (self.shared[a.0].clone(), self.shared[c.0].clone());
                let memo = &mut self.sum_shared_memo;
                (0..c_out)
                    .map(|ch| {
                        let key = [ma[ch], qa[ch], sa[ch], mc[ch], qc[ch], sc[ch]].map(f64::to_bits);
                        *memo.entry((k, key)).or_insert_with(|| {
                            let (va, vc) = (qa[ch] - ma[ch] * ma[ch], qc[ch] - mc[ch] * mc[ch]);
                            super::graph::sum_offset(f, ma[ch], va, sa[ch], g, mc[ch], vc, sc[ch])
                        })
                    })
                    .collect()
            }
            Op::Activation(_) | Op::Elementwise(_) => {
                let f = func(&n.op).expect("element-wise");
                let x = self.get(n.inputs[0]);
                let (mu, sec) = (channel_means(x, 0), channel_means(x, 1));
                let out_mu = channel_means(self.get(ValueId(k + 1)), 0);
                let a_in = self.shared[input(0)].clone();
                let memo = &mut self.shared_memo;
                (0..c_out)
                    .map(|c| {
                        let a = a_in[c];
                        if a <= 0.0 {
                            return 0.0;
                        }
                        *memo
                            .entry((k, mu[c].to_bits(), sec[c].to_bits(), a.to_bits()))
                            .or_insert_with(|| super::graph::offset_through(f, mu[c], a, sec[c] - mu[c] * mu[c] - a, out_mu[c]))
                    })
                    .collect()
            }
            Op::Pool(_) | Op::GlobalPool(_) | Op::Resize { .. } | Op::Resample(_) => self.shared[input(0)].clone(),
            Op::SoftmaxPositions => vec![0.0; c_out],
            Op::RadixSoftmax { radix, groups } => {
                let x = self.get(n.inputs[0]);
                let (mu, sec) = (channel_means(x, 0), channel_means(x, 1));
                let a = &self.shared[input(0)];
                let xs: Vec<(f64, f64, f64)> = (0..mu.len()).map(|c| (mu[c], sec[c], a[c])).collect();
                // The forward rule (run first, on the same node) refused any other radix.
                let pairs = super::graph::radix_pairs(cx.g, k, mu.len() as u64, *radix, *groups).unwrap_or_default();
                super::graph::radix_moments(&xs, &pairs).iter().map(|m| m.2).collect()
            }
            Op::AttentionPool => self.shared[input(0)].clone(),
            Op::AddBroadcast => self.shared[input(0)].iter().zip(&self.shared[input(1)]).map(|(a, b)| a + b).collect(),
            Op::SwapChannelsWidth => {
                // The part shared by all positions of an output channel: the mean of the
                // input channels' shared parts (independent), 1/A of their mean.
                let a_in = &self.shared[input(0)];
                let a = a_in.len() as f64;
                let v = if a > 1.0 { a_in.iter().sum::<f64>() / (a * a) } else { a_in[0] };
                vec![v; c_out]
            }
            Op::Dilate { .. } => {
                let (_, h, w) = g.shape(n.inputs[0]).chw();
                let (_, oh, ow) = n.output.chw();
                let q = (h * w) as f64 / (oh * ow) as f64;
                self.shared[input(0)].iter().map(|a| a * q * q).collect()
            }
            Op::Flatten => {
                let (_, h, w) = g.shape(n.inputs[0]).chw();
                self.shared[input(0)].iter().flat_map(|&a| std::iter::repeat_n(a, (h * w) as usize)).collect()
            }
            Op::Add => {
                let mut out = vec![0.0; c_out];
                for (i, &v) in n.inputs.iter().enumerate() {
                    // A value added m times: m² of its shared part (i < j pairs add 2 A).
                    let later = n.inputs.iter().skip(i + 1).filter(|&&u| u == v).count() as f64;
                    for (o, a) in out.iter_mut().zip(&self.shared[v.0]) {
                        *o += a * (1.0 + 2.0 * later);
                    }
                }
                out
            }
            Op::Concat => n.inputs.iter().flat_map(|v| self.shared[v.0].iter().copied()).collect(),
            Op::ChannelSlice { start, end } => self.shared[input(0)][*start as usize..*end as usize].to_vec(),
            Op::Shuffle { groups } => {
                let a = &self.shared[input(0)];
                super::graph::shuffle_source(c_out as u64, *groups).iter().map(|&i| a[i]).collect()
            }
            Op::Mul => {
                let (x, gate) = (self.get(n.inputs[0]), self.get(n.inputs[1]));
                let (mx, mg) = (channel_means(x, 0), channel_means(gate, 0));
                let (ax, ag) = (&self.shared[input(0)], &self.shared[input(1)]);
                (0..c_out).map(|c| ((mx[c].powi(2) + ax[c]) * (mg[c].powi(2) + ag[c]) - (mx[c] * mg[c]).powi(2)).max(0.0)).collect()
            }
            Op::BatchNorm(bn) => {
                if bn.per_position {
                    let gamma = p.bn_scale[&k];
                    let x = self.get(n.inputs[0]);
                    let a_in = &self.shared[input(0)];
                    let st = super::graph::PerPosition::of(&channel_means(x, 0), &channel_means(x, 1), a_in);
                    let (mu, sec) = (channel_means(x, 0), channel_means(x, 1));
                    (0..c_out).map(|c| gamma * gamma * st.channel(mu[c], sec[c], a_in[c]).2).collect()
                } else if let Some(groups) = bn.groups {
                    let gamma = p.bn_scale[&k];
                    let x = self.get(n.inputs[0]);
                    let a_in = &self.shared[input(0)];
                    let mu = channel_means(x, 0);
                    let sec = channel_means(x, 1);
                    let extra = self.offset_positions(cx, p, n.inputs[0]);
                    let mut out = Vec::with_capacity(c_out);
                    for g in map_groups(x, a_in, &extra, groups) {
                        for c in g.range.clone() {
                            out.push(gamma * gamma * g.channel(c, mu[c], sec[c], a_in[c]).2);
                        }
                    }
                    out
                } else if bn.training {
                    vec![0.0; c_out]
                } else {
                    let gamma = p.bn_scale[&k];
                    self.shared[input(0)].iter().map(|a| a * gamma * gamma / (1.0 + bn.epsilon)).collect()
                }
            }
        }
    }
}

/// (dz − on) × slope + on per position: the part `on` already lies where the slope is 1.
fn unmasked(dz: &Val, on: &Val, slope: &Val) -> Val {
    merge(
        aligned(&[dz, on, slope])
            .into_iter()
            .map(|(c, s)| {
                let mut m = s[0].maps[0].clone();
                for (i, a) in m.d.iter_mut().enumerate() {
                    let o = s[1].maps[0].d[i];
                    *a = (*a - o).max(0.0) * s[2].maps[0].d[i] + o;
                }
                Seg { n: c, maps: vec![m] }
            })
            .collect(),
    )
}

/// One segment per channel, in order.
fn per_channel(v: &Val) -> Vec<&Seg> {
    v.iter().flat_map(|s| std::iter::repeat_n(s, s.n)).collect()
}

fn shuffle(v: &Val, groups: usize) -> Val {
    let ch = per_channel(v);
    let c = ch.len();
    let src = super::graph::shuffle_source(c as u64, groups as u64);
    merge(src.iter().map(|&i| Seg { n: 1, maps: ch[i].maps.clone() }).collect())
}

fn unshuffle(v: &Val, groups: usize) -> Val {
    let ch = per_channel(v);
    let c = ch.len();
    let src = super::graph::shuffle_source(c as u64, groups as u64);
    let mut back: Vec<Option<&Seg>> = vec![None; c];
    for (j, &i) in src.iter().enumerate() {
        back[i] = Some(ch[j]);
    }
    merge(back.into_iter().map(|s| Seg { n: 1, maps: s.expect("a permutation").maps.clone() }).collect())
}

fn upsample(p: &Plane, s: [u64; 2]) -> Plane {
    let (sh, sw) = (s[0] as usize, s[1] as usize);
    let (h, w) = (p.h * sh, p.w * sw);
    let mut d = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            d.push(p.d[(y / sh) * p.w + x / sw]);
        }
    }
    Plane { h, w, d }
}

/// Zeros between the positions (see `Op::Dilate`).
fn dilate(p: &Plane, s: [u64; 2]) -> Plane {
    let (sh, sw) = (s[0] as usize, s[1] as usize);
    let mut out = Plane::filled((p.h - 1) * sh + 1, (p.w - 1) * sw + 1, 0.0);
    for y in 0..p.h {
        for x in 0..p.w {
            out.d[y * sh * out.w + x * sw] = p.d[y * p.w + x];
        }
    }
    out
}

/// The positions a dilation put its input at.
fn undilate(p: &Plane, s: [u64; 2]) -> Plane {
    let (sh, sw) = (s[0] as usize, s[1] as usize);
    let (h, w) = ((p.h - 1) / sh + 1, (p.w - 1) / sw + 1);
    let mut out = Plane::filled(h, w, 0.0);
    for y in 0..h {
        for x in 0..w {
            out.d[y * w + x] = p.d[y * sh * p.w + x * sw];
        }
    }
    out
}

fn block_sum(p: &Plane, s: [u64; 2]) -> Plane {
    let (sh, sw) = (s[0] as usize, s[1] as usize);
    let (h, w) = (p.h / sh, p.w / sw);
    let mut out = Plane::filled(h, w, 0.0);
    for y in 0..p.h {
        for x in 0..p.w {
            out.d[(y / sh) * w + x / sw] += p.d[y * p.w + x];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_op_kind_has_map_rules() {
        for op in crate::analyze::graph::tests::every_op() {
            let _ = super::map_rules(&op);
        }
        assert_eq!(super::MAP_RULES.len(), crate::analyze::graph::tests::every_op().len());
    }
}
