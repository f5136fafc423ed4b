//! The probe: its per-layer measurements against independent computations, and its
//! verdict on small networks where the theory must hold.

use candle_core::{DType, Device, Var};
use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::nn::Model;
use cnnc::probe::{gaussian, measure, probe, ProbeOptions};
use cnnc::Source;
use rand::SeedableRng;

fn net(text: &str) -> cnnc::unify::Network {
    Source::new("t.cnn", text).network().unwrap_or_else(|e| panic!("{e}"))
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

/// Layer 1's E[u²] by a naive loop over s(1,i) × a(1,i); the input gradient of ⟨y, g⟩ by
/// one whole-network autograd pass (not layer by layer); the last layer's input gradient
/// by a naive Wᵀg.
#[test]
fn measurements_match_independent_computations() {
    let n = net(
        "network P\ninput 2x6x5\nconv(3/p1/s1) -> 3, relu, maxpool(3/s2/p1)\nconv(2) -> 4, leaky_relu(0.1), global_avgpool\nlinear -> 5\n",
    );
    let plan = cnnc::plan(&n, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    let dev = Device::Cpu;
    let model = Model::new(&n, &plan, 11, &dev, DType::F64).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let x = gaussian(&[3, 2, 6, 5], &mut rng, &dev).unwrap().to_dtype(DType::F64).unwrap();
    let mut rng_g = rng.clone();
    let (fwd, bwd) = measure(&model, &x, &mut rng).unwrap();

    // Forward, layer 1, by the explicit index sets.
    let g1 = &n.layers[0].weight.geometry;
    let w: Vec<f64> = model.layers[0].weight.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let xs: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let per_sample = g1.m_in() as usize;
    let mut sum = 0.0;
    for b in 0..3 {
        for o in 0..g1.m_out() {
            let c = g1.c(o) as usize;
            let mut u = 0.0;
            g1.for_each_s(o, |i, a| u += w[c * g1.taps_per_kernel() as usize + a as usize] * xs[b * per_sample + i as usize]);
            sum += u * u;
        }
    }
    let naive_q1 = sum / (3.0 * g1.m_out() as f64);
    assert!(rel(fwd[0], naive_q1) < 1e-12, "{} vs {naive_q1}", fwd[0]);

    // Backward at the network input, by one autograd pass over the whole model.
    let xv = Var::from_tensor(&x).unwrap();
    let y = model.forward(xv.as_tensor()).unwrap();
    let g = gaussian(y.dims(), &mut rng_g, &dev).unwrap().to_dtype(DType::F64).unwrap();
    let loss = (y * &g).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gx = grads.get(xv.as_tensor()).unwrap();
    let whole = gx.sqr().unwrap().mean_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(rel(bwd[0], whole) < 1e-12, "{} vs {whole}", bwd[0]);

    // Backward at the linear layer's input: Wᵀg, by hand.
    let wl: Vec<f64> = model.layers[2].weight.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let gv: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
    let (outs, ins) = (5usize, 4usize);
    let mut s2 = 0.0;
    for b in 0..3 {
        for i in 0..ins {
            let d: f64 = (0..outs).map(|o| wl[o * ins + i] * gv[b * outs + o]).sum();
            s2 += d * d;
        }
    }
    assert!(rel(bwd[2], s2 / (3.0 * ins as f64)) < 1e-12);
}

/// On a small network with padding and an overlapping max pool, the map analysis' plans
/// keep what they promise — forward: the conv-output variance of every conv layer stays
/// within 20 % of 1; backward: the gradient variance at every layer input but the network
/// input — while the paper's layer-mean plans drift further at the deepest conv (padding)
/// and at the max-pooled layer (overlap). Mean over 24 seeded draws.
///
/// Excluded, as the theory predicts neither: the linear layer after the global average
/// pool (ReLU outputs have a positive mean, so a channel's positions are correlated through
/// its shared weights and the pool does not average them down as independent units), and
/// the gradient at the network input (the argmax of overlapping windows over correlated
/// neighbours).
#[test]
fn map_plans_keep_their_promise_on_a_small_network() {
    let n = net("network S\ninput 3x12x12\nconv(3/p1) -> 32, relu, maxpool(3/s2/p1)\nconv(3/p1) -> 48, relu\nconv(3/p1) -> 48, relu\nconv(3/p1) -> 48, relu, global_avgpool\nlinear -> 10\n");
    let opts = ProbeOptions { draws: 24, batch: 2, seed: 3 };
    let run = |mode, analysis| {
        let plan = cnnc::plan_with(&n, Options { mode, std_cap: None }, analysis).unwrap();
        probe(&n, &plan, opts, &Device::Cpu).unwrap()
    };
    let fwd_map = run(Mode::Forward, Analysis::Map);
    let fwd_paper = run(Mode::Forward, Analysis::Paper);
    for l in &fwd_map.layers[..4] {
        let ratio = l.measured_forward.mean / l.predicted_forward;
        assert!((0.8..1.2).contains(&ratio), "map forward, layer {}: ratio {ratio}\n{}", l.index, fwd_map.table());
    }
    let off = |r: &cnnc::probe::ProbeReport, k: usize, fwd: bool| {
        let l = &r.layers[k];
        if fwd {
            (l.measured_forward.mean / l.predicted_forward - 1.0).abs()
        } else {
            (l.measured_backward.mean / l.predicted_backward - 1.0).abs()
        }
    };
    assert!(
        off(&fwd_map, 3, true) < off(&fwd_paper, 3, true),
        "map closer than paper at the deepest conv\n{}\n{}",
        fwd_map.table(),
        fwd_paper.table()
    );

    let bwd_map = run(Mode::Backward, Analysis::Map);
    let bwd_paper = run(Mode::Backward, Analysis::Paper);
    for l in &bwd_map.layers[1..] {
        let ratio = l.measured_backward.mean / l.predicted_backward;
        assert!((0.8..1.2).contains(&ratio), "map backward, layer {}: ratio {ratio}\n{}", l.index, bwd_map.table());
    }
    assert!(
        off(&bwd_map, 0, false) < off(&bwd_paper, 0, false),
        "map closer than paper at the max-pooled layer\n{}\n{}",
        bwd_map.table(),
        bwd_paper.table()
    );
}
