//! A residual stage's stream as a reflected Gaussian random walk (a Lindley process).
//!
//! Block i of a stage computes x_i = a_i + s_{i−1} and s_i = relu(x_i). With the branch
//! ends a_i independent Gaussians (each block's own weights), the stream is a random walk
//! reflected at 0, and along a run of open masks a plain random walk. A gradient that comes
//! back from block j through the identity path passes the masks 1(x_i > 0) … 1(x_j > 0):
//! its second moment carries P(open i..j), the probability that the walk stays positive,
//! not the product of the open fractions (measured in torch: the walk within 1–4 % for
//! every pair of a stage's masks, the product off by up to 2.6×; docs/dag.md, "A stage's
//! stream is a reflected random walk").
//!
//! The walk's law is carried as masses on cells of width h (0 a cell boundary), moved by
//! each block's Gaussian increment integrated over the target cell; the ReLU's mass below
//! 0 becomes an atom at 0.

/// The walk of a chain of stream ReLUs: x_0 ~ N(m, v), x_i = relu(x_{i−1}) + a_i with
/// a_i ~ N(m_i, v_i) independent.
#[derive(Clone, Debug)]
pub(super) struct Walk {
    /// `survive[i][d]` = P(x_i > 0, …, x_{i+d} > 0).
    survive: Vec<Vec<f64>>,
}

/// At most this many cells (the width grows to fit).
const MAX_CELLS: usize = 400;
/// Cells per standard deviation of the narrowest step.
const PER_SIGMA: f64 = 12.0;

impl Walk {
    /// `None` where a step (or the start) has no spread: a zero branch is the identity on
    /// its support ([`super::graph::passes_unchanged`]), not a walk.
    pub(super) fn new(start: (f64, f64), steps: &[(f64, f64)]) -> Option<Walk> {
        let sd = |v: f64| v.max(0.0).sqrt();
        let all = std::iter::once(start).chain(steps.iter().copied());
        let narrowest = all.clone().map(|(_, v)| sd(v)).fold(f64::INFINITY, f64::min);
        if !(narrowest > 0.0 && narrowest.is_finite()) || all.clone().any(|(m, v)| !m.is_finite() || !v.is_finite()) {
            return None;
        }
        // The range: the start's and every step's low tail below 0, and above, the start
        // plus every step's positive mean plus 8 standard deviations of their sum.
        let lo = all.clone().map(|(m, v)| m - 8.0 * sd(v)).fold(0.0, f64::min);
        let spread: f64 = all.clone().map(|(_, v)| v.max(0.0)).sum::<f64>().sqrt();
        let hi = start.0.max(0.0) + steps.iter().map(|&(m, _)| m.max(0.0)).sum::<f64>() + 8.0 * spread + 8.0 * sd(start.1);
        let mut h = narrowest / PER_SIGMA;
        if (hi - lo) / h > MAX_CELLS as f64 {
            h = (hi - lo) / MAX_CELLS as f64;
        }
        let below = (-lo / h).ceil() as usize; // cells below 0
        let above = (hi / h).ceil().max(1.0) as usize;
        let n = below + above;
        let center = |k: usize| (k as f64 - below as f64 + 0.5) * h;
        let cdf = |x: f64, (m, v): (f64, f64)| super::big_phi((x - m) / sd(v));
        // x_0's masses.
        let mut law: Vec<f64> = (0..n).map(|k| cdf(center(k) + 0.5 * h, start) - cdf(center(k) - 0.5 * h, start)).collect();
        let mut laws = vec![law.clone()];
        for &step in steps {
            // s = relu(x): the mass below 0 is an atom at 0; then + a.
            let atom: f64 = law[..below].iter().sum();
            let kernel = kernel(n, h, step);
            let mut next: Vec<f64> = (0..n).map(|t| atom * (cdf(center(t) + 0.5 * h, step) - cdf(center(t) - 0.5 * h, step))).collect();
            convolve(&law[below..], below, &kernel, n, &mut next, 0);
            law = next;
            laws.push(law.clone());
        }
        let mut survive = Vec::with_capacity(laws.len());
        for (i, law) in laws.iter().enumerate() {
            // Open at i: the cells above 0; while open s = x, so no atom.
            let mut alive: Vec<f64> = law[below..].to_vec();
            let mut row = vec![alive.iter().sum::<f64>()];
            for &step in &steps[i..] {
                let kernel = kernel(n, h, step);
                let mut next = vec![0.0; above];
                convolve(&alive, below, &kernel, n, &mut next, below);
                alive = next;
                row.push(alive.iter().sum());
            }
            survive.push(row);
        }
        Some(Walk { survive })
    }

