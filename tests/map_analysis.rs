//! The position-resolved ("map") analysis against a brute-force per-unit propagation over
//! the explicit index sets, and against the paper's analysis where the two must agree.

use cnnc::analyze::{self, map::analyze_map, Analysis, Mode, Options};
use cnnc::ir::{Activation, PoolKind};
use cnnc::unify::Network;
use cnnc::Source;

fn net(text: &str) -> Network {
    Source::new("t.cnn", text).network().unwrap_or_else(|e| panic!("{e}"))
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

fn phi(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Per member k: ∫ over m>0 and m<0 of the density that member k is the maximum at m,
/// and E[M² 1{M>0}], E[M² 1{M<0}] — by the midpoint rule on a fine grid (no point at 0,
/// where the split is).
fn brute_max(sd: &[f64]) -> (Vec<f64>, Vec<f64>, f64, f64) {
    let top = sd.iter().cloned().fold(0.0, f64::max) * 10.0;
    let n = 20000;
    let h = 2.0 * top / n as f64;
    let (mut pos, mut neg) = (vec![0.0; sd.len()], vec![0.0; sd.len()]);
    let (mut m2p, mut m2n) = (0.0, 0.0);
    for step in 0..n {
        let m = -top + (step as f64 + 0.5) * h;
        let w = h;
        let cdfs: Vec<f64> = sd.iter().map(|&s| cnnc::analyze::big_phi(m / s)).collect();
        for k in 0..sd.len() {
            let mut d = phi(m / sd[k]) / sd[k];
            for (l, c) in cdfs.iter().enumerate() {
                if l != k {
                    d *= c;
                }
            }
            if m > 0.0 {
                pos[k] += w * d;
                m2p += w * m * m * d;
            } else {
                neg[k] += w * d;
                m2n += w * m * m * d;
            }
        }
    }
    (pos, neg, m2p, m2n)
}

/// σ² per layer (forward, backward) by propagating one variance per unit, every channel
/// separately, through s, t, j and d.
fn brute_force(net: &Network) -> Vec<(f64, f64)> {
    let mut ez = vec![1.0; net.input.numel() as usize];
    let mut fwd = Vec::new();
    let mut qs = Vec::new();
    for layer in &net.layers {
        let g = &layer.weight.geometry;
        let mut q: Vec<f64> = (0..g.m_out()).map(|o| g.s_set(o).map(|c| ez[c.input as usize]).sum()).collect();
        let sigma2 = q.len() as f64 / q.iter().sum::<f64>();
        q.iter_mut().for_each(|v| *v *= sigma2);
        fwd.push(sigma2);
        let a = match layer.activation {
            Activation::Relu => 0.0,
            Activation::Identity => 1.0,
            Activation::LeakyRelu { slope } => slope,
            other => panic!("{other}"),
        };
        let second = |v: f64| v * (1.0 + a * a) / 2.0;
        let first = |v: f64| v.sqrt() * (1.0 - a) / (2.0 * std::f64::consts::PI).sqrt();
        ez = match &layer.pooling {
            None => q.iter().map(|&v| second(v)).collect(),
            Some(p) => (0..p.geometry.m_out())
                .map(|d| {
                    let t: Vec<u64> = p.geometry.t_set(d).collect();
                    match p.kind {
                        PoolKind::Avg => {
                            let include = p.pool.as_ref().is_none_or(|x| x.count_include_pad) && !p.global;
                            let div = if include { p.geometry.window_size() as f64 } else { t.len() as f64 };
                            let var: f64 = t.iter().map(|&i| second(q[i as usize]) - first(q[i as usize]).powi(2)).sum();
                            let mean: f64 = t.iter().map(|&i| first(q[i as usize])).sum();
                            (var + mean * mean) / (div * div)
                        }
                        PoolKind::Max => {
                            let sd: Vec<f64> = t.iter().map(|&i| q[i as usize].sqrt()).collect();
                            let (_, _, m2p, m2n) = brute_max(&sd);
                            m2p + a * a * m2n
                        }
                    }
                })
                .collect(),
        };
        qs.push(q);
    }
    let mut bwd = vec![0.0; net.layers.len()];
    let mut r = vec![1.0; net.layers.last().unwrap().output.numel() as usize];
    for (k, layer) in net.layers.iter().enumerate().rev() {
        let g = &layer.weight.geometry;
        let q = &qs[k];
        let a = match layer.activation {
            Activation::Relu => 0.0,
            Activation::Identity => 1.0,
            Activation::LeakyRelu { slope } => slope,
            _ => unreachable!(),
        };
        let mut gu = vec![0.0; g.m_out() as usize];
        match &layer.pooling {
            None => gu.iter_mut().zip(&r).for_each(|(u, &rv)| *u = rv * (1.0 + a * a) / 2.0),
            Some(p) => {
                for d in 0..p.geometry.m_out() {
                    let t: Vec<u64> = p.geometry.t_set(d).collect();
                    match p.kind {
                        PoolKind::Avg => {
                            let include = p.pool.as_ref().is_none_or(|x| x.count_include_pad) && !p.global;
                            let div = if include { p.geometry.window_size() as f64 } else { t.len() as f64 };
                            for &o in &t {
                                gu[o as usize] += r[d as usize] * (1.0 + a * a) / 2.0 / (div * div);
                            }
                        }
                        PoolKind::Max => {
                            let sd: Vec<f64> = t.iter().map(|&i| q[i as usize].sqrt()).collect();
                            let (pos, neg, _, _) = brute_max(&sd);
                            for (m, &o) in t.iter().enumerate() {
                                gu[o as usize] += r[d as usize] * (pos[m] + a * a * neg[m]);
                            }
                        }
                    }
                }
            }
        }
        let mut rin: Vec<f64> = (0..g.m_in()).map(|i| g.j_set(i).map(|b| gu[b.output as usize]).sum()).collect();
        let sigma2 = rin.len() as f64 / rin.iter().sum::<f64>();
        rin.iter_mut().for_each(|v| *v *= sigma2);
        bwd[k] = sigma2;
        r = rin;
    }
    fwd.into_iter().zip(bwd).collect()
}

fn check_against_brute_force(text: &str, tol: f64) {
    let n = net(text);
    let maps = analyze_map(&n).unwrap();
    let brute = brute_force(&n);
    for (k, (m, (f, b))) in maps.iter().zip(&brute).enumerate() {
        assert!(rel(m.forward_variance, *f) < tol, "layer {} forward: map {} vs brute force {f}\n{text}", k + 1, m.forward_variance);
        assert!(rel(m.backward_variance, *b) < tol, "layer {} backward: map {} vs brute force {b}\n{text}", k + 1, m.backward_variance);
    }
}

#[test]
fn map_matches_brute_force_on_convs_and_average_pooling() {
    check_against_brute_force(
        "network A\ninput 2x9x7\nconv(3/p1) -> 4, relu\nconv(3x2/s2x1/pad_top=2/pad_bottom=0/pad_left=1/pad_right=1/d1x2/g2) -> 4, leaky_relu(0.2), avgpool(3/s2/p1)\n\
         conv(2/p1) -> 3, identity, avgpool(2/exclude_pad)\nconv(1) -> 4, relu, global_avgpool\nlinear -> 3, relu\nlinear -> 2\n",
        1e-12,
    );
    check_against_brute_force("network B\ninput 3x11x11\nconv(5/s2/p2) -> 4, relu\nconv(3/p1) -> 4, relu\nflatten\nlinear -> 5\n", 1e-12);
}

#[test]
fn map_matches_brute_force_on_max_pooling() {
    // Overlapping, padded max pooling after padded convs: windows with unequal variances.
    check_against_brute_force(
        "network M\ninput 1x8x8\nconv(3/p1) -> 2, relu, maxpool(3/s2/p1)\nconv(3/p1) -> 2, relu, global_maxpool\nlinear -> 2\n",
        2e-6,
    );
}

/// Without padding and with non-overlapping pooling every map is uniform, and the map
/// analysis must give the paper's numbers.
#[test]
fn map_equals_paper_without_padding_or_overlap() {
    // 30 → conv 28 → pool 14 → conv 12 → pool 4 → conv 4 → global: every pooling tiles its input.
    let n = net("network U\ninput 3x30x30\nconv(3) -> 8, relu, maxpool(2)\nconv(3) -> 8, leaky_relu(0.1), avgpool(3)\nconv(1) -> 4, relu, global_avgpool\nlinear -> 3\n");
    for mode in [Mode::Forward, Mode::Backward, Mode::KaimingIn] {
        let paper = analyze::analyze_with(&n, Options { mode, std_cap: None }, Analysis::Paper).unwrap();
        let map = analyze::analyze_with(&n, Options { mode, std_cap: None }, Analysis::Map).unwrap();
        for (p, m) in paper.iter().zip(&map) {
            assert!(rel(m.variance, p.variance) < 1e-9, "{mode:?}: {} vs {}", m.variance, p.variance);
            assert!(rel(m.forward_variance, p.forward_variance) < 1e-9);
            assert!(rel(m.backward_variance, p.backward_variance) < 1e-9);
            let (lo, hi) = m.forward_range.unwrap();
            assert!(rel(lo, hi) < 1e-9, "uniform map");
        }
    }
}

/// Where the paper's layer mean is not enough: overlapping max pooling (each element of v
/// sits in up to 4 windows of a 3×3/s2 pooling, which γ = (1−2^−T)/T does not count) and
/// padding (border units read fewer inputs, and the deficit compounds with depth).
#[test]
fn map_differs_from_paper_where_it_should() {
    let n = net("network F\ninput 3x64x64\nconv(7/s2/p3) -> 8, relu, maxpool(3/s2/p1)\nconv(3/p1) -> 8, relu\nconv(3/p1) -> 8, relu\nconv(3/p1) -> 8, relu\n");
    let paper = analyze::analyze_with(&n, Options { mode: Mode::Backward, std_cap: None }, Analysis::Paper).unwrap();
    let map = analyze::analyze_with(&n, Options { mode: Mode::Backward, std_cap: None }, Analysis::Map).unwrap();
    // Backward σ² of layer 1: the map sees ~(windows per v)·T ≈ 2.25× the paper's gradient share.
    let ratio = paper[0].variance / map[0].variance;
    assert!((2.0..2.6).contains(&ratio), "ratio {ratio}");
    // Forward: padded 3×3 convs on 16×16 maps. Border inputs are both weaker (their own
    // windows held padding) and read by fewer outputs, so Σ_i |j(i)| E[z_i²] exceeds the
    // paper's mean-field ε·mean(E[z²]): the map's σ² is smaller, and its map is far from flat.
    let f = analyze::analyze_with(&n, Options { mode: Mode::Forward, std_cap: None }, Analysis::Map).unwrap();
    let fp = analyze::analyze_with(&n, Options { mode: Mode::Forward, std_cap: None }, Analysis::Paper).unwrap();
    assert!(f[3].variance < fp[3].variance, "{} vs {}", f[3].variance, fp[3].variance);
    let (lo, hi) = f[3].forward_range.unwrap();
    assert!(lo < 0.6 && hi > 1.0, "{lo} {hi}");
}
