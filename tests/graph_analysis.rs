//! The graph analysis's propagation rules on small graphs whose numbers are worked out by
//! hand here (closed forms, sums, a brute-force Gaussian integral), and its agreement with
//! the paper's chain analysis on F34.

use cnnc::analyze::graph::{analyze_graph, analyze_graph_with, GraphAnalysis, GraphOptions};
use cnnc::analyze::{analyze, Mode, Options};
use cnnc::ir::{self, Activation, BatchNorm, Conv, Graph, Node, Op, Origin, Pad, PoolKind, Shape, ValueId};

/// Builds a graph node by node; each push returns the new value.
struct B {
    g: Graph,
}

impl B {
    fn new(c: u64, h: u64, w: u64) -> B {
        B { g: Graph { name: "t".into(), input: Shape::Image { c, h, w }, nodes: Vec::new(), notes: Vec::new() } }
    }
    fn push(&mut self, name: &str, op: Op, inputs: &[ValueId], output: Shape) -> ValueId {
        self.g.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            output,
            name: name.into(),
            params: None,
            origin: Origin::OnnxNode(name.into()),
        });
        ValueId(self.g.nodes.len())
    }
    fn shape(&self, v: ValueId) -> Shape {
        self.g.shape(v)
    }
    /// A k×k conv, stride 1, padding p, `groups`.
    fn conv(&mut self, name: &str, x: ValueId, out: u64, k: u64, p: u64, groups: u64) -> ValueId {
        let (c, h, w) = self.shape(x).chw();
        let conv = Conv {
            in_channels: c,
            out_channels: out,
            kernel: [k, k],
            stride: [1, 1],
            pad: [Pad { begin: p, end: p }; 2],
            dilation: [1, 1],
            groups,
            bias: false,
        };
        let (oh, ow) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
        self.push(name, Op::Conv(conv), &[x], Shape::Image { c: out, h: oh, w: ow })
    }
    fn act(&mut self, name: &str, x: ValueId, a: Activation) -> ValueId {
        let s = self.shape(x);
        self.push(name, Op::Activation(a), &[x], s)
    }
    fn add(&mut self, name: &str, xs: &[ValueId]) -> ValueId {
        let s = self.shape(xs[0]);
        self.push(name, Op::Add, xs, s)
    }
    fn bn(&mut self, name: &str, x: ValueId, training: bool) -> ValueId {
        let s = self.shape(x);
        let bn = BatchNorm::batch(s.chw().0, 1e-5, training, format!("{name}.weight"), format!("{name}.bias"));
        self.push(name, Op::BatchNorm(bn), &[x], s)
    }
}

fn run(g: &Graph, mode: Mode) -> GraphAnalysis {
    analyze_graph(g, GraphOptions { mode, std_cap: None, branch_scale: 1.0, batch: None }).unwrap()
}

fn run_alpha(g: &Graph, mode: Mode, alpha: f64) -> GraphAnalysis {
    analyze_graph(g, GraphOptions { mode, std_cap: None, branch_scale: alpha, batch: None }).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-300)
}

#[track_caller]
fn assert_close(a: f64, b: f64, tol: f64) {
    assert!(close(a, b, tol), "{a} vs {b} (relative tolerance {tol})");
}

fn join<'a>(a: &'a GraphAnalysis, g: &Graph, name: &str) -> &'a cnnc::analyze::graph::JoinResult {
    a.joins.iter().find(|j| g.nodes[j.node].name == name).unwrap()
}

fn weight<'a>(a: &'a GraphAnalysis, g: &Graph, name: &str) -> &'a cnnc::analyze::graph::WeightResult {
    a.weights.iter().find(|w| g.nodes[w.node].name == name).unwrap()
}

/// Σ over output positions of the number of real taps of a k×k, padding-p conv on an
/// n×n map, per axis, by brute force: then κ = (Σ/n)².
fn taps_per_axis(n: i64, k: i64, p: i64) -> f64 {
    let mut total = 0;
    for o in 0..n + 2 * p + 1 - k {
        for t in 0..k {
            let i = o - p + t;
            if (0..n).contains(&i) {
                total += 1;
            }
        }
    }
    total as f64 / (n + 2 * p + 1 - k) as f64
}