    /// P(x_i > 0).
    pub(super) fn open(&self, i: usize) -> f64 {
        self.survive[i][0]
    }

    /// P(x_i > 0, …, x_{i+d} > 0).
    #[cfg(test)]
    pub(super) fn open_through(&self, i: usize, d: usize) -> f64 {
        self.survive[i][d]
    }

    /// How much more often mask i is open for a part of the gradient that has passed the
    /// d masks after it (d ≥ 1) than for one that has not: P(open i..i+d) / (P(open
    /// i+1..i+d) P(open i)). 1 for d = 0.
    pub(super) fn factor(&self, i: usize, d: usize) -> f64 {
        if d == 0 {
            return 1.0;
        }
        let (both, after, here) = (self.survive[i][d], self.survive[i + 1][d - 1], self.survive[i][0]);
        if after > 0.0 && here > 0.0 {
            both / (after * here)
        } else {
            1.0
        }
    }
}

/// A stage's stream s_i = relu(x_i), x_i = s_{i−1} + a_i, carried block by block for the
/// forward pass: the law of one element (an atom at 0 and cells of width h above), and
/// the joint law of two elements of one channel (two positions or samples), which share
/// the channels' offsets and nothing else. The second gives the variance over channels of
/// a channel's mean, E[s s'] − E[s]², exactly (to the grid); a Gaussian of the sum's
/// offset, or the first order in the offsets, missed it by 15–25 % along ResNet-50 GN's
/// stages.
#[derive(Clone, Debug)]
pub(super) struct Stream {
    h: f64,
    /// Index 0: the atom at 0; k ≥ 1: the cell centred at (k − ½) h.
    one: Vec<f64>,
    /// `None` while no offset has entered: two elements are then independent, their law
    /// `one` ⊗ `one`.
    two: Option<Vec<Vec<f64>>>,
}

/// Cells per standard deviation of a step's own part (not the offset's).
const STREAM_PER_SIGMA: f64 = 5.0;
/// At most this many cells above 0: past it, pairs of cells merge (h doubles). The joint
/// law's step costs the cube of it.
const STREAM_MAX_CELLS: usize = 120;
/// Mass below which the top cells are dropped.
const TAIL: f64 = 1e-13;

impl Stream {
    /// x_0 ~ N(m, v) with `a` of v fixed per channel. `None` where x_0 has no spread of
    /// its own.
    pub(super) fn start(m: f64, v: f64, a: f64) -> Option<Stream> {
        let b = v - a.max(0.0);
        if !(b > 0.0 && m.is_finite() && v.is_finite()) {
            return None;
        }
        let mut s = Stream { h: b.sqrt() / STREAM_PER_SIGMA, one: vec![1.0], two: None };
        s.step(m, v, a);
        Some(s)
    }

