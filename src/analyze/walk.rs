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
    /// (E relu(x_i), E relu(x_i)²).
    moments: Vec<(f64, f64)>,
}

/// At most this many cells (the width grows to fit).
const MAX_CELLS: usize = 2000;
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
        let moments = laws
            .iter()
            .map(|law| {
                let (mut m1, mut m2) = (0.0, 0.0);
                for (k, &mass) in law.iter().enumerate().skip(below) {
                    let c = center(k);
                    m1 += mass * c;
                    m2 += mass * (c * c + h * h / 12.0);
                }
                (m1, m2)
            })
            .collect();
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
        Some(Walk { survive, moments })
    }

    /// (E s_i, E s_i²) of the stream s_i = relu(x_i).
    pub(super) fn moments(&self, i: usize) -> (f64, f64) {
        self.moments[i]
    }

    /// P(x_i > 0).
    pub(super) fn open(&self, i: usize) -> f64 {
        self.survive[i][0]
    }

    /// P(x_i > 0, …, x_{i+d} > 0).
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
    /// within 4 standard errors and the stream's moments within 1–1.5 %, for a GroupNorm-like stage (unit steps, mean 0) and a
    /// stage whose steps carry a mean and differ.
    #[test]
    fn the_walk_stays_open_as_sampled_paths_do() {
        for (start, steps) in [((0.0, 2.0), vec![(0.0, 1.0); 5]), ((0.3, 1.5), vec![(-0.2, 0.6), (0.1, 2.0), (0.0, 1.0)])] {
            let w = Walk::new(start, &steps).expect("spread");
            let paths = 200_000;
            let mut rng = crate::onnx::Normal::new(7);
            let n = steps.len() + 1;
            let mut counts = vec![vec![0u64; n]; n];
            let mut sums = vec![(0.0, 0.0); n];
            for _ in 0..paths {
                let mut x = start.0 + start.1.sqrt() * rng.sample();
                let mut xs = vec![x];
                for &(m, v) in &steps {
                    x = x.max(0.0) + m + v.sqrt() * rng.sample();
                    xs.push(x);
                }
                let open: Vec<bool> = xs.iter().map(|&x| x > 0.0).collect();
                for (s, &x) in sums.iter_mut().zip(&xs) {
                    s.0 += x.max(0.0);
                    s.1 += x.max(0.0).powi(2);
                }
                for i in 0..n {
                    for j in i..n {
                        if !open[j] {
                            break;
                        }
                        counts[i][j - i] += 1;
                    }
                }
            }
            for (i, (e1, e2)) in sums.iter().enumerate() {
                let (m1, m2) = (e1 / paths as f64, e2 / paths as f64);
                let (w1, w2) = w.moments(i);
                assert!((w1 - m1).abs() < 0.01 * m1.max(0.1) && (w2 - m2).abs() < 0.015 * m2, "E s_{i}: walk ({w1}, {w2}), sampled ({m1}, {m2})");
            }
            for i in 0..n {
                for d in 0..n - i {
                    let p = counts[i][d] as f64 / paths as f64;
                    let se = (p * (1.0 - p) / paths as f64).sqrt();
                    let got = w.open_through(i, d);
                    assert!((got - p).abs() < 4.0 * se + 1e-3, "start {start:?} P(open {i}..{}) {got} vs sampled {p} ± {se}", i + d);
                }
            }
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
