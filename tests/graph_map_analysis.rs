//! `--analysis map` on graphs against a brute-force per-unit propagation: every element
//! of every value keeps its own mean and second moment (dense arrays, explicit loops over
//! each conv's taps and each window's cells), on small random DAGs of convs (strided,
//! padded, grouped), ReLU, Add, Concat, average pooling, global pooling and BatchNorm.

use cnnc::analyze::graph::{analyze_graph_with, GraphOptions};
use cnnc::analyze::{Analysis, Mode};
use cnnc::ir::{self, Activation, BatchNorm, Conv, Graph, Node, Op, Origin, Pad, PoolKind, Shape, ValueId};

/// Per element: mean and second moment (forward), or the gradient's second moment.
#[derive(Clone, Debug)]
struct Dense {
    c: usize,
    h: usize,
    w: usize,
    mean: Vec<f64>,
    sec: Vec<f64>,
}

impl Dense {
    fn new(c: usize, h: usize, w: usize) -> Dense {
        Dense { c, h, w, mean: vec![0.0; c * h * w], sec: vec![0.0; c * h * w] }
    }
    fn at(&self, c: usize, y: usize, x: usize) -> usize {
        (c * self.h + y) * self.w + x
    }
    fn avg(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn phi(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}
fn cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// A tiny deterministic generator (the test must not depend on a crate's stream).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

struct Net {
    g: Graph,
}

impl Net {
    fn push(&mut self, op: Op, inputs: Vec<ValueId>, output: Shape) -> ValueId {
        let name = format!("n{}", self.g.nodes.len());
        self.g.nodes.push(Node { op, inputs, output, name: name.clone(), params: None, origin: Origin::OnnxNode(name) });
        ValueId(self.g.nodes.len())
    }
}

fn random_graph(seed: u64) -> Graph {
    let mut r = Lcg(seed);
    let c0 = 1 + r.next(3);
    let s0 = 4 + r.next(5);
    let mut net =
        Net { g: Graph { name: format!("dag{seed}"), input: Shape::Image { c: c0, h: s0, w: s0 }, nodes: Vec::new(), notes: Vec::new() } };
    let steps = 5 + r.next(6);
    for _ in 0..steps {
        let nv = net.g.nodes.len() + 1;
        let pick = |r: &mut Lcg| ValueId(r.next(nv as u64) as usize);
        // Values a ReLU made (they have a mean): Adds prefer them half the time.
        let relus: Vec<ValueId> = (1..nv).filter(|&v| matches!(net.g.nodes[v - 1].op, Op::Activation(_))).map(ValueId).collect();
        match r.next(8) {
            0 | 1 => {
                let x = pick(&mut r);
                let (c, h, w) = net.g.shape(x).chw();
                let k = [1, 3, 2][r.next(3) as usize];
                let stride = 1 + r.next(2);
                let pad = if k == 3 { r.next(2) } else { 0 };
                let depthwise = r.next(3) == 0 && c > 1;
                let (out, groups) = if depthwise { (c, c) } else { (1 + r.next(4), 1) };
                let size = |n: u64| ir::conv_out_size(n, k, stride, Pad { begin: pad, end: pad }, 1);
                let (Some(oh), Some(ow)) = (size(h), size(w)) else { continue };
                let conv = Conv {
                    in_channels: c,
                    out_channels: out,
                    kernel: [k, k],
                    stride: [stride, stride],
                    pad: [Pad { begin: pad, end: pad }; 2],
                    dilation: [1, 1],
                    groups,
                    bias: false,
                };
                net.push(Op::Conv(conv), vec![x], Shape::Image { c: out, h: oh, w: ow });
            }
            2 | 3 => {
                let x = pick(&mut r);
                let s = net.g.shape(x);
                net.push(Op::Activation(Activation::Relu), vec![x], s);
            }
            4 | 5 => {
                let a = if !relus.is_empty() && r.next(2) == 0 { relus[r.next(relus.len() as u64) as usize] } else { pick(&mut r) };
                let sa = net.g.shape(a);
                let same_plane: Vec<ValueId> = (0..nv)
                    .map(ValueId)
                    .filter(|&v| v != a && net.g.shape(v).chw().1 == sa.chw().1 && net.g.shape(v).chw().2 == sa.chw().2)
                    .collect();
                let mut same: Vec<ValueId> = same_plane.iter().copied().filter(|&v| net.g.shape(v) == sa).collect();
                let relu_same: Vec<ValueId> = same.iter().copied().filter(|v| relus.contains(v)).collect();
                if !relu_same.is_empty() && r.next(2) == 0 {
                    same = relu_same;
                }
                let add = r.next(2) == 0 && !same.is_empty();
                let pool = if add { &same } else { &same_plane };
                if pool.is_empty() {
                    continue;
                }
                let b = pool[r.next(pool.len() as u64) as usize];
                let sb = net.g.shape(b);
                if add {
                    net.push(Op::Add, vec![a, b], sa);
                } else if sa.chw().1 == sb.chw().1 && sa.chw().2 == sb.chw().2 {
                    let (_, h, w) = sa.chw();
                    net.push(Op::Concat, vec![a, b], Shape::Image { c: sa.chw().0 + sb.chw().0, h, w });
                }
            }
            6 => {
                let x = pick(&mut r);
                let (c, h, w) = net.g.shape(x).chw();
                if r.next(2) == 0 && h >= 2 && w >= 2 {
                    let pool = ir::Pool {
                        kind: PoolKind::Avg,
                        kernel: [2, 2],
                        stride: [2, 2],
                        pad: [Pad::default(); 2],
                        ceil_mode: false,
                        count_include_pad: false,
                    };
                    net.push(Op::Pool(pool), vec![x], Shape::Image { c, h: h / 2, w: w / 2 });
                } else {
                    net.push(Op::GlobalPool(PoolKind::Avg), vec![x], Shape::Image { c, h: 1, w: 1 });
                }
            }
            _ => {
                let x = pick(&mut r);
                let s = net.g.shape(x);
                let bn = BatchNorm::batch(s.chw().0, 1e-5, true, "s".into(), "b".into());
                net.push(Op::BatchNorm(bn), vec![x], s);
            }
        }
    }
    // End in a conv reading the last value, so every graph has a weight layer at the end.
    let x = ValueId(net.g.nodes.len());
    let (c, h, w) = net.g.shape(x).chw();
    let conv = Conv {
        in_channels: c,
        out_channels: 2,
        kernel: [1, 1],
        stride: [1, 1],
        pad: [Pad::default(); 2],
        dilation: [1, 1],
        groups: 1,
        bias: false,
    };
    net.push(Op::Conv(conv), vec![x], Shape::Image { c: 2, h, w });
    net.g
}

/// The brute-force propagation. `choose`: σ² of each conv makes its mean E[u²] 1;
/// otherwise Kaiming fan-in. Returns (σ² per conv node, forward per value, backward per value).
fn brute(g: &Graph, choose: bool) -> (Vec<(usize, f64)>, Vec<Dense>, Vec<Dense>) {
    let (c0, h0, w0) = g.input.chw();
    let mut vals = vec![Dense::new(c0 as usize, h0 as usize, w0 as usize)];
    vals[0].sec.iter_mut().for_each(|s| *s = 1.0);
    let mut sigma = Vec::new();
    for (k, n) in g.nodes.iter().enumerate() {
        let x = vals[n.inputs[0].0].clone();
        let (c, h, w) = n.output.chw();
        let mut out = Dense::new(c as usize, h as usize, w as usize);
        match &n.op {
            Op::Conv(cv) => {
                let (cin_g, cout_g) = ((cv.in_channels / cv.groups) as usize, (cv.out_channels / cv.groups) as usize);
                let (kk, st, p) = (cv.kernel[0] as i64, cv.stride[0] as i64, cv.pad[0].begin as i64);
                for o in 0..out.c {
                    let gi = o / cout_g;
                    for oy in 0..out.h {
                        for ox in 0..out.w {
                            let mut s = 0.0;
                            for ci in gi * cin_g..(gi + 1) * cin_g {
                                for ky in 0..kk {
                                    for kx in 0..kk {
                                        let (iy, ix) = (oy as i64 * st - p + ky, ox as i64 * st - p + kx);
                                        if iy >= 0 && ix >= 0 && (iy as usize) < x.h && (ix as usize) < x.w {
                                            s += x.sec[x.at(ci, iy as usize, ix as usize)];
                                        }
                                    }
                                }
                            }
                            let i = out.at(o, oy, ox);
                            out.sec[i] = s;
                        }
                    }
                }
                let s2 = if choose { 1.0 / Dense::avg(&out.sec) } else { 2.0 / (cin_g as f64 * (kk * kk) as f64) };
                out.sec.iter_mut().for_each(|v| *v *= s2);
                sigma.push((k, s2));
            }
            // A ReLU of a ReLU's output is the identity.
            Op::Activation(Activation::Relu) if relu_made(g, n.inputs[0].0).is_some() => out = x.clone(),
            Op::Activation(Activation::Relu) => {
                for i in 0..x.sec.len() {
                    let (mu, var) = (x.mean[i], (x.sec[i] - x.mean[i] * x.mean[i]).max(0.0));
                    let s = var.sqrt();
                    if s == 0.0 {
                        out.mean[i] = mu.max(0.0);
                        out.sec[i] = mu.max(0.0).powi(2);
                    } else {
                        let t = mu / s;
                        out.mean[i] = mu * cdf(t) + s * phi(t);
                        out.sec[i] = (mu * mu + var) * cdf(t) + mu * s * phi(t);
                    }
                }
            }
            Op::Add => {
                let b = &vals[n.inputs[1].0];
                for i in 0..x.sec.len() {
                    out.mean[i] = x.mean[i] + b.mean[i];
                    out.sec[i] = x.sec[i] + b.sec[i] + 2.0 * x.mean[i] * b.mean[i];
                }
            }
            Op::Concat => {
                let b = &vals[n.inputs[1].0];
                out.mean = x.mean.iter().chain(&b.mean).copied().collect();
                out.sec = x.sec.iter().chain(&b.sec).copied().collect();
            }
            Op::Pool(_) | Op::GlobalPool(_) => {
                let (kh, kw) = if matches!(n.op, Op::GlobalPool(_)) { (x.h, x.w) } else { (2, 2) };
                for ch in 0..out.c {
                    for oy in 0..out.h {
                        for ox in 0..out.w {
                            let (mut var, mut mean) = (0.0, 0.0);
                            for y in oy * kh..oy * kh + kh {
                                for xx in ox * kw..ox * kw + kw {
                                    let i = x.at(ch, y, xx);
                                    var += x.sec[i] - x.mean[i] * x.mean[i];
                                    mean += x.mean[i];
                                }
                            }
                            let d = (kh * kw) as f64;
                            let i = out.at(ch, oy, ox);
                            out.mean[i] = mean / d;
                            out.sec[i] = (var + mean * mean) / (d * d);
                        }
                    }
                }
            }
            // Each position keeps its share of the batch variance: E[(x(o) − x̄)²]/s_B².
            Op::BatchNorm(_) => {
                let hw = x.h * x.w;
                for ch in 0..x.c {
                    let m = Dense::avg(&x.mean[ch * hw..(ch + 1) * hw]);
                    let var = Dense::avg(&x.sec[ch * hw..(ch + 1) * hw]) - m * m;
                    for i in ch * hw..(ch + 1) * hw {
                        if var > 0.0 {
                            out.mean[i] = (x.mean[i] - m) / var.sqrt();
                            out.sec[i] = (x.sec[i] - 2.0 * x.mean[i] * m + m * m) / var;
                        } else {
                            out.mean[i] = 0.0;
                            out.sec[i] = 1.0;
                        }
                    }
                }
            }
            other => panic!("the generator makes no {other:?}"),
        }
        vals.push(out);
    }
    // Backward: a unit gradient at the last value.
    let mut grads: Vec<Dense> = vals.iter().map(|v| Dense::new(v.c, v.h, v.w)).collect();
    grads.last_mut().unwrap().sec.iter_mut().for_each(|s| *s = 1.0);
    // Per value, the part of its gradient already masked where the ReLU that made it passes.
    let mut on: std::collections::HashMap<usize, Vec<f64>> = std::collections::HashMap::new();
    for (k, n) in g.nodes.iter().enumerate().rev() {
        let dz = grads[k + 1].clone();
        let xv = n.inputs[0].0;
        let x = &vals[xv];
        match &n.op {
            Op::Conv(cv) => {
                let s2 = sigma.iter().find(|(j, _)| *j == k).unwrap().1;
                let (cin_g, cout_g) = ((cv.in_channels / cv.groups) as usize, (cv.out_channels / cv.groups) as usize);
                let (kk, st, p) = (cv.kernel[0] as i64, cv.stride[0] as i64, cv.pad[0].begin as i64);
                for o in 0..dz.c {
                    let gi = o / cout_g;
                    for oy in 0..dz.h {
                        for ox in 0..dz.w {
                            let gv = dz.sec[dz.at(o, oy, ox)];
                            for ci in gi * cin_g..(gi + 1) * cin_g {
                                for ky in 0..kk {
                                    for kx in 0..kk {
                                        let (iy, ix) = (oy as i64 * st - p + ky, ox as i64 * st - p + kx);
                                        if iy >= 0 && ix >= 0 && (iy as usize) < x.h && (ix as usize) < x.w {
                                            let i = grads[xv].at(ci, iy as usize, ix as usize);
                                            grads[xv].sec[i] += s2 * gv;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Op::Activation(_) => {
                // A ReLU of a chain of ReLUs passes where the chain's first ReLU g does
                // (one mask): it sends g's share and marks it; g passes the marked part
                // whole.
                let mut root = k;
                while let Some(p) = relu_made(g, g.nodes[root].inputs[0].0) {
                    root = p;
                }
                let rx = &vals[g.nodes[root].inputs[0].0];
                let marked = on.remove(&(k + 1)).unwrap_or_else(|| vec![0.0; dz.sec.len()]);
                let mut sent = vec![0.0; dz.sec.len()];
                for i in 0..dz.sec.len() {
                    let (mu, var) = (rx.mean[i], (rx.sec[i] - rx.mean[i] * rx.mean[i]).max(0.0));
                    let p = if var == 0.0 { (mu > 0.0) as u8 as f64 } else { cdf(mu / var.sqrt()) };
                    sent[i] = (dz.sec[i] - marked[i]).max(0.0) * p + marked[i];
                    grads[xv].sec[i] += sent[i];
                }
                if root != k {
                    let m = on.entry(xv).or_insert_with(|| vec![0.0; sent.len()]);
                    m.iter_mut().zip(&sent).for_each(|(a, b)| *a += b);
                }
            }
            Op::Add => {
                for &v in &n.inputs {
                    for i in 0..dz.sec.len() {
                        grads[v.0].sec[i] += dz.sec[i];
                    }
                }
            }
            Op::Concat => {
                let split = grads[xv].sec.len();
                for i in 0..split {
                    grads[xv].sec[i] += dz.sec[i];
                }
                let b = n.inputs[1].0;
                for i in 0..grads[b].sec.len() {
                    grads[b].sec[i] += dz.sec[split + i];
                }
            }
            Op::Pool(_) | Op::GlobalPool(_) => {
                let (kh, kw) = if matches!(n.op, Op::GlobalPool(_)) { (x.h, x.w) } else { (2, 2) };
                let d = (kh * kw) as f64;
                for ch in 0..dz.c {
                    for oy in 0..dz.h {
                        for ox in 0..dz.w {
                            let gv = dz.sec[dz.at(ch, oy, ox)];
                            for y in oy * kh..oy * kh + kh {
                                for xx in ox * kw..ox * kw + kw {
                                    let i = grads[xv].at(ch, y, xx);
                                    grads[xv].sec[i] += gv / (d * d);
                                }
                            }
                        }
                    }
                }
            }
            Op::BatchNorm(_) => {
                let hw = x.h * x.w;
                for ch in 0..x.c {
                    let m = Dense::avg(&x.mean[ch * hw..(ch + 1) * hw]);
                    let var = Dense::avg(&x.sec[ch * hw..(ch + 1) * hw]) - m * m;
                    for i in ch * hw..(ch + 1) * hw {
                        grads[xv].sec[i] += if var > 0.0 { dz.sec[i] / var } else { 0.0 };
                    }
                }
            }
            other => panic!("the generator makes no {other:?}"),
        }
    }
    (sigma, vals, grads)
}

/// The ReLU node that made value `v`, if a ReLU did.
fn relu_made(g: &Graph, v: usize) -> Option<usize> {
    let p = v.checked_sub(1)?;
    matches!(g.nodes[p].op, Op::Activation(Activation::Relu)).then_some(p)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-300
}

#[test]
fn map_analysis_matches_brute_force_on_random_dags() {
    let mut checked = 0;
    for seed in 0..60 {
        let g = random_graph(seed);
        for (mode, choose) in [(Mode::KaimingIn, false), (Mode::Forward, true)] {
            let opts = GraphOptions { mode, std_cap: None, branch_scale: 1.0, batch: None };
            let a = match analyze_graph_with(&g, opts, Analysis::Map) {
                Ok(a) => a,
                // A graph whose conv reads a value with no signal (a BatchNorm-free zero) is
                // refused in forward mode; the brute force would divide by zero too.
                Err(e) => panic!("seed {seed} {mode:?}: {e}"),
            };
            let (sigma, vals, grads) = brute(&g, choose);
            for w in &a.weights {
                let s2 = sigma.iter().find(|(k, _)| *k == w.node).unwrap().1;
                assert!(close(w.variance, s2), "seed {seed} {mode:?} node {}: σ² {} vs {s2}", w.node, w.variance);
                let u = &vals[w.node + 1].sec;
                assert!(
                    close(w.forward_variance, Dense::avg(u)),
                    "seed {seed} {mode:?} node {}: E[u²] {} vs {}",
                    w.node,
                    w.forward_variance,
                    Dense::avg(u)
                );
                let lo = u.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = u.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let (rlo, rhi) = w.forward_range.unwrap();
                assert!(close(rlo, lo) && close(rhi, hi), "seed {seed} node {}: range {rlo}..{rhi} vs {lo}..{hi}", w.node);
                let gin = &grads[g.nodes[w.node].inputs[0].0].sec;
                assert!(
                    close(w.backward_variance, Dense::avg(gin)),
                    "seed {seed} {mode:?} node {}: E[δ²] {} vs {}",
                    w.node,
                    w.backward_variance,
                    Dense::avg(gin)
                );
                checked += 1;
            }
            for j in &a.joins {
                assert!(close(j.forward_variance, Dense::avg(&vals[j.node + 1].sec)), "seed {seed} join {}", j.node);
                assert!(close(j.backward_variance, Dense::avg(&grads[j.node + 1].sec)), "seed {seed} join {}", j.node);
            }
        }
    }
    let count = |f: &dyn Fn(&Op) -> bool| (0..60).map(random_graph).map(|g| g.nodes.iter().filter(|n| f(&n.op)).count()).sum::<usize>();
    let (adds, cats) = (count(&|o| matches!(o, Op::Add)), count(&|o| matches!(o, Op::Concat)));
    assert!(checked > 300 && adds > 30 && cats > 30, "{checked} weight layers, {adds} adds, {cats} concats checked");
    eprintln!("{checked} weight layers, {adds} adds, {cats} concats checked against the brute force");
}

#[test]
fn the_random_dags_exercise_the_cross_terms() {
    // Adds of two values that both have a mean (ReLU outputs), and ReLUs of values with a
    // mean: the terms an implementation could get wrong without any other test noticing.
    let mut both = 0;
    for seed in 0..60 {
        let g = random_graph(seed);
        let (_, vals, _) = brute(&g, false);
        for n in &g.nodes {
            if matches!(n.op, Op::Add) && n.inputs.iter().all(|v| vals[v.0].mean.iter().any(|&m| m != 0.0)) {
                both += 1;
            }
        }
    }
    assert!(both >= 5, "{both} adds of two values with a mean");
}