    /// s ← relu(s + a), a ~ N(m, v) with `a` of v fixed per channel (`false` where the
    /// step has no spread of its own).
    pub(super) fn step(&mut self, m: f64, v: f64, a: f64) -> bool {
        let a = a.max(0.0).min(v);
        let b = v - a;
        if !(b > 0.0 && m.is_finite()) {
            return false;
        }
        // A step much wider than the cells: coarser cells first (the step's own cost is
        // the cube of its cells).
        while ((m.max(0.0) + 8.0 * v.sqrt()) / self.h) as usize + self.one.len() > 2 * STREAM_MAX_CELLS {
            self.merge_pairs();
        }
        let h = self.h;
        let top = self.one.len() - 1; // positive cells now
        let reach = |sd: f64| (8.0 * sd / h).ceil() as usize;
        let below = ((8.0 * v.sqrt() - m).max(0.0) / h).ceil() as usize + 1;
        let above = top + ((m.max(0.0) + 8.0 * v.sqrt()) / h).ceil() as usize + 1;
        let n = below + above;
        // Raw cell t (0..n) is centred at (t − below + ½) h; relu'd index 0 is the atom
        // at 0, k ≥ 1 the centre (k − ½) h.
        let from = |k: usize| if k == 0 { 0.0 } else { (k as f64 - 0.5) * h };
        let raw = |t: usize| (t as f64 - below as f64 + 0.5) * h;
        // The mass a source sends to raw cell t: from a cell centre k ≥ 1 it depends only
        // on d = t − below + 1 − k (the centres are (d) h apart), so one table per spread.
        let len = self.one.len();
        let dmin = 1 - (below as i64) - (len as i64 - 1);
        let table = |sd: f64| -> Vec<f64> {
            (dmin..=(n as i64 - below as i64))
                .map(|d| {
                    let x = d as f64 * h;
                    super::big_phi((x + 0.5 * h - m) / sd) - super::big_phi((x - 0.5 * h - m) / sd)
                })
                .collect()
        };
        let atom = |t: usize, sd: f64| super::big_phi((raw(t) + 0.5 * h - m) / sd) - super::big_phi((raw(t) - 0.5 * h - m) / sd);
        let cell = |tab: &[f64], t: usize, k: usize, sd: f64| {
            if k == 0 {
                atom(t, sd)
            } else {
                tab[(t as i64 - below as i64 + 1 - k as i64 - dmin) as usize]
            }
        };
        // One element: the whole step at once.
        let sd = v.sqrt();
        let tab = table(sd);
        let mut one = vec![0.0; n];
        for (k, &p) in self.one.iter().enumerate() {
            if p == 0.0 {
                continue;
            }
            let x0 = from(k);
            let c = below as f64 + x0 / h - 0.5; // x0's raw position in cells
            let lo = (c - reach(sd) as f64).floor().max(0.0) as usize;
            let hi = ((c + reach(sd) as f64).ceil() as usize + 1).min(n);
            for (t, o) in one.iter_mut().enumerate().take(hi).skip(lo) {
                *o += p * cell(&tab, t, k, sd);
            }
        }
        // Two elements: their own parts apart (separably), then the shared offset along
        // the diagonal; while no offset has entered, `one` says it all.
        if self.two.is_none() && a == 0.0 {
            self.one = relu_fold(&one, below, above);
            self.coarsen();
            return true;
        }
        let prior = self.two.take().unwrap_or_else(|| self.one.iter().map(|&p| self.one.iter().map(|&q| p * q).collect()).collect());
        let sb = b.sqrt();
        let tab = table(sb);
        let columns: Vec<(usize, Vec<f64>)> = (0..self.one.len())
            .map(|k| {
                let x0 = from(k);
                let c = below as f64 + x0 / h - 0.5;
                let lo = (c - reach(sb) as f64).floor().max(0.0) as usize;
                let hi = ((c + reach(sb) as f64).ceil() as usize + 1).min(n);
                (lo, (lo..hi).map(|t| cell(&tab, t, k, sb)).collect())
            })
            .collect();
        let mut half = vec![vec![0.0; self.one.len()]; n]; // raw × relu'd
        for (k, row) in prior.iter().enumerate() {
            let (lo, col) = &columns[k];
            for (k2, &p) in row.iter().enumerate() {
                if p == 0.0 {
                    continue;
                }
                for (i, &w) in col.iter().enumerate() {
                    half[lo + i][k2] += p * w;
                }
            }
        }
        let mut two = vec![vec![0.0; n]; n];
        for (t, row) in half.iter().enumerate() {
            for (k2, &p) in row.iter().enumerate() {
                if p == 0.0 {
                    continue;
                }
                let (lo, col) = &columns[k2];
                for (i, &w) in col.iter().enumerate() {
                    two[t][lo + i] += p * w;
                }
            }
        }
        if a > 0.0 {
            let sa = a.sqrt();
            let r = reach(sa) as i64;
            let kernel: Vec<f64> =
                (-r..=r).map(|d| super::big_phi(((d as f64) + 0.5) * h / sa) - super::big_phi(((d as f64) - 0.5) * h / sa)).collect();
            let mut shifted = vec![vec![0.0; n]; n];
            for (t, row) in two.iter().enumerate() {
                for (t2, &p) in row.iter().enumerate() {
                    if p == 0.0 {
                        continue;
                    }
                    for (i, &w) in kernel.iter().enumerate() {
                        let d = i as i64 - r;
                        let (u, u2) = (t as i64 + d, t2 as i64 + d);
                        if (0..n as i64).contains(&u) && (0..n as i64).contains(&u2) {
                            shifted[u as usize][u2 as usize] += p * w;
                        }
                    }
                }
            }
            two = shifted;
        }
        // relu: the cells below 0 to the atom.
        let fold = |t: usize| if t < below { 0 } else { t - below + 1 };
        let mut r2 = vec![vec![0.0; above + 1]; above + 1];
        for (t, row) in two.iter().enumerate() {
            for (t2, &p) in row.iter().enumerate() {
                r2[fold(t)][fold(t2)] += p;
            }
        }
        self.one = relu_fold(&one, below, above);
        self.two = Some(r2);
        self.coarsen();
        true
    }