#[test]
fn an_add_of_two_branches_sums_their_second_moments() {
    let mut b = B::new(4, 8, 8);
    let a1 = b.conv("a", ValueId(0), 4, 1, 0, 1);
    let a2 = b.conv("b", ValueId(0), 4, 3, 1, 1);
    b.add("sum", &[a1, a2]);
    let a = run(&b.g, Mode::Forward);
    // Each branch's σ² makes its output 1: σ² = 1/(C κ), κ the mean real taps per position.
    assert_close(weight(&a, &b.g, "a").variance, 1.0 / 4.0, 1e-12);
    let kappa = taps_per_axis(8, 3, 1).powi(2);
    assert_close(weight(&a, &b.g, "b").variance, 1.0 / (4.0 * kappa), 1e-12);
    assert_close(join(&a, &b.g, "sum").forward_variance, 2.0, 1e-12);
    // Backward: each input of an Add receives the whole gradient.
    assert_close(a.output_variance, 2.0, 1e-12);
}

#[test]
fn the_same_value_added_to_itself_is_four_times_not_two() {
    let mut b = B::new(3, 6, 6);
    let u = b.conv("c", ValueId(0), 5, 1, 0, 1);
    b.add("double", &[u, u]);
    let a = run(&b.g, Mode::KaimingIn);
    let u2 = 2.0 / 3.0 * 3.0; // σ² = 2/fan_in, 3 inputs of second moment 1
    assert_close(weight(&a, &b.g, "c").forward_variance, u2, 1e-12);
    assert_close(join(&a, &b.g, "double").forward_variance, 4.0 * u2, 1e-12);
    // The gradient at u is 2δ: second moment 4; at the input, σ² · C_out · 4.
    assert_close(weight(&a, &b.g, "c").backward_variance, 2.0 / 3.0 * 5.0 * 4.0, 1e-12);
}

#[test]
fn a_fork_adds_the_gradients_of_its_readers() {
    let mut b = B::new(3, 5, 5);
    let relu = b.act("relu", ValueId(0), Activation::Relu);
    let a1 = b.conv("a", relu, 6, 1, 0, 1);
    let a2 = b.conv("b", relu, 2, 1, 0, 1);
    let c1 = b.conv("a2", a1, 4, 1, 0, 1);
    let c2 = b.conv("b2", a2, 4, 1, 0, 1);
    b.add("sum", &[c1, c2]);
    let a = run(&b.g, Mode::KaimingIn);
    // Gradient 1 at the sum; through a2 (σ² = 2/6, 4 outputs): 4·2/6 at a's output; through a
    // (σ² = 2/3, 6 outputs): 6 · 2/3 · 4/3 at relu's output; likewise b: 2 · 2/3 · (4 · 2/2).
    let via_a = 6.0 * (2.0 / 3.0) * (4.0 * 2.0 / 6.0);
    let via_b = 2.0 * (2.0 / 3.0) * (4.0 * 2.0 / 2.0);
    // Both first convs read relu's output: their backward_variance is the total there.
    assert_close(weight(&a, &b.g, "a").backward_variance, via_a + via_b, 1e-12);
    assert_close(weight(&a, &b.g, "b").backward_variance, via_a + via_b, 1e-12);
    // At the network input, ReLU's E[f'²] = 1/2 for a zero-mean input.
    assert_close(a.input_gradient_variance, 0.5 * (via_a + via_b), 1e-12);
}