    /// Drops the top cells that hold (almost) nothing, then merges pairs of cells while
    /// there are more than [`STREAM_MAX_CELLS`] (cells 2j − 1 and 2j into j: their centres'
    /// mean is the new centre, so E s is kept).
    fn coarsen(&mut self) {
        let mut keep = self.one.len();
        let mut tail = 0.0;
        while keep > 2 && tail + self.one[keep - 1] < TAIL {
            tail += self.one[keep - 1];
            keep -= 1;
        }
        self.one.truncate(keep);
        if let Some(two) = self.two.as_mut() {
            two.truncate(keep);
            two.iter_mut().for_each(|row| row.truncate(keep));
        }
        while self.one.len() - 1 > STREAM_MAX_CELLS {
            self.merge_pairs();
        }
    }

    /// Cells 2j − 1 and 2j into j (h doubles; their centres' mean is the new centre).
    fn merge_pairs(&mut self) {
        let half = |k: usize| if k == 0 { 0 } else { k.div_ceil(2) };
        let m = half(self.one.len() - 1) + 1;
        let mut one = vec![0.0; m];
        for (k, &p) in self.one.iter().enumerate() {
            one[half(k)] += p;
        }
        if let Some(two) = self.two.as_mut() {
            let mut merged = vec![vec![0.0; m]; m];
            for (k, row) in two.iter().enumerate() {
                for (k2, &p) in row.iter().enumerate() {
                    merged[half(k)][half(k2)] += p;
                }
            }
            *two = merged;
        }
        self.one = one;
        self.h *= 2.0;
    }

    /// (E s, E s², the variance over channels of a channel's mean).
    pub(super) fn moments(&self) -> (f64, f64, f64) {
        let h = self.h;
        let at = |k: usize| if k == 0 { 0.0 } else { (k as f64 - 0.5) * h };
        let (mut m1, mut m2) = (0.0, 0.0);
        for (k, &p) in self.one.iter().enumerate() {
            m1 += p * at(k);
            m2 += p * (at(k).powi(2) + if k == 0 { 0.0 } else { h * h / 12.0 });
        }
        let Some(two) = &self.two else { return (m1, m2, 0.0) };
        let mut cross = 0.0;
        for (k, row) in two.iter().enumerate() {
            for (k2, &p) in row.iter().enumerate() {
                cross += p * at(k) * at(k2);
            }
        }
        (m1, m2, (cross - m1 * m1).max(0.0))
    }
}

/// A raw law (cells from `below` cells under 0 to `above` over it) after a ReLU: the
/// cells under 0 are the atom (index 0).
fn relu_fold(raw: &[f64], below: usize, above: usize) -> Vec<f64> {
    let mut out = vec![0.0; above + 1];
    out[0] = raw[..below].iter().sum();
    out[1..].copy_from_slice(&raw[below..below + above]);
    out
}

/// The step's cell-to-cell masses by the offset δ = target − source in cells, δ ∈ [−(n−1),
/// n−1] stored at δ + n − 1.
fn kernel(n: usize, h: f64, (m, v): (f64, f64)) -> Vec<f64> {
    let s = v.max(0.0).sqrt();
    (0..2 * n - 1)
        .map(|i| {
            let d = (i as f64 - (n - 1) as f64) * h;
            super::big_phi((d + 0.5 * h - m) / s) - super::big_phi((d - 0.5 * h - m) / s)
        })
        .collect()
}

/// `out[t − first] += Σ_s src[s] K[t − s]` for the cells t ≥ `first` that `out` holds, the
/// sources being the cells from `src_first` on.
fn convolve(src: &[f64], src_first: usize, kernel: &[f64], n: usize, out: &mut [f64], first: usize) {
    for (si, &mass) in src.iter().enumerate() {
        if mass == 0.0 {
            continue;
        }
        let s = src_first + si;
        let base = n - 1 + first - s; // kernel index of δ = first − s
        for (o, &k) in out.iter_mut().zip(&kernel[base..]) {
            *o += mass * k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk against sampled paths of the same process (seeded): every P(open i..j)
    /// within 4 standard errors, for a GroupNorm-like stage (unit steps, mean 0) and a
    /// stage whose steps carry a mean and differ.
    #[test]
    fn the_walk_stays_open_as_sampled_paths_do() {
        for (start, steps) in [((0.0, 2.0), vec![(0.0, 1.0); 5]), ((0.3, 1.5), vec![(-0.2, 0.6), (0.1, 2.0), (0.0, 1.0)])] {
            let w = Walk::new(start, &steps).expect("spread");
            let paths = 200_000;
            let mut rng = crate::onnx::Normal::new(7);
            let n = steps.len() + 1;
            let mut counts = vec![vec![0u64; n]; n];
            for _ in 0..paths {
                let mut x = start.0 + start.1.sqrt() * rng.sample();
                let mut xs = vec![x];
                for &(m, v) in &steps {
                    x = x.max(0.0) + m + v.sqrt() * rng.sample();
                    xs.push(x);
                }
                let open: Vec<bool> = xs.iter().map(|&x| x > 0.0).collect();
                for i in 0..n {
                    for j in i..n {
                        if !open[j] {
                            break;
                        }
                        counts[i][j - i] += 1;
                    }
                }
            }
            for (i, row) in counts.iter().enumerate() {
                for (d, &count) in row.iter().enumerate().take(n - i) {
                    let p = count as f64 / paths as f64;
                    let se = (p * (1.0 - p) / paths as f64).sqrt();
                    let got = w.open_through(i, d);
                    assert!((got - p).abs() < 4.0 * se + 1e-3, "start {start:?} P(open {i}..{}) {got} vs sampled {p} ± {se}", i + d);
                }
            }
        }
    }

    /// The stream's moments and its channels' offset against sampled channels of the same
    /// process (seeded): per channel, offsets drawn once per step, then many elements.
    #[test]
    fn the_stream_s_channels_keep_their_offsets_as_sampled_channels_do() {
        let (start, steps) = ((0.0, 2.0, 1.3), [(0.0, 1.0, 0.65), (0.0, 1.0, 0.65), (0.1, 1.5, 0.3), (0.0, 1.0, 0.7)]);
        let mut s = Stream::start(start.0, start.1, start.2).expect("spread");
        let mut got = vec![s.moments()];
        for &(m, v, a) in &steps {
            assert!(s.step(m, v, a));
            got.push(s.moments());
        }
        let (channels, per) = (4000, 200);
        let mut rng = crate::onnx::Normal::new(11);
        let n = steps.len() + 1;
        let (mut m1, mut m2) = (vec![0.0; n], vec![0.0; n]);
        let mut means: Vec<Vec<f64>> = vec![Vec::with_capacity(channels); n];
        let mut squares: Vec<Vec<f64>> = vec![Vec::with_capacity(channels); n];
        for _ in 0..channels {
            let o0 = start.2.sqrt() * rng.sample();
            let os: Vec<f64> = steps.iter().map(|&(_, _, a)| a.sqrt() * rng.sample()).collect();
            let mut sums = vec![0.0; n];
            let mut sq = vec![0.0; n];
            for _ in 0..per {
                let mut x = start.0 + o0 + (start.1 - start.2).sqrt() * rng.sample();
                for i in 0..n {
                    if i > 0 {
                        let (m, v, a) = steps[i - 1];
                        x = x.max(0.0) + m + os[i - 1] + (v - a).sqrt() * rng.sample();
                    }
                    let s = x.max(0.0);
                    sums[i] += s;
                    sq[i] += s * s;
                    m1[i] += s;
                    m2[i] += s * s;
                }
            }
            for i in 0..n {
                means[i].push(sums[i] / per as f64);
                squares[i].push(sq[i] / per as f64);
            }
        }
        let total = (channels * per) as f64;
        for i in 0..n {
            let (e1, e2) = (m1[i] / total, m2[i] / total);
            let mu = means[i].iter().sum::<f64>() / channels as f64;
            // The channel means' variance less their own sampling part (E Var_within / per).
            let var = means[i].iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (channels - 1) as f64;
            let within = (e2 - e1 * e1 - var) / per as f64;
            let offset = var - within;
            let se = var * (2.0 / channels as f64).sqrt();
            // The channels' own draws dominate the moments' standard errors.
            let sd = |v: &[f64]| {
                let m = v.iter().sum::<f64>() / v.len() as f64;
                (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() * (v.len() - 1)) as f64).sqrt()
            };
            let (se1, se2) = (sd(&means[i]), sd(&squares[i]));
            let (w1, w2, wo) = got[i];
            assert!(
                (w1 - e1).abs() < 4.0 * se1 + 0.003 * e1 && (w2 - e2).abs() < 4.0 * se2 + 0.003 * e2,
                "s_{i}: ({w1}, {w2}) vs sampled ({e1} ± {se1}, {e2} ± {se2})"
            );
            assert!((wo - offset).abs() < 4.0 * se + 0.01 * offset, "s_{i} offset: {wo} vs sampled {offset} ± {se}");
        }
    }

    /// By hand: a walk of one unit step from x_0 ~ N(0, 1): P(x_0 > 0, x_1 > 0) =
    /// P(x_0 > 0, x_0 + a > 0) = 1/4 + arcsin(1/√2)/(2π) = 3/8 (the orthant probability of
    /// two standard normals of correlation 1/√2).
    #[test]
    fn one_step_is_the_orthant_probability() {
        let w = Walk::new((0.0, 1.0), &[(0.0, 1.0)]).expect("spread");
        assert!((w.open(0) - 0.5).abs() < 1e-6, "{}", w.open(0));
        assert!((w.open_through(0, 1) - 0.375).abs() < 1e-3, "{}", w.open_through(0, 1));
        // P(x_1 > 0) = P(x_0 ≤ 0) P(a > 0) + 3/8 = 5/8, so the factor is (3/8)/(5/8 · 1/2).
        assert!((w.open(1) - 0.625).abs() < 1e-3, "{}", w.open(1));
        assert!((w.factor(0, 1) - 1.2).abs() < 5e-3, "{}", w.factor(0, 1));
    }
}