#[test]
fn a_concat_of_unequal_branches_weights_them_by_channels() {
    let mut b = B::new(2, 4, 4);
    let a1 = b.conv("a", ValueId(0), 3, 1, 0, 1); // E = (2/2)·2 = 2 under Kaiming
    let a2 = b.conv("b", ValueId(0), 1, 1, 0, 1);
    let r = b.act("relu", a2, Activation::Relu); // E = 1
    let (_, h, w) = b.shape(a1).chw();
    let cat = b.push("cat", Op::Concat, &[a1, r], Shape::Image { c: 4, h, w });
    b.conv("c", cat, 1, 1, 0, 1);
    let k = run(&b.g, Mode::KaimingIn);
    assert_close(join(&k, &b.g, "cat").forward_variance, (3.0 * 2.0 + 1.0) / 4.0, 1e-12);
    assert_close(weight(&k, &b.g, "c").forward_variance, 2.0 / 4.0 * (3.0 * 2.0 + 1.0), 1e-12);
    let f = run(&b.g, Mode::Forward);
    assert_close(weight(&f, &b.g, "c").variance, 1.0 / (3.0 + 1.0 * 0.5), 1e-12);
    // A depthwise conv after the concat keeps the channels apart: channel 3 reads relu's
    // output only.
    let mut b2 = B::new(2, 4, 4);
    let a1 = b2.conv("a", ValueId(0), 3, 1, 0, 1);
    let a2 = b2.conv("b", ValueId(0), 1, 1, 0, 1);
    let r = b2.act("relu", a2, Activation::Relu);
    let cat = b2.push("cat", Op::Concat, &[a1, r], Shape::Image { c: 4, h: 4, w: 4 });
    let dw = b2.conv("dw", cat, 4, 1, 0, 4);
    b2.push("slice", Op::ChannelSlice { start: 3, end: 4 }, &[dw], Shape::Image { c: 1, h: 4, w: 4 });
    let k = run(&b2.g, Mode::KaimingIn);
    assert_close(weight(&k, &b2.g, "dw").forward_variance, 2.0 * (3.0 * 2.0 + 1.0) / 4.0, 1e-12);
    assert_close(k.output_variance, 2.0 * 1.0, 1e-12);
}

#[test]
fn batch_norm_in_training_mode_sets_the_signal_and_in_inference_mode_passes_it() {
    for training in [true, false] {
        let mut b = B::new(3, 4, 4);
        let u = b.conv("c", ValueId(0), 8, 1, 0, 1);
        b.bn("bn", u, training);
        let a = run(&b.g, Mode::KaimingIn);
        let u2 = 2.0; // σ² = 2/3, three inputs of 1
        let bn = &a.batch_norms[0];
        if training {
            assert_close(bn.forward_variance, 1.0, 1e-15);
            // Backward: × γ²/Var(x), Var(x) = 2.
            assert_close(weight(&a, &b.g, "c").backward_variance, 2.0 / 3.0 * 8.0 * 0.5, 1e-12);
            assert_eq!(weight(&a, &b.g, "c").normalized_by, Some(1));
        } else {
            assert_close(bn.forward_variance, u2 / (1.0 + 1e-5), 1e-12);
            assert_close(weight(&a, &b.g, "c").backward_variance, 2.0 / 3.0 * 8.0 / (1.0 + 1e-5), 1e-12);
            assert_eq!(weight(&a, &b.g, "c").normalized_by, None);
        }
    }
}

/// E[sigmoid(v)²] for v ~ N(0, var), by a plain Riemann sum over ±12σ.
fn sigmoid_second(var: f64) -> f64 {
    let s = var.sqrt();
    let n = 200_000;
    let (lo, hi) = (-12.0, 12.0);
    let dz = (hi - lo) / n as f64;
    (0..n)
        .map(|i| {
            let z = lo + (i as f64 + 0.5) * dz;
            let g = 1.0 / (1.0 + (-s * z).exp());
            g * g * (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt() * dz
        })
        .sum()
}

#[test]
fn a_squeeze_excitation_gate_multiplies_second_moments() {
    let mut b = B::new(4, 6, 6);
    let x = b.conv("c", ValueId(0), 8, 1, 0, 1); // E[x²] = 2 (Kaiming), mean 0
    let p = b.push("gap", Op::GlobalPool(PoolKind::Avg), &[x], Shape::Image { c: 8, h: 1, w: 1 }); // E = 2/36
    let f = b.conv("fc", p, 8, 1, 0, 1); // E = (2/8)·8·(2/36) = 2/18... per channel: σ² Σ_c
    let gate = b.act("sig", f, Activation::Sigmoid);
    b.push("scale", Op::Mul, &[x, gate], Shape::Image { c: 8, h: 6, w: 6 });
    let a = run(&b.g, Mode::KaimingIn);
    let v = 2.0 / 8.0 * 8.0 * (2.0 / 36.0);
    assert_close(weight(&a, &b.g, "fc").forward_variance, v, 1e-12);
    assert_close(join(&a, &b.g, "scale").forward_variance, 2.0 * sigmoid_second(v), 1e-7);
}

/// x_{k+1} = x_k + conv(relu(x_k)), 1×1 convs, Kaiming fan-in: the branch returns
/// E[x_k²] (2/C · C · E[x²]/2), so the stream doubles per block (De & Smith 2020, §2).
/// With BatchNorm (training) at the end of each branch it grows by 1 per block.
#[test]
fn a_residual_stack_grows_as_the_closed_form_says() {
    for with_bn in [false, true] {
        let mut b = B::new(8, 4, 4);
        let mut x = b.conv("stem", ValueId(0), 8, 1, 0, 1); // E = 2
        for k in 0..5 {
            let r = b.act(&format!("relu{k}"), x, Activation::Relu);
            let mut y = b.conv(&format!("conv{k}"), r, 8, 1, 0, 1);
            if with_bn {
                y = b.bn(&format!("bn{k}"), y, true);
            }
            x = b.add(&format!("add{k}"), &[y, x]);
        }
        let a = run(&b.g, Mode::KaimingIn);
        for k in 0..5 {
            let expected = if with_bn { 2.0 + (k + 1) as f64 } else { 2.0 * 2f64.powi(k + 1) };
            assert_close(join(&a, &b.g, &format!("add{k}")).forward_variance, expected, 1e-12);
            assert_eq!(join(&a, &b.g, &format!("add{k}")).branches, vec![true, false]);
        }
        // Forward plan: every branch output is 1, so the stream is 1 + k.
        let f = run(&b.g, Mode::Forward);
        for k in 0..5 {
            assert_close(join(&f, &b.g, &format!("add{k}")).forward_variance, 1.0 + (k + 1) as f64, 1e-12);
        }
        // --branch-scale α: each branch ends at α², the stream at 1 + kα²; α = 0 keeps it at 1.
        for alpha in [0.0, 0.5] {
            let s = run_alpha(&b.g, Mode::Forward, alpha);
            for k in 0..5 {
                assert_close(join(&s, &b.g, &format!("add{k}")).forward_variance, 1.0 + (k + 1) as f64 * alpha * alpha, 1e-12);
            }
            if with_bn {
                assert!(s.batch_norms.iter().all(|bn| bn.scale == alpha && bn.residual_last));
                assert!(s.weights.iter().all(|w| w.variance > 0.0));
            } else {
                let last = weight(&s, &b.g, "conv4");
                assert!(last.residual_last);
                assert_close(last.forward_variance, alpha * alpha, 1e-12);
            }
        }
    }
}

/// On a chain the graph rules are the paper's equations term for term, except the one
/// place where the graph analysis goes beyond the paper: the global average pool keeps
/// each channel's random offset whole (F34's layer 33 → 34). Everything before it agrees
/// to 1e-10; the pool's τ and the linear layer after it are checked against the offset
/// rule in `a_global_pool_keeps_the_channel_offset_whole`.
#[test]
fn the_graph_analysis_is_the_paper_analysis_on_a_chain() {
    let src = cnnc::Source::new("f34.cnn", std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/specs/f34.cnn")).unwrap());
    let graph = src.graph().unwrap();
    let net = src.network().unwrap();
    for mode in Mode::ALL {
        let chain = analyze(&net, Options { mode, std_cap: None }).unwrap();
        let g = run(&graph, mode);
        assert_eq!(chain.len(), g.weights.len());
        let last = chain.len() - 1;
        // A forward plan's σ² of the linear layer differs, and every backward prediction
        // scales with it.
        let scale = g.weights[last].variance / chain[last].variance;
        if mode != Mode::Forward {
            assert_close(scale, 1.0, 1e-12);
        }
        for (l, (c, w)) in chain.iter().zip(&g.weights).enumerate() {
            if l < last {
                assert_close(w.variance, c.variance, 1e-12);
                assert_close(w.forward_variance, c.forward_variance, 1e-10);
                assert_close(w.gamma, c.gamma, 1e-10);
            }
            if l < last - 1 {
                assert_close(w.tau, c.tau, 1e-10);
            }
            assert_close(w.backward_variance, c.backward_variance * scale, 1e-10);
        }
        // The offset only adds to the pooled second moment.
        assert!(g.weights[last - 1].tau > chain[last - 1].tau, "{mode:?}");
    }
}

/// x = μ + m + e per channel: a conv of a ReLU output (μ > 0) gives each output channel
/// a random offset m (σ² Σ μ² over its taps), the same at every position, so a global
/// average pool keeps it whole: E[z²] = μ² + Var(offset) + rest / T, not (E[x²] + (T − 1)μ²)/T.
/// Checked by a brute-force 2-D Riemann sum over the offset and the rest.
#[test]
fn a_global_pool_keeps_the_channel_offset_whole() {
    let mut b = B::new(1, 6, 6);
    let u1 = b.conv("c1", ValueId(0), 4, 1, 0, 1); // N(0, 2) under Kaiming, no offset (input mean 0)
    let r1 = b.act("r1", u1, Activation::Relu); // mean 1/√π, E[x²] = 1
    let u2 = b.conv("c2", r1, 4, 1, 0, 1); // E = 2/4 · 4 · 1 = 2; offset variance 2/4 · 4 · (1/π)
    let r2 = b.act("r2", u2, Activation::Relu);
    let gap = b.push("gap", Op::GlobalPool(PoolKind::Avg), &[r2], Shape::Image { c: 4, h: 1, w: 1 });
    let _ = gap;
    let a = run(&b.g, Mode::KaimingIn);
    let (offset, rest) = (2.0 / std::f64::consts::PI, 2.0 - 2.0 / std::f64::consts::PI);
    // E_m[g(m)²] with g(m) = E_e relu(m + e), by a midpoint sum over m and e.
    let n = 2000;
    let (sm, se) = (offset.sqrt(), rest.sqrt());
    let dz = 16.0 / n as f64;
    let pdf = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mut g2 = 0.0;
    for i in 0..n {
        let zm = -8.0 + (i as f64 + 0.5) * dz;
        let mut g = 0.0;
        for j in 0..n {
            let ze = -8.0 + (j as f64 + 0.5) * dz;
            g += (sm * zm + se * ze).max(0.0) * pdf(ze) * dz;
        }
        g2 += g * g * pdf(zm) * dz;
    }
    let mu = (2.0f64 / (2.0 * std::f64::consts::PI)).sqrt(); // E relu(N(0, 2))
    let s = 1.0; // E relu(N(0, 2))²
    let t = 36.0;
    let expected = g2 + (s - g2) / t; // μ² + Var(offset) = E_m g(m)²; the rest over T
    assert!(g2 > mu * mu * 1.1, "the offset matters: {g2} vs μ² = {}", mu * mu);
    assert_close(a.output_variance, expected, 1e-6);
    // The paper's rule would give (E[x²] + (T − 1) μ²) / T:
    assert!((a.output_variance - (s + (t - 1.0) * mu * mu) / t).abs() > 0.05);
}

#[test]
fn max_pooling_of_a_relu_uses_the_papers_integral() {
    let mut b = B::new(2, 6, 6);
    let u = b.conv("c", ValueId(0), 4, 1, 0, 1);
    let r = b.act("r", u, Activation::Relu);
    let pool = ir::Pool {
        kind: PoolKind::Max,
        kernel: [3, 3],
        stride: [3, 3],
        pad: [Pad::default(); 2],
        ceil_mode: false,
        count_include_pad: false,
    };
    b.push("p", Op::Pool(pool), &[r], Shape::Image { c: 4, h: 2, w: 2 });
    let a = run(&b.g, Mode::KaimingIn);
    // E[relu(max of 9 N(0, q))²] = q τ(9), τ(9) = 9 ∫_0^∞ s² φ Φ⁸ by a midpoint sum.
    let q = 2.0;
    let n = 400_000;
    let dz = 12.0 / n as f64;
    let tau9: f64 = (0..n)
        .map(|i| {
            let s = (i as f64 + 0.5) * dz;
            let phi = (-0.5 * s * s).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let cdf = 0.5 * libm::erfc(-s / std::f64::consts::SQRT_2);
            9.0 * s * s * phi * cdf.powi(8) * dz
        })
        .sum();
    assert_close(a.output_variance, q * tau9, 1e-8);
    // Backward: the gradient reaches u with (1 − 2⁻⁹)/9.
    assert_close(weight(&a, &b.g, "c").backward_variance, 2.0 / 2.0 * 4.0 * (1.0 - 0.5f64.powi(9)) / 9.0, 1e-12);
}

#[test]
fn huge_inputs_are_errors_not_aborts() {
    // 1×2^20×2^20: the map analyses would need terabytes; both refuse, naming the node.
    let mut b = B::new(1, 1 << 20, 1 << 20);
    b.conv("c", ValueId(0), 1, 1, 0, 1);
    let e = analyze_graph_with(
        &b.g,
        GraphOptions { mode: Mode::Forward, std_cap: None, branch_scale: 1.0, batch: None },
        cnnc::analyze::Analysis::Map,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "node `c` (conv): the map analysis keeps 2199023255552 positions (Σ over values of h × w), over its budget of 67108864; \
         this value has 1099511627776: plan with --analysis paper"
    );
    // The paper analysis of that graph is fine (one number per channel).
    assert!(analyze_graph(&b.g, GraphOptions { mode: Mode::Forward, std_cap: None, branch_scale: 1.0, batch: None }).is_ok());
    // The chain map analysis refuses too.
    let net = cnnc::Source::new("big.cnn", "network big\ninput 1x1048576x1048576\nConv(1) -> 1\n").network().unwrap();
    let e = cnnc::analyze::analyze_with(&net, Options { mode: Mode::Forward, std_cap: None }, cnnc::analyze::Analysis::Map).unwrap_err();
    assert!(e.to_string().contains("the map analysis keeps 3298534883328 positions"), "{e}");
}

#[test]
fn a_radix_softmax_other_than_two_is_an_error_not_a_panic() {
    // The importer builds radix 2 only (a sigmoid of the difference); a hand-built graph
    // can ask for more, and for channels that do not split into the groups.
    for (radix, groups, c) in [(3, 1, 6), (2, 2, 6)] {
        let mut b = B::new(c, 1, 1);
        let x = b.conv("c0", ValueId(0), c, 1, 0, 1);
        let a = b.push("rs", Op::RadixSoftmax { radix, groups }, &[x], Shape::Image { c, h: 1, w: 1 });
        b.conv("c1", a, 2, 1, 0, 1);
        for analysis in [cnnc::analyze::Analysis::Paper, cnnc::analyze::Analysis::Map] {
            for mode in [Mode::Forward, Mode::Backward] {
                let e = analyze_graph_with(&b.g, GraphOptions { mode, std_cap: None, branch_scale: 1.0, batch: None }, analysis)
                    .unwrap_err()
                    .to_string();
                assert!(e.starts_with("node `rs` (radix softmax): "), "{e}");
                assert!(e.contains(if radix == 3 { "a radix of 3" } else { "6 channels are not 2 groups of radix 2" }), "{e}");
            }
        }
    }
}
